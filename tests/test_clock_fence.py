"""The clock fence's decision logic (pure), its store check, status and metrics.

The decision (:mod:`crdtdb.sync.clockwatch`) is fed samples by hand with the
times passed in; the store check runs against a real SQLite store, with the
fence set by one ``Database`` and a write refused in another process that
opened the same directory (as an application beside its daemon does).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import crdtdb
from crdtdb.errors import ClockSkewError
from crdtdb.fence import FENCE_KEY, ClockFence, decode_fence, encode_fence
from crdtdb.hlc import Hlc, observe
from crdtdb.sync.clockwatch import ClockWatch, majority_value, parse_refusal
from crdtdb.sync.metrics import Metrics
from crdtdb.sync.status import _table, clock_text, show_status

from .harness.process import Child, program
from .hlc_strategies import BASE_MS, PROPERTY

OFFSET = 500
SLACK = 2100
WALL = BASE_MS


def watch() -> ClockWatch:
    return ClockWatch(max_offset_ms=OFFSET, slack_ms=SLACK, window_s=30.0)


def at(wall_ms: int, logical: int = 0) -> Hlc:
    return Hlc.from_parts(wall_ms, logical)


# ------------------------------------------------------------- the majority


@PROPERTY
@given(st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=9))
def test_majority_value_is_the_greatest_value_a_strict_majority_reaches(values: list[int]) -> None:
    value = majority_value(values)
    assert value is not None
    assert sum(v >= value for v in values) * 2 > len(values)
    above = [v for v in values if v > value]
    for candidate in above:
        assert sum(v >= candidate for v in values) * 2 <= len(values)


def test_no_peer_heard_is_no_evidence() -> None:
    assert majority_value([]) is None
    verdict = watch().decide(stored=at(WALL), wall_ms=WALL, now=0.0)
    assert not verdict.fenced and verdict.peers == {}


# ---------------------------------------------------------- which direction


def test_two_regions_the_one_whose_clock_runs_ahead_is_fenced_not_the_other() -> None:
    skew = 300_000
    ahead, behind = watch(), watch()
    # ahead's wall reads WALL + skew; behind's HLC (>= its wall) reads about WALL
    ahead.note_gossip("b", at(WALL), WALL + skew, now=1.0)
    behind.note_gossip("a", at(WALL + skew), WALL, now=1.0)
    verdict = ahead.decide(stored=at(WALL + skew), wall_ms=WALL + skew, now=1.0)
    assert verdict.fenced and verdict.reason == "peers"
    assert skew - SLACK <= verdict.ahead_ms <= skew
    assert "ahead of most of its peers (b: 1 of 1" in verdict.message
    assert "max_clock_offset_ms=500" in verdict.message
    other = behind.decide(stored=at(WALL), wall_ms=WALL, now=1.0)
    assert not other.fenced, "a peer's HLC ahead proves nothing against our clock"
    assert other.behind_ms == skew  # but it is reported


def test_three_regions_one_wrong_clock_fences_only_that_one() -> None:
    skew = 60_000
    wrong = watch()
    wrong.note_gossip("eu", at(WALL), WALL + skew, now=1.0)
    wrong.note_gossip("us", at(WALL + 3), WALL + skew, now=1.0)
    assert wrong.decide(stored=at(WALL + skew), wall_ms=WALL + skew, now=1.0).fenced
    for good in (watch(), watch()):  # eu and us each hear the other right and ap ahead
        good.note_gossip("other", at(WALL), WALL, now=1.0)
        good.note_gossip("ap", at(WALL + skew), WALL, now=1.0)
        verdict = good.decide(stored=at(WALL), wall_ms=WALL, now=1.0)
        assert not verdict.fenced and verdict.behind_ms == 0  # one of two is not most
    # and a region that is itself behind the other two is reported, never fenced
    slow = watch()
    slow.note_gossip("eu", at(WALL + skew), WALL, now=1.0)
    slow.note_gossip("us", at(WALL + skew), WALL, now=1.0)
    verdict = slow.decide(stored=at(WALL), wall_ms=WALL, now=1.0)
    assert not verdict.fenced and verdict.behind_ms == skew


def test_one_peer_of_three_seeing_us_ahead_is_not_a_majority() -> None:
    w = watch()
    w.note_gossip("a", at(WALL - 100_000), WALL, now=1.0)
    w.note_gossip("b", at(WALL), WALL, now=1.0)
    w.note_gossip("c", at(WALL), WALL, now=1.0)
    assert not w.decide(stored=at(WALL), wall_ms=WALL, now=1.0).fenced
    w.note_gossip("b", at(WALL - 100_000), WALL, now=2.0)
    assert w.decide(stored=at(WALL), wall_ms=WALL, now=2.0).fenced


def test_a_gossiped_hlc_may_be_a_heartbeat_or_two_stale_a_refusal_is_exact() -> None:
    w = watch()
    # 2 s behind us by its HLC: it may just have not ticked yet, so no proof
    w.note_gossip("p", at(WALL - 2_000), WALL, now=1.0)
    assert not w.decide(stored=at(WALL), wall_ms=WALL, now=1.0).fenced
    # p refused our record: its wall read exactly 600 ms below the record's HLC
    refusal = refusal_text(record=at(WALL), refuser_wall=WALL - 600)
    hlc, ahead = parse_refusal(refusal) or (Hlc(0), 0)
    w.note_refusal("p", hlc, ahead, WALL, now=1.5)
    verdict = w.decide(stored=at(WALL), wall_ms=WALL, now=1.5)
    assert verdict.fenced and verdict.ahead_ms == 600
    assert verdict.peers["p"].source == "refusal" and verdict.peers["p"].offset_ms == -600


def refusal_text(*, record: Hlc, refuser_wall: int) -> str:
    """What a peer that refuses ``record`` at wall time ``refuser_wall`` says (its real error)."""
    with pytest.raises(ClockSkewError) as refused:
        observe(at(refuser_wall), record, refuser_wall, OFFSET)
    return f"peer closed: clock_skew: {refused.value}"


def test_parse_refusal_reads_what_observe_says() -> None:
    text = refusal_text(record=at(WALL + 9_000, 3), refuser_wall=WALL)
    assert parse_refusal(text) == (at(WALL + 9_000, 3), 9_000)
    assert parse_refusal("peer closed: clock_skew: something else") is None


# --------------------------------------------------------------- hysteresis


def test_the_fence_lifts_at_half_the_offset_and_when_samples_age_out() -> None:
    w = watch()

    def lead(ms: int, now: float) -> bool:
        w.note_refusal("p", at(WALL), ms, WALL, now)  # the peer's wall read WALL - ms
        return w.decide(stored=at(WALL), wall_ms=WALL, now=now).fenced

    assert not lead(OFFSET, 1.0)  # at the offset: still accepted by the peer
    assert lead(OFFSET + 1, 2.0)
    assert lead(OFFSET // 2 + 1, 3.0), "a clock hovering below the limit must not flap"
    assert not lead(OFFSET // 2, 4.0)
    assert not lead(OFFSET // 2 + 1, 5.0)  # and it takes more than the offset to fence again
    assert lead(OFFSET + 1, 6.0)
    assert not w.decide(stored=at(WALL), wall_ms=WALL, now=6.0 + 31.0).fenced  # aged out


@PROPERTY
@given(
    st.lists(st.integers(-5_000, 5_000), min_size=1, max_size=7),
    st.integers(-5_000, 5_000),
)
def test_fenced_exactly_when_most_peers_refusals_put_us_beyond_the_offset(
    offsets: list[int], stored_ahead: int
) -> None:
    w = watch()
    for i, offset in enumerate(offsets):  # peer i's wall minus ours, as its refusal says:
        w.note_refusal(f"p{i}", at(WALL), -offset, WALL, now=1.0)  # its wall read WALL + offset
    leads = [-o for o in offsets]
    by_peers = sum(lead > OFFSET for lead in leads) * 2 > len(leads)
    verdict = w.decide(stored=at(WALL + stored_ahead), wall_ms=WALL, now=1.0)
    assert verdict.fenced == (by_peers or stored_ahead > OFFSET)
    if verdict.fenced and not by_peers:
        assert verdict.reason == "stored" and verdict.lift_ms == WALL + stored_ahead - OFFSET
    assert set(verdict.peers) == {f"p{i}" for i in range(len(offsets))}


# --------------------------------------------------------- the stored HLC


def test_a_stored_hlc_ahead_of_the_wall_clock_fences_until_the_wall_catches_up() -> None:
    w = watch()
    stored = at(WALL + 254_000, 7)
    verdict = w.decide(stored=stored, wall_ms=WALL, now=1.0)
    assert verdict.fenced and verdict.reason == "stored"
    assert verdict.ahead_ms == 254_000 and verdict.lift_ms == WALL + 254_000 - OFFSET
    assert str(at(WALL + 254_000 - OFFSET)) in verdict.message
    later = w.decide(stored=stored, wall_ms=WALL + 254_000 - OFFSET, now=2.0)
    assert not later.fenced


# ------------------------------------------------------------ the store check


def test_fence_round_trips_and_garbage_reads_as_none() -> None:
    fence = ClockFence(message="m", ahead_ms=5, expires_ms=10, lift_ms=3)
    assert decode_fence(encode_fence(fence)) == fence
    for garbage in (None, 3, "", "{", "[]", '{"message": "m"}'):
        assert decode_fence(garbage) is None


def test_a_fence_refuses_local_commits_of_every_process_until_lifted(tmp_path: Path) -> None:
    daemon = crdtdb.open(tmp_path / "eu", region="eu")
    daemon.put("c/before", {"v": 1})
    fence = ClockFence(
        message="this region's clock is 300.0 s ahead of most of its peers",
        ahead_ms=300_000,
        expires_ms=int(time.time() * 1000) + 60_000,
    )
    daemon.set_clock_fence(fence)
    writer = Child(
        program("clock_writer.py", str(tmp_path / "eu"), "eu", "w", "--interval", "0.01")
    )
    try:
        first = writer.message(60.0)
        assert first["ev"] == "refused" and first["code"] == "clock_skew", first
        assert "300.0 s ahead of most of its peers" in first["message"]
        assert "nothing was stored" in first["message"]
        seq = daemon.progress()["eu"][0]
        daemon.set_clock_fence(None)
        while (message := writer.message(60.0))["ev"] == "refused":
            pass
        assert message["ev"] == "ack"
        acked = message["doc"]
    finally:
        writer.close_stdin()
        writer.messages_until_exit(30.0)
    assert daemon.get(first["doc"]) is None
    assert daemon.get(acked) is not None
    assert seq == 1, "a refused write took a sequence number"


def test_a_fence_expires_by_itself_and_refuses_only_local_writes(tmp_path: Path) -> None:
    now = [WALL]
    db = crdtdb.open(tmp_path / "eu", region="eu", clock=lambda: now[0])
    db.set_clock_fence(ClockFence(message="off", ahead_ms=1, expires_ms=WALL + 10_000))
    assert db.clock_fence() is not None
    with (
        pytest.raises(ClockSkewError, match="refused local write: off"),
        db.transaction() as tx,
    ):
        tx.put("c/a", {"v": 1})
        tx.put("c/b", {"v": 2})
    assert db.get("c/a") is None and db.get("c/b") is None and "eu" not in db.progress()
    db.heartbeat()  # the daemon's own clock keeps moving
    other = crdtdb.open(tmp_path / "us", region="us", clock=lambda: now[0])
    other.put("c/remote", {"v": 3})
    assert db.apply_remote_many(other.records_from("us", 0)) == 1  # replication goes on
    other.put("c/repaired", {"v": 4})  # and so do anti-entropy repairs
    assert db.apply_diff("c/repaired", other.diff("c/repaired")) is not None
    assert db.get("c/repaired") == {"v": 4}
    now[0] = WALL + 10_000  # the daemon died and did not refresh it
    db.put("c/a", {"v": 1})
    assert db.get("c/a") == {"v": 1}
    raw = db._engine.meta(FENCE_KEY)  # the row stays until a daemon lifts it
    assert json.loads(raw)["expires_ms"] == WALL + 10_000


def test_a_fence_with_a_known_end_says_when(tmp_path: Path) -> None:
    now = [WALL]
    db = crdtdb.open(tmp_path / "eu", region="eu", clock=lambda: now[0])
    db.set_clock_fence(
        ClockFence(
            message="stored HLC ahead", ahead_ms=1, expires_ms=WALL + 9_000, lift_ms=WALL + 42_000
        )
    )
    with pytest.raises(ClockSkewError, match=r"stored HLC ahead \(in 42 s\)") as refused:
        db.put("c/a", {"v": 1})
    assert refused.value.code == "clock_skew"


# ------------------------------------------------------- status and metrics


def test_status_never_shows_a_negative_age_and_says_the_clock_looks_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ahead = time.time() + 299.6
    status = {
        "region": "ap",
        "state": "running",
        "listen": "127.0.0.1:1",
        "pid": os.getpid(),
        "time": ahead,
        "hlc": "x",
        "frontier": "y",
        "peers": [
            {
                "region": "eu",
                "connected": True,
                "last_contact": ahead,
                "bytes_in": 0,
                "bytes_out": 0,
                "rounds": 0,
                "repairs": 0,
            },
        ],
        "clock": {
            "fenced": True,
            "message": "this region's clock is 299.6 s ahead of most of its peers",
            "peers": {"eu": {"offset_ms": -299_600, "source": "gossip"}},
        },
    }
    (tmp_path / "sync-status.json").write_text(json.dumps(status))
    assert show_status(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "-" not in out.split("\n")[0], out
    assert "reported 0.0s ago (stamped 299.6s ahead of this host's clock" in out
    assert "last contact 0.0s ago (stamped" in out
    assert "clock FENCED, local writes refused: this region's clock is 299.6 s ahead" in out
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(_table(tmp_path / "sync-status.json"))  # what --watch draws
    table = console.export_text()
    assert "clock FENCED, local writes refused" in table and "0.0s (clock off?)" in table
    assert "-" not in table.split("\n")[0], table


def test_clock_text_reports_agreement_and_a_clock_behind() -> None:
    peers = {"eu": {"offset_ms": 120, "source": "gossip"}}
    assert clock_text(None) is None
    assert clock_text({"fenced": False, "behind_ms": 0, "peers": peers}) == (
        "clock agrees with the peers (peers' clocks minus ours: eu +0.1s)"
    )
    behind = clock_text({"fenced": False, "behind_ms": 4_000, "peers": peers})
    assert behind is not None and behind.startswith("clock looks 4.0s BEHIND most peers")


def test_metrics_show_the_fence_and_each_peers_offset() -> None:
    metrics = Metrics()
    metrics.clock(True, {"eu": -300.0, "us": -299.5})
    value = metrics.registry.get_sample_value
    assert value("crdtdb_clock_fenced") == 1
    assert value("crdtdb_clock_offset_seconds", {"peer": "eu"}) == -300.0
    metrics.clock(False, {"eu": 0.1})
    assert value("crdtdb_clock_fenced") == 0
    assert value("crdtdb_clock_offset_seconds", {"peer": "eu"}) == 0.1
