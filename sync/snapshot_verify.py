"""A snapshot's records are checked against their origins' seals before it is installed.

A joining region takes a peer's store file whole (:mod:`.bootstrap`). The
file's integrity, its schema and its announced Merkle root say that it is a
sound store and the one announced; they do not say that its records are
what their origins wrote. Records that come one by one are checked against
their origins' signatures whichever peer relays them (:mod:`.provenance`),
so a snapshot must not be a way around that. Before the install, every
record of the copy's log is checked the same way, from the ``chain`` and
``keys`` tables the copy carries:

- each record's chain hash is ``SHA-256(prev || record_bytes)`` of its own
  fields, and its ``prev`` is the hash of the record before it wherever the
  copy holds that one;
- every record is covered by a seal: the next signed row of its origin
  (a run's head), whose signature verifies over the head's hash with a key
  whose certificate the cluster CA signed *for that origin*. A run's first
  hash rests on a base the copy may not hold the records of (folded by
  compaction); the signature over the head still pins every record after it,
  since changing one changes every hash up to the head.
- Records that predate signing (``legacy_log_id``: migrated from schema 3)
  carry no seal and are taken as they are, as a relay takes them.

What this does not cover, and the README says so: history folded by
compaction lives in the copy as document snapshots, which carry no
signature (as an anti-entropy diff of folded history does not); and the
documents' digests are the peer's, checked only against the announced root.
"""

from __future__ import annotations

import hashlib
import sqlite3

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord

from .cert_verify import PeerAuthError, verify_region_certificate
from .signing import record_bytes, seal_payload, verify_signature

__all__ = ["SealCheckFailed", "verify_records"]


_Keys = dict[bytes, tuple[str, ec.EllipticCurvePublicKey]]
"""Certificate fingerprint -> (the region the CA signed it for, its public key)."""


class SealCheckFailed(Exception):
    """Why a snapshot's records are refused (the bootstrap turns it into its refusal)."""


def verify_records(conn: sqlite3.Connection, ca_pem: bytes) -> int:
    """Check every record of the store behind ``conn`` against its origin's seals; return
    how many were checked. Raises :class:`SealCheckFailed` saying which record fails."""
    keys = _keys(conn, ca_pem)
    row = conn.execute("SELECT value FROM meta WHERE key = 'legacy_log_id'").fetchone()
    legacy = int(row[0] or 0) if row is not None else 0
    origins = [r[0] for r in conn.execute("SELECT DISTINCT origin FROM log ORDER BY origin")]
    checked = 0
    for origin in origins:
        checked += _verify_origin(conn, origin, keys, legacy)
    return checked


def _keys(conn: sqlite3.Connection, ca_pem: bytes) -> _Keys:
    keys: _Keys = {}
    for fpr, region, pem in conn.execute("SELECT fingerprint, region, certificate FROM keys"):
        try:
            named, key = verify_region_certificate(ca_pem, bytes(pem))
        except PeerAuthError as exc:
            raise SealCheckFailed(f"a certificate it holds for {region} fails: {exc}") from None
        if named != region:
            raise SealCheckFailed(f"it holds {named}'s certificate under the name {region}")
        keys[bytes(fpr)] = (named, key)
    return keys


def _verify_origin(conn: sqlite3.Connection, origin: str, keys: _Keys, legacy: int) -> int:
    rows = conn.execute(
        "SELECT l.id, l.seq, l.hlc, l.kind, l.doc_id, l.payload, c.prev, c.hash, c.key, c.sig"
        " FROM log l LEFT JOIN chain c ON c.origin = l.origin AND c.seq = l.seq"
        " WHERE l.origin = ? ORDER BY l.seq",
        (origin,),
    )
    last_seq, last_hash = 0, b""
    unsealed: list[int] = []  # seqs since the last signed head
    checked = 0
    for log_id, seq, hlc, kind, doc_id, payload, prev, head, fpr, sig in rows:
        if head is None:
            if log_id <= legacy:
                continue  # predates signing: taken as a relay takes it
            raise SealCheckFailed(f"record {origin}#{seq} carries no chain row: it is unsealed")
        if seq == last_seq + 1 and last_hash and bytes(prev) != last_hash:
            raise SealCheckFailed(f"record {origin}#{seq} does not follow {origin}#{last_seq}")
        record = UpdateRecord(doc_id, Hlc(hlc), origin, seq, bytes(payload), kind)
        if hashlib.sha256(bytes(prev) + record_bytes(record)).digest() != bytes(head):
            raise SealCheckFailed(f"record {origin}#{seq} is not what its chain hash covers")
        unsealed.append(seq)
        if sig is not None:
            _check_seal(origin, seq, bytes(head), bytes(fpr or b""), bytes(sig), keys)
            unsealed.clear()
        last_seq, last_hash = seq, bytes(head)
        checked += 1
    if unsealed:
        raise SealCheckFailed(
            f"records {origin}#{unsealed[0]}..{unsealed[-1]} are covered by no seal"
        )
    return checked


def _check_seal(
    origin: str,
    seq: int,
    head: bytes,
    fpr: bytes,
    sig: bytes,
    keys: _Keys,
) -> None:
    known = keys.get(fpr)
    if known is None:
        raise SealCheckFailed(f"the seal of {origin}#{seq} is by a key it holds no certificate of")
    region, key = known
    if region != origin:
        raise SealCheckFailed(f"the seal of {origin}#{seq} is by {region}'s key: a forgery")
    try:
        verify_signature(key, sig, seal_payload(origin, seq, head))
    except InvalidSignature:
        raise SealCheckFailed(
            f"the seal of {origin}#{seq} does not verify with {origin}'s key: forged or altered"
        ) from None
