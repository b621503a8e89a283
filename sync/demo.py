"""``crdtdb demo``: a real cluster on this machine, written to in every region at once.

In order:

1. a workspace: a fresh temporary directory (removed at the end), or
   ``--keep DIR`` (see :mod:`crdtdb.demo_dir`: never a directory holding
   files the demo did not make);
2. a cluster CA and a certificate per region, one config per region, and
   one ``crdtdb serve`` daemon per region on free loopback ports
   (:mod:`.demo_cluster`), every pair peered; it waits until they connect;
3. one writer thread per region, through the embedded library on the
   directory its daemon serves (:mod:`crdtdb.demo_writers`): several
   collections, nested fields, list appends, concurrent text, deletes;
4. a third of the way in, the last region is cut off (its daemon stopped,
   its writer going on) for a third of the time, at most 4 s, then healed;
5. once the writes stop, it waits until every region holds the same live
   documents (compared as sorted JSON) with the same Merkle root, or fails
   with the reason after ``timeout`` seconds;
6. it stops the daemons, then runs a few SQL queries with
   :mod:`crdtdb.query` over the merged state of the region that was cut off.

All the while it shows a table of the regions (:mod:`.demo_view`). Every
daemon it started is stopped on every way out: success, failure, Ctrl-C,
SIGTERM or SIGHUP (exit status 130, or 128 + the signal). The demo is the one
module of ``crdtdb.sync`` that also uses :mod:`crdtdb.query` (imported only
when the queries run): it is a tour of all three layers.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import crdtdb
from crdtdb.demo_dir import Workspace, demo_directory
from crdtdb.demo_writers import NOTES, Writer
from crdtdb.errors import UsageError

from .demo_cluster import DemoCluster, DemoError
from .demo_view import Display, RegionRow, agreement, measure, open_display

__all__ = ["REGION_NAMES", "DemoOptions", "run"]

REGION_NAMES = ("eu", "us", "ap", "sa", "af", "me", "oc", "ca", "in")
"""The regions of ``--regions N``: the first N."""
CONNECT_TIMEOUT = 30.0
"""Seconds the daemons get to start and connect to each other."""
TICK = 0.5
"""Seconds between two measurements of the regions."""
MAX_CUT = 4.0
"""The longest a region is cut off."""
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

QUERIES = (
    (
        "documents per collection",
        "SELECT collection, count(*) AS documents FROM docs WHERE NOT deleted"
        " GROUP BY collection ORDER BY collection",
    ),
    (
        "orders by a nested field, shipping.status",
        "SELECT shipping.status AS status, count(*) AS orders, round(sum(total), 2) AS total"
        " FROM orders GROUP BY ALL ORDER BY orders DESC, status",
    ),
    (
        "records by the region that wrote them",
        "SELECT origin, kind, count(*) AS records FROM changes GROUP BY ALL ORDER BY origin, kind",
    ),
    (
        "the notes every region typed into at once",
        "SELECT id, length(body) AS chars, left(body, 44) AS starts FROM notes ORDER BY id",
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What ``crdtdb demo`` runs (its command-line options)."""

    regions: int = 3
    """How many regions, 2 to 9: eu, us, ap, then sa, af, me, oc, ca, in."""
    duration: float = 12.0
    """Seconds the writers write."""
    rate: float = 20.0
    """Transactions a second each region's writer commits."""
    keep: Path | None = None
    """Leave the cluster in this directory (new, empty, or an earlier demo's)."""
    timeout: float = 30.0
    """Seconds the regions get to converge once the writes stop."""

    def check(self) -> None:
        if not 2 <= self.regions <= len(REGION_NAMES):
            raise UsageError(f"--regions must be 2 to {len(REGION_NAMES)}, not {self.regions}")
        if not 1.0 <= self.duration <= 3600:
            raise UsageError(f"--duration must be 1 to 3600 seconds, not {self.duration:g}")
        if not 0.1 <= self.rate <= 1000:
            raise UsageError(f"--rate must be 0.1 to 1000 writes a second, not {self.rate:g}")
        if not self.timeout > 0:
            raise UsageError(f"--timeout must be positive, not {self.timeout:g}")


def run(options: DemoOptions, *, live: bool | None = None) -> int:
    """Run the demo; 0 once the regions converged and the queries ran (see the docstring).

    ``live``: the redrawn table (True) or plain lines (False); default: a
    table when stdout is a terminal.
    """
    options.check()
    with demo_directory(options.keep) as workspace, _signals_end_the_demo() as signals:
        demo = ClusterDemo(workspace, REGION_NAMES[: options.regions], options, live)
        demo.signals = signals
        try:
            return demo.run()
        except DemoError as exc:
            workspace.keep = True  # a failure is worth a look: say where
            raise DemoError(f"{exc}; the cluster's files are kept in {workspace.path}") from None
        finally:
            with _uninterrupted():
                demo.close()


class ClusterDemo:
    """One run of the cluster demo (see the module docstring)."""

    def __init__(
        self,
        workspace: Workspace,
        names: tuple[str, ...],
        options: DemoOptions,
        live: bool | None,
    ) -> None:
        self.workspace = workspace
        self.root = workspace.path
        self.options = options
        self.names = names
        self.cut_name = names[-1]
        self.started = time.monotonic()
        self.cluster = DemoCluster(self.root, names)
        self.dbs: dict[str, crdtdb.Database] = {}
        self.writers: dict[str, Writer] = {}
        self.rows: list[RegionRow] = []
        self.phase = "starting"
        self._reconnect_from: float | None = None
        self.signals = Signals()
        title = (
            f"crdtdb demo: {len(names)} regions ({', '.join(names)}),"
            f" {options.rate:g} writes/s each for {options.duration:g}s"
        )
        self.display: Display | None = open_display(title, live=live)

    # ------------------------------------------------------------ the run

    def run(self) -> int:
        self._print_intro()
        self._start_cluster()
        self._write()
        took = self._converge()
        self._stop_daemons()
        self._close_display()
        self._print_convergence(took)
        self._print_queries()
        self._print_outro()
        return 0

    def _say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.display is not None:
            self.display.event(elapsed, message)
        else:
            print(message, flush=True)

    def _print_intro(self) -> None:
        where = "a temporary directory" if self.workspace.temporary else "the directory"
        self._say(f"a cluster of {len(self.names)} regions on this machine, in {where} {self.root}")

    def _start_cluster(self) -> None:
        self.cluster.write_files()
        self._say(
            "cluster CA, region certificates and configs written:"
            f" certs/, {', '.join(f'{n}.toml' for n in self.names)}"
        )
        for name in self.names:  # created here, so that the daemon and the writer agree
            self.dbs[name] = crdtdb.open(self.cluster.regions[name].data_dir, region=name)
        for name, region in self.cluster.regions.items():
            pid = self.cluster.start(name)
            self._say(f"{name}: `crdtdb serve` started, pid {pid}, QUIC on 127.0.0.1:{region.port}")
        took = self.cluster.wait_connected(CONNECT_TIMEOUT)
        self._say(f"every daemon connected to every other ({took:.1f}s)")

    def _write(self) -> None:
        duration = self.options.duration
        cut_for = min(MAX_CUT, duration / 3)
        cut_at, heal_at = duration / 3, duration / 3 + cut_for
        for name, db in self.dbs.items():
            self.writers[name] = Writer(db, rate=self.options.rate)
            self.writers[name].start()
        self._say(
            "a writer per region commits through crdtdb.open(): users, orders (nested fields,"
            " list appends, deletes), notes (concurrent text), a shared list"
        )
        began = time.monotonic()
        self.phase = "writing"
        while (now := time.monotonic() - began) < duration:
            if now >= cut_at and self.phase == "writing":
                self._cut(cut_for)
            elif now >= heal_at and self.phase.endswith("cut off"):
                self._heal()
            self._tick()
        if self.phase.endswith("cut off"):
            self._heal()  # ticks slowed by a loaded machine may end the writing first
        self._stop_writers()

    def _cut(self, seconds: float) -> None:
        name = self.cut_name
        pid = self.cluster.regions[name].process
        self.cluster.cut(name)
        self._say(
            f"{name} cut off for {seconds:.2g}s: its daemon (pid {pid.pid if pid else '?'})"
            f" stopped, so nothing reaches it or leaves it; its writer keeps writing locally"
        )
        self.phase = f"{name} cut off"

    def _heal(self) -> None:
        name = self.cut_name
        pid = self.cluster.heal(name)
        self._reconnect_from = time.monotonic()
        self._say(f"{name} healed: its daemon started again, pid {pid}")
        self.phase = f"writing ({name} healed)"

    def _tick(self) -> None:
        """Measure, show, watch for a reconnect and dead daemons; then wait for the next tick."""
        began = time.monotonic()
        self.signals.check()
        self.cluster.check_alive()
        self._watch_reconnect()
        self._refresh()
        time.sleep(max(0.0, TICK - (time.monotonic() - began)))

    def _watch_reconnect(self) -> None:
        if self._reconnect_from is None:
            return
        name = self.cut_name
        if self.cluster.connected_peers(name) >= set(self.names) - {name}:
            took = time.monotonic() - self._reconnect_from
            self._say(f"{name} reconnected to its peers {took:.1f}s after its daemon restarted")
            self._reconnect_from = None

    def _refresh(self, *, force: bool = False) -> None:
        self.rows = measure(self.dbs, self._writes(), self._daemons())
        if self.display is not None:
            self.display.update(time.monotonic() - self.started, self.phase, self.rows, force)

    def _writes(self) -> dict[str, int]:
        return {name: writer.counts.transactions for name, writer in self.writers.items()}

    def _daemons(self) -> dict[str, str]:
        states = {}
        for name, region in self.cluster.regions.items():
            if region.cut:
                states[name] = "CUT OFF"
            elif region.process is None:
                states[name] = "-"
            elif region.running:
                states[name] = f"pid {region.process.pid}"
            elif region.stopped:
                states[name] = "stopped"
            else:
                states[name] = f"exited {region.process.returncode}"
        return states

    def _stop_writers(self) -> None:
        for writer in self.writers.values():
            writer.stop()
        for writer in self.writers.values():
            writer.join(10.0)
        writes = self._writes()
        per_region = ", ".join(f"{name} {count}" for name, count in writes.items())
        self._say(f"writers stopped: {sum(writes.values())} transactions ({per_region})")
        failed = {n: w for n, w in self.writers.items() if w.errors}
        if failed:
            raise DemoError(
                "some writes failed: "
                + "; ".join(f"{n}: {w.errors} (last: {w.last_error})" for n, w in failed.items())
            )

    # ------------------------------------------------------------ convergence

    def _converge(self) -> float:
        """Wait until every region holds the same documents; the seconds it took."""
        self.phase = "writes stopped: converging"
        began = time.monotonic()
        while time.monotonic() - began < self.options.timeout:
            self._tick()
            if self._agree() and self._same_documents():
                took = time.monotonic() - began
                self.phase = "converged"
                self._refresh(force=True)
                return took
        raise DemoError(
            f"the regions did not converge within {self.options.timeout:g}s after the writes"
            f" stopped: {self._divergence()}"
        )

    def _agree(self) -> bool:
        return len({row.root for row in self.rows}) == 1 and not any(r.behind for r in self.rows)

    def _documents(self, name: str) -> dict[str, str]:
        db = self.dbs[name]
        ids = [doc_id for c in db.collections() for doc_id in db.list(c)]
        return {doc_id: json.dumps(db.get(doc_id), sort_keys=True) for doc_id in ids}

    def _same_documents(self) -> bool:
        first, *others = (self._documents(name) for name in self.names)
        return all(other == first for other in others)

    def _divergence(self) -> str:
        parts = [agreement(self.rows)]
        parts += [f"{row.region} lacks {row.behind} records" for row in self.rows if row.behind]
        first, *others = self.names
        docs = self._documents(first)
        for name in others:
            theirs = self._documents(name)
            differ = sorted(d for d in docs.keys() | theirs.keys() if docs.get(d) != theirs.get(d))
            if differ:
                parts.append(f"{first} and {name} differ in {len(differ)} documents ({differ[0]}…)")
        return "; ".join(parts)

    # ------------------------------------------------------------ the end

    def _stop_daemons(self) -> None:
        self.cluster.stop_all()
        pids = [pid for region in self.cluster.regions.values() for pid in region.pids]
        self._say(f"daemons stopped (pids {' '.join(map(str, pids))})")
        self._refresh()  # the table shows them stopped (plain lines need no repeat)

    def _close_display(self) -> None:
        if self.display is not None:
            self.display.close()
            self.display = None

    def _print_convergence(self, took: float) -> None:
        names = ", ".join(self.names)
        docs = self._documents(self.names[0])
        root = self.dbs[self.names[0]].merkle_root().hex()[:16]
        print(
            f"\nconverged {took:.1f}s after the writes stopped: every region ({names}) holds"
            f" the same {len(docs)} live documents, Merkle root {root}"
        )
        for doc_id in NOTES:
            body = json.loads(docs.get(doc_id, "null")) or {}
            text = str(body.get("body", ""))
            print(
                f"  {doc_id}: {len(text)} characters typed concurrently in {names},"
                " the same text in every region"
            )

    def _print_queries(self) -> None:
        connect = importlib.import_module("crdtdb.query").connect
        render = importlib.import_module("crdtdb.query.render")
        region = self.cluster.regions[self.cut_name]
        print(f"\nSQL (DuckDB, crdtdb.query) on {region.name}, the region that was cut off:")
        width = shutil.get_terminal_size((100, 24)).columns
        con = connect(region.data_dir)
        try:
            for title, sql in QUERIES:
                relation = con.sql(sql)
                rows = relation.fetchall()
                types = [str(t) for t in relation.types]
                result = render.Result(list(relation.columns), types, rows, len(rows))
                table = render.render(result, "table", width).rstrip()
                print(f"\n-- {title}\n{sql};\n{table}")
        finally:
            con.close()

    def _print_outro(self) -> None:
        if self.workspace.temporary:
            print(
                "\nThe cluster lived in a temporary directory, now removed;"
                " `crdtdb demo --keep DIR` keeps it to explore."
            )
            return
        first, second = self.names[0], self.names[1]
        root = self.root
        print(f"\nThe cluster is kept in {root}. Explore it:")
        for command, why in (
            (f"crdtdb sql {root / 'data' / first}", f"SQL over {first}'s store"),
            (f"crdtdb get {root / 'data' / second} {NOTES[0]}", "one document, as JSON"),
            (f"crdtdb serve --config {root / f'{first}.toml'} &", "start a region's daemon again"),
            (f"crdtdb status {root / f'{first}.toml'}", "its peers, lag and frontier"),
        ):
            print(f"  {command:<{max(60, len(command))}}  # {why}")

    def close(self) -> None:
        """Stop the writers and every daemon, close the stores and the display (always runs)."""
        for writer in self.writers.values():
            writer.stop()
        for writer in self.writers.values():
            writer.join(10.0)
        self.cluster.stop_all()
        for db in self.dbs.values():
            with contextlib.suppress(Exception):
                db.close()
        self._close_display()


# ------------------------------------------------------------ signals


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Signals:
    """The signals that asked the demo to end (Ctrl-C, SIGTERM, SIGHUP), in order."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def ending(self) -> BaseException | None:
        """How the first signal ends the demo: KeyboardInterrupt for Ctrl-C, else
        SystemExit(128 + signal); None while none came."""
        if not self.received:
            return None
        signum = self.received[0]
        return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)

    def check(self) -> None:
        """End the demo if a signal came whose exception something swallowed on its way."""
        ending = self.ending()
        if ending is not None:
            raise ending


@contextlib.contextmanager
def _signals_end_the_demo() -> Iterator[Signals]:
    """Ctrl-C, SIGTERM and SIGHUP end the demo (the daemons are stopped first), with the
    status of that signal, whatever else goes wrong on the way out.

    The handler raises in the main thread wherever it is: inside a callback that a
    library calls from C, the exception can come out as another one (as an SQLite
    function's did, see ``crdtdb.storage.take_interrupt``) or not at all. So each
    signal is also recorded: an error that ends the demo after one is the stop's
    doing, not a failure to report, and a swallowed one is raised at the next tick.
    """
    signals = Signals()
    if not _in_main_thread():
        yield signals
        return

    def end(signum: int, frame: FrameType | None) -> Any:
        signals.received.append(signum)
        signals.check()  # raises the first signal's ending

    previous = {s: signal.signal(s, end) for s in _SIGNALS}
    try:
        yield signals
        signals.check()  # the demo ended on its own, but a signal came on the way
    except BaseException as exc:
        ending = signals.ending()
        if ending is None or (type(exc) is type(ending) and _same_status(exc, ending)):
            raise
        raise ending from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _same_status(raised: BaseException, ending: BaseException) -> bool:
    return not isinstance(raised, SystemExit) or raised.code == getattr(ending, "code", None)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """No second Ctrl-C (or SIGTERM) may cut the clean-up short: daemons must be stopped."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
