"""``crdtdb demo`` end to end: real daemons started, cut off, healed and always stopped.

The cluster demo runs as a real ``python -m crdtdb demo`` process, kept short
(``--duration 3``), with its files under ``--keep`` so that the test knows the
directory every daemon's command line names: after the demo exits, no process
may still mention it. Its output is plain lines (stdout is a pipe here).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness.process import Child, python_env

pytestmark = pytest.mark.integration

TIMEOUT = 120.0
"""Seconds a whole demo run may take on a loaded CI machine (about 12 s when idle)."""


def demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "crdtdb", "demo", *args]


def processes_naming(text: str) -> list[str]:
    """Every live process whose command line contains ``text`` (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in argv:
            found.append(f"{entry.name}: {argv}")
    return found


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The demo's ``--keep`` directory; a daemon left running there (a failure) is killed."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("counts processes through /proc")
    yield tmp_path / "cluster"
    for leftover in processes_naming(str(tmp_path / "cluster")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(leftover.split(":")[0]), signal.SIGKILL)


def _documents_per_collection(stdout: str) -> dict[str, int]:
    section = stdout.split("-- documents per collection", 1)[1].split("\n-- ", 1)[0]
    return {name: int(n) for name, n in re.findall(r"│ (\w+)\s+│\s+(\d+) │", section)}


def test_demo_runs_a_cluster_that_converges_and_stops_it(root: Path) -> None:
    run = subprocess.run(
        demo("--duration", "3", "--rate", "10", "--keep", str(root)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=python_env(),
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr}"
    assert run.stderr == ""
    for expected in (
        "every daemon connected to every other",
        "ap cut off for 1s: its daemon",
        "ap healed: its daemon started again",
        "regions agree: yes",
        "daemons stopped",
    ):
        assert expected in out
    converged = re.search(r"converged [\d.]+s after the writes stopped: .* same (\d+) live", out)
    assert converged, out
    per_collection = _documents_per_collection(out)
    assert set(per_collection) == {"boards", "notes", "orders", "users"}
    assert sum(per_collection.values()) == int(converged[1])  # SQL counts what converged
    assert "same text in every region" in out
    pids = {int(p) for p in re.findall(r"pid (\d+)", out)}
    assert len(pids) == 4  # eu, us, ap, and ap again after the cut
    assert processes_naming(str(root)) == []
    assert {p.name for p in root.iterdir()} >= {"eu.toml", "certs", "data", "logs"}
    assert f"crdtdb sql {root / 'data' / 'eu'}" in out


@pytest.mark.parametrize(
    ("signum", "after", "status"),
    [
        (signal.SIGINT, "a writer per region commits", 130),
        (signal.SIGTERM, "cut off for", 128 + signal.SIGTERM),
    ],
    ids=["sigint-while-writing", "sigterm-while-cut-off"],
)
def test_an_interrupted_demo_stops_every_daemon_quietly(
    root: Path, signum: int, after: str, status: int
) -> None:
    with Child(demo("--duration", "60", "--keep", str(root)), name="crdtdb demo") as child:
        while after not in child.line(TIMEOUT):
            pass
        assert len(processes_naming(f"serve --config {root}")) >= 2
        child.signal(signum)
        assert child.wait(TIMEOUT) == status, child.stderr  # the demo's error line, if any
        assert child.stderr == ""  # no traceback, no message: a Ctrl-C is not an error
    assert processes_naming(str(root)) == []


@pytest.mark.parametrize("swallowed", ["as-another-error", "entirely"])
def test_a_signal_whose_exit_a_library_swallows_still_ends_the_demo_with_its_status(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    swallowed: str,
) -> None:
    """The SIGTERM handler raises SystemExit wherever the main thread is; inside a
    callback a library calls from C, that can come out as another error or not at all
    (as it did inside SQLite's). The demo must still end with 143 and say nothing."""
    from crdtdb.cli import main
    from crdtdb.sync import demo as cluster_demo
    from crdtdb.sync.demo_cluster import DemoError

    ticks_after = []

    def run(self: cluster_demo.ClusterDemo) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler raises within a few bytecodes
                time.sleep(0.05)
        except SystemExit:  # what a library callback does to it
            if swallowed == "as-another-error":
                raise DemoError("a write failed in SQLite") from None
        ticks_after.append(True)
        return 0

    monkeypatch.setattr(cluster_demo.ClusterDemo, "run", run)
    assert main(["demo", "--duration", "1", "--keep", str(root)]) == 143
    assert capsys.readouterr().err == ""
    assert ticks_after == ([True] if swallowed == "entirely" else [])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the demo's handler is gone


def test_a_demo_that_does_not_converge_in_time_exits_1_and_says_why(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from crdtdb.cli import main
    from crdtdb.sync import demo as cluster_demo

    monkeypatch.setattr(cluster_demo.ClusterDemo, "_same_documents", lambda self: False)
    args = ["--duration", "1", "--rate", "5", "--timeout", "1", "--keep", str(root)]
    assert main(["demo", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the regions did not converge within 1s after the writes")
    assert err.count("\n") == 1 and err.rstrip().endswith(f"files are kept in {root}")
    assert processes_naming(str(root)) == []


def test_embedded_walkthrough_converges(tmp_path: Path) -> None:
    run = subprocess.run(
        demo("--embedded", "--keep", str(tmp_path / "demo")),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "regions converged: True" in run.stdout
    assert '{"body": "Hello, world!"}' in run.stdout
    assert '"status": "shipped"' in run.stdout
