"""Properties of the wire codecs (crdtdb.sync.wire), with hypothesis:

(a) every message type round-trips through encode/decode, alone and as a
    stream of several frames fed to a FrameDecoder in random chunk splits;
(b) bytes from a peer never raise anything but a ProtocolError: random
    garbage, random payloads behind a valid header, and valid frames with bits
    flipped, bytes cut, inserted or dropped;
(c) whatever such bytes do decode to is a valid message whose encoding is
    exactly the bytes consumed (the encoding is canonical, so nothing is
    silently reinterpreted).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtdb.sync import wire
from crdtdb.sync.wire import (
    FrameDecoder,
    Message,
)

from .wire_helpers import (
    decode_stream,
    frame,
    messages,
)

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
