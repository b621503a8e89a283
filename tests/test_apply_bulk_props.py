"""Bulk apply is one-by-one apply, for any batching, order and duplication of the records.

Two origins edit a few documents (now and then merging each other's records,
so that some of their edits are concurrent and some build on the other's). A
receiver that gets every record one at a time, in causal order, and another
that gets them shuffled, duplicated and cut into batches of any size through
``apply_remote_many`` must end alike: the same documents, digests, Merkle
root, per-origin progress and log.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crdtdb
from crdtdb.records import UpdateRecord

DOCS = ("docs/a", "docs/b", "notes/c")

edit = st.tuples(
    st.sampled_from(["eu", "ap"]),
    st.sampled_from(DOCS),
    st.sampled_from(["set", "text", "delete", "merge"]),
    st.integers(0, 9),
)


def _apply_edit(db: crdtdb.Database, doc_id: str, kind: str, n: int) -> None:
    if kind == "set":
        db.update(doc_id, {f"k{n % 3}": n})
    elif kind == "text":
        with db.transaction() as tx:
            text = tx.text(doc_id, "body")
            text.insert(min(n, len(str(text))), f"{n}")
    elif kind == "delete":
        db.delete(doc_id)


def _fingerprint(db: crdtdb.Database) -> tuple[Any, ...]:
    docs = {doc_id: db.get(doc_id) for doc_id in DOCS}
    digests = {doc_id: db.replica.digest(doc_id) for doc_id in DOCS}
    progress = {origin: seqs[:2] for origin, seqs in db.replica.progress().items()}
    log = sorted((r.origin, r.seq, r.update) for r in db.changes())
    return docs, digests, db.replica.merkle_root(), progress, log


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    edits=st.lists(edit, min_size=1, max_size=30),
    shuffle=st.randoms(use_true_random=False),
    duplicates=st.lists(st.integers(0, 10_000), max_size=10),
    cuts=st.lists(st.integers(1, 12), min_size=1, max_size=8),
)
def test_batched_shuffled_duplicated_apply_ends_as_one_by_one_apply(
    edits: list[tuple[str, str, str, int]],
    shuffle: Any,
    duplicates: list[int],
    cuts: list[int],
) -> None:
    with tempfile.TemporaryDirectory(prefix="crdtdb-bulk-") as name:
        tmp = Path(name)
        with (
            crdtdb.open(tmp / "eu", region="eu") as eu,
            crdtdb.open(tmp / "ap", region="ap") as ap,
            crdtdb.open(tmp / "one", region="one") as one,
            crdtdb.open(tmp / "bulk", region="bulk") as bulk,
        ):
            writers = {"eu": eu, "ap": ap}
            causal: list[UpdateRecord] = []  # every record, in the order it was made
            for origin, doc_id, kind, n in edits:
                db = writers[origin]
                if kind == "merge":  # take in what the other origin wrote so far
                    other = writers["ap" if origin == "eu" else "eu"]
                    db.apply_remote_many(other.records_from(other.region, 0, 10**6))
                    continue
                before = db.records_from(origin, 0, 10**6)
                _apply_edit(db, doc_id, kind, n)
                causal += db.records_from(origin, len(before), 10**6)
            for record in causal:
                one.apply_remote(record)
            scrambled = list(causal)
            if scrambled:
                scrambled += [scrambled[d % len(scrambled)] for d in duplicates]
            shuffle.shuffle(scrambled)
            start = 0
            for i in range(len(scrambled)):
                if start >= len(scrambled):
                    break
                size = cuts[i % len(cuts)]
                bulk.apply_remote_many(scrambled[start : start + size])
                start += size
            assert one.info()["updates_waiting"] == bulk.info()["updates_waiting"] == 0
            assert _fingerprint(bulk) == _fingerprint(one)
