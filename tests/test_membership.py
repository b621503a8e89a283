"""The cluster's membership as a CRDT document, and the frontier rule built on it.

Stores exchange records and frontier reports by hand here (no daemon): what
the daemon does over QUIC, minus the network. The daemon's own behaviour
(admission, refusals, dialling) is in ``test_membership_cluster.py``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import crdtdb
from crdtdb import Hlc, membership
from crdtdb.errors import RegionLeavingError, ReservedCollectionError, UsageError


def send(a: crdtdb.Database, b: crdtdb.Database) -> None:
    """Everything ``a`` holds that ``b`` lacks, then ``a``'s frontier report, to ``b``."""
    held = b.progress()
    for origin in a.progress():
        after = held.get(origin, (0, 0, Hlc(0)))[1]
        records = a.records_from(origin, after, 100_000)
        if records:
            b.apply_remote_many(records)
    entries = [(o, s, int(h)) for o, s, h in a.frontier_entries()]
    b.note_frontier(entries, [(r, int(h)) for r, h in a.frontier_clocks()])


def exchange(dbs: list[crdtdb.Database], rounds: int = 3) -> None:
    for _ in range(rounds):
        for a in dbs:
            for b in dbs:
                if a is not b:
                    send(a, b)


def members_json(db: crdtdb.Database) -> str:
    found = membership.read(db)
    return json.dumps(found.to_json() if found else None, sort_keys=True)


def as_of_all(db: crdtdb.Database, cut: Hlc, ids: list[str]) -> dict[str, Any]:
    view = db.as_of(cut)
    return {doc_id: view.get(doc_id) for doc_id in ids}


@pytest.fixture
def three(tmp_path: Path) -> Iterator[dict[str, crdtdb.Database]]:
    dbs = {r: crdtdb.open(tmp_path / r, region=r) for r in ("ap", "eu", "us")}
    yield dbs
    for db in dbs.values():
        db.close()


def _found(db: crdtdb.Database) -> membership.Membership:
    found = membership.read(db)
    assert found is not None
    return found


# ------------------------------------------------------------------ reserved


def test_the_membership_collection_is_reserved(tmp_path: Path) -> None:
    db = crdtdb.open(tmp_path / "eu", region="eu")
    with pytest.raises(ReservedCollectionError, match="crdtdb cluster add/remove"):
        db.put("_cluster/members", {"us": {"active@eu": {"hlc": "1"}}})
    with pytest.raises(ReservedCollectionError), db.transaction() as tx:
        tx.map("_cluster/members", "us")["removed@eu"] = {"hlc": "1"}
    assert membership.read(db) is None  # nothing of it was stored
    membership.ensure(db, "eu", "active", address="127.0.0.1:7401")
    db.put("users/alice", {"name": "Alice"})
    assert db.collections() == ["users"]  # not listed as user data...
    assert db.list("_cluster") == ["_cluster/members"]  # ...unless asked by name
    assert _found(db).state("eu") == "active"
    with pytest.raises(UsageError, match="does not remove itself"):
        membership.remove(db, "eu")


# ------------------------------------------------------------------ the CRDT


def test_state_only_moves_forward_and_removed_wins(tmp_path: Path) -> None:
    db = crdtdb.open(tmp_path / "eu", region="eu")
    membership.add(db, "af", address="127.0.0.1:9")
    assert _found(db).state("af") == "joining"
    membership.ensure(db, "af", "active")
    membership.ensure(db, "af", "joining")  # backwards: nothing changes
    assert _found(db).state("af") == "active"
    membership.remove(db, "af")
    assert not membership.ensure(db, "af", "active")  # removed wins: never re-added
    assert _found(db).state("af") == "removed"
    with pytest.raises(UsageError, match="cannot come back under that name"):
        membership.add(db, "af")


def test_concurrent_add_and_remove_converge_to_removed(three: dict[str, crdtdb.Database]) -> None:
    eu, us = three["eu"], three["us"]
    for db in (eu, us):
        membership.ensure(db, "eu", "active")
        membership.ensure(db, "us", "active")
    exchange([eu, us])
    # At once, not knowing of each other: us removes af, eu (later by the clock) adds it.
    membership.remove(us, "af")
    membership.add(eu, "af", address="127.0.0.1:9")
    membership.ensure(eu, "af", "active")
    exchange([eu, us])
    assert _found(eu).state("af") == _found(us).state("af") == "removed"
    assert members_json(eu) == members_json(us)
    assert eu.merkle_root() == us.merkle_root()


def test_a_new_certificate_retires_the_old_one(tmp_path: Path) -> None:
    us = crdtdb.open(tmp_path / "us", region="us")
    eu = crdtdb.open(tmp_path / "eu", region="eu")
    membership.ensure(us, "us", "active", fingerprint="aa" * 32)
    exchange([us, eu])
    assert _found(eu).retired_fingerprint("aa" * 32) is None
    membership.record_fingerprint(us, "bb" * 32)  # us restarts with a new key and certificate
    exchange([us, eu])
    found = _found(eu)
    assert found.members["us"].fingerprint == "bb" * 32
    assert found.retired_fingerprint("aa" * 32) == "us"
    assert found.retired_fingerprint("bb" * 32) is None
    # Only a region records its own certificate: eu cannot make the old one current again.
    with pytest.raises(UsageError, match="only its own"):
        membership.ensure(eu, "us", "active", fingerprint="aa" * 32)
    with eu.transaction(_reserved=True) as tx:
        tx.map(membership.MEMBERS_DOC, "us")["cert:" + "cc" * 32] = {"hlc": "9" * 18, "by": "eu"}
    assert _found(eu).members["us"].fingerprint == "bb" * 32


# ------------------------------------------------------------------ the frontier


def test_without_membership_every_region_heard_of_holds_the_frontier(
    three: dict[str, crdtdb.Database],
) -> None:
    """Embedded-only stores keep the old rule: a region that reported once counts."""
    eu, us = three["eu"], three["us"]
    us.put("docs/a", {"v": 1})
    exchange([eu, us])
    stuck = eu.frontier()
    eu.note_frontier([("af", 0, 5)], [("af", 5)])  # af reported once, long ago
    eu.heartbeat()
    us.heartbeat()
    exchange([eu, us])
    assert eu.frontier() == Hlc(5) < stuck


def test_a_region_that_is_not_a_member_does_not_hold_the_frontier(
    three: dict[str, crdtdb.Database],
) -> None:
    eu, us = three["eu"], three["us"]
    for db in (eu, us):
        membership.ensure(db, "eu", "active")
        membership.ensure(db, "us", "active")
    written = us.put("docs/a", {"v": 1})
    eu.note_frontier([("af", 0, 5)], [("af", 5)])  # af connected once, then left
    for db in (eu, us):
        db.heartbeat()
    exchange([eu, us])
    assert eu.frontier() >= written
    assert eu.frontier() == us.frontier()


def test_a_named_member_holds_the_frontier_before_it_reports(
    three: dict[str, crdtdb.Database],
) -> None:
    eu, us = three["eu"], three["us"]
    for db in (eu, us):
        membership.ensure(db, "eu", "active")
        membership.ensure(db, "us", "active")
    exchange([eu, us])
    assert eu.frontier() > Hlc(0)
    membership.add(eu, "af")
    exchange([eu, us])
    assert eu.frontier() == us.frontier() == Hlc(0)  # af holds nothing we know of yet


def test_removal_keeps_as_of_frontier_the_same_everywhere(
    three: dict[str, crdtdb.Database],
) -> None:
    """ap writes, then goes away holding records only us has; eu removes it."""
    ap, eu, us = three["ap"], three["eu"], three["us"]
    dbs = [ap, eu, us]
    for db in dbs:
        for region in ("ap", "eu", "us"):
            membership.ensure(db, region, "active")
    ap.put("docs/a", {"v": 1})
    exchange(dbs)
    ap.put("docs/a", {"v": 2})
    ap.put("docs/b", {"v": 3})
    send(ap, us)  # us got ap's last records; eu did not, and ap is gone for good
    eu.heartbeat()
    us.heartbeat()
    exchange([eu, us])
    before = min(eu.frontier(), us.frontier())
    ids = ["docs/a", "docs/b"]
    answer = as_of_all(eu, before, ids)
    assert as_of_all(us, before, ids) == answer
    membership.remove(us, "ap")  # us holds all of ap's records: they are final
    final = _found(us).members["ap"].final_seq
    assert final == ap.progress()["ap"][1]
    eu.heartbeat()
    us.heartbeat()
    exchange([eu, us])
    assert eu.get("docs/b") == {"v": 3}
    after = min(eu.frontier(), us.frontier())
    assert after > ap.hlc  # the frontier moved past ap's last clock without it
    assert (
        as_of_all(eu, after, ids)
        == as_of_all(us, after, ids)
        == {
            "docs/a": {"v": 2},
            "docs/b": {"v": 3},
        }
    )
    assert as_of_all(eu, before, ids) == as_of_all(us, before, ids) == answer  # unchanged


def test_removed_region_waited_for_until_its_final_records_arrive(
    three: dict[str, crdtdb.Database],
) -> None:
    ap, eu, us = three["ap"], three["eu"], three["us"]
    for db in (ap, eu, us):
        for region in ("ap", "eu", "us"):
            membership.ensure(db, region, "active")
    exchange([ap, eu, us])
    late = ap.put("docs/late", {"v": 1})
    send(ap, us)
    membership.remove(us, "ap")
    # eu learns of the removal, but not yet of ap's last record
    held = eu.progress()
    for origin in us.progress():
        if origin != "ap":
            after = held.get(origin, (0, 0, Hlc(0)))[1]
            eu.apply_remote_many(us.records_from(origin, after, 1000))
    assert _found(eu).state("ap") == "removed"
    for db in (eu, us):
        db.heartbeat()
    for _ in range(2):  # and the frontier reports, both ways
        for a, b in ((us, eu), (eu, us)):
            entries = [(o, s, int(h)) for o, s, h in a.frontier_entries()]
            b.note_frontier(entries, [(r, int(h)) for r, h in a.frontier_clocks()])
    assert us.frontier() < late  # us hears eu is not there yet
    assert eu.frontier() < late  # eu lacks ap's final record: it still waits
    exchange([eu, us])
    assert eu.frontier() > late


# ------------------------------------------------------------------ leaving


def test_a_write_after_another_handle_made_the_region_leave_is_refused(
    tmp_path: Path,
) -> None:
    """The commit path keeps the membership's answer; another connection's commit
    (another process, or the ``crdtdb cluster leave`` command) makes it read again."""
    app = crdtdb.open(tmp_path / "eu", region="eu")
    try:
        membership.ensure(app, "eu", "active")
        app.put("docs/a", {"n": 1})  # the answer "it takes writes" is kept from here
        with crdtdb.open(tmp_path / "eu") as operator:
            membership.leave(operator)
        with pytest.raises(RegionLeavingError, match="region eu is leaving the cluster"):
            app.put("docs/b", {"n": 2})
        assert app.get("docs/b") is None
    finally:
        app.close()


def test_a_write_after_a_peer_removed_the_region_is_refused(
    three: dict[str, crdtdb.Database],
) -> None:
    eu, us = three["eu"], three["us"]
    for db in (eu, us):
        for region in three:
            membership.ensure(db, region, "active")
    exchange([eu, us])
    eu.put("docs/a", {"n": 1})  # eu's commit path now holds "takes writes"
    membership.remove(us, "eu")
    send(us, eu)  # the removal arrives as a remote record
    with pytest.raises(RegionLeavingError, match="region eu was removed from the cluster"):
        eu.put("docs/b", {"n": 2})


def test_a_leaving_region_refuses_writes_and_names_its_last_record(
    three: dict[str, crdtdb.Database],
) -> None:
    eu, us = three["eu"], three["us"]
    for db in three.values():
        for region in three:
            membership.ensure(db, region, "active")
    for i in range(3):
        eu.put(f"docs/eu-{i}", {"n": i})
    member = membership.leave(eu)
    last = eu.progress()["eu"][1]
    assert member.state == "leaving" and member.drain_seq == last  # the leave record itself
    with pytest.raises(RegionLeavingError, match="region eu is leaving the cluster") as refused:
        eu.put("docs/late", {"n": 9})
    assert refused.value.code == "region_leaving" and "write through another region" in str(
        refused.value
    )
    assert eu.get("docs/late") is None and eu.progress()["eu"][1] == last  # nothing stored
    assert membership.leave(eu).drain_seq == last  # leaving twice changes nothing
    with pytest.raises(UsageError, match="is made one of"):
        membership.ensure(eu, "eu", "leaving")
    us.put("docs/us", {"n": 1})  # the others write on
    # us heard of the leave: it waits for eu's records, and may remove it once it holds them.
    send(eu, us)
    view = _found(us)
    assert view.state("eu") == "leaving" and "eu" in view.waited()
    assert membership.drained(view, {"eu": last - 1}) == []
    assert membership.drained(view, {"eu": last}) == ["eu"]
    removed = membership.remove(us, "eu")
    assert removed.state == "removed" and removed.final_seq == last


def test_a_removed_region_refuses_local_writes(three: dict[str, crdtdb.Database]) -> None:
    eu, us = three["eu"], three["us"]
    for db in (eu, us):
        membership.ensure(db, "eu", "active")
        membership.ensure(db, "us", "active")
    membership.remove(us, "eu")
    send(us, eu)  # eu hears of its removal
    with pytest.raises(RegionLeavingError, match="region eu was removed from the cluster"):
        eu.put("docs/late", {"n": 1})


# ------------------------------------------------------------------ property


REGIONS = ("ap", "eu", "us")
CANDIDATES = ("af", "ap", "eu", "us")


class MembershipMachine(RuleBasedStateMachine):
    """Random membership changes, writes and partial deliveries among three stores; after
    everyone hears everything, every store holds the same membership and frontier, and
    as_of(frontier) answers the same everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.dbs: dict[str, crdtdb.Database] = {}
        self.docs: set[str] = set()
        self.writes = 0

    @initialize(tmp=st.just(None))
    def open_stores(self, tmp: None) -> None:
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        root = Path(self._dir.name)
        self.dbs = {r: crdtdb.open(root / r, region=r) for r in REGIONS}
        for db in self.dbs.values():
            for region in REGIONS:
                membership.ensure(db, region, "active")

    @rule(at=st.sampled_from(REGIONS), region=st.sampled_from(CANDIDATES))
    def add(self, at: str, region: str) -> None:
        with contextlib.suppress(UsageError):  # removed: refused, as it should be
            membership.add(self.dbs[at], region)

    @rule(at=st.sampled_from(REGIONS), region=st.sampled_from(CANDIDATES))
    def remove(self, at: str, region: str) -> None:
        if at != region:
            membership.remove(self.dbs[at], region)

    @rule(at=st.sampled_from(REGIONS))
    def leave(self, at: str) -> None:
        with contextlib.suppress(UsageError):  # already removed: refused, as it should be
            membership.leave(self.dbs[at])
        assert _found(self.dbs[at]).state(at) in ("leaving", "removed")

    @rule(at=st.sampled_from(REGIONS))
    def drain(self, at: str) -> None:
        """What a daemon does: remove the leaving regions it holds every record of."""
        db = self.dbs[at]
        held = {origin: entry[1] for origin, entry in db.progress().items()}
        for region in membership.drained(_found(db), held):
            if region != at:
                drain_seq = _found(db).members[region].drain_seq
                assert drain_seq is not None
                assert membership.remove(db, region).final_seq >= drain_seq

    @rule(at=st.sampled_from(REGIONS), key=st.integers(0, 3), value=st.integers(0, 9))
    def write(self, at: str, key: int, value: int) -> None:
        doc_id = f"docs/{key}"
        state = _found(self.dbs[at]).state(at)
        self.writes += 1  # never the value the field holds: an update that changes nothing
        try:  # commits nothing, so it has nothing to refuse
            self.dbs[at].update(doc_id, {at: value + 10 * self.writes})
        except RegionLeavingError:
            assert state in ("leaving", "removed")  # refused only once it left
            return
        assert state not in ("leaving", "removed")
        self.docs.add(doc_id)

    @rule(a=st.sampled_from(REGIONS), b=st.sampled_from(REGIONS))
    def deliver(self, a: str, b: str) -> None:
        if a != b:
            send(self.dbs[a], self.dbs[b])

    @precondition(lambda self: bool(self.dbs))
    @invariant()
    def membership_is_readable(self) -> None:
        for db in self.dbs.values():
            found = membership.read(db)
            assert found is not None
            for member in found.members.values():
                assert member.state in (*membership.STATES, None)

    def teardown(self) -> None:
        if self.dbs:
            try:
                self._check_final()
            finally:
                for db in self.dbs.values():
                    db.close()
                self._dir.cleanup()

    def _check_final(self) -> None:
        exchange([self.dbs[r] for r in REGIONS], rounds=2)  # everyone hears everything
        views = {members_json(db) for db in self.dbs.values()}
        assert len(views) == 1, views
        # Whatever a region that left wrote is held by every region still a member.
        view = _found(self.dbs[REGIONS[0]])
        for region, member in view.members.items():
            if member.drain_seq is not None:
                for db in self.dbs.values():
                    if view.state(db.region) != "removed":
                        assert db.progress()[region][1] >= member.drain_seq
        # Only regions still members go on: a removed one is refused from then on.
        live = [r for r in REGIONS if _found(self.dbs[r]).state(r) != "removed"]
        dbs = [self.dbs[r] for r in live]
        if not dbs:
            return
        for db in dbs:
            db.heartbeat()
        exchange(dbs, rounds=3)
        frontiers = {db.frontier() for db in dbs}
        assert len(frontiers) == 1, frontiers
        cut = frontiers.pop()
        ids = sorted(self.docs)
        answers = [as_of_all(db, cut, ids) for db in dbs]
        assert all(a == answers[0] for a in answers), answers


TestMembershipMachine = MembershipMachine.TestCase
TestMembershipMachine.settings = settings(
    max_examples=20,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_membership_is_not_in_the_query_views_unless_named(tmp_path: Path) -> None:
    from crdtdb import query

    db = crdtdb.open(tmp_path / "eu", region="eu")
    membership.ensure(db, "eu", "active", address="127.0.0.1:7401")
    db.put("users/alice", {"name": "Alice"})
    con = query.connect(db)
    assert con.execute("SELECT collection, count(*) FROM docs GROUP BY 1").fetchall() == [
        ("users", 1)
    ]
    main_views = {
        row[0]
        for row in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal"
        ).fetchall()
    }
    assert "_cluster" not in main_views and "users" in main_views
    named = con.execute('SELECT id FROM collections."_cluster"').fetchall()
    assert named == [("_cluster/members",)]
    con.close()
    db.close()


def test_records_of_a_region_the_membership_does_not_name_hold_the_frontier(
    tmp_path: Path, three: dict[str, crdtdb.Database]
) -> None:
    """Say sa's addition has not reached us yet, but some of its records have (by relay):
    until the membership names it (or removes it), the frontier waits for it."""
    eu, us = three["eu"], three["us"]
    sa = crdtdb.open(tmp_path / "sa", region="sa")
    for db in (eu, us):
        membership.ensure(db, "eu", "active")
        membership.ensure(db, "us", "active")
    sa.put("docs/first", {"v": 1})
    sa.put("docs/second", {"v": 2})
    eu.apply_remote_many(sa.records_from("sa", 1, 10))  # the second only: a gap before it
    for db in (eu, us):
        db.heartbeat()
    exchange([eu, us])
    assert eu.frontier() == us.frontier() == Hlc(0)
    membership.remove(eu, "sa")  # gone for good: what eu holds of it (nothing contiguous)
    for db in (eu, us):
        db.heartbeat()
    exchange([eu, us])
    assert eu.frontier() > Hlc(0) and eu.frontier() == us.frontier()
    sa.close()
