"""Digests and the incrementally maintained Merkle tree."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

import crdtdb
from crdtdb import merkle, yjs
from crdtdb.merkle import canonical_state
from crdtdb.storage import STORE_FILE
from crdtdb.transaction import Transaction

from .conftest import ship


def _varuint(value: int) -> bytes:
    out = bytearray()
    yjs.write_varuint(out, value)
    return bytes(out)


@given(
    st.dictionaries(st.integers(0, 2**53), st.integers(0, 10**6), min_size=1, max_size=6),
    st.randoms(),
)
def test_canonical_state_ignores_client_order(clocks: dict[int, int], rnd: object) -> None:
    """Yrs encodes state vectors in hash-map order; the digest must not depend on it."""
    items = list(clocks.items())

    def encode(pairs: list[tuple[int, int]]) -> bytes:
        return _varuint(len(pairs)) + b"".join(_varuint(c) + _varuint(k) for c, k in pairs)

    shuffled = items[:]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    deletes = b"\x00" + _varuint(0)
    assert canonical_state(encode(items), deletes) == canonical_state(encode(shuffled), deletes)
    changed = [(items[0][0], items[0][1] + 1), *items[1:]]
    assert canonical_state(encode(items), deletes) != canonical_state(encode(changed), deletes)


def test_delete_only_divergence_changes_the_digest() -> None:
    a: Doc[Any] = Doc()
    root = a.get("data", type=Map)
    root["x"] = 1
    root["y"] = 2
    b: Doc[Any] = Doc()
    b.apply_update(a.get_update())
    b_root = b.get("data", type=Map)
    del b_root["x"]  # only a delete: the state vector does not move
    assert a.get_state() == b.get_state()
    assert merkle.doc_digest(a) != merkle.doc_digest(b)
    a.apply_update(b.get_update())
    assert merkle.doc_digest(a) == merkle.doc_digest(b)


def _do(target: crdtdb.Database | Transaction, op: str, doc: int, value: int) -> None:
    """One generated operation, on a store (its own commit) or in a transaction."""
    doc_id = f"d/{doc}"
    if op == "put":
        target.put(doc_id, {"v": value})
    elif op == "update":
        target.update(doc_id, {f"k{value}": value})
    else:
        target.delete(doc_id)


def _tree_from_scratch(db: crdtdb.Database) -> dict[int, bytes]:
    db.merkle_root()  # brings the stored digests up to date
    conn = sqlite3.connect(db.path / STORE_FILE)
    rows = conn.execute("SELECT doc_id, digest FROM docs").fetchall()
    conn.close()
    nodes: dict[int, int] = {}
    for doc_id, digest in rows:
        value = int.from_bytes(merkle.contribution(doc_id, digest), "big")
        for node in merkle.path_to_root(merkle.leaf_of(doc_id)):
            nodes[node] = nodes.get(node, 0) ^ value
    return {node: v.to_bytes(32, "big") for node, v in nodes.items()}


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "update", "delete"]), st.integers(0, 30), st.integers(0, 3)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_incremental_tree_equals_a_rebuild(
    tmp_path_factory: object, ops: list[tuple[str, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("merkle")  # type: ignore[attr-defined]
    with crdtdb.open(path, region="eu") as db:
        for op in ops:
            _do(db, *op)
        expected = _tree_from_scratch(db)
        for node, value in expected.items():
            assert db.merkle_node(node) == value
        written = {doc for op, doc, _ in ops if op != "delete"}
        for doc in {doc for _, doc, _ in ops}:
            fresh = merkle.doc_digest(db._engine.handle(f"d/{doc}").doc)
            assert db.digest(f"d/{doc}") == (fresh if doc in written else None)
        assert db.merkle_root() == expected.get(merkle.node_id(0, 0), merkle.ZERO)


def test_tree_shape() -> None:
    leaf = merkle.leaf_of("users/alice")
    assert 0 <= leaf < merkle.FANOUT**merkle.DEPTH
    path = merkle.path_to_root(leaf)
    assert len(path) == merkle.DEPTH + 1 and path[-1] == merkle.node_id(0, 0)
    assert path[0] == merkle.node_id(merkle.DEPTH, leaf)
    for child, parent in itertools.pairwise(path):
        assert child in merkle.children(parent)
    assert merkle.children(path[0]) == []


def test_regions_with_equal_content_have_equal_roots(tmp_path: Path) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        for i in range(50):
            (eu if i % 2 else us).put(f"d/{i}", {"i": i})
        assert eu.merkle_root() != us.merkle_root()
        ship(eu, us)
        ship(us, eu)
        assert eu.merkle_root() == us.merkle_root() != merkle.ZERO
        us.update("d/7", {"changed": True})
        root = merkle.node_id(0, 0)
        differing = [n for n in merkle.children(root) if eu.merkle_node(n) != us.merkle_node(n)]
        assert len(differing) == 1  # only the path to d/7 differs


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["put", "update", "delete"]), st.integers(0, 30), st.integers(0, 3)
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 7),
    st.sampled_from([1, 2, 1_000]),
)
def test_documents_hashed_as_they_are_created_give_the_tree_of_a_rebuild(
    tmp_path_factory: object,
    transactions: list[list[tuple[str, int, int]]],
    chunk: int,
    eager_from: int,
) -> None:
    """Documents new to a store, hashed in the commit (or batch) that creates them."""
    from crdtdb import digests

    path = tmp_path_factory.mktemp("merkle")  # type: ignore[attr-defined]
    saved, digests.EAGER_DIGESTS = digests.EAGER_DIGESTS, eager_from
    try:
        with (
            crdtdb.open(path / "eu", region="eu") as db,
            crdtdb.open(path / "us", region="us") as us,
        ):
            _create_then_compare(db, us, transactions, chunk)
    finally:
        digests.EAGER_DIGESTS = saved


def _create_then_compare(
    db: crdtdb.Database,
    us: crdtdb.Database,
    transactions: list[list[tuple[str, int, int]]],
    chunk: int,
) -> None:
    for ops in transactions:  # several documents, new and old, in one commit
        with db.transaction() as tx:
            for op in ops:
                _do(tx, *op)
    records = list(db.changes())
    for start in range(0, len(records), chunk):  # new to us in batches of any size
        us.apply_remote_many(records[start : start + chunk])
    for store in (db, us):
        expected = _tree_from_scratch(store)
        for node, value in expected.items():
            assert store.merkle_node(node) == value
        for doc_id in {r.doc_id for r in records}:
            assert store.digest(doc_id) == merkle.doc_digest(store._engine.handle(doc_id).doc)
    assert us.merkle_root() == db.merkle_root()
