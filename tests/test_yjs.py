"""The Yjs update reader (crdtdb.yjs) against updates pycrdt really writes.

Random edits by three replicas (maps, arrays, texts with formatting, nested
types, every kind of scalar), updates merged and diffed: the reader must walk
every struct of each (the delete set then reads to the last byte), find the
clock ranges pycrdt's own state vector gives for updates that start at zero,
and name the clients an update carries.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, TransactionEvent, get_state, merge_updates

from crdtdb import yjs
from crdtdb.merkle import state_vector_clocks

SCALARS: list[Any] = [None, True, False, 0, -5, 2**40, 1.5, "", "héllo😀", b"\x00\x01"]


def edit(rnd: random.Random, doc: Doc[Any]) -> None:
    data, text, array = doc.get("m", type=Map), doc.get("t", type=Text), doc.get("a", type=Array)
    with doc.transaction():
        op = rnd.randrange(8)
        if op == 7:  # clock lengths count UTF-16 code units
            doc.get("u", type=Text).insert(0, rnd.choice(["é", "😀x", "ü😀"]))
        elif op == 0:
            data[f"k{rnd.randrange(4)}"] = rnd.choice(SCALARS)
        elif op == 1:
            text.insert(rnd.randrange(len(text) + 1), rnd.choice(["ab", "c", "\n"]))
        elif op == 2 and len(text):
            del text[rnd.randrange(len(text))]
        elif op == 3:
            array.insert(rnd.randrange(len(array) + 1), rnd.choice(SCALARS))
        elif op == 4:
            data["nested"] = Map({"x": Array([1, "two"]), "t": Text("hi")})
        elif op == 5:
            formatted = doc.get("f", type=Text)
            formatted.insert(0, "xyz")
            formatted.format(0, 2, {"bold": True})
        else:
            data["list"] = Array([Text("z"), Map({"q": [1, {"r": None}]})])


def walk_whole(update: bytes) -> int:
    """Read an update's structs with the reader, then its delete set: where it ends."""
    reader = yjs._Reader(update)
    reader.read()
    count, pos = yjs.read_varuint(update, reader.pos)
    for _ in range(count):
        _, pos = yjs.read_varuint(update, pos)
        _, pos = yjs.read_pairs(update, pos)
    return pos


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_the_reader_walks_every_update_pycrdt_writes(seed: int) -> None:
    rnd = random.Random(seed)
    docs: list[Doc[Any]] = [Doc(client_id=rnd.randrange(1, 2**53)) for _ in range(3)]
    updates: list[bytes] = []
    editing = [False]

    def keep(event: TransactionEvent) -> None:
        if editing[0]:  # a local edit, not the apply of another replica's update
            updates.append(event.update)

    for doc in docs:
        doc.observe(keep)
    for _ in range(30):
        doc = rnd.choice(docs)
        editing[0] = True
        edit(rnd, doc)
        editing[0] = False
        if rnd.random() < 0.4:
            other = rnd.choice(docs)
            other.apply_update(doc.get_update(other.get_state()))
    merged = [merge_updates(*updates[i : i + 5]) for i in range(0, len(updates), 5)]
    whole = [doc.get_update() for doc in docs]
    for update in updates + merged + whole:
        assert walk_whole(update) == len(update)
        shape = yjs.shape(update)
        assert set(yjs.authors(update)) == set(shape.ranges)
    for update in whole:  # from clock 0: the ranges start where pycrdt's state vector says
        clocks = state_vector_clocks(get_state(update))
        assert {c: r[0] for c, r in yjs.shape(update).ranges.items()} == {
            c: (0, end) for c, end in clocks.items()
        }
    for update in updates:  # an edit of one replica carries that replica's items only
        assert len(yjs.authors(update)) <= 1


def test_garbage_is_a_value_error() -> None:
    for junk in (b"\x01\x01\x05\x00\x1f", b"\x05", b"\x01\x02\x03"):
        try:
            yjs.shape(junk)
        except ValueError:
            continue
        raise AssertionError(f"{junk!r} read as an update")


# ------------------------------------------------------------------ state vectors

u64s = st.integers(0, yjs.MAX_VARUINT)


@given(st.lists(st.tuples(u64s, u64s), max_size=8))
def test_state_vector_codec_round_trips(pairs: list[tuple[int, int]]) -> None:
    data = yjs.encode_state_vector(pairs)
    assert yjs.decode_state_vector(data) == pairs
    assert yjs.encode_state_vector(yjs.decode_state_vector(data)) == data


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.integers(0, 2**53 - 1), st.integers(1, 12), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_state_vector_codec_agrees_with_pycrdt(writes: dict[int, int], rnd: random.Random) -> None:
    """What pycrdt writes decodes to each client's clock (one unit per map write here),
    and a state vector encoded here, in any client order, means the same to pycrdt."""
    merged: Doc[Any] = Doc()
    partial: Doc[Any] = Doc()
    for client, count in writes.items():
        doc: Doc[Any] = Doc(client_id=client)
        for i in range(count):
            doc.get("m", type=Map)[f"k{client}.{i}"] = i
        merged.apply_update(doc.get_update())
        if rnd.random() < 0.5:
            partial.apply_update(doc.get_update())
    state = merged.get_state()
    pairs = yjs.decode_state_vector(state)
    assert dict(pairs) == writes and len(pairs) == len(writes)
    assert yjs.encode_state_vector(pairs) == state
    assert state_vector_clocks(state) == writes
    theirs = yjs.decode_state_vector(partial.get_state())
    rnd.shuffle(theirs)
    diff = merged.get_update(yjs.encode_state_vector(theirs))
    assert diff == merged.get_update(partial.get_state())
    partial.apply_update(diff)
    assert dict(yjs.decode_state_vector(partial.get_state())) == writes


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated"),
        (b"\x01\x05", "claims 1 clients"),
        (b"\x01\x05\x80", "truncated"),
        (b"\x01\x85\x00\x01", "shortest form"),
        (b"\x01\x05\x01\x00", "1 trailing bytes"),
        (b"\x01" + b"\xff" * 9 + b"\x02\x01", "above 2**64-1"),
        (b"\x01" + b"\xff" * 10 + b"\x01\x01", "longer than 10 bytes"),
    ],
)
def test_state_vector_decoder_refuses_all_but_one_canonical_encoding(
    data: bytes, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem.replace("*", r"\*")):
        yjs.decode_state_vector(data)
    with pytest.raises(ValueError):
        state_vector_clocks(data)
