"""The payload codec and field checks of crdtdb.sync.wire: refusals of malformed fields.

Decoded payloads are refused with ``bad_payload`` and the peer blamed; messages
built with bad fields are refused with the caller blamed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from crdtdb.errors import UsageError
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.errors import (
    LocalProtocolError,
    RemoteProtocolError,
)
from crdtdb.sync.wire import (
    Ack,
    Answers,
    Auth,
    AuthOk,
    Diffs,
    Error,
    Fills,
    Frontier,
    Heartbeat,
    Hello,
    LeafList,
    MerkleHashes,
    Records,
    Wants,
)

from .wire_helpers import (
    HASH,
    NONCE,
    frame,
    payload_error,
    record_payload,
)

# ------------------------------------------------------------------ payload refusals


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
        lambda: Records([]),  # type: ignore[arg-type]
        lambda: Records(("not a record",)),  # type: ignore[arg-type]
        lambda: Records((UpdateRecord("a/b", Hlc(1), "eu", 0, b"x"),)),
        lambda: Records((UpdateRecord("a/b", Hlc(1), "eu", 1, b""),)),
        lambda: Ack("eu", -1),
        lambda: Ack("eu", True),
        lambda: Heartbeat(0),
        lambda: Heartbeat(1 << 63),
        lambda: Frontier((("eu", 1, 1), ("eu", 2, 2)), 1),
        lambda: Frontier((("eu", 1),), 1),  # type: ignore[arg-type]
        lambda: MerkleHashes(0, 16, (), HASH),
        lambda: MerkleHashes(0, 8, (), HASH[:4]),
        lambda: MerkleHashes(0, 4, (2, 1), bytes(32)),
        lambda: LeafList(256, True, ()),
        lambda: LeafList(0, 1, ()),  # type: ignore[arg-type]
        lambda: LeafList(0, True, ((1 << 32, b""),)),
        lambda: LeafList(0, True, ((1, HASH[:4]),)),
        lambda: Wants(((1, b"\x00", b"", b""),)),
        lambda: Wants(((2, b"", b"", b""), (1, b"", b"", b""))),
        lambda: Answers((("bad id", b"", False, None),)),
        lambda: Answers((("", "not bytes", False, None),)),  # type: ignore[arg-type]
        lambda: Fills(("not bytes",)),  # type: ignore[arg-type]
        lambda: Diffs((("bad id", b""),)),
    ],
)
def test_invalid_messages_refused_when_built(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.code == "bad_payload"
    assert isinstance(info.value, UsageError)
    assert not isinstance(info.value, RemoteProtocolError)
