"""`crdtdb log --follow` tails the log; `crdtdb compact` shows no progress off a terminal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import crdtdb

from .harness.process import Child

TIMEOUT = 30.0


@pytest.mark.integration
def test_log_follow_prints_what_was_there_then_each_new_record(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        db.put("users/a", {"v": 1})
        argv = [sys.executable, "-m", "crdtdb", "log", str(store), "--follow"]
        with Child(argv, stop_signal=signal.SIGINT) as follower:
            first = json.loads(follower.line(TIMEOUT))
            assert (first["doc_id"], first["seq"]) == ("users/a", 1)
            db.put("users/b", {"v": 2})  # another process commits: the follower hears it
            second = json.loads(follower.line(TIMEOUT))
            assert (second["doc_id"], second["seq"]) == ("users/b", 2)
            db.put("users/c", {"v": 3})
            assert json.loads(follower.line(TIMEOUT))["doc_id"] == "users/c"
            follower.signal(signal.SIGINT)
            assert follower.wait(TIMEOUT) == 130  # Ctrl-C ends it quietly
            assert "Traceback" not in follower.stderr


@pytest.mark.integration
def test_compact_prints_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    with crdtdb.open(store, region="eu") as db:
        for i in range(30):
            db.put(f"users/{i}", {"v": i})
    done = subprocess.run(
        [sys.executable, "-m", "crdtdb", "compact", str(store), "--retention", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no bar, no per-batch lines: scripts get only the result
    assert "records_removed" in json.loads(done.stdout)
