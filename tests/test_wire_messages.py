"""Each message of crdtdb.sync.wire: fields, golden payloads built by hand, versions, errors."""

from __future__ import annotations

from typing import cast

import pytest

from crdtdb import ids
from crdtdb import records as records_module
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
    Error,
    Frontier,
    Hello,
    LeafList,
    Records,
    Wants,
)

from .wire_helpers import (
    HASH,
    NONCE,
    frame,
    payload_error,
    record_payload,
    refused,
)

# ------------------------------------------------------------------ records


def test_records_payload_built_by_hand_is_valid() -> None:
    """The baseline the refusals below each change one field of."""
    assert wire.decode_frame(frame(0x10, record_payload())) == Records(
        (UpdateRecord("a/b", Hlc(5), "eu", 1, b"\x00"),)
    )


def test_record_kinds_round_trip_and_an_unknown_one_is_refused() -> None:
    for kind in (WRITE, REPAIR, UNCHECKED):
        message = cast(Records, wire.decode_frame(frame(0x10, record_payload(kind=bytes([kind])))))
        (record,) = message.records
        assert record.kind == kind
    error = payload_error(0x10, record_payload(kind=b"\x03"))
    assert "unknown record kind 3" in str(error)


def test_record_error_becomes_remote_protocol_error() -> None:
    error = payload_error(0x10, record_payload(seq=b"\x00"))
    assert isinstance(error, RemoteDataError)
    assert not isinstance(error, InvalidRecordError)
    assert "seq" in str(error)


def test_a_decoded_record_is_checked_at_the_edge_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder checks each record; the store's apply_remote_many then takes it as it is."""
    calls: list[object] = []
    check = ids.validate_doc_id  # what records calls by that name

    def counting(doc_id: object) -> str:
        calls.append(doc_id)
        return check(doc_id)

    monkeypatch.setattr(records_module, "validate_doc_id", counting)
    message = wire.decode_frame(frame(0x10, record_payload()))
    assert isinstance(message, Records) and calls == ["a/b"]
    (record,) = message.records
    assert record.validated() is record
    assert calls == ["a/b"]  # as apply_remote_many calls it: not checked again


def test_records_carry_update_bytes_unparsed() -> None:
    """Garbage update bytes travel as they are: the store refuses them, not the wire."""
    record = UpdateRecord("a/b", Hlc(9), "eu", 2, b"\xff\xfenot a crdt update")
    assert wire.decode_frame(wire.encode(Records((record,)))) == Records((record,))


def test_zero_means_nothing_yet_only_where_documented() -> None:
    assert wire.decode_frame(wire.encode(Ack("eu", 0))) == Ack("eu", 0)
    frontier = Frontier((("eu", 0, 0),), 0)
    assert wire.decode_frame(wire.encode(frontier)) == frontier
    payload_error(0x12, bytes(8))  # a heartbeat at HLC 0 says nothing


def test_frontier_refuses_duplicate_origins() -> None:
    entry = b"\x02eu\x01" + bytes(8)
    assert "more than once" in str(
        payload_error(0x13, b"\x02" + entry + entry + bytes(8) + b"\x00")
    )


# ------------------------------------------------------------------ anti-entropy


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


# ------------------------------------------------------------------ handshake, versions, errors


def test_hello_nonce_must_be_32_bytes() -> None:
    assert "nonce" in str(payload_error(0x01, b"\x01\x02eu\x1f" + NONCE[:31]))


def test_error_code_shape() -> None:
    payload_error(0x04, b"\x03Bad\x00")
    assert wire.decode_frame(frame(0x04, b"\x07newcode\x02hi")) == Error("newcode", "hi")


def test_check_version() -> None:
    assert wire.check_version(Hello(wire.PROTOCOL_VERSION, "eu", NONCE)) == 6
    # version 2 listed leaves with ids and state vectors; 3 sent records without their kind;
    # 4 sent records without their origin's seal; 5 could not send a snapshot nor
    # name in a Frontier the regions it is linked to
    for other in (1, 2, 3, 4, 5, 7):
        with pytest.raises(RemoteProtocolError, match=f"version {other}") as info:
            wire.check_version(Hello(other, "us", NONCE))
        assert info.value.code == "bad_version"
        assert f"speaks protocol version {other}, this node speaks 6" in str(info.value)
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
