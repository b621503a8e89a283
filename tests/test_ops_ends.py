"""Operator-facing loose ends: documents nested too deeply to read, Ctrl-C at start.

Writes through crdtdb stop at 100 levels, but a document can arrive deeper (a
peer's writer, pycrdt used directly). Applying it must work (a refusal would
stall replication for good) and reading it must give a typed error: never a
RecursionError from deep inside.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

import crdtdb
from crdtdb import cli
from crdtdb.errors import DocumentTooDeepError, InvalidValueError
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord

from .harness.wait import wait_until


def deep_records(tmp_path: Path, levels: int) -> list[UpdateRecord]:
    """Two records of region us for ``users/deep``: a put, then an update made with pycrdt
    directly that nests ``levels`` maps under the field ``v``."""
    with crdtdb.open(tmp_path / "us", region="us") as us:
        us.put("users/deep", {"v": 1, "name": "deep"})
        (first,) = us.changes()
    doc: Doc[Any] = Doc(client_id=secrets.randbits(53))
    doc.apply_update(first.update)
    state = doc.get_state()
    level: Map[Any] = doc.get("data", type=Map)
    for _ in range(levels):  # one map at a time: no recursion on our side either
        inner: Map[Any] = Map()
        level["v"] = inner
        level = inner
    level["v"] = 1
    update = doc.get_update(state)
    return [first, UpdateRecord("users/deep", Hlc(first.hlc + 1), "us", first.seq + 1, update)]


@pytest.mark.parametrize("levels", [1000, 5000])  # 1000 failed applying, 5000 reading
def test_a_document_arriving_too_deep_is_stored_and_refused_typed_on_read(
    db: crdtdb.Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: int
) -> None:
    db.put("users/plain", {"a": 1})
    for record in deep_records(tmp_path, levels):
        assert db.apply_remote(record)  # once a RecursionError, and replication stalled

    def in_transaction() -> object:
        with db.transaction() as tx:
            return tx.get("users/deep")

    for read in (
        lambda: db.get("users/deep"),
        lambda: db.as_of(db.hlc).get("users/deep"),
        in_transaction,
    ):
        with pytest.raises(DocumentTooDeepError, match="nests too deeply") as caught:
            read()
        assert "\n" not in str(caught.value) and isinstance(caught.value, crdtdb.CrdtdbError)
    assert db.list("users") == ["users/deep", "users/plain"]
    assert db.get("users/plain") == {"a": 1}

    db.close()
    code = cli.main(["get", str(db.path), "users/deep"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert "levels" in err and "Traceback" not in err

    with crdtdb.open(db.path) as again:  # what the message says to do works
        with again.transaction() as tx:
            del tx.doc("users/deep")["v"]
        assert again.get("users/deep") == {"name": "deep"}


def test_live_views_count_the_levels_above_them(db: crdtdb.Database) -> None:
    """Nesting through live views once bypassed the 100-level limit of writes: each
    assignment counted from 0 again, so a loop of them built any depth."""
    value: Any = {}
    for _ in range(98):
        value = {"v": value}
    db.put("users/a", {"v": value})  # levels 1 to 99 (the innermost map is empty)
    with db.transaction() as tx:
        inner = tx.doc("users/a")
        for _ in range(99):
            inner = inner["v"]
        inner["v"] = {}  # level 100: allowed, as in a put
        with pytest.raises(InvalidValueError, match="more than 100 levels"):
            inner["w"] = {"deeper": {}}
        inner["list"] = []
        with pytest.raises(InvalidValueError, match="more than 100 levels"):
            inner["list"].append([])  # the list is level 100: nothing more inside
        inner["list"].append(1)
    depth, doc = 0, db.get("users/a")
    while isinstance(doc, dict) and "v" in doc:
        depth, doc = depth + 1, doc["v"]
    assert depth == 100 and doc == {}


@pytest.mark.parametrize("levels", [190, 500])  # 500: parsed, but too deep for its shape
def test_a_document_deeper_than_writes_allow_but_within_reach_applies_and_reads(
    db: crdtdb.Database, tmp_path: Path, levels: int
) -> None:
    for record in deep_records(tmp_path, levels):
        assert db.apply_remote(record)  # 500 once raised RecursionError (its body's shape)
    value: Any = db.get("users/deep")
    for _ in range(levels):
        value = value["v"]
    assert value == {"v": 1}


@pytest.mark.integration
def test_the_query_layer_reads_a_too_deep_document_as_nulls(
    db: crdtdb.Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from crdtdb import query

    db.put("users/plain", {"name": "plain"})
    for record in deep_records(tmp_path, 1000):
        db.apply_remote(record)
    with caplog.at_level(logging.WARNING, logger="crdtdb"):
        con = query.connect(db)
    rows = con.sql("SELECT id, name FROM users ORDER BY id").fetchall()
    assert rows == [("users/deep", None), ("users/plain", "plain")]
    warned = [r.getMessage() for r in caplog.records]
    assert any("users/deep" in line and "levels" in line for line in warned), warned


@pytest.mark.integration
def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT in the middle of importing crdtdb, found without a hook of ours: Python's
    import-time report (PYTHONPROFILEIMPORTTIME) names each module as it finishes
    loading, so the first crdtdb module's line means the package is still loading."""
    command = Path(sys.executable).with_name("crdtdb")  # the console script pip made
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    child = subprocess.Popen(
        [str(command), "get", str(tmp_path / "none"), "users/a"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stderr is not None
        loaded: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = child.stderr.readline()
            assert line, f"the command ended before loading crdtdb: {loaded[-5:]}"
            loaded.append(line)
            if line.rstrip().endswith(" crdtdb.errors"):  # one of the first of the package
                break
        child.send_signal(signal.SIGINT)
        rest = child.stderr.read()
        code = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "no crdtdb store" not in rest, "the signal came after the command ran"
    assert code == 130, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest


@pytest.mark.integration
def test_with_json_logs_an_error_that_stops_serve_is_a_json_line(tmp_path: Path) -> None:
    bad = tmp_path / "eu.toml"
    bad.write_text('region = "eu"\nbogus =\n')

    def serve(*options: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "crdtdb", "serve", "--config", str(bad), *options]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    plain = serve()
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "TOML" in plain.stderr
    as_json = serve("--log-format", "json")
    assert as_json.returncode == 2, as_json
    (line,) = as_json.stderr.splitlines()  # one line, and no plain `error:` after it
    record = json.loads(line)
    assert record["level"] == "error" and record["event"] == "fatal", record
    assert record["code"] == "config" and "TOML" in record["message"], record
    usage = serve("--log-format", "json", "--no-such-option")  # before logging is set up
    assert usage.returncode == 2 and usage.stderr.startswith("error: "), usage


_PROGRESS = re.compile(
    r"us: catching up from eu: holds (\d+) of the (\d+) records it reported, (\d+) behind"
)
_CAUGHT_UP = re.compile(r"us: caught up with eu: holds the (\d+) records it reported")


@pytest.mark.integration
def test_a_region_catching_up_a_backlog_logs_its_progress_with_counts(tmp_path: Path) -> None:
    """us starts after eu wrote a backlog: it logs progress lines with counts while it
    catches up, then one line when it has caught up."""
    from .cluster import Cluster

    backlog = 6_000
    with Cluster(tmp_path, ["eu", "us"]) as cluster:
        eu = cluster.db("eu")
        for start in range(0, backlog, 500):
            with eu.transaction() as tx:
                for i in range(start, start + 500):
                    tx.put(f"docs/{i}", {"i": i})
        cluster.close_db("eu")
        cluster.start()
        cluster.wait_converged(timeout=120)
        wait_until(lambda: _CAUGHT_UP.search(cluster.regions["us"].log.read_text()), timeout=30)
        log = cluster.regions["us"].log.read_text()
    progress = [(int(a), int(b), int(c)) for a, b, c in _PROGRESS.findall(log)]
    assert progress, log[-2000:]
    held, reported, behind = progress[0]
    assert 0 <= held < reported and behind > 0 and backlog <= reported, progress
    assert all(h + b == r for h, r, b in progress), progress  # what it has plus what it lacks
    assert all(b <= backlog for _, _, b in progress), progress
    (done,) = _CAUGHT_UP.findall(log)
    assert int(done) >= backlog, done
