"""Framing (crdtdb.sync.wire.framing): headers, limits, the stream decoder, ``encode``.

Examples check each refusal with its error code and who is blamed.
"""

from __future__ import annotations

import pytest

from crdtdb.hlc import Hlc
from crdtdb.records import REPAIR, UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.errors import (
    ERROR_CODES,
    LocalProtocolError,
    RemoteProtocolError,
)
from crdtdb.sync.wire import (
    AuthOk,
    Diffs,
    FrameDecoder,
    Heartbeat,
    Message,
    Records,
    Seal,
)

from .wire_helpers import (
    frame,
    refused,
)

# ------------------------------------------------------------------ framing


def test_golden_bytes() -> None:
    """The layout other implementations rely on, byte for byte."""
    assert wire.encode(AuthOk("eu")) == b"CD\x01\x03\x00\x00\x00\x03\x02eu"
    record = UpdateRecord("a/b", Hlc(5), "eu", 300, b"\x01")
    payload = b"\x01\x03a/b" + (5).to_bytes(8, "big") + b"\x02eu\xac\x02\x01\x01\x00"
    assert wire.encode(Records((record,))) == frame(0x10, payload + b"\x00")
    repair = UpdateRecord("a/b", Hlc(5), "eu", 300, b"\x01", kind=REPAIR)
    assert wire.encode(Records((repair,))) == frame(0x10, payload[:-1] + b"\x01\x00")
    seal = Seal("eu", 300, 300, bytes(32), b"\x07" * 32, b"sig")
    sealed = payload + b"\x01\x02eu\xac\x02\xac\x02\x20" + bytes(32) + b"\x20" + b"\x07" * 32
    assert wire.encode(Records((record,), (seal,))) == frame(0x10, sealed + b"\x03sig")
    assert wire.decode_frame(frame(0x10, sealed + b"\x03sig")) == Records((record,), (seal,))


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


def test_message_types_table() -> None:
    assert {kind.__name__ for kind in wire.MESSAGE_TYPES.values()} == {
        name
        for name in wire.__all__
        if isinstance(getattr(wire, name), type)
        and issubclass(getattr(wire, name), Message)
        and name != "Message"
    }
    assert all(number == kind.TYPE for number, kind in wire.MESSAGE_TYPES.items())
