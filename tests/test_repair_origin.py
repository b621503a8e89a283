"""Anti-entropy repairs keep the origin (issue 13), with real daemons over QUIC.

A region that lacks what another's records carry gets those records, as their
origin sealed them (same origin, seq and bytes, the seal verifies), not a diff
it would commit as a repair record of its own. Only what no record carries any
more (history compacted below the horizon) comes as a diff, and the repair
record it makes says whose items it carries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

import crdtdb
from crdtdb.records import REPAIR
from crdtdb.sync import wire
from crdtdb.sync.signing import record_bytes, verify_run

from .cluster import Cluster
from .conftest import clock_past
from .test_repair_records import lose

pytestmark = pytest.mark.integration

LOST = [f"d/{i}" for i in range(3, 8)]
"""The documents whose eu records us loses while stopped."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, ["eu", "us"]) as made:
        yield made


def origin_key(cluster: Cluster, origin: str) -> ec.EllipticCurvePublicKey:
    pem = (cluster.root / "certs" / f"{origin}.pem").read_bytes()
    key = x509.load_pem_x509_certificate(pem).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def verified(db: crdtdb.Database, origin: str, key: ec.EllipticCurvePublicKey) -> list[int]:
    """The seqs of ``origin``'s records that ``db`` holds in runs its seals verify."""
    seqs: list[int] = []
    run: list[crdtdb.UpdateRecord] = []
    base = b""
    for item in db.chains.chained_from(origin, 0, 1_000_000):
        if run and item.record.seq != run[-1].seq + 1:
            run = []
        if not run:
            base = item.chain.prev
        run.append(item.record)
        chain = item.chain
        if chain.key is not None and chain.sig is not None:
            seal = wire.Seal(origin, run[0].seq, item.record.seq, base, chain.key, chain.sig)
            hashes = verify_run(seal, run, key)
            assert hashes[-1] == chain.hash  # the chain row held is the one the seal covers
            seqs.extend(r.seq for r in run)
            run = []
    return seqs


def repairs(db: crdtdb.Database) -> list[crdtdb.UpdateRecord]:
    return [r for r in db.records_from(db.region, 0, 1_000_000) if r.kind == REPAIR]


def test_records_a_region_lost_come_back_as_their_origins(cluster: Cluster) -> None:
    cluster.start()
    cluster.wait_ready()
    eu = cluster.db("eu")
    for i in range(10):
        eu.put(f"d/{i}", {"i": i, "by": "eu"})
    for doc_id in LOST[:2]:
        eu.update(doc_id, {"again": True})  # two records of one document
    cluster.wait_converged()
    us_dir = cluster.regions["us"].data_dir
    cluster.terminate("us")
    cluster.close_db("us")
    assert lose(us_dir, "eu", LOST) == len(LOST) + 2
    with crdtdb.open(us_dir) as us:
        assert [us.get(doc_id) for doc_id in LOST] == [None] * len(LOST)
        claimed = us.progress()["eu"][1]
        assert claimed >= eu.progress()["eu"][1] - 1  # us still claims eu's records

    cluster.start("us")
    cluster.wait_ready()
    cluster.wait_converged(LOST)

    us = cluster.db("us")
    assert us.get("d/3") == {"i": 3, "by": "eu", "again": True}
    # every eu record, as eu made it: origin, seq and bytes, under seals that verify
    theirs = [record_bytes(r) for r in eu.records_from("eu", 0, 1_000_000)]
    assert [record_bytes(r) for r in us.records_from("eu", 0, 1_000_000)] == theirs
    assert verified(us, "eu", origin_key(cluster, "eu")) == list(range(1, len(theirs) + 1))
    # and nothing of it re-authored as us's: no repair record anywhere
    assert repairs(us) == [] and repairs(eu) == []


def test_a_repair_of_compacted_history_says_whose_items_it_carries(tmp_path: Path) -> None:
    """eu's history is folded below the horizon before us exists: no record of it is left
    to send, so us gets diffs; its repair records name eu as the origin of their items.
    (A region that joins empty would copy eu's store instead: this one syncs by records.)"""
    with Cluster(tmp_path, ["eu", "us"], bootstrap="records") as cluster:
        _repair_of_compacted_history(cluster)


def _repair_of_compacted_history(cluster: Cluster) -> None:
    eu_dir = cluster.regions["eu"].data_dir
    with crdtdb.open(eu_dir, region="eu", history_retention_s=0) as eu:
        for i in range(6):
            eu.put(f"d/{i}", {"i": i, "by": "eu"})
        eu.put("d/last", {"by": "eu"})  # the newest record: compaction keeps it
        clock_past(eu)  # or records of the current millisecond stay above the horizon
        assert eu.compact() > 0
        left = eu.records_from("eu", 0, 1_000_000)
        assert [r.doc_id for r in left] == ["d/last"]
    cluster.start()
    cluster.wait_ready()
    cluster.wait_converged()

    us = cluster.db("us")
    assert us.get("d/0") == {"i": 0, "by": "eu"}
    made = repairs(us)
    repaired = {r.doc_id for r in made}
    assert {f"d/{i}" for i in range(6)} <= repaired
    for record in made:
        if record.doc_id.startswith("d/"):
            provenance = us.chains.carried(record.update)
            assert provenance.carries == ("eu",), record
    # the same, as an operator reads it: `crdtdb log` marks the repair and its items' origin
    out = subprocess.run(
        [sys.executable, "-m", "crdtdb", "log", str(cluster.regions["us"].data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    shown = [line for line in lines if line["doc_id"] == "d/0"]
    assert shown and all(
        line["kind"] == "repair" and line["origin"] == "us" and line["carries"] == ["eu"]
        for line in shown
    )
    assert any(line["kind"] == "write" and line["origin"] == "eu" for line in lines)
    # and as an analyst reads it: the changes table marks the repair
    from crdtdb.query import connect

    con = connect(us)
    try:
        found = con.execute(
            "SELECT DISTINCT origin, kind FROM changes WHERE id = 'd/0' ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert found == [("us", "repair")]
