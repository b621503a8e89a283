"""Records carry their origin's signature: the per-origin hash chain and its seals (pure).

A certified region must not be able to forge another region's records, and
relays (which are by design: A-B-C converges though A and C never talk)
must not be taken at their word for a record's origin. So every region
signs what it writes, cheaply:

- **The chain.** Per origin, ``h(seq) = SHA-256(h(seq-1) || record_bytes(r))``
  where :func:`record_bytes` is the canonical encoding of the record's
  ``(origin, seq, hlc, kind, doc_id, update)``, every field length-prefixed.
  Only the origin's daemon computes its own region's chain: application
  processes commit records without the key, and the daemon *seals* them
  (:class:`Signer`) before it first sends them.
- **Seals.** The origin splits what it seals into *runs* (at most
  ``SEAL_RECORDS`` records and about ``SEAL_BYTES`` bytes; a record of
  ``LARGE_BYTES`` or more alone, so that it can go on a bulk lane by
  itself) and signs each run's head: ECDSA P-256 / SHA-256 with its
  certificate's key over ``(label, origin, last seq, h(last))``. A
  :class:`Seal` names the run's origin and seqs, its *base* ``h(first-1)``
  (32 zero bytes where the origin's chain starts), the SHA-256 fingerprint
  of the signing certificate, and the signature. One signature per run, so
  signing costs one ECDSA operation per batch, not per record.
- **Verifying.** The head's signature covers the base and every record of
  the run through the chain, so a run is self-contained: a receiver that
  lacks everything before it still checks it (:func:`verify_run`), and so
  does one that gets runs in any order. Every *suffix* of a sealed run
  verifies too (its base is the chain hash before it), which is what lets a
  relay send a peer exactly what it lacks: records ``s..t`` with base
  ``h(s-1)`` and the seal at ``t``.
- **Keys.** A seal's key is looked up by certificate fingerprint, not by
  region, so a region may rotate its certificate: both keys stay valid for
  what they signed. The public key must come from a certificate the cluster
  CA signed *for the seal's origin*; a seal by another region's key is a
  forgery (the check lives with the daemon, :mod:`.provenance`).

What a refusal here means (each a :class:`~crdtdb.errors.RemoteDataError`
with its code; the session that sent it is closed, nothing of its message
applied): ``unsigned_record`` (a record no seal covers), ``broken_chain``
(a seal whose run is not all there, not contiguous, or of another origin),
``bad_record_signature`` (the signature does not verify, or is by a key
that is not the origin's), ``unknown_key`` (a key whose certificate the
peer never sent). Equivocation, and ``retired_key`` (a seal by a key the
membership retired, over records stamped after it did), are judged against
what the store holds, in :mod:`.provenance`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crdtdb.errors import RemoteDataError, UsageError
from crdtdb.records import UpdateRecord

from .wire import Seal

__all__ = [
    "GENESIS",
    "HASH_BYTES",
    "LARGE_BYTES",
    "SEAL_BYTES",
    "SEAL_RECORDS",
    "BadRecordSignatureError",
    "BrokenChainError",
    "EquivocationError",
    "RetiredKeyError",
    "Seal",
    "Signer",
    "UnknownKeyError",
    "UnsignedRecordError",
    "chain_hashes",
    "fingerprint",
    "match_seals",
    "record_bytes",
    "seal_payload",
    "split_runs",
    "verify_run",
]

HASH_BYTES: Final = 32
GENESIS: Final = bytes(HASH_BYTES)
"""The base of the first record an origin seals (its chain's start)."""
SEAL_RECORDS: Final = 256
"""Records per sealed run, at most (one signature each)."""
SEAL_BYTES: Final = 1 << 20
"""Update bytes per sealed run, about (a run is sent whole, in one message)."""
LARGE_BYTES: Final = 64 * 1024
"""A record at least this big is a run of its own (it travels alone on a bulk lane)."""
_LABEL: Final = b"crdtdb-record-seal-v1"
_ECDSA: Final = ec.ECDSA(hashes.SHA256())


class UnsignedRecordError(RemoteDataError):
    """A record came with no seal of its origin covering it."""

    code = "unsigned_record"


class BrokenChainError(RemoteDataError):
    """A seal's run is not whole: records missing, out of order, or of another origin."""

    code = "broken_chain"


class BadRecordSignatureError(RemoteDataError):
    """A seal's signature does not verify, or was made by a key not the origin's."""

    code = "bad_record_signature"


class UnknownKeyError(RemoteDataError):
    """A seal names a key whose certificate was never presented."""

    code = "unknown_key"


class EquivocationError(RemoteDataError):
    """Two different records (or chains) for the same ``(origin, seq)``, both signed by it."""

    code = "equivocation"


class RetiredKeyError(RemoteDataError):
    """A seal by a key the membership retired (rotated or removed) over later records."""

    code = "retired_key"


def record_bytes(record: UpdateRecord) -> bytes:
    """The canonical encoding of a record that its chain hash covers."""
    origin = record.origin.encode()
    doc_id = record.doc_id.encode()
    return b"".join(
        (
            struct.pack(">H", len(origin)),
            origin,
            struct.pack(">QQBH", record.seq, record.hlc, record.kind, len(doc_id)),
            doc_id,
            struct.pack(">I", len(record.update)),
            record.update,
        )
    )


def chain_hashes(base: bytes, records: Iterable[UpdateRecord]) -> list[bytes]:
    """``h(seq)`` for each record in turn, starting from ``base``."""
    hashes_: list[bytes] = []
    head = base
    for record in records:
        head = hashlib.sha256(head + record_bytes(record)).digest()
        hashes_.append(head)
    return hashes_


def seal_payload(origin: str, last: int, head: bytes) -> bytes:
    """What a seal's signature is over: the chain head at ``last``."""
    name = origin.encode()
    return _LABEL + struct.pack(">H", len(name)) + name + struct.pack(">Q", last) + head


def fingerprint(cert_pem: bytes) -> bytes:
    """The SHA-256 fingerprint of a certificate's DER: how seals name their key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256())


def split_runs(
    records: Sequence[UpdateRecord],
    *,
    max_records: int = SEAL_RECORDS,
    max_bytes: int = SEAL_BYTES,
    large_bytes: int = LARGE_BYTES,
) -> list[list[UpdateRecord]]:
    """Cut consecutive records into runs to seal: bounded, and a large record alone."""
    runs: list[list[UpdateRecord]] = []
    run: list[UpdateRecord] = []
    size = 0
    for record in records:
        large = len(record.update) >= large_bytes
        if run and (large or len(run) >= max_records or size + len(record.update) > max_bytes):
            runs.append(run)
            run, size = [], 0
        run.append(record)
        size += len(record.update)
        if large:
            runs.append(run)
            run, size = [], 0
    if run:
        runs.append(run)
    return runs


class Signer:
    """The region's own key: seals runs of its records (only its daemon holds it)."""

    def __init__(self, region: str, cert_pem: bytes, key_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UsageError("a region key must be an ECDSA key (made by `crdtdb certs issue`)")
        self.region = region
        self.certificate = cert_pem
        self.fingerprint = fingerprint(cert_pem)
        self._key = key

    def seal(self, base: bytes, run: Sequence[UpdateRecord]) -> tuple[list[bytes], Seal]:
        """The chain hashes of ``run`` (consecutive own records after ``base``) and its seal."""
        if not run:
            raise UsageError("there is no run to seal: pass one record or more")
        hashes_ = chain_hashes(base, run)
        last = run[-1].seq
        signature = self._key.sign(seal_payload(self.region, last, hashes_[-1]), _ECDSA)
        seal = Seal(self.region, run[0].seq, last, base, self.fingerprint, signature)
        return hashes_, seal


def match_seals(
    records: Sequence[UpdateRecord], seals: Sequence[Seal]
) -> list[tuple[Seal, list[UpdateRecord]]]:
    """Pair each seal with its run from ``records``; every record must be in exactly one.

    Raises ``UnsignedRecordError`` for a record no seal covers and
    ``BrokenChainError`` for a run that is not all there, in seq order.
    """
    by_key: dict[tuple[str, int], UpdateRecord] = {}
    for record in records:
        if by_key.setdefault((record.origin, record.seq), record) is not record:
            raise BrokenChainError(
                f"refused records: {record.origin}#{record.seq} comes twice in one message"
            )
    runs: list[tuple[Seal, list[UpdateRecord]]] = []
    for seal in seals:
        if seal.last < seal.first or seal.last - seal.first >= len(records):
            raise BrokenChainError(
                f"refused records: a seal of {seal.origin} covers {seal.first}..{seal.last},"
                f" more than the {len(records)} records sent with it"
            )
        run: list[UpdateRecord] = []
        for seq in range(seal.first, seal.last + 1):
            if (seal.origin, seq) not in by_key:
                raise BrokenChainError(
                    f"refused records: {seal.origin}'s seal over {seal.first}..{seal.last} came"
                    f" without record {seal.origin}#{seq} (a truncated or overlapping chain)"
                )
            run.append(by_key.pop((seal.origin, seq)))
        runs.append((seal, run))
    if by_key:
        origin, seq = min(by_key)
        raise UnsignedRecordError(
            f"refused record {origin}#{seq}: no seal of {origin} covers it; every record"
            f" must carry its origin's signature (protocol 5)"
        )
    return runs


def verify_signature(key: ec.EllipticCurvePublicKey, signature: bytes, payload: bytes) -> None:
    """Check a seal's ``signature`` over ``payload``; raises ``InvalidSignature``."""
    key.verify(signature, payload, _ECDSA)


def verify_run(
    seal: Seal, run: Sequence[UpdateRecord], key: ec.EllipticCurvePublicKey
) -> list[bytes]:
    """Check ``seal`` over ``run`` with the origin's ``key``; return the run's chain hashes."""
    hashes_ = chain_hashes(seal.base, run)
    try:
        key.verify(seal.signature, seal_payload(seal.origin, seal.last, hashes_[-1]), _ECDSA)
    except InvalidSignature:
        raise BadRecordSignatureError(
            f"refused records {seal.origin}#{seal.first}..{seal.last}: their signature does"
            f" not verify with {seal.origin}'s key: they are not what {seal.origin} wrote"
            " (forged or altered by a relay)"
        ) from None
    return hashes_
