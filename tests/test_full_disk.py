"""A full disk: a typed error with what to do, nothing acknowledged lost, writes resume.

The store lives on a real, small file system (a 3 MiB tmpfs mounted for the
test), filled by the store's own writes after a filler file of ours took
most of it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crdtdb
from crdtdb.errors import StoreFullError
from crdtdb.storage import STORE_FILE

pytestmark = pytest.mark.integration


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs of our own (mounting needs root: CI runs as root)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"this machine does not let tests mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(db: crdtdb.Database, limit: int = 2_000) -> tuple[list[str], StoreFullError]:
    """Write documents until the disk is full; the acknowledged ids and the refusal."""
    acknowledged: list[str] = []
    for i in range(limit):
        doc_id = f"docs/{i}"
        try:
            db.put(doc_id, {"i": i, "pad": os.urandom(8_000).hex()})
        except StoreFullError as exc:
            return acknowledged, exc
        acknowledged.append(doc_id)
    raise AssertionError(f"{limit} writes of 16 KB fitted in a 3 MiB file system")


def test_a_full_disk_refuses_with_a_typed_error_and_loses_nothing(small_fs: Path) -> None:
    store = small_fs / "eu"
    filler = small_fs / "filler-made-by-the-test"
    with crdtdb.open(store, region="eu") as db:
        filler.write_bytes(b"\0" * (2 * 1024 * 1024))
        acknowledged, refusal = _fill(db)
        assert acknowledged, "the first writes fitted"
        message = str(refusal)
        assert "disk is full" in message and "Free space" in message, message
        assert str(store) in message
        refused = f"docs/{len(acknowledged)}"
        assert db.get(refused) is None  # nothing of the refused write was stored

        big = '{"pad": "' + "x" * 64_000 + '"}'  # as large as what the disk refused
        cli = subprocess.run(
            [sys.executable, "-m", "crdtdb", "put", str(store), "docs/cli", big],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 1, cli
        assert "Traceback" not in cli.stderr
        lines = [line for line in cli.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "disk is full" in lines[0]

        filler.unlink()  # space again: the same open store writes at once
        db.put(refused, {"after": True})
        assert db.get(refused) == {"after": True}

    with crdtdb.open(store) as reopened:
        for doc_id in acknowledged:
            assert reopened.get(doc_id) is not None, doc_id
        assert reopened.get(refused) == {"after": True}
    with contextlib.closing(sqlite3.connect(store / STORE_FILE)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_daemon_on_a_full_disk_resumes_by_itself_once_space_is_freed(
    small_fs: Path, tmp_path: Path
) -> None:
    """us's store fills up while eu streams to it; once space is freed, every record of
    eu's arrives without a restart."""
    from .harness.daemon import start_daemon
    from .harness.ports import free_ports
    from .harness.wait import wait_until

    eu_port, us_port = free_ports(2)
    eu_dir, us_dir, eu_config, us_config = _pair(tmp_path, small_fs, eu_port, us_port, 1.0)
    filler = small_fs / "filler-made-by-the-test"
    with (
        start_daemon(eu_config, log=tmp_path / "eu.log") as eu_daemon,
        start_daemon(us_config, log=tmp_path / "us.log") as us_daemon,
    ):
        with crdtdb.open(eu_dir, region="eu") as eu:
            eu.put("docs/first", {"i": -1})
            wait_until(lambda: "docs/first" in _held(us_dir), timeout=60)
            _leave_little(filler)
            written = []
            for i in range(60):  # about 1 MB: far more than is left on us's disk
                eu.put(f"docs/{i}", {"i": i, "pad": os.urandom(8_000).hex()})
                written.append(f"docs/{i}")
            wait_until(lambda: "disk is full" in (tmp_path / "us.log").read_text(), timeout=30)
            assert not set(written) <= _held(us_dir), "the disk was meant to be full"
            filler.unlink()
            wait_until(lambda: set(written) <= _held(us_dir), timeout=90)
        assert eu_daemon.running and us_daemon.running  # neither was restarted


def test_a_full_disk_episode_is_logged_once_and_counted_as_our_own_fault(
    small_fs: Path, tmp_path: Path
) -> None:
    """us's disk refuses eu's records over several sessions: one WARNING as it starts, one
    INFO once it is over; counted in crdtdb_store_write_failures_total, never as a refusal
    of the peer (crdtdb_refused_total)."""
    from .harness.daemon import start_daemon
    from .harness.ports import free_ports
    from .harness.wait import wait_until
    from .test_ops_daemon import healthz, scrape

    eu_port, us_port, us_metrics = free_ports(3)
    eu_dir, us_dir, eu_config, us_config = _pair(tmp_path, small_fs, eu_port, us_port, 0.5)
    with us_config.open("a") as config:
        config.write(f'[metrics]\nlisten = "127.0.0.1:{us_metrics}"\n')
    us_log = tmp_path / "us.log"

    def failures() -> float:
        key = ("crdtdb_store_write_failures_total", frozenset({("reason", "store_full")}))
        return scrape(us_metrics).get(key, 0.0)

    filler = small_fs / "filler-made-by-the-test"
    with (
        start_daemon(eu_config, log=tmp_path / "eu.log"),
        start_daemon(us_config, log=us_log),
        crdtdb.open(eu_dir, region="eu") as eu,
    ):
        eu.put("docs/first", {"i": -1})
        wait_until(lambda: "docs/first" in _held(us_dir), timeout=60)
        _leave_little(filler)
        written = [f"docs/{i}" for i in range(60)]
        for i, doc_id in enumerate(written):  # about 1 MB: far more than is left
            eu.put(doc_id, {"i": i, "pad": os.urandom(8_000).hex()})
        wait_until(lambda: failures() >= 3, timeout=60)  # three sessions refused, at least
        status = us_dir / "sync-status.json"  # rewritten every second, unless the disk refuses
        wait_until(lambda: time.time() - status.stat().st_mtime > 3.5, timeout=60)
        code, reason = healthz(us_metrics)
        assert code == 503 and "disk is full" in reason, reason
        filler.unlink()
        wait_until(lambda: set(written) <= _held(us_dir), timeout=90)
        wait_until(lambda: "writable again" in us_log.read_text(), timeout=30)
        assert healthz(us_metrics) == (200, "ok\n")
        samples = scrape(us_metrics)
    lines = us_log.read_text().splitlines()
    warned = [line for line in lines if "cannot write to the store" in line]
    assert len(warned) == 1 and " WARNING " in warned[0] and "disk is full" in warned[0], warned
    recovered = [line for line in lines if "writable again" in line]
    assert len(recovered) == 1 and " INFO " in recovered[0], recovered
    assert not [line for line in lines if "closed: store_full" in line]  # DEBUG, not per session
    for other in ("WAL checkpoint failed", "sync-status.json"):  # once a second, they were
        assert len([line for line in lines if other in line]) <= 1, lines
    refusals = {
        dict(labels)["reason"]
        for (name, labels), _ in samples.items()
        if name == "crdtdb_refused_total"
    }
    assert not {"store_full", "store"} & refusals, refusals


def _held(store: Path) -> set[str]:
    """The ids of the documents ``store`` holds (empty while it cannot be read)."""
    if not (store / STORE_FILE).exists():
        return set()
    try:
        with crdtdb.open(store) as db:
            return set(db.list("docs"))
    except crdtdb.CrdtdbError:  # a reader on a full disk may be refused too
        return set()


def _pair(
    tmp_path: Path, small_fs: Path, eu_port: int, us_port: int, reconnect_max: float
) -> tuple[Path, Path, Path, Path]:
    """eu (on the ordinary disk) and us (on ``small_fs``), each the other's peer: their
    data directories and configs."""
    from .harness.config import make_certs, write_region_config

    certs = make_certs(tmp_path / "certs", ["eu", "us"])
    dirs = {"eu": tmp_path / "data" / "eu", "us": small_fs / "us"}
    ports = {"eu": eu_port, "us": us_port}
    quick = {"heartbeat_interval": 0.2, "anti_entropy_interval": 1.0}
    configs = {
        region: write_region_config(
            tmp_path / f"{region}.toml",
            region=region,
            data_dir=dirs[region],
            port=ports[region],
            certs=certs,
            peers={other: f"127.0.0.1:{ports[other]}"},
            sync={**quick, "reconnect_max": reconnect_max},
        )
        for region, other in (("eu", "us"), ("us", "eu"))
    }
    return dirs["eu"], dirs["us"], configs["eu"], configs["us"]


def _leave_little(filler: Path) -> None:
    """Take all but about 150 KB of the file system ``filler`` is on."""
    stat = os.statvfs(filler.parent)
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 150_000))
