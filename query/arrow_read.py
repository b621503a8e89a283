"""A first build's bulk reads, in child processes that fill Arrow from SQLite in C.

Reading a store through Python's ``sqlite3`` turns every row into Python
objects before Arrow: about 8 µs a document, most of a first build. The ADBC
SQLite driver (an Apache Arrow project) fills Arrow columns in C, about four
times faster. It links its own copy of SQLite, though, and two copies of
SQLite in one process release each other's POSIX locks on a shared file (it
failed with "disk I/O error" beside this process's ``sqlite3``). So it runs
in child processes (``_arrow_child.py``, a script that loads nothing of
crdtdb): one reads the documents, one the log, on two cores at once, each
into an Arrow IPC file. The documents come through a pipe instead, as the
child reads them: a first build writes each collection's Parquet file from
the batches as they arrive (:mod:`.stream_build`), so reading SQLite and
writing Parquet overlap on the two cores instead of taking turns.

Each child checks that its read transaction sees the snapshot's cut: the
documents and their bodies change only with the log, so the same newest log
id and compaction epoch mean the same rows. If not (a commit landed between),
or the driver is missing, or a child fails, the refresh reads that table
through the snapshot as before.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

from crdtdb.snapshot import Snapshot
from crdtdb.storage import STORE_FILE

__all__ = ["CHILD_READ_MIN", "ChildReaders", "child_readers"]

CHILD_READ_MIN = 100_000
"""Documents from which a build reads through child processes (below, starting them
costs more than it saves)."""
TIMEOUT_S = 3600.0
PIPED = ("documents",)
"""The tables whose child writes to a pipe (the others to a file)."""
_SCRIPT = Path(__file__).resolve().parent / "_arrow_child.py"


class ChildReaders:
    """The two child processes of one build, and the files they write."""

    def __init__(self, store: Path, snap: Snapshot, after: int, folder: Path) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix=".read-", dir=folder))
        self._children = {
            table: self._start(store, snap, table, after) for table in ("documents", "log")
        }

    def _start(
        self, store: Path, snap: Snapshot, table: str, after: int
    ) -> subprocess.Popen[bytes]:
        cut = (str(after), str(snap.position), str(snap.compaction_epoch))
        piped = table in PIPED
        out = "-" if piped else str(self._folder / f"{table}.arrow")
        return subprocess.Popen(
            [sys.executable, str(_SCRIPT), str(store / STORE_FILE), table, *cut, out],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stream(self, name: str) -> pa.RecordBatchReader | None:
        """The batches of a piped child as it reads them, or None if it wrote none. Whether
        they were all of them, only :meth:`succeeded` says, once they are read."""
        pipe = self._children[name].stdout
        if pipe is None:
            return None
        try:
            return pa.ipc.open_stream(pipe)
        except (pa.ArrowInvalid, OSError):
            return None

    def succeeded(self, name: str) -> bool:
        """Whether the child read its whole table at the snapshot's cut (exit status 0)."""
        child = self._children[name]
        try:
            return child.wait(TIMEOUT_S) == 0
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return False

    def abandon(self, name: str) -> None:
        """Stop a child whose output will not be read (it may be blocked on a full pipe)."""
        child = self._children[name]
        if child.poll() is None:
            child.kill()
        child.wait()

    def table(self, name: str) -> pa.Table | None:
        """What the child read, or None if it could not (then read another way)."""
        if name in PIPED:
            stream = self.stream(name)
            table = stream.read_all() if stream is not None else None
            return table if self.succeeded(name) else None
        if not self.succeeded(name):
            return None
        with pa.memory_map(str(self._folder / f"{name}.arrow")) as source:
            return pa.ipc.open_stream(source).read_all()

    def close(self) -> None:
        for child in self._children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def child_readers(store: Path, snap: Snapshot, after: int, folder: Path) -> ChildReaders | None:
    """Start the readers, or None where the driver is not installed.

    Only looked for here, never imported: this process must not load its SQLite.
    """
    if importlib.util.find_spec("adbc_driver_sqlite") is None:
        return None
    return ChildReaders(store, snap, after, folder)
