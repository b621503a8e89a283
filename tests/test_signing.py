"""The per-origin hash chain and its seals (sync/signing.py), pure: properties."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtdb.errors import RemoteDataError
from crdtdb.hlc import Hlc
from crdtdb.records import REPAIR, WRITE, UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.cert_verify import verify_region_certificate
from crdtdb.sync.errors import RemoteProtocolError
from crdtdb.sync.signing import (
    GENESIS,
    BadRecordSignatureError,
    BrokenChainError,
    Signer,
    UnsignedRecordError,
    chain_hashes,
    match_seals,
    seal_payload,
    split_runs,
    verify_run,
)

FIXTURE = HealthCheck.function_scoped_fixture  # a module-scoped one: certificates made once
Keys = dict[bytes, tuple[str, ec.EllipticCurvePublicKey]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Signer], Keys]:
    from crdtdb.sync.certs import init_ca, issue

    directory = tmp_path_factory.mktemp("certs")
    init_ca(directory)
    signers: dict[str, Signer] = {}
    keys: Keys = {}
    ca = (directory / "ca.pem").read_bytes()
    for region in ("eu", "ap"):
        cert, key = issue(directory, region)
        signer = Signer(region, cert.read_bytes(), key.read_bytes())
        signers[region] = signer
        name, public = verify_region_certificate(ca, cert.read_bytes())
        keys[signer.fingerprint] = (str(name), public)
    return signers, keys


def records_of(origin: str, updates: list[bytes], first: int = 1) -> list[UpdateRecord]:
    return [
        UpdateRecord(f"d/{i % 3}", Hlc(1000 + i), origin, first + i, update, (WRITE, REPAIR)[i % 2])
        for i, update in enumerate(updates)
    ]


def sealed_runs(
    signer: Signer, records: list[UpdateRecord], cuts: list[int]
) -> list[tuple[wire.Seal, list[UpdateRecord]]]:
    """``records`` cut at ``cuts`` (indexes), each run sealed, chained one after another."""
    runs, base, start = [], GENESIS, 0
    for end in sorted({min(cut, len(records)) for cut in cuts} | {len(records)}):
        if end <= start:
            continue
        run = records[start:end]
        hashes, seal = signer.seal(base, run)
        runs.append((seal, run))
        base, start = hashes[-1], end
    return runs


def verify_message(message: wire.Records, keys: Keys) -> None:
    """What a receiver checks of one message, without a store."""
    for seal, run in match_seals(message.records, message.seals):
        region, key = keys[seal.key]
        if region != seal.origin:
            raise BadRecordSignatureError("another region's key")
        verify_run(seal, run, key)


updates = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=12)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(updates=updates, cuts=st.lists(st.integers(0, 12), max_size=5), data=st.data())
def test_signed_runs_verify_in_any_order_and_any_suffix(
    pki: tuple[dict[str, Signer], Keys], updates: list[bytes], cuts: list[int], data: st.DataObject
) -> None:
    signers, keys = pki
    records = records_of("eu", updates)
    runs = sealed_runs(signers["eu"], records, cuts)
    delivered = data.draw(st.permutations(runs))
    hashes: dict[int, bytes] = {}
    for seal, run in delivered:
        message = wire.decode_frame(wire.encode(wire.Records(tuple(run), (seal,))))
        assert isinstance(message, wire.Records)
        verify_message(message, keys)
        for record, head in zip(run, verify_run(seal, run, keys[seal.key][1]), strict=True):
            hashes[record.seq] = head
    # the chain is the same however it was cut: h(seq) from the start, in one go
    assert [hashes[r.seq] for r in records] == chain_hashes(GENESIS, records)
    # a suffix of a run (what a relay sends a peer that holds the rest) verifies too
    seal, run = data.draw(st.sampled_from(runs))
    skip = data.draw(st.integers(0, len(run) - 1))
    base = seal.base if skip == 0 else hashes[run[skip - 1].seq]
    suffix = replace(seal, first=run[skip].seq, base=base)
    verify_run(suffix, run[skip:], keys[seal.key][1])


@settings(max_examples=5, deadline=None, suppress_health_check=[FIXTURE])
@given(updates=st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=3))
def test_every_byte_flip_in_a_sealed_message_is_refused(
    pki: tuple[dict[str, Signer], Keys], updates: list[bytes]
) -> None:
    """Each bit of the payload, flipped in turn: the message no longer decodes or verifies."""
    signers, keys = pki
    records = records_of("eu", updates)
    ((seal, run),) = sealed_runs(signers["eu"], records, [])
    frame = wire.encode(wire.Records(tuple(run), (seal,)))
    for position in range(wire.HEADER_BYTES, len(frame)):
        for bit in range(8):
            flipped = bytearray(frame)
            flipped[position] ^= 1 << bit
            with pytest.raises((RemoteDataError, RemoteProtocolError, KeyError)):
                message = wire.decode_frame(bytes(flipped))
                assert isinstance(message, wire.Records)
                verify_message(message, keys)


def test_a_seal_by_another_regions_key_names_it(pki: tuple[dict[str, Signer], Keys]) -> None:
    signers, keys = pki
    records = records_of("eu", [b"a", b"b"])
    # ap signs a run claiming eu as origin: its own key verifies the signature...
    hashes = chain_hashes(GENESIS, records)
    signature = signers["ap"]._key.sign(seal_payload("eu", 2, hashes[-1]), ec.ECDSA(SHA256()))
    seal = wire.Seal("eu", 1, 2, GENESIS, signers["ap"].fingerprint, signature)
    verify_run(seal, records, keys[seal.key][1])
    # ...but the key is ap's, not eu's: the receiver's region check refuses it
    with pytest.raises(BadRecordSignatureError):
        verify_message(wire.Records(tuple(records), (seal,)), keys)


def test_match_seals_refuses_uncovered_truncated_and_doubled_records(
    pki: tuple[dict[str, Signer], Keys],
) -> None:
    signers, _ = pki
    records = records_of("eu", [b"a", b"b", b"c"])
    ((seal, run),) = sealed_runs(signers["eu"], records, [])
    assert match_seals(run, [seal]) == [(seal, run)]
    with pytest.raises(UnsignedRecordError, match="eu#1"):
        match_seals(run, [])
    with pytest.raises(BrokenChainError, match=r"covers 1\.\.3"):
        match_seals(run[:2], [seal])
    with pytest.raises(BrokenChainError, match="without record eu#2"):
        match_seals([run[0], run[2], run[0]], [seal])
    extra = records_of("eu", [b"d"], first=4)
    with pytest.raises(UnsignedRecordError, match="eu#4"):
        match_seals([*run, *extra], [seal])


@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=40),
    max_records=st.integers(1, 8),
    max_bytes=st.integers(1, 600),
)
def test_split_runs_keeps_order_bounds_runs_and_isolates_large_records(
    sizes: list[int], max_records: int, max_bytes: int
) -> None:
    records = records_of("eu", [b"x" * size for size in sizes])
    runs = split_runs(records, max_records=max_records, max_bytes=max_bytes, large_bytes=200)
    assert [r for run in runs for r in run] == records
    for run in runs:
        assert 0 < len(run) <= max_records
        if any(len(r.update) >= 200 for r in run):
            assert len(run) == 1
        elif len(run) > 1:
            assert sum(len(r.update) for r in run) <= max_bytes


def test_a_key_that_is_not_a_region_certificate_is_refused(tmp_path: Path) -> None:
    from crdtdb.sync.cert_verify import PeerAuthError
    from crdtdb.sync.certs import init_ca, issue

    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b", name="other CA")
    cert, _ = issue(tmp_path / "b", "eu")
    ca = (tmp_path / "a" / "ca.pem").read_bytes()
    with pytest.raises(PeerAuthError, match="not signed by this cluster's CA"):
        verify_region_certificate(ca, cert.read_bytes())
    with pytest.raises(PeerAuthError, match="CA certificate"):
        verify_region_certificate(ca, ca)
