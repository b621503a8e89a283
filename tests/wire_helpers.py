"""Strategies and hand-built frames shared by the wire tests (tests/test_wire_*.py).

Frames and payloads here are built by hand, independently of ``wire.encode``,
so that the tests pin the layout rather than echo the encoder.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.errors import (
    ProtocolError,
    RemoteProtocolError,
)
from crdtdb.sync.wire import (
    Ack,
    Answers,
    Auth,
    AuthOk,
    Clocks,
    Diffs,
    Error,
    Fills,
    FrameDecoder,
    Frontier,
    Heartbeat,
    Hello,
    LeafList,
    MerkleHashes,
    Message,
    Records,
    Wants,
)

MAX63 = (1 << 63) - 1
NONCE = bytes(range(32))
HASH = bytes(range(100, 132))

# ------------------------------------------------------------------ strategies

regions = st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,31}", fullmatch=True)
collections = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)
keys = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=12)
doc_ids = st.builds(lambda c, k: f"{c}/{k}", collections, keys)
positive = st.integers(1, MAX63)
non_negative = st.integers(0, MAX63)
u32s = st.integers(0, (1 << 32) - 1)
hashes = st.binary(min_size=32, max_size=32)
slices = st.binary(min_size=wire.MERKLE_HASH_BYTES, max_size=wire.MERKLE_HASH_BYTES)
blobs = st.binary(max_size=40)


def _encode_sv(pairs: list[tuple[int, int]]) -> bytes:
    out = wire.Writer()
    out.varuint(len(pairs))
    for client, clock in pairs:
        out.varuint(client)
        out.varuint(clock)
    return out.getvalue()


state_vectors = st.one_of(
    st.just(b""),  # "no such document" in Wants
    st.lists(st.tuples(st.integers(0, (1 << 53) - 1), st.integers(0, 1 << 40)), max_size=3).map(
        _encode_sv
    ),
)


def slices_of(state_vector: bytes, fill: bytes) -> bytes:
    """A Wants entry's id check or delete-set slice: present only with a state vector."""
    size = wire.ID_CHECK_BYTES if fill == b"c" else wire.MERKLE_HASH_BYTES
    return fill * size if state_vector else b""


def tuples(elements: st.SearchStrategy[Any], **kwargs: Any) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(elements, max_size=4, **kwargs).map(tuple)


records = st.builds(
    UpdateRecord,
    doc_id=doc_ids,
    hlc=positive.map(Hlc),
    origin=regions,
    seq=positive,
    update=st.binary(min_size=1, max_size=40),
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.integers(1, (1 << 32) - 1), regions, st.binary(min_size=32, max_size=32)),
    st.builds(Auth, regions, st.binary(min_size=1, max_size=60), st.binary(min_size=1)),
    st.builds(AuthOk, regions),
    st.builds(Error, st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True), st.text()),
    st.builds(Records, tuples(records)),
    st.builds(Ack, regions, non_negative),
    st.builds(Heartbeat, positive),
    st.builds(wire.SnapshotPull, non_negative),
    st.builds(
        wire.SnapshotOffer,
        positive,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
        positive,
        st.integers(0, len(wire.COMPRESSIONS) - 1),
    ),
    st.builds(wire.SnapshotChunk, non_negative, st.binary(max_size=64)),
    st.builds(
        Frontier,
        tuples(st.tuples(regions, non_negative, non_negative), unique_by=lambda e: e[0]),
        non_negative,
        tuples(regions, unique=True),
    ),
    st.builds(Clocks, tuples(st.tuples(regions, non_negative), unique_by=lambda e: e[0])),
    st.tuples(st.lists(u32s, max_size=3, unique=True), st.sampled_from(wire.FANOUTS)).flatmap(
        lambda spec: st.builds(
            MerkleHashes,
            st.integers(0, 255),
            st.just(spec[1]),
            st.just(tuple(sorted(spec[0]))),
            st.binary(
                min_size=wire.MERKLE_HASH_BYTES * (spec[1] * len(spec[0]) or 1),
                max_size=wire.MERKLE_HASH_BYTES * (spec[1] * len(spec[0]) or 1),
            ),
        )
    ),
    st.builds(
        LeafList,
        st.integers(0, 255),
        st.booleans(),
        st.lists(st.tuples(u32s, st.integers(0, 3)), max_size=4, unique_by=lambda e: e[0]).map(
            lambda leaves: tuple(
                (leaf, bytes(range(n * wire.LEAF_ENTRY_BYTES))) for leaf, n in sorted(leaves)
            )
        ),
    ),
    st.builds(
        Wants,
        st.lists(st.tuples(u32s, state_vectors), max_size=4, unique_by=lambda e: e[0]).map(
            lambda wants: tuple(
                (p, sv, slices_of(sv, b"c"), slices_of(sv, b"d")) for p, sv in sorted(wants)
            )
        ),
    ),
    st.builds(
        Answers,
        tuples(
            st.tuples(
                st.one_of(st.just(""), doc_ids),
                blobs,
                st.booleans(),
                st.one_of(st.none(), st.just(wire.SAME_STATE_VECTOR), state_vectors.filter(bool)),
            ).map(lambda a: (a[0], b"" if a[2] else a[1], a[2], a[3]))
        ),
    ),
    st.builds(Fills, tuples(blobs)),
    st.builds(Diffs, tuples(st.tuples(doc_ids, blobs))),
)


def frame(kind: int, payload: bytes, *, version: int = 1, magic: bytes = b"CD") -> bytes:
    """A frame built by hand, independently of wire.encode."""
    return magic + bytes([version, kind]) + len(payload).to_bytes(4, "big") + payload


def decode_stream(data: bytes) -> tuple[list[Message], int, ProtocolError | None]:
    """What a fresh decoder makes of ``data``: the messages, the bytes they came from, the error.

    Decoding stops at the first error; anything but a ProtocolError fails the test.
    """
    decoder = FrameDecoder()
    out: list[Message] = []
    consumed = 0
    try:
        decoder.feed(data)
        while (message := decoder.next_message()) is not None:
            out.append(message)
            consumed = len(data) - decoder.buffered
    except ProtocolError as exc:
        return out, consumed, exc
    return out, consumed, None


def refused(data: bytes) -> RemoteProtocolError:
    """The error a decoder raises for ``data`` (which must be refused)."""
    _, _, error = decode_stream(data)
    assert isinstance(error, RemoteProtocolError), f"{data!r} was not refused"
    return error


def payload_error(kind: int, payload: bytes) -> RemoteProtocolError:
    error = refused(frame(kind, payload))
    assert error.code == "bad_payload", error
    return error


def record_payload(
    *,
    doc_id: bytes = b"a/b",
    hlc: int = 5,
    origin: bytes = b"eu",
    seq: bytes = b"\x01",
    kind: bytes = b"\x00",
) -> bytes:
    return (
        b"\x01"
        + bytes([len(doc_id)])
        + doc_id
        + hlc.to_bytes(8, "big")
        + bytes([len(origin)])
        + origin
        + seq
        + b"\x01\x00"
        + kind
        + b"\x00"  # no seals
    )
