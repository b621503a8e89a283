"""Seals by keys the membership retired, against real stores (sync/provenance.py over
crdtdb.membership), no network: a rotated certificate's key and a removed region's keys
vouch only for records stamped before the rotation or removal."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crdtdb
from crdtdb import membership
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.certs import issue
from crdtdb.sync.provenance import Provenance, key_limits, refuse_retired
from crdtdb.sync.signing import RetiredKeyError, Signer

from .test_signing_store import relay, signer

CLOCK = 1_800_000_001_000


def opened(path: Path, region: str, now: list[int]) -> crdtdb.Database:
    return crdtdb.open(path / region, region=region, clock=lambda: now[0])


def started(db: crdtdb.Database, certs: Path, key: Signer | None = None) -> Provenance:
    made = Provenance(
        db, (certs / "ca.pem").read_bytes(), key or signer(certs, db.region), lambda: 1
    )
    made.start()
    return made


def test_a_rotated_key_seals_nothing_stamped_after_the_rotation(
    tmp_path: Path, certs: Path
) -> None:
    now = [CLOCK]
    old = signer(certs, "eu")
    issue(certs, "eu", force=True)  # eu's next certificate and key
    new = signer(certs, "eu")
    with (
        opened(tmp_path, "eu", now) as eu_db,
        opened(tmp_path, "us", now) as us_db,
    ):
        eu_old = started(eu_db, certs, old)
        membership.ensure(eu_db, "eu", "active", fingerprint=old.fingerprint.hex())
        eu_db.put("d/before", {"v": 1})
        eu_old.seal_own()
        before = len(eu_db.records_from("eu", 0))
        now[0] += 1000
        eu = started(eu_db, certs, new)  # eu restarts with its new certificate
        membership.record_fingerprint(eu_db, new.fingerprint.hex())
        eu.seal_own()
        us = started(us_db, certs)
        assert relay(eu, us, "eu") == before + 1
        view = membership.read(us_db)
        assert view is not None and view.members["eu"].retired == {old.fingerprint.hex()}
        rotated_at = view.members["eu"].fingerprints[-1][1]

        now[0] += 1000
        eu_db.put("d/after", {"v": 2})  # stamped after the rotation; a thief seals it
        stolen = eu_db.records_from("eu", before + 1)
        assert [r.seq for r in stolen] == [before + 2] and stolen[0].hlc > rotated_at
        base = us_db.chains.hash_at("eu", before + 1)
        assert base is not None
        _, forged = old.seal(base, stolen)
        us.note_certificates([old.certificate])
        with pytest.raises(RetiredKeyError, match="retired at HLC") as refused:
            us.check(stolen, [forged], "ap")
        assert refused.value.code == "retired_key"
        assert us_db.get("d/after") is None and us_db.records_from("eu", before + 1) == []
        eu.seal_own()  # the same record sealed by the current key goes through
        assert relay(eu, us, "eu", after=before + 1) == 1
        assert us_db.get("d/after") == {"v": 2}

        # What the old key sealed before the rotation still verifies, relayed later (to a
        # region that knows of the rotation: us, again, from ap).
        (first, run), *_ = eu.runs_from("eu", 0, 10)
        assert first.key == old.fingerprint and first.last == before
        records, _ = us.check(run, [first], "ap")
        assert [r.seq for r in records] == list(range(1, before + 1))


def test_a_removed_regions_key_seals_nothing_stamped_after_the_removal(
    tmp_path: Path, certs: Path
) -> None:
    now = [CLOCK]
    with (
        opened(tmp_path, "eu", now) as eu_db,
        opened(tmp_path, "us", now) as us_db,
        opened(tmp_path, "ap", now) as ap_db,
    ):
        eu, us, ap = started(eu_db, certs), started(us_db, certs), started(ap_db, certs)
        eu_db.put("d/final", {"v": 1})
        eu.seal_own()
        assert relay(eu, us, "eu") == 1
        now[0] += 1000
        eu_db.put("d/unsent", {"v": 2})  # eu#2: stamped before the removal, us lacks it
        eu.seal_own()
        now[0] += 1000
        removed = membership.remove(us_db, "eu")
        assert removed.final_seq == 1 and removed.since is not None
        us.seal_own()
        now[0] += 1000
        eu_db.put("d/after", {"v": 3})  # eu#3: eu goes on, not knowing it was removed
        eu.seal_own()

        (unsent, run2), (after, run3) = eu.runs_from("eu", 1, 10)
        assert [r.seq for r in run3] == [3] and run3[0].hlc > removed.since.hlc
        with pytest.raises(RetiredKeyError, match="retired at HLC") as refused:
            us.check(run3, [after], "eu")
        assert refused.value.code == "retired_key"
        assert us_db.get("d/after") is None and us_db.records_from("eu", 2) == []
        records, rows = us.check(run2, [unsent], "eu")  # sealed before the removal: taken
        assert us_db.apply_remote_many(records, rows) == 1

        # A region that learnt of the removal takes eu's records from before it, relayed.
        relay(us, ap, "us")
        assert membership.read(ap_db).state("eu") == "removed"  # type: ignore[union-attr]
        assert relay(us, ap, "eu") == 2
        assert ap_db.get("d/final") == {"v": 1} and ap_db.get("d/unsent") == {"v": 2}
        with pytest.raises(RetiredKeyError):
            relay(eu, ap, "eu", after=2)
        assert ap_db.get("d/after") is None

        # A store that took such records before it knew stops relaying them once it does:
        # its peers would refuse them and close the session each time.
        assert [seal.last for seal, _ in eu.runs_from("eu", 0, 10)] == [1, 2, 3]
        relay(us, eu, "us")  # eu learns of its own removal
        assert [seal.last for seal, _ in eu.runs_from("eu", 0, 10)] == [1, 2]


def test_the_final_records_of_a_region_removed_twice_stay_accepted(
    tmp_path: Path, certs: Path
) -> None:
    """ap removes eu first, holding none of it; us removes it later, holding eu#1..2, eu#2
    stamped between the two removals. eu#1..2 are final (the highest final_seq), so a region
    that knows both removals takes eu#2 though it is stamped after the first one."""
    now = [CLOCK]
    issue(certs, "sa")
    with (
        opened(tmp_path, "eu", now) as eu_db,
        opened(tmp_path, "us", now) as us_db,
        opened(tmp_path, "ap", now) as ap_db,
        opened(tmp_path, "sa", now) as sa_db,
    ):
        eu, us, ap = started(eu_db, certs), started(us_db, certs), started(ap_db, certs)
        sa = started(sa_db, certs)
        eu_db.put("d/1", {"v": 1})
        eu.seal_own()
        now[0] += 1000
        first = membership.remove(ap_db, "eu")
        ap.seal_own()
        now[0] += 1000
        eu_db.put("d/2", {"v": 2})
        eu.seal_own()
        assert relay(eu, us, "eu") == 2
        now[0] += 1000
        assert membership.remove(us_db, "eu").final_seq == 2
        us.seal_own()

        relay(ap, sa, "ap")
        relay(us, sa, "us")
        view = membership.read(sa_db)
        assert view is not None and view.members["eu"].final_seq == 2
        since = view.members["eu"].since
        assert since is not None and first.since is not None and since.hlc == first.since.hlc
        assert eu_db.records_from("eu", 1)[0].hlc > since.hlc
        assert relay(us, sa, "eu") == 2
        assert sa_db.get("d/2") == {"v": 2}


@given(
    stamps=st.lists(st.integers(1, 50), min_size=1, max_size=4, unique=True),
    which=st.integers(0, 3),
    hlcs=st.lists(st.integers(1, 60), min_size=1, max_size=5),
    removed_at=st.none() | st.integers(1, 60),
    final_seq=st.integers(0, 6),
)
def test_a_key_vouches_only_for_records_stamped_before_it_was_retired(
    stamps: list[int], which: int, hlcs: list[int], removed_at: int | None, final_seq: int
) -> None:
    """The rule on the membership alone: a record is refused iff it is stamped at or after
    the HLC of the key's next certificate, or (removed region) at or after the removal and
    numbered past final_seq."""
    prints = [f"{i:02x}" * 32 for i in range(len(stamps))]
    fields: dict[str, object] = {
        "cert:" + fp: {"hlc": str(stamp), "by": "eu"}
        for fp, stamp in zip(prints, stamps, strict=True)
    }
    if removed_at is not None:
        fields["removed@us"] = {"hlc": str(removed_at), "final_seq": final_seq}
    view = membership.parse({"eu": fields})
    key = prints[which % len(prints)]
    run = [UpdateRecord("d/x", Hlc(h), "eu", seq, b"u") for seq, h in enumerate(hlcs, 1)]
    seal = wire.Seal("eu", 1, len(run), bytes(32), bytes.fromhex(key), b"sig")
    later = sorted(s for s in stamps if s > stamps[prints.index(key)])
    refused = any(
        (later and r.hlc >= later[0])
        or (removed_at is not None and r.hlc >= removed_at and r.seq > final_seq)
        for r in run
    )
    assert bool(key_limits(view, "eu", seal.key)) == bool(later or removed_at is not None)
    if refused:
        with pytest.raises(RetiredKeyError):
            refuse_retired(view, seal, run, "ap")
    else:
        refuse_retired(view, seal, run, "ap")
