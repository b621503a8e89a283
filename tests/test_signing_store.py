"""Signed records against real stores (sync/provenance.py over crdtdb.chains), no network:
sealing, relaying, equivocation, legacy records, and the schema-3 migration."""

from __future__ import annotations

import gzip
import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import crdtdb
from crdtdb.records import UpdateRecord
from crdtdb.storage import SCHEMA_VERSION, STORE_FILE
from crdtdb.sync import wire
from crdtdb.sync.provenance import Provenance
from crdtdb.sync.signing import (
    GENESIS,
    BadRecordSignatureError,
    EquivocationError,
    Signer,
    UnknownKeyError,
    record_bytes,
    verify_run,
)

DATA = Path(__file__).resolve().parent / "data"
CLOCK = 1_800_000_001_000


def signer(certs: Path, region: str) -> Signer:
    return Signer(
        region, (certs / f"{region}.pem").read_bytes(), (certs / f"{region}.key").read_bytes()
    )


def provenance(db: crdtdb.Database, certs: Path) -> Provenance:
    made = Provenance(db, (certs / "ca.pem").read_bytes(), signer(certs, db.region), lambda: 1)
    made.start()
    return made


@pytest.fixture
def eu_us(tmp_path: Path, certs: Path) -> Iterator[tuple[Provenance, Provenance]]:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        yield provenance(eu, certs), provenance(us, certs)


def relay(source: Provenance, target: Provenance, origin: str, after: int = 0) -> int:
    """What a session does: source's sealed runs, checked and applied at target."""
    applied = 0
    runs = source.runs_from(origin, after, 10_000)
    target.note_certificates(source.certificates(sorted({seal.key for seal, _ in runs})))
    for seal, run in runs:
        records, rows = target.check(run, [seal], source.region)
        applied += target.store.apply_remote_many(records, rows) if records else 0
    return applied


def test_own_records_are_sealed_by_the_daemon_in_runs_and_verify(
    eu_us: tuple[Provenance, Provenance], certs: Path
) -> None:
    eu, _ = eu_us
    for i in range(3):
        eu.store.put(f"d/{i}", {"i": i})
    assert eu.runs_from("eu", 0, 100) == []  # committed, not sealed: not sent
    assert eu.seal_own() == 3 and eu.seal_own() == 0
    with eu.store.transaction() as tx:
        for i in range(600):  # one commit, 600 records: more than one run
            tx.doc(f"e/{i}")["i"] = i
    assert eu.seal_own() == 600
    runs = eu.runs_from("eu", 0, 256)
    assert sum(len(run) for _, run in runs) >= 256
    assert len(runs) >= 2 and runs[0][0].first == 1 and runs[0][0].base == GENESIS
    key = signer(certs, "eu")._key.public_key()
    everything = eu.runs_from("eu", 0, 10_000)
    seqs = [r.seq for _, run in everything for r in run]
    assert seqs == list(range(1, 604))  # whole runs, in order, every record once
    for (seal, run), (following, _) in itertools.pairwise(everything):
        hashes = verify_run(seal, run, key)
        assert following.base == hashes[-1]  # the chain goes on across runs and calls
    # a run read from the middle (a peer holding part of it) starts at the right base
    (suffix, part), *_ = eu.runs_from("eu", 2, 1)
    assert suffix.first == 3 and part[0].seq == 3
    verify_run(suffix, part, key)


def test_relayed_records_carry_their_origins_chain_onward(
    tmp_path: Path, certs: Path, eu_us: tuple[Provenance, Provenance]
) -> None:
    eu, us = eu_us
    for i in range(5):
        eu.store.put(f"d/{i}", {"i": i})
    eu.seal_own()
    assert relay(eu, us, "eu") == 5
    with crdtdb.open(tmp_path / "ap", region="ap") as ap_db:
        ap = provenance(ap_db, certs)
        assert relay(us, ap, "eu", after=2) == 3  # a suffix of a run: eu#3..5
        assert relay(us, ap, "eu") == 2  # the whole run again: eu#1..2 new, 3..5 the same
        assert [record_bytes(r) for r in ap_db.records_from("eu", 0)] == [
            record_bytes(r) for r in eu.store.records_from("eu", 0)
        ]


def test_a_seal_with_an_unknown_key_is_refused(eu_us: tuple[Provenance, Provenance]) -> None:
    eu, us = eu_us
    eu.store.put("d/1", {"i": 1})
    eu.seal_own()
    ((seal, run),) = eu.runs_from("eu", 0, 10)
    with pytest.raises(UnknownKeyError, match="never sent"):
        us.check(run, [replace(seal, key=b"\x09" * 32)], "eu")


def test_equivocation_and_forks_are_refused_and_kept(
    tmp_path: Path, certs: Path, eu_us: tuple[Provenance, Provenance]
) -> None:
    """eu signs two histories: eu#1 = a, and eu#1 = b, eu#2 = c (a second store of eu)."""
    eu, us = eu_us
    eu.store.put("d/a", {"v": "a"})
    eu.seal_own()
    relay(eu, us, "eu")
    with crdtdb.open(tmp_path / "eu-twin", region="eu") as twin_db:
        twin = provenance(twin_db, certs)
        twin_db.put("d/b", {"v": "b"})
        twin_db.put("d/c", {"v": "c"})
        twin.seal_own()
        (seal, run), *_ = twin.runs_from("eu", 0, 10)
        with pytest.raises(EquivocationError, match="signed two different records"):
            us.check(run, [seal], "ap")
        # eu#2 alone, whose chain says eu#1 was b: a fork of what us holds
        (fork, tail), *_ = twin.runs_from("eu", 1, 10)
        assert fork.first == 2
        with pytest.raises(EquivocationError, match="a fork"):
            us.check(tail, [fork], "ap")
    kinds = sorted((c.seq, c.kind, c.peer) for c in us.store.chains.conflicts())
    # eu#1 with other content; eu#2 on a chain whose eu#1 is another (held: None, a fork)
    assert kinds == [(1, "equivocation", "ap"), (2, "equivocation", "ap")]
    fork_evidence = next(c for c in us.store.chains.conflicts() if c.seq == 2)
    assert fork_evidence.held is None and fork_evidence.offered == record_bytes(tail[0])
    assert us.store.info()["provenance"]["equivocating_origins"] == ["eu"]
    assert us.store.get("d/b") is None and us.store.get("d/c") is None


def test_a_forgery_of_a_held_record_is_blamed_on_the_relay(
    eu_us: tuple[Provenance, Provenance],
) -> None:
    eu, us = eu_us
    eu.store.put("d/a", {"v": "a"})
    eu.seal_own()
    relay(eu, us, "eu")
    ((seal, run),) = eu.runs_from("eu", 0, 10)
    other = replace(run[0], update=run[0].update[:-1] + b"\x01")
    with pytest.raises(BadRecordSignatureError, match="evidence of forgery by ap"):
        us.check([other], [seal], "ap")
    (conflict,) = us.store.chains.conflicts()
    assert (conflict.kind, conflict.held, conflict.offered) == (
        "forgery",
        record_bytes(run[0]),
        record_bytes(other),
    )
    assert us.store.info()["provenance"]["equivocating_origins"] == []
    with pytest.raises(BadRecordSignatureError):  # again: counted, not kept twice
        us.check([other], [seal], "ap")
    assert [c.refused for c in us.store.chains.conflicts()] == [2]


def unpack_v3(tmp_path: Path) -> Path:
    """eu's store written at schema 3 (commit 3b69cc4): eu#1..3 and us#1, unsigned."""
    store = tmp_path / "eu"
    store.mkdir()
    packed = (DATA / "store-v3-eu.sqlite3.gz").read_bytes()
    (store / STORE_FILE).write_bytes(gzip.decompress(packed))
    with sqlite3.connect(store / STORE_FILE) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
    return store


def test_a_schema_3_store_opens_and_its_records_are_legacy(tmp_path: Path, certs: Path) -> None:
    store = unpack_v3(tmp_path)
    expected = {"notes/a": {"x": 10}, "notes/b": {"y": 2}, "notes/c": {"z": 3}}
    with crdtdb.open(store, clock=lambda: CLOCK) as eu_db:
        assert eu_db.info()["schema_version"] == SCHEMA_VERSION == 6
        assert {doc_id: eu_db.get(doc_id) for doc_id in expected} == expected
        assert eu_db.info()["provenance"]["legacy_records"] == 4
        eu = provenance(eu_db, certs)
        # eu's own legacy records: its daemon seals them as its own, from the chain's start
        assert eu.seal_own() == 3
        assert eu_db.info()["provenance"]["legacy_records"] == 1  # us#1 stays unsigned
        ((seal, _),) = eu.runs_from("eu", 0, 10)
        assert (seal.first, seal.last, seal.base) == (1, 3, GENESIS)
        # another origin's legacy record is never relayed: no one could check it
        assert eu.runs_from("us", 0, 10) == []
        eu_db.put("notes/d", {"w": 4})  # new writes are signed as usual
        assert eu.seal_own() == 1
        with crdtdb.open(tmp_path / "ap", region="ap", clock=lambda: CLOCK) as ap_db:
            ap = provenance(ap_db, certs)
            assert relay(eu, ap, "eu") == 4
            assert ap_db.get("notes/d") == {"w": 4}


def test_a_signed_record_that_clashes_with_a_legacy_one_is_kept_as_evidence(
    tmp_path: Path, certs: Path
) -> None:
    """us held a forged eu#2 from before signing; eu's real, signed eu#2 comes: the held one
    stays (it cannot be taken back from the document), the clash is kept, nothing refused."""
    store = unpack_v3(tmp_path)
    with crdtdb.open(store, clock=lambda: CLOCK) as eu_db:
        eu = provenance(eu_db, certs)
        eu.seal_own()
        real: list[UpdateRecord] = eu_db.records_from("eu", 0)
        with crdtdb.open(tmp_path / "us", region="us", clock=lambda: CLOCK) as us_db:
            forged = replace(real[1], update=real[0].update)  # eu#2 with other content
            us_db.apply_remote_many([real[0], forged])  # as a schema-3 us would have
            us = provenance(us_db, certs)
            runs = eu.runs_from("eu", 0, 10)
            us.note_certificates(eu.certificates([runs[0][0].key]))
            records, rows = us.check(runs[0][1], [runs[0][0]], "eu")
            assert [r.seq for r in records] == [1, 3] and [r.seq for r in rows] == [1, 3]
            (conflict,) = us_db.chains.conflicts()
            assert (conflict.seq, conflict.kind, conflict.held) == (
                2,
                "legacy",
                record_bytes(forged),
            )


def test_certificates_are_kept_by_fingerprint(
    eu_us: tuple[Provenance, Provenance], certs: Path
) -> None:
    eu, us = eu_us
    pem = (certs / "eu.pem").read_bytes()
    us.note_certificates([pem])
    held = {(fpr, region) for fpr, region, _ in us.store.chains.certificates()}
    assert (signer(certs, "eu").fingerprint, "eu") in held
    assert (signer(certs, "us").fingerprint, "us") in held  # its own, from start()
    assert isinstance(eu.certificates([signer(certs, "eu").fingerprint])[0], bytes)
    assert wire.Certificates((pem,)).certificates == (pem,)


def test_evidence_is_exported_as_metrics_and_a_status_line() -> None:
    from crdtdb.sync.metrics import Metrics
    from crdtdb.sync.status import evidence_line

    metrics = Metrics()
    metrics.evidence({"forgery": 2, "equivocation": 1}, ["eu"])
    value = metrics.registry.get_sample_value
    assert value("crdtdb_record_conflicts", {"kind": "forgery"}) == 2
    assert value("crdtdb_record_conflicts", {"kind": "legacy"}) == 0
    assert value("crdtdb_equivocating_origin", {"origin": "eu"}) == 1
    assert evidence_line({"conflicts": {}}) is None
    line = evidence_line({"conflicts": {"forgery": 2}, "equivocating_origins": []})
    assert line == "record evidence: forgery 2 (kept in the store's conflicts table)"


def chain_seqs(db: crdtdb.Database, origin: str) -> list[int]:
    with sqlite3.connect(db.path / STORE_FILE) as conn:
        rows = conn.execute("SELECT seq FROM chain WHERE origin = ? ORDER BY seq", (origin,))
        return [seq for (seq,) in rows]


def reports(a: crdtdb.Database, b: crdtdb.Database) -> None:
    """``a``'s frontier report, to ``b`` (what a session gossips)."""
    entries = [(o, s, int(h)) for o, s, h in a.frontier_entries()]
    b.note_frontier(entries, [(r, int(h)) for r, h in a.frontier_clocks()])


def test_compaction_prunes_chain_rows_and_later_runs_still_verify(
    tmp_path: Path, certs: Path, eu_us: tuple[Provenance, Provenance]
) -> None:
    eu, us = eu_us
    for i in range(12):
        eu.store.put(f"d/{i % 3}", {"i": i})
    eu.seal_own()
    assert relay(eu, us, "eu") == 12
    for a, b in ((eu.store, us.store), (us.store, eu.store), (eu.store, us.store)):
        reports(a, b)
    assert chain_seqs(us.store, "eu") == list(range(1, 13))
    for db in (eu.store, us.store):
        assert db.compact(retention_s=0) > 0
        # Folded records' rows are gone; kept: the rows from the lowest record still in
        # the log on, and the newest (the base of eu's next run).
        held = [r.seq for r in db.records_from("eu", 0)]
        assert held and len(held) < 12
        assert chain_seqs(db, "eu") == list(range(min(held), 13))
    # eu's next run builds on the pruned chain, and us checks and applies it.
    for i in range(3):
        eu.store.put(f"d/{i}", {"later": i})
    assert eu.seal_own() == 3
    assert relay(eu, us, "eu", after=12) == 3
    assert us.store.get("d/2") == {"later": 2}
    # Compacted again: a run of eu#16 on another chain (a fork) is still caught, for us
    # kept the hash of eu#15, the newest it holds.
    reports(eu.store, us.store)
    assert us.store.compact(retention_s=0) > 0
    assert chain_seqs(us.store, "eu")[-1] == 15
    with crdtdb.open(tmp_path / "eu-twin", region="eu") as twin_db:
        twin = provenance(twin_db, certs)
        for i in range(16):
            twin_db.put(f"t/{i}", {"i": i})
        twin.seal_own()
        (fork, run), *_ = twin.runs_from("eu", 15, 10)
        assert fork.first == 16
        with pytest.raises(EquivocationError, match="a fork"):
            us.check(run, [fork], "ap")
