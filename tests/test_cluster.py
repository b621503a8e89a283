"""End to end: real ``crdtdb serve`` daemons on loopback, written to by real application processes.

Each test builds a cluster with :mod:`tests.cluster` (certificates, one TOML
config and one daemon process per region), writes through the embedded
library — in writer processes (``procs/cluster_writer.py``) or in this
process — and waits, with deadlines, until every region holds the same
documents: the same sorted JSON and ``db.digest()`` for every document id,
and the same ``merkle_root()``. The writers print each write once its commit
has returned, and the tests compute from those acknowledgements alone what
every region must hold at the end, so a write that was acknowledged and then
lost (or resurrected after its delete) fails the test.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Text

import crdtdb

from .cluster import Cluster, ClusterError, Lab, lab, snapshot
from .harness.process import Child
from .harness.wait import wait_until
from .netfault import Faults
from .traces import apply_patches, load_trace

pytestmark = pytest.mark.integration

REGIONS = ("eu", "us", "ap")
TIMEOUT = 60.0  # seconds for anything the tests wait for; generous for a loaded CI machine
TRACE_NAME = "automerge-paper.json.gz"


@pytest.fixture
def cluster_lab(tmp_path: Path) -> Iterator[Lab]:
    """Clusters and writer processes under tmp_path; every process is stopped at teardown."""
    with lab(tmp_path) as made:
        yield made


# --------------------------------------------------------------- expectations


class Expected:
    """What every region must hold, computed from acknowledged writes only.

    Each writer owns its keys in the shared documents and its own documents
    outright, and ops of one writer are acked in commit order, so applying
    the acks writer by writer gives the one correct final state.
    """

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any] | None] = {}
        self.acked = 0

    def apply(self, op: Mapping[str, Any]) -> None:
        doc = op["doc"]
        if op["op"] == "put":
            self.docs[doc] = copy.deepcopy(op["value"])
        elif op["op"] == "update":
            current = self.docs.get(doc) or {}
            self.docs[doc] = {**current, **copy.deepcopy(op["set"])}
        else:
            assert op["op"] == "delete", op
            self.docs[doc] = None
        self.acked += 1

    def add_acks(self, messages: Iterable[Mapping[str, Any]]) -> None:
        for message in messages:
            if message["ev"] == "ack":
                for op in message["ops"]:
                    self.apply(op)

    def collections(self) -> set[str]:
        return {doc.split("/")[0] for doc in self.docs}

    def mismatches(self, db: crdtdb.Database, limit: int = 5) -> list[str]:
        """How ``db`` differs from the expectation (empty: it holds exactly that)."""
        problems = []
        for doc, value in sorted(self.docs.items()):
            got = db.get(doc)
            if canonical(got) != canonical(value):
                problems.append(f"{doc}: expected {canonical(value)}, found {canonical(got)}")
        live = {d for c in self.collections() for d in db.list(c)}
        extra = live - {d for d, v in self.docs.items() if v is not None}
        problems += [f"{doc}: live but never written (or deleted)" for doc in sorted(extra)]
        return [f"{db.region}: {p}" for p in problems[:limit]] + (
            [f"{db.region}: ... {len(problems) - limit} more"] if len(problems) > limit else []
        )


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def start_writers(cluster_lab: Lab, cluster: Cluster, specs: list[tuple[str, ...]]) -> list[Child]:
    """Start one writer per spec (region, mode, args...) and release them together."""
    writers = [
        cluster_lab.child(
            "cluster_writer.py",
            str(cluster.regions[region].data_dir),
            region,
            *rest,
            "--wait-go",
        )
        for region, *rest in specs
    ]
    for writer in writers:
        assert writer.message(TIMEOUT) == {"ev": "ready"}, writer.describe()
    for writer in writers:
        writer.send("go")
    return writers


def finish_writers(writers: list[Child], expected: Expected) -> None:
    """Wait for every writer to exit cleanly; fold its acks into ``expected``."""
    for writer in writers:
        messages = writer.messages_until_exit(TIMEOUT * 2)
        assert messages and messages[-1]["ev"] == "done", writer.describe()
        acks = [m for m in messages if m["ev"] == "ack"]
        assert len(acks) == messages[-1]["ops"], writer.describe()
        expected.add_acks(messages)


def all_match(cluster: Cluster, expected: Expected) -> bool:
    return cluster.converged(expected.docs) and not any(
        expected.mismatches(cluster.db(name)) for name in cluster.regions
    )


def assert_converged_to(cluster: Cluster, expected: Expected, timeout: float = TIMEOUT) -> None:
    """Wait until every region holds exactly ``expected`` and all agree; then check it once more."""
    try:
        wait_until(
            lambda: all_match(cluster, expected),
            timeout,
            "every region to hold every acknowledged write",
            interval=0.25,
        )
    except ClusterError as exc:
        problems = [p for name in cluster.regions for p in expected.mismatches(cluster.db(name))]
        detail = "\n".join(problems)
        raise AssertionError(
            f"{exc}\n{detail}\n{cluster.describe_divergence(expected.docs)}"
        ) from None
    assert_identical(cluster, expected.docs)


def assert_identical(cluster: Cluster, doc_ids: Iterable[str] = ()) -> None:
    """Same sorted JSON and digest for every document, same Merkle root, in every region."""
    names = list(cluster.regions)
    ids = list(doc_ids)
    snaps = {name: snapshot(cluster.db(name), ids) for name in names}
    roots = {name: cluster.db(name).merkle_root().hex() for name in names}
    for name in names[1:]:
        assert snaps[name] == snaps[names[0]], cluster.describe_divergence(ids)
    assert len(set(roots.values())) == 1, roots


def doc_present(cluster: Cluster, region: str, doc_id: str) -> bool:
    return cluster.db(region).get(doc_id) is not None


# ---------------------------------------------------------------------- tests


def test_three_regions_converge_under_concurrent_writers(cluster_lab: Lab) -> None:
    with cluster_lab.cluster(REGIONS) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        writers = start_writers(
            cluster_lab,
            cluster,
            [(name, "mix", "--ops", "300", "--seed", str(i)) for i, name in enumerate(REGIONS)],
        )
        expected = Expected()
        finish_writers(writers, expected)
        assert expected.acked >= 900
        shared = [d for d in expected.docs if d.startswith("shared/")]
        assert len(shared) == 4 and all(
            {k.split("_")[0] for k in expected.docs[d] or {}} == set(REGIONS) for d in shared
        ), "every shared document must hold keys of every region"
        assert any(v is None for v in expected.docs.values()), "the workload must delete"
        assert_converged_to(cluster, expected)
        for name in REGIONS:  # SIGTERM is a clean stop
            assert cluster.terminate(name) == 0, cluster.regions[name].log_tail()


def test_chain_relays_between_regions_that_do_not_peer(cluster_lab: Lab) -> None:
    with cluster_lab.cluster(REGIONS, links=[("eu", "us"), ("us", "ap")]) as cluster:
        for region in cluster.regions.values():  # only the configured peers: a chain
            region.tables = {"cluster": {"dial_members": False}}
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        eu_status = cluster.regions["eu"].status()
        assert eu_status is not None
        assert {p["region"] for p in eu_status["peers"]} == {"us"}  # eu and ap never talk
        cluster.db("eu").put("notes/from-eu", {"text": "written in eu"})
        cluster.db("ap").put("notes/from-ap", {"text": "written in ap"})
        wait_until(lambda: doc_present(cluster, "ap", "notes/from-eu"), TIMEOUT, "eu's write in ap")
        wait_until(lambda: doc_present(cluster, "eu", "notes/from-ap"), TIMEOUT, "ap's write in eu")
        assert cluster.db("ap").get("notes/from-eu") == {"text": "written in eu"}
        assert cluster.db("eu").get("notes/from-ap") == {"text": "written in ap"}
        ids = ["notes/from-eu", "notes/from-ap"]
        wait_until(lambda: cluster.converged(ids), TIMEOUT, "the chain to converge")
        assert_identical(cluster, ids)


LOSSY = Faults(drop=0.2, duplicate=0.1, reorder=0.2, delay=0.002, jitter=0.02)


def test_lossy_link_then_partition_and_heal(cluster_lab: Lab) -> None:
    with cluster_lab.cluster(REGIONS) as cluster:
        lossy = cluster.route("eu", "us", LOSSY, seed=7)
        ap_links = [cluster.route("eu", "ap", seed=8), cluster.route("ap", "us", seed=9)]
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)

        # 1. Concurrent writers in eu and us across the lossy link.
        writers = start_writers(
            cluster_lab,
            cluster,
            [
                ("eu", "mix", "--ops", "150", "--seed", "11", "--tag", "f"),
                ("us", "mix", "--ops", "150", "--seed", "12", "--tag", "f"),
            ],
        )
        expected = Expected()
        finish_writers(writers, expected)
        assert_converged_to(cluster, expected)
        stats = lossy.stats()
        for counter in ("dropped", "duplicated", "reordered"):
            assert stats["up"][counter] > 0 and stats["down"][counter] > 0, stats

        # 2. Cut ap off; both sides write.
        for proxy in ap_links:
            proxy.partition()
        eu, us, ap = (cluster.db(name) for name in REGIONS)
        for i in range(20):
            expected.apply(put(eu, f"split/eu-{i}", {"side": "majority", "i": i}))
            expected.apply(put(ap, f"split/ap-{i}", {"side": "minority", "i": i}))
        expected.apply(put(us, "split/us", {"side": "majority"}))
        # The majority still replicates (eu <-> us over the lossy link) ...
        wait_until(
            lambda: (
                doc_present(cluster, "us", "split/eu-19") and doc_present(cluster, "eu", "split/us")
            ),
            TIMEOUT,
            "eu and us to exchange their writes during the partition",
        )
        rounds = anti_entropy_rounds(cluster, "eu", "us")
        wait_until(
            lambda: anti_entropy_rounds(cluster, "eu", "us") >= rounds + 2,
            TIMEOUT,
            "two more anti-entropy rounds between eu and us",
        )
        wait_until(
            lambda: cluster.db("eu").merkle_root() == cluster.db("us").merkle_root(),
            TIMEOUT,
            "eu and us to converge during the partition",
        )
        # ... while nothing crosses the partition, either way.
        majority_docs = [f"split/eu-{i}" for i in range(20)] + ["split/us"]
        assert not any(doc_present(cluster, "ap", d) for d in majority_docs)
        for name in ("eu", "us"):
            assert not any(doc_present(cluster, name, f"split/ap-{i}") for i in range(20))
        roots = region_roots(cluster)
        assert roots["ap"] != roots["eu"], roots

        # 3. Heal: everything converges.
        for proxy in ap_links:
            proxy.heal()
        assert_converged_to(cluster, expected)


def test_daemon_killed_while_receiving_catches_up(cluster_lab: Lab) -> None:
    bulk_ops = 4000
    with cluster_lab.cluster(REGIONS) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        us = cluster.db("us")
        bulk = cluster_lab.child(
            "cluster_writer.py", str(cluster.regions["eu"].data_dir), "eu", "bulk",
            "--ops", str(bulk_ops), "--tag", "k",
        )  # fmt: skip

        def us_holds_from_eu() -> int:
            return us.progress().get("eu", (0, 0, None))[1]

        wait_until(
            lambda: us_holds_from_eu() >= 300, TIMEOUT, "us to receive part of eu's bulk",
            interval=0.005,
        )  # fmt: skip
        cluster.kill("us")
        held_at_kill = us_holds_from_eu()
        assert bulk.proc.poll() is None, "the bulk writer must still be writing at the kill"
        assert held_at_kill < bulk_ops, f"us already held {held_at_kill} of {bulk_ops} records"

        # The store of the killed daemon opens cleanly.
        cluster.close_db("us")
        check_store(cluster.regions["us"].data_dir, "us")

        # The other regions keep writing while us is down.
        writers = start_writers(
            cluster_lab,
            cluster,
            [
                ("eu", "mix", "--ops", "150", "--seed", "21", "--tag", "k"),
                ("ap", "mix", "--ops", "150", "--seed", "22", "--tag", "k"),
            ],
        )
        expected = Expected()
        expected.add_acks(bulk.messages_until_exit(TIMEOUT * 2))
        assert expected.acked == bulk_ops
        finish_writers(writers, expected)
        wait_until(
            lambda: (
                cluster.db("ap").progress().get("eu", (0, 0))[1]
                >= cluster.db("eu").progress()["eu"][1]
            ),
            TIMEOUT,
            "ap to receive all of eu's records while us is down",
        )
        assert us_progress_unchanged(cluster, held_at_kill)

        restarted = time.monotonic()
        cluster.start("us")
        cluster.wait_ready("us", timeout=TIMEOUT)
        print(f"us reconnected {time.monotonic() - restarted:.1f} s after its restart")
        assert_converged_to(cluster, expected, timeout=TIMEOUT * 2)
        cluster.close_db("us")
        assert cluster.terminate("us") == 0, cluster.regions["us"].log_tail()
        check_store(cluster.regions["us"].data_dir, "us")


def test_editing_trace_typed_in_eu_reaches_every_region(cluster_lab: Lab) -> None:
    trace = load_trace(TRACE_NAME)
    txns = trace["txns"][:5000]
    with cluster_lab.cluster(REGIONS) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        expected = type_trace(cluster.db("eu"), "papers/p", txns)
        assert expected == apply_patches(txns)
        wait_for_text(cluster, "papers/p", expected)


def test_full_editing_trace_end_to_end(cluster_lab: Lab) -> None:
    """All 259,778 keystrokes of the trace; the text must equal its ``endContent`` everywhere.

    About 20-40 s on a 2-core machine (typing ~5,200 transactions while three
    daemons replicate them); every wait has a deadline.
    """
    trace = load_trace(TRACE_NAME)
    with cluster_lab.cluster(REGIONS) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        started = time.monotonic()
        typed = type_trace(cluster.db("eu"), "papers/full", trace["txns"])
        assert typed == trace["endContent"]
        typing = time.monotonic() - started
        wait_for_text(cluster, "papers/full", trace["endContent"], timeout=TIMEOUT * 2)
        total = time.monotonic() - started
        print(f"full trace: typed in {typing:.1f} s, in every region after {total:.1f} s")


# ------------------------------------------------------------------- helpers


def put(db: crdtdb.Database, doc_id: str, value: dict[str, Any]) -> dict[str, Any]:
    """Write through the embedded library; return the op for Expected."""
    db.put(doc_id, value)
    return {"op": "put", "doc": doc_id, "value": value}


def region_roots(cluster: Cluster) -> dict[str, str]:
    return {name: cluster.db(name).merkle_root().hex() for name in cluster.regions}


def anti_entropy_rounds(cluster: Cluster, region: str, peer: str) -> int:
    status = cluster.regions[region].status() or {"peers": []}
    return sum(p["rounds"] for p in status["peers"] if p["region"] == peer)


def us_progress_unchanged(cluster: Cluster, held: int) -> bool:
    """While its daemon is down, nobody applies records to us's store."""
    with crdtdb.open(cluster.regions["us"].data_dir) as db:
        return bool(db.progress().get("eu", (0, 0))[1] == held)


def check_store(data_dir: Path, region: str) -> None:
    """The store opens with the library, reads, and passes SQLite's integrity check."""
    with crdtdb.open(data_dir, region=region) as db:
        info = db.info()
        assert info["region"] == region
        for collection in db.collections():
            for doc_id in db.list(collection, limit=20):
                assert db.get(doc_id) is not None
        db.merkle_root()
    files = list(data_dir.glob("*.sqlite3"))
    assert files, f"no SQLite file in {data_dir}"
    with sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def type_trace(
    db: crdtdb.Database, doc_id: str, txns: list[dict[str, Any]], batch: int = 50
) -> str:
    """Type the trace into a Text, ``batch`` keystrokes per transaction; return the text."""
    with db.transaction() as tx:
        tx.doc(doc_id)["body"] = Text()
    for start in range(0, len(txns), batch):
        with db.transaction() as tx:
            body = tx.doc(doc_id)["body"]
            for txn in txns[start : start + batch]:
                for pos, deleted, inserted in txn["patches"]:
                    if deleted:
                        del body.text[pos : pos + deleted]
                    if inserted:
                        body.insert(pos, inserted)
    value = db.get(doc_id)
    assert value is not None
    return str(value["body"])


def wait_for_text(cluster: Cluster, doc_id: str, text: str, timeout: float = TIMEOUT) -> None:
    def body(region: str) -> str | None:
        value = cluster.db(region).get(doc_id)
        return None if value is None else str(value["body"])

    try:
        wait_until(
            lambda: all(body(name) == text for name in cluster.regions),
            timeout,
            f"every region to hold the typed text of {doc_id}",
            interval=0.2,
        )
    except ClusterError as exc:
        lengths = {name: len(body(name) or "") for name in cluster.regions}
        raise AssertionError(f"{exc}; text lengths {lengths}, expected {len(text)}") from None
    wait_until(lambda: cluster.converged([doc_id]), timeout, "digests and roots to agree")
    assert_identical(cluster, [doc_id])
