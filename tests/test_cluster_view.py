"""The daemon's membership decisions (:class:`crdtdb.sync.cluster.ClusterView`), offline."""

from __future__ import annotations

from pathlib import Path

import pytest

import crdtdb
from crdtdb import Hlc, membership
from crdtdb.fence import ClockFence
from crdtdb.sync.cluster import ClusterView
from crdtdb.sync.config import PeerConfig
from crdtdb.sync.errors import RemoteProtocolError

from .harness.config import region_config


def view(tmp_path: Path, db: crdtdb.Database, **options: float) -> ClusterView:
    config = region_config(tmp_path, tmp_path / "certs", db.region, [], **options)
    return ClusterView(db, config, "ee" * 32)


def test_a_fenced_store_records_the_region_once_the_fence_lifts(tmp_path: Path) -> None:
    db = crdtdb.open(tmp_path / "eu", region="eu")
    now = db.options.clock()
    db.set_clock_fence(ClockFence(message="clock ahead", ahead_ms=9000, expires_ms=now + 60_000))
    cluster = view(tmp_path, db)
    cluster.start(7401)  # refused by the fence: the daemon starts anyway
    assert membership.read(db) is None
    db.set_clock_fence(None)
    cluster.retry_start()
    found = membership.read(db)
    assert found is not None and found.state("eu") == "active"
    assert found.members["eu"].address == "127.0.0.1:7401"
    assert found.members["eu"].fingerprint == "ee" * 32


def test_admission_refuses_non_members_removed_regions_and_retired_certificates(
    tmp_path: Path,
) -> None:
    db = crdtdb.open(tmp_path / "eu", region="eu")
    config = region_config(
        tmp_path, tmp_path / "certs", "eu", [PeerConfig("us", "127.0.0.1", 7402)]
    )
    cluster = ClusterView(db, config, "ee" * 32)
    cluster.start(7401)
    assert cluster.admit("us", None).state is None  # a configured peer: a member
    with pytest.raises(RemoteProtocolError, match="crdtdb cluster add DIR af") as refused:
        cluster.admit("af", None)
    assert refused.value.code == "not_a_member"
    assert cluster.admit("af", None, dialing=True).state is None  # we chose to dial it
    membership.remove(db, "us")
    with pytest.raises(RemoteProtocolError, match="was removed") as refused:
        cluster.admit("us", None, dialing=True)
    assert refused.value.code == "removed"
    assert "us" not in cluster.dial_targets()
    # eu's own old certificate, once a newer one is recorded, is refused everywhere.
    membership.record_fingerprint(db, "ff" * 32)
    cluster.refresh()
    auto = view(tmp_path, db, auto_join=True)
    auto.refresh()
    assert auto.admit("af", None).state == "joining"
    assert auto.view is not None and auto.view.retired_fingerprint("ee" * 32) == "eu"


def test_status_lists_the_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import os
    import time

    from crdtdb.sync.status import show_status

    status = {
        "region": "eu",
        "state": "running",
        "listen": "127.0.0.1:7401",
        "pid": os.getpid(),
        "time": time.time(),
        "hlc": "x",
        "frontier": "y",
        "peers": [],
        "members": [
            {"region": "af", "state": "removed", "address": None, "frontier_hlc": None},
            {
                "region": "eu",
                "state": "active",
                "address": "127.0.0.1:7401",
                "frontier_hlc": int(Hlc.from_parts(int((time.time() - 2.5) * 1000))),
            },
            {"region": "sa", "state": "joining", "address": "10.0.0.9:7401"},
        ],
    }
    (tmp_path / "sync-status.json").write_text(json.dumps(status))
    assert show_status(str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("members:")
    af, eu, sa = (line.split() for line in lines[at + 1 : at + 4])
    assert af == ["af", "removed", "-", "frontier", "clock", "never"]
    assert eu[:5] == ["eu", "active", "127.0.0.1:7401", "frontier", "clock"]
    assert 2.4 <= float(eu[5].rstrip("s")) < 60 and eu[6:] == ["ago"]
    assert sa == ["sa", "joining", "10.0.0.9:7401", "frontier", "clock", "never"]
