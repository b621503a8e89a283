"""Provenance of anti-entropy repairs and of refusals, against real stores, no network:
which records carry what a peer lacks (sync/resend.py), whose items a repair record
carries (crdtdb.chains), and a retired key's refusal kept as evidence."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import crdtdb
from crdtdb import membership
from crdtdb.records import REPAIR
from crdtdb.sync.metrics import Metrics
from crdtdb.sync.resend import Ranges, _cut
from crdtdb.sync.signing import RetiredKeyError
from crdtdb.sync.status import evidence_line

from .test_signing_retired import CLOCK, opened, started
from .test_signing_store import relay

spans = st.lists(
    st.tuples(st.integers(0, 12), st.integers(1, 4)).map(lambda p: (p[0], p[0] + p[1])),
    max_size=5,
)
ranges = st.dictionaries(st.integers(1, 3), spans, max_size=3)


def clocks(r: Ranges) -> set[tuple[int, int]]:
    return {(c, clock) for c, found in r.items() for a, b in found for clock in range(a, b)}


@given(ranges, ranges)
@example({1: [(5, 7)]}, {1: [(3, 5)]})  # touching, not overlapping
@example({1: [(3, 5)]}, {1: [(5, 7)]})
@example({1: [(3, 7)]}, {1: [(3, 5)]})  # a common start: nothing left before it
def test_cutting_a_records_ranges_out_of_what_is_missing_leaves_the_rest(
    missing: Ranges, carried: Ranges
) -> None:
    before = clocks(missing)
    left = {client: list(found) for client, found in missing.items()}
    hit = _cut(left, carried)
    assert clocks(left) == before - clocks(carried)
    assert hit == bool(before & clocks(carried))
    # no empty span left behind: "nothing missing" is read as no spans at all
    assert all(start < end for found in left.values() for start, end in found)


def test_a_repair_record_says_whose_items_it_carries(tmp_path: Path) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
        crdtdb.open(tmp_path / "ap", region="ap") as ap,
    ):
        eu.put("d/1", {"eu": 1})
        ap.put("d/1", {"ap": 1})
        for record in eu.changes():
            us.apply_remote(record)  # binds eu's client id at us
        assert us.apply_diff("d/1", ap.diff("d/1", us.state_vector("d/1"))) is not None
        (repair,) = [r for r in us.records_from("us", 0) if r.kind == REPAIR]
        found = us.chains.carried(repair.update)
        assert found.carries == () and found.unbound == 1  # ap's client id: not bound here
        for record in ap.changes():
            us.apply_remote(record)  # ap's own record binds it: the answer gains it
        assert us.chains.carried(repair.update).carries == ("ap",)
        # a diff of both regions' items, into a region that had neither
        assert ap.apply_diff("d/1", eu.diff("d/1", ap.state_vector("d/1"))) is not None
        for record in eu.changes():
            ap.apply_remote(record)
        both = [r for r in ap.records_from("ap", 0) if r.kind == REPAIR]
        assert [ap.chains.carried(r.update).carries for r in both] == [("eu",)]
        us_twice = us.diff("d/1")  # carries eu's and ap's items (us has both)
        assert us.chains.carried(us_twice).carries == ("ap", "eu")


def test_a_retired_keys_refusal_is_kept_as_evidence_and_counted(
    tmp_path: Path, certs: Path
) -> None:
    now = [CLOCK]
    with (
        opened(tmp_path, "eu", now) as eu_db,
        opened(tmp_path, "us", now) as us_db,
    ):
        eu, us = started(eu_db, certs), started(us_db, certs)
        eu_db.put("d/final", {"v": 1})
        eu.seal_own()
        assert relay(eu, us, "eu") == 1
        now[0] += 1000
        membership.remove(us_db, "eu")
        now[0] += 1000
        eu_db.put("d/after", {"v": 2})  # eu goes on, not knowing it was removed
        eu.seal_own()
        ((seal, run),) = eu.runs_from("eu", 1, 10)
        for _ in range(2):
            with pytest.raises(RetiredKeyError):
                us.check(run, [seal], "ap")
        (conflict,) = us_db.chains.conflicts()
        assert (conflict.origin, conflict.seq, conflict.kind, conflict.peer) == (
            "eu",
            2,
            "retired_key",
            "ap",
        )
        assert conflict.refused == 2 and conflict.seal is not None
        provenance = us_db.info()["provenance"]
        assert provenance["conflicts"] == {"retired_key": 1}
        assert provenance["equivocating_origins"] == []  # a stolen key is not eu's doing

    metrics = Metrics()
    metrics.evidence(provenance["conflicts"], provenance["equivocating_origins"])
    value = metrics.registry.get_sample_value
    assert value("crdtdb_record_conflicts", {"kind": "retired_key"}) == 1
    assert evidence_line(provenance) == (
        "record evidence: retired_key 1 (kept in the store's conflicts table)"
    )
