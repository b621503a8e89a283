"""Tests for crdtdb.sync.wire: framing and message codecs of the replication protocol.

Properties (hypothesis):

(a) every message type round-trips through encode/decode, alone and as a
    stream of several frames fed to a FrameDecoder in random chunk splits;
(b) bytes from a peer never raise anything but a ProtocolError: random
    garbage, random payloads behind a valid header, and valid frames with bits
    flipped, bytes cut, inserted or dropped;
(c) whatever such bytes do decode to is a valid message whose encoding is
    exactly the bytes consumed (the encoding is canonical, so nothing is
    silently reinterpreted).

Examples check each refusal with its error code and who is blamed.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtdb.errors import CrdtdbError, InvalidRecordError, RemoteDataError, UsageError
from crdtdb.hlc import Hlc
from crdtdb.records import REPAIR, UNCHECKED, WRITE, UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.errors import (
    ERROR_CODES,
    LocalProtocolError,
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
    st.builds(
        Frontier,
        tuples(st.tuples(regions, non_negative, non_negative), unique_by=lambda e: e[0]),
        non_negative,
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


# ------------------------------------------------------------------ properties


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    data = wire.encode(message)
    decoded = wire.decode_frame(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert wire.encode(decoded) == data
    assert type(message).decode_payload(message.encode_payload()) == message
    assert data[:4] == b"CD\x01" + bytes([message.TYPE])
    assert int.from_bytes(data[4:8], "big") == len(data) - wire.HEADER_BYTES


@given(st.lists(messages, min_size=1, max_size=6), st.data())
def test_stream_in_random_chunks(batch: list[Message], data: st.DataObject) -> None:
    stream = b"".join(wire.encode(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    received: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        while (message := decoder.next_message()) is not None:
            received.append(message)
    assert received == batch
    assert decoder.buffered == 0


def assert_only_protocol_errors(data: bytes) -> None:
    """Decoding ``data`` raises at most a ProtocolError, and what decodes is canonical."""
    decoded, consumed, _ = decode_stream(data)
    assert b"".join(wire.encode(m) for m in decoded) == data[:consumed]


@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    assert_only_protocol_errors(data)


@given(st.sampled_from(sorted(wire.MESSAGE_TYPES)), st.binary(max_size=200))
def test_random_payloads_raise_only_protocol_errors(kind: int, payload: bytes) -> None:
    assert_only_protocol_errors(frame(kind, payload))


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0), st.just(0)),
    st.tuples(st.just("drop"), st.integers(0), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0), st.integers(0, 255)),
)


def mutate(data: bytes, mutation: tuple[str, int, int]) -> bytes:
    kind, where, arg = mutation
    pos = where % (len(data) + 1)
    if kind == "flip" and pos < len(data):
        return data[:pos] + bytes([data[pos] ^ (1 << arg)]) + data[pos + 1 :]
    if kind == "cut":
        return data[:pos]
    if kind == "drop":
        return data[:pos] + data[pos + 1 :]
    return data[:pos] + bytes([arg]) + data[pos:]


@given(st.lists(messages, min_size=1, max_size=3), st.lists(mutations, min_size=1, max_size=4))
def test_mutated_frames_raise_only_protocol_errors(
    batch: list[Message], changes: list[tuple[str, int, int]]
) -> None:
    data = b"".join(wire.encode(m) for m in batch)
    for change in changes:
        data = mutate(data, change)
    assert_only_protocol_errors(data)


# ------------------------------------------------------------------ framing


def test_golden_bytes() -> None:
    """The layout other implementations rely on, byte for byte."""
    assert wire.encode(AuthOk("eu")) == b"CD\x01\x03\x00\x00\x00\x03\x02eu"
    record = UpdateRecord("a/b", Hlc(5), "eu", 300, b"\x01")
    payload = b"\x01\x03a/b" + (5).to_bytes(8, "big") + b"\x02eu\xac\x02\x01\x01\x00"
    assert wire.encode(Records((record,))) == frame(0x10, payload)
    repair = UpdateRecord("a/b", Hlc(5), "eu", 300, b"\x01", kind=REPAIR)
    assert wire.encode(Records((repair,))) == frame(0x10, payload[:-1] + b"\x01")


def test_header_split_byte_by_byte() -> None:
    data = wire.encode(Heartbeat(Hlc(77)))
    decoder = FrameDecoder()
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    decoder.feed(data[-1:])
    assert decoder.next_message() == Heartbeat(77)
    assert decoder.next_message() is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"X", "bad_frame"),
        (b"CX", "bad_frame"),
        (b"CD\x02", "bad_version"),
        (b"CD\x00\x03", "bad_version"),
        (b"CD\x01\x00", "unknown_type"),
        (b"CD\x01\xff", "unknown_type"),
    ],
)
def test_bad_header_refused_as_soon_as_its_byte_arrives(data: bytes, code: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(data)
    assert info.value.code == code
    assert info.value.error_code == ERROR_CODES[code]


def test_bad_version_message_names_both_versions() -> None:
    error = refused(frame(0x03, b"\x02eu", version=7))
    assert error.code == "bad_version"
    assert "7" in str(error) and "1" in str(error)


def test_oversized_length_refused_after_header_only() -> None:
    header = b"CD\x01\x10" + (wire.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big")
    decoder = FrameDecoder()
    decoder.feed(header[:7])  # not yet known
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(header[7:])
    assert info.value.code == "too_large"
    assert str(wire.MAX_MESSAGE_BYTES) in str(info.value)
    assert decoder.buffered == 8  # nothing of the payload was waited for


def test_limit_is_per_decoder() -> None:
    data = wire.encode(Diffs((("a/b", bytes(90)),)))
    assert len(data) - wire.HEADER_BYTES == 96
    assert wire.decode_frame(data, max_message_bytes=96) == Diffs((("a/b", bytes(90)),))
    decoder = FrameDecoder(max_message_bytes=95)
    with pytest.raises(RemoteProtocolError, match="over the limit of 95") as info:
        decoder.feed(data[:8])
    assert info.value.code == "too_large"


def test_exactly_max_length_is_accepted() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"CD\x01\x25" + wire.MAX_MESSAGE_BYTES.to_bytes(4, "big"))
    assert decoder.next_message() is None  # waits for the payload, no error


@pytest.mark.parametrize("limit", [0, -1, 1 << 32, True])
def test_decoder_limit_must_be_sane(limit: int) -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        FrameDecoder(max_message_bytes=limit)


def test_framing_error_breaks_the_decoder() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"XX")
    with pytest.raises(RemoteProtocolError, match="not a crdtdb frame"):
        decoder.feed(wire.encode(AuthOk("eu")))
    with pytest.raises(RemoteProtocolError, match="not a crdtdb frame"):
        decoder.next_message()


def test_bad_payload_consumes_only_its_frame() -> None:
    good = wire.encode(AuthOk("us"))
    decoder = FrameDecoder()
    decoder.feed(frame(0x03, b"\x02EU") + good)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_message()
    assert info.value.code == "bad_payload"
    assert decoder.next_message() == AuthOk("us")
    assert decoder.buffered == 0


def test_decode_frame_wants_exactly_one_frame() -> None:
    data = wire.encode(AuthOk("eu"))
    with pytest.raises(RemoteProtocolError, match="incomplete") as info:
        wire.decode_frame(data[:-1])
    assert info.value.code == "bad_frame"
    with pytest.raises(RemoteProtocolError, match="after the end") as info:
        wire.decode_frame(data + b"C")
    assert info.value.code == "bad_frame"


def test_encode_refuses_oversized_payload() -> None:
    message = Diffs((("a/b", bytes(100)),))
    with pytest.raises(LocalProtocolError, match="smaller batches") as info:
        wire.encode(message, max_message_bytes=100)
    assert info.value.code == "too_large"
    big = Diffs((("a/b", bytes(wire.MAX_MESSAGE_BYTES)),))
    with pytest.raises(LocalProtocolError) as info:
        wire.encode(big)
    assert info.value.code == "too_large"


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(LocalProtocolError) as info:
        wire.encode(b"hello")  # type: ignore[arg-type]
    assert info.value.code == "unknown_type"


# ------------------------------------------------------------------ payload refusals


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
    )


def test_records_payload_built_by_hand_is_valid() -> None:
    """The baseline the refusals below each change one field of."""
    assert wire.decode_frame(frame(0x10, record_payload())) == Records(
        (UpdateRecord("a/b", Hlc(5), "eu", 1, b"\x00"),)
    )


def test_record_kinds_round_trip_and_an_unknown_one_is_refused() -> None:
    for kind in (WRITE, REPAIR, UNCHECKED):
        (record,) = wire.decode_frame(frame(0x10, record_payload(kind=bytes([kind])))).records
        assert record.kind == kind
    error = payload_error(0x10, record_payload(kind=b"\x03"))
    assert "unknown record kind 3" in str(error)


def test_truncated_payload() -> None:
    payload = Hello(1, "eu", NONCE).encode_payload()
    assert "truncated" in str(payload_error(0x01, payload[:-1]))
    assert "truncated" in str(payload_error(0x10, record_payload()[:-1]))
    assert "truncated" in str(payload_error(0x12, b"\x00" * 7))


def test_trailing_bytes() -> None:
    error = payload_error(0x03, b"\x02eu\x00")
    assert "1 trailing bytes" in str(error)
    payload_error(0x12, (5).to_bytes(8, "big") + b"\x00")


def test_invalid_utf8() -> None:
    assert "UTF-8" in str(payload_error(0x03, b"\x02\xc3\x28"))
    assert "UTF-8" in str(payload_error(0x04, b"\x01x\x02\xed\xa0"))  # an encoded surrogate


def test_invalid_region() -> None:
    assert "region" in str(payload_error(0x03, b"\x02EU"))
    assert "region" in str(payload_error(0x10, record_payload(origin=b"-x")))
    payload_error(0x11, b"\x00\x01")  # empty origin


def test_invalid_doc_id() -> None:
    assert "document id" in str(payload_error(0x10, record_payload(doc_id=b"nocollection")))
    payload_error(0x23, b"\x00\x00\x00\x01\x04a/\x01b" + HASH[:4] + b"\x01\x00")  # a control char
    payload_error(0x24, b"\x01\x03/bc\x00")


def test_record_error_becomes_remote_protocol_error() -> None:
    error = payload_error(0x10, record_payload(seq=b"\x00"))
    assert isinstance(error, RemoteDataError)
    assert not isinstance(error, InvalidRecordError)
    assert "seq" in str(error)


@pytest.mark.parametrize("hlc", [0, 1 << 63, (1 << 64) - 1])
def test_hlc_out_of_range(hlc: int) -> None:
    payload_error(0x10, record_payload(hlc=hlc))
    assert "hlc" in str(payload_error(0x12, hlc.to_bytes(8, "big")))


def test_seq_out_of_range() -> None:
    too_big = b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"  # 2**63 as a varuint
    payload_error(0x10, record_payload(seq=too_big))
    payload_error(0x11, b"\x02eu" + too_big)
    payload_error(0x13, b"\x01\x02eu" + too_big + bytes(16))


def test_varuint_must_be_minimal_and_bounded() -> None:
    assert "shortest" in str(payload_error(0x11, b"\x02eu\x81\x00"))
    assert "2**64" in str(payload_error(0x11, b"\x02eu" + b"\xff" * 9 + b"\x02"))
    assert "10 bytes" in str(payload_error(0x11, b"\x02eu" + b"\xff" * 11))
    assert wire.decode_frame(frame(0x11, b"\x02eu\x81\x01")) == Ack("eu", 129)


HUGE = b"\xff\xff\xff\xff\xff\xff\xff\x7f"  # a count of 2**56 - 1 items


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        (0x10, b""),
        (0x13, b""),
        (0x23, b"\x00\x00"),
        (0x24, b""),
        (0x25, b""),
        (0x26, b"\x00\x10"),
        (0x27, b"\x00"),
        (0x28, b""),
    ],
)
def test_count_larger_than_payload_refused_before_allocating(kind: int, prefix: bytes) -> None:
    assert "claims" in str(payload_error(kind, prefix + HUGE + bytes(8)))


def test_count_just_fitting_is_accepted() -> None:
    # two leaves (gaps 1 and 0: leaves 1 and 2), each with an empty entries blob
    leaves = b"\x02\x01\x00" + b"\x00\x00"
    assert wire.decode_frame(frame(0x23, b"\x05\x01" + leaves)) == LeafList(
        5, True, ((1, b""), (2, b""))
    )
    assert "claims" in str(payload_error(0x23, b"\x05\x01\x06\x01\x00\x00\x00"))


def test_leaf_list_fields() -> None:
    entry = HASH[: wire.LEAF_ENTRY_BYTES]  # 2 bytes of id hash, 3 of digest
    assert wire.decode_frame(frame(0x23, b"\x00\x00\x01\x07\x05" + entry)) == LeafList(
        0, False, ((7, entry),)
    )
    assert "0 or 1" in str(payload_error(0x23, b"\x00\x02\x01\x07\x05" + entry))
    assert "5 bytes each" in str(payload_error(0x23, b"\x00\x00\x01\x07\x04" + entry[:4]))
    with pytest.raises(LocalProtocolError, match="ascending"):
        LeafList(0, True, ((3, b""), (3, b"")))


def test_wants_and_answers_fields() -> None:
    # position 3; a table of one client (id 300); then a state vector of 1 client
    # (length + 1 = 2: index 0, clock 7), the id check and the delete-set slice
    table = b"\x01\xac\x02"
    want = b"\x01\x03" + table + b"\x02\x00\x07" + HASH[:7]
    sv = b"\x01\xac\x02\x07"  # the same state vector in Yjs's encoding
    lacking = b"\x01\x04\x00\x00"  # position 4, an empty table, no such document
    assert wire.decode_frame(frame(0x24, want)) == Wants(((3, sv, HASH[:4], HASH[4:7]),))
    assert wire.encode(Wants(((3, sv, HASH[:4], HASH[4:7]),))) == frame(0x24, want)
    assert wire.decode_frame(frame(0x24, lacking)) == Wants(((4, b"", b"", b""),))
    assert "truncated" in str(payload_error(0x24, want[:-1]))
    assert "outside a table" in str(payload_error(0x24, b"\x01\x03" + table + b"\x02\x01\x07"))
    with pytest.raises(LocalProtocolError, match="id check"):
        Wants(((0, b"", HASH[:4], b""),))
    with pytest.raises(LocalProtocolError, match="not a state vector"):
        Wants(((0, b"\x05", HASH[:4], HASH[:3]),))
    # flags 1|2|8: named, with a diff, asking back with a state vector
    answer = b"\x01\x0b\x03a/b\x02\x00\x00\x02\x00\x07"
    assert wire.decode_frame(frame(0x27, table + answer)) == Answers(
        (("a/b", b"\x00\x00", False, sv),)
    )
    same = b"\x00\x01\x18"  # flags 8|16: asks against the state vector the asker sent
    assert wire.decode_frame(frame(0x27, same)) == Answers((("", b"", False, b""),))
    assert "flags" in str(payload_error(0x27, b"\x00\x01\x10"))  # "same" without an ask
    assert "flags" in str(payload_error(0x27, b"\x00\x01\x20"))
    assert "empty" in str(payload_error(0x27, b"\x00\x01\x02\x00"))
    with pytest.raises(LocalProtocolError, match="apart"):
        Answers((("", b"x", True, None),))


def test_hello_nonce_must_be_32_bytes() -> None:
    assert "nonce" in str(payload_error(0x01, b"\x01\x02eu\x1f" + NONCE[:31]))


def test_frontier_refuses_duplicate_origins() -> None:
    entry = b"\x02eu\x01" + bytes(8)
    assert "more than once" in str(payload_error(0x13, b"\x02" + entry + entry + bytes(8)))


def test_error_code_shape() -> None:
    payload_error(0x04, b"\x03Bad\x00")
    assert wire.decode_frame(frame(0x04, b"\x07newcode\x02hi")) == Error("newcode", "hi")


def test_records_carry_update_bytes_unparsed() -> None:
    """Garbage update bytes travel as they are: the store refuses them, not the wire."""
    record = UpdateRecord("a/b", Hlc(9), "eu", 2, b"\xff\xfenot a crdt update")
    assert wire.decode_frame(wire.encode(Records((record,)))) == Records((record,))


def test_zero_means_nothing_yet_only_where_documented() -> None:
    assert wire.decode_frame(wire.encode(Ack("eu", 0))) == Ack("eu", 0)
    frontier = Frontier((("eu", 0, 0),), 0)
    assert wire.decode_frame(wire.encode(frontier)) == frontier
    payload_error(0x12, bytes(8))  # a heartbeat at HLC 0 says nothing


# ------------------------------------------------------------------ local refusals


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hello(1, "EU", NONCE),
        lambda: Hello(0, "eu", NONCE),
        lambda: Hello(1, "eu", NONCE[:31]),
        lambda: Auth("eu", b"", b"sig"),
        lambda: AuthOk("eu/1"),
        lambda: Error("Bad code", "x"),
        lambda: Error("x", "\ud800"),
        lambda: Records([]),
        lambda: Records(("not a record",)),
        lambda: Records((UpdateRecord("a/b", Hlc(1), "eu", 0, b"x"),)),
        lambda: Records((UpdateRecord("a/b", Hlc(1), "eu", 1, b""),)),
        lambda: Ack("eu", -1),
        lambda: Ack("eu", True),
        lambda: Heartbeat(0),
        lambda: Heartbeat(1 << 63),
        lambda: Frontier((("eu", 1, 1), ("eu", 2, 2)), 1),
        lambda: Frontier((("eu", 1),), 1),
        lambda: MerkleHashes(0, 16, (), HASH),
        lambda: MerkleHashes(0, 8, (), HASH[:4]),
        lambda: MerkleHashes(0, 4, (2, 1), bytes(32)),
        lambda: LeafList(256, True, ()),
        lambda: LeafList(0, 1, ()),
        lambda: LeafList(0, True, ((1 << 32, b""),)),
        lambda: LeafList(0, True, ((1, HASH[:4]),)),
        lambda: Wants(((1, b"\x00", b"", b""),)),
        lambda: Wants(((2, b"", b"", b""), (1, b"", b"", b""))),
        lambda: Answers((("bad id", b"", False, None),)),
        lambda: Answers((("", "not bytes", False, None),)),
        lambda: Fills(("not bytes",)),
        lambda: Diffs((("bad id", b""),)),
    ],
)
def test_invalid_messages_refused_when_built(build: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()  # type: ignore[operator]
    assert info.value.code == "bad_payload"
    assert isinstance(info.value, UsageError)
    assert not isinstance(info.value, RemoteProtocolError)


# ------------------------------------------------------------------ versions and errors


def test_check_version() -> None:
    assert wire.check_version(Hello(wire.PROTOCOL_VERSION, "eu", NONCE)) == 4
    # version 2 listed leaves with ids and state vectors; 3 sent records without their kind
    for other in (1, 2, 3, 5):
        with pytest.raises(RemoteProtocolError, match=f"version {other}") as info:
            wire.check_version(Hello(other, "us", NONCE))
        assert info.value.code == "bad_version"
        assert "'us'" in str(info.value)


def test_error_tree() -> None:
    remote = RemoteProtocolError("bad", code="bad_frame")
    local = LocalProtocolError("oops", code="too_large")
    assert isinstance(remote, ProtocolError) and isinstance(remote, RemoteDataError)
    assert isinstance(local, ProtocolError) and isinstance(local, UsageError)
    assert isinstance(local, ValueError) and isinstance(remote, CrdtdbError)
    assert (remote.code, remote.error_code, str(remote)) == ("bad_frame", 2, "bad")
    assert ProtocolError("x").code == "protocol"
    assert ProtocolError("x", code="not_listed").error_code == ERROR_CODES["protocol"]


def test_error_codes_are_stable_and_distinct() -> None:
    assert dict(list(ERROR_CODES.items())[:6]) == {
        "protocol": 1,
        "bad_frame": 2,
        "bad_version": 3,
        "unknown_type": 4,
        "too_large": 5,
        "bad_payload": 6,
    }
    assert len(set(ERROR_CODES.values())) == len(ERROR_CODES)
    assert 0 not in ERROR_CODES.values()  # QUIC's "no error"


def test_error_message_for_the_peer() -> None:
    error = refused(b"CD\x01\x99")
    message = wire.error_message(error)
    assert message == Error("unknown_type", str(error))
    assert wire.decode_frame(wire.encode(message)) == message


def test_message_types_table() -> None:
    assert {kind.__name__ for kind in wire.MESSAGE_TYPES.values()} == {
        name
        for name in wire.__all__
        if isinstance(getattr(wire, name), type)
        and issubclass(getattr(wire, name), Message)
        and name != "Message"
    }
    assert all(number == kind.TYPE for number, kind in wire.MESSAGE_TYPES.items())
