"""Which records a daemon accepts as its origin's, and how it seals and relays its own.

:mod:`.signing` is the pure chain-and-seal logic; this module applies it to
a store (``crdtdb.chains`` rows) with the daemon's key and the cluster CA:

- **Sealing.** :meth:`Provenance.seal_own` extends this region's chain over
  the records its applications committed since (they do not hold the key),
  one signature per run; the node calls it on the writer thread whenever
  the log grows, before it wakes the sessions, so signing is never on the
  per-record path. A session sends only sealed records.
- **Relaying.** :meth:`Provenance.runs_from` reads what a peer lacks as
  sealed runs: from the first chained record after what the peer holds
  (its base is that record's ``prev``) to a seal point, whole runs up to
  the batch size, stopping before a run it would refuse itself (a retired
  key's, below). Records without chain rows (legacy ones of other origins,
  see :mod:`crdtdb.storage`) are never relayed: no one could check them.
- **Keys.** A seal names its key by certificate fingerprint. Certificates
  come in ``Certificates`` messages from whichever peer relays; each is
  checked against the cluster CA (:func:`.cert_verify.verify_region_certificate`)
  and kept in ``keys``; a seal whose key is another region's is a forgery.
- **Checking a batch** (:meth:`Provenance.check`, on the writer thread,
  before anything of it is applied): every record in exactly one seal's run,
  every run's signature good, its base agreeing with the chain hash held
  before it, and every record already held the same as the one held. Then:

  ========================================  ===============================  =========
  what came                                 what it is                       evidence
  ========================================  ===============================  =========
  bad signature, or another region's key    ``bad_record_signature``:        forgery
                                            the relay made it up
  good signature, a held record differs     ``equivocation``: only the       equivocation
  (or the base differs from the held hash)  origin's key signs; flagged
  good signature, differs from a *legacy*   the held one predates signing    legacy
  held record (no chain row)                (maybe a forgery of old): kept,
                                            the new one skipped, no refusal
  ========================================  ===============================  =========

  **Retired keys** (the membership, :mod:`crdtdb.membership`, as this
  store holds it when the batch is checked). A key's life ends at an HLC
  ``t`` the membership stores:

  - *rotated*: ``t`` is the HLC the origin recorded its *next* certificate
    at (the next ``cert:<sha256>`` entry, in the membership's order). The
    origin takes ``t`` past every HLC its store held, after its old daemon
    (the only holder of the old key) stopped, so every record the old key
    sealed honestly is stamped before ``t``;
  - *removed*: ``t`` is the HLC of the first ``removed`` change of its
    region (:attr:`~crdtdb.membership.Member.since`), for every key of it;
    its records ``1..final_seq`` stay final whatever their stamp.

  A run sealed by such a key that holds a record stamped at or after ``t``
  (``hlc >= t``; for a removed region, one past ``final_seq``) is refused
  with ``retired_key`` before it is compared with what is held (a stolen
  key must not get its honest origin flagged for equivocation); runs the
  key sealed before ``t`` still verify, relayed by anyone, at any time.
  What this cannot stop: a thief of an old key stamping records *before*
  ``t`` (HLCs are the sealer's to choose); such records take sequence
  numbers the origin uses too, so they clash with its real chain as
  equivocation evidence wherever both arrive. A store that learns the
  rotation or removal only after it took such a run keeps it, but from then
  on relays nothing of that origin from that run on
  (:meth:`Provenance.runs_from`): the peers that know would refuse it, and
  close the session each time. A key the membership never recorded (a
  certificate from before membership) is not judged here.

  A refusal closes the session that sent the batch, and nothing of the
  batch is applied; evidence of the cases in the table (both records'
  canonical bytes, the seal, the relaying peer, when, how often) goes in
  ``conflicts``, and so does a ``retired_key`` refusal (kind
  ``retired_key``: the first late record and the seal); ``crdtdb status``
  and the metrics count them.

**Anti-entropy repairs keep the origin where they can** (:mod:`.resend`): a
round that finds a document differing sends the peer the original records
that carry what it lacks, as their origins sealed them (relayed and checked
like any record), not a diff. Only what no record here carries any longer
(history compacted below the horizon, other origins' legacy unsigned
records) goes as a state diff, which the receiver commits as a record of
the *repairing* region (kind ``REPAIR``) and seals with its own key, so its
provenance is "this region vouches for this state diff", not "the author
wrote it"; the origins whose items it carries are read from its Yjs client
ids (``clients``, :meth:`crdtdb.chains.Chains.carried`). What a malicious certified region can
still do through repairs: put content of its choosing into documents, under
its *own* name (a repair it seals) or through the state diffs it answers in
a round, which the receiver commits as its own repair; it cannot make that
content appear as another region's signed record. Signing diffs per item
author would need Yjs items to carry their author's signature, which they
do not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from crdtdb.chains import ChainRow, Conflict, DocRecord
from crdtdb.database import Database
from crdtdb.errors import CrdtdbError
from crdtdb.hlc import Hlc
from crdtdb.membership import Membership
from crdtdb.records import UpdateRecord

from . import wire
from .cert_verify import PeerAuthError, verify_region_certificate
from .errors import LocalProtocolError
from .signing import (
    GENESIS,
    SEAL_RECORDS,
    BadRecordSignatureError,
    EquivocationError,
    RetiredKeyError,
    Signer,
    UnknownKeyError,
    chain_hashes,
    fingerprint,
    match_seals,
    record_bytes,
    split_runs,
    verify_run,
)

__all__ = ["Provenance", "key_limits", "past_retirement", "refuse_retired"]

log = logging.getLogger("crdtdb.sync")

WriterCall = Callable[[Callable[[], object]], Awaitable[object]]
"""Runs a store write on the writer thread (``StoreWriter.call``)."""
SEAL_PAGE = 4096
"""Own records sealed per store transaction, at most."""


def _seal_bytes(seal: wire.Seal) -> bytes:
    """A seal as evidence: enough to verify it again."""
    return b"".join(
        (
            seal.first.to_bytes(8, "big"),
            seal.last.to_bytes(8, "big"),
            seal.base,
            seal.key,
            seal.signature,
        )
    )


class Provenance:
    """One region's signer and verifier of records, over its store."""

    def __init__(
        self,
        store: Database,
        ca_pem: bytes,
        signer: Signer,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.region = store.region
        self._ca = ca_pem
        self.signer = signer
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._keys: dict[bytes, tuple[str, ec.EllipticCurvePublicKey]] = {}
        self._pems: dict[bytes, bytes] = {}
        self.sealed = 0
        """Own records sealed by this process."""
        self.sealed_through = 0
        """Every own record up to this seq is sealed, as :meth:`seal_own` last found."""
        self.seals_made = 0
        self.runs_verified = 0

    def start(self) -> None:
        """Keep this region's own certificate, and load the keys held (writer thread).

        The own key is known in memory first, so that a store that cannot be
        written right now (a full disk) does not keep its seals from being sent.
        """
        self._learn(self.signer.fingerprint, self.signer.certificate)
        for fpr, region, pem in self.store.chains.certificates():
            try:
                self._learn(fpr, pem)
            except PeerAuthError as exc:  # say, kept under a CA the cluster no longer uses
                log.warning("%s: a stored key of %s is not used: %s", self.region, region, exc)
        self.store.chains.add_key(
            self.signer.fingerprint, self.region, self.signer.certificate, self._clock_ms()
        )

    async def started(self, call: WriterCall) -> None:
        """:meth:`start`, then :meth:`seal_own`, on the writer thread (``call``): the
        node's start. A store that cannot be written is logged, not fatal (the
        heartbeat reports it)."""
        try:
            await call(self.start)
        except CrdtdbError as exc:
            log.warning("%s: cannot store this region's certificate yet: %s", self.region, exc)
        await self.sealed_on(call)

    async def sealed_on(self, call: WriterCall) -> None:
        """Seal this region's new records on the writer thread, before sessions send them."""
        try:
            await call(self.seal_own)
        except CrdtdbError as exc:
            log.warning("%s: cannot seal new records yet: %s", self.region, exc)

    # ------------------------------------------------------------------ keys

    def _learn(self, fpr: bytes, pem: bytes) -> str:
        region, key = verify_region_certificate(self._ca, pem)
        self._keys[fpr] = (region, key)
        self._pems[fpr] = pem
        return region

    def note_certificates(self, pems: Sequence[bytes]) -> None:
        """Check certificates a peer sent against the CA and keep them (writer thread)."""
        for pem in pems:
            try:
                fpr = fingerprint(pem)
            except ValueError:
                raise PeerAuthError("a certificate sent for seals is not PEM") from None
            if fpr in self._keys:
                continue
            region = self._learn(fpr, pem)
            self.store.chains.add_key(fpr, region, pem, self._clock_ms())

    def certificate(self, fpr: bytes) -> bytes | None:
        """The certificate (PEM) with this fingerprint, if held."""
        pem = self._pems.get(fpr)
        if pem is None:
            for held, _, stored in self.store.chains.certificates():
                if held == fpr:
                    self._learn(held, stored)
                    return stored
        return pem

    def certificates(self, fprs: Sequence[bytes]) -> tuple[bytes, ...]:
        """The certificates (PEM) of these keys, to send before the seals they made."""
        pems = []
        for fpr in fprs:
            pem = self.certificate(fpr)
            if pem is None:
                raise LocalProtocolError(
                    f"no certificate held for seal key {fpr.hex()[:16]}", code="unknown_key"
                )
            pems.append(pem)
        return tuple(pems)

    # --------------------------------------------------------------- sealing

    def seal_own(self) -> int:
        """Seal this region's records committed since the last call; return how many."""
        total = 0
        while True:
            tail = self.store.chains.tail(self.region)
            records = self.store.chains.unchained(self.region, tail.seq if tail else 0, SEAL_PAGE)
            if not records:
                self.sealed_through = max(self.sealed_through, tail.seq if tail else 0)
                return total
            base = tail.hash if tail is not None and records[0].seq == tail.seq + 1 else GENESIS
            contiguous = [records[0]]
            for record in records[1:]:
                if record.seq != contiguous[-1].seq + 1:
                    break
                contiguous.append(record)
            rows: list[ChainRow] = []
            for run in split_runs(contiguous):
                hashes, seal = self.signer.seal(base, run)
                rows.extend(_rows(seal, run, hashes))
                base = hashes[-1]
                self.seals_made += 1
            self.store.chains.add(rows)
            total += len(rows)
            self.sealed += len(rows)
            if len(records) < SEAL_PAGE and len(contiguous) == len(records):
                self.sealed_through = max(self.sealed_through, contiguous[-1].seq)
                return total

    # -------------------------------------------------------------- relaying

    def runs_from(
        self, origin: str, after_seq: int, limit: int
    ) -> list[tuple[wire.Seal, list[UpdateRecord]]]:
        """Sealed runs of ``origin`` above ``after_seq``: about ``limit`` records, whole runs."""
        runs: list[tuple[wire.Seal, list[UpdateRecord]]] = []
        current: list[UpdateRecord] = []
        base = GENESIS
        count = 0
        cursor = after_seq
        view = self.store.chains.membership()
        while count < limit:
            page = self.store.chains.chained_from(origin, cursor, limit + SEAL_RECORDS)
            for item in page:
                record, chain = item.record, item.chain
                if current and record.seq != current[-1].seq + 1:
                    current = []  # a gap: what came before it has no seal after it
                if not current:
                    base = chain.prev
                current.append(record)
                if chain.key is not None and chain.sig is not None:
                    first = current[0].seq
                    seal = wire.Seal(origin, first, record.seq, base, chain.key, chain.sig)
                    if past_retirement(view, seal, current) is not None:
                        return runs  # what it would refuse, this store does not relay
                    runs.append((seal, current))
                    count += len(current)
                    current = []
                    if count >= limit:
                        break
            if len(page) < limit + SEAL_RECORDS:
                break
            cursor = page[-1].record.seq
        return runs

    def doc_records(self, doc_id: str, limit: int) -> list[DocRecord]:
        """A document's log records, chained or not (see :mod:`.resend`)."""
        return self.store.chains.doc_records(doc_id, limit)

    # -------------------------------------------------------------- checking

    def _key(self, fpr: bytes) -> tuple[str, ec.EllipticCurvePublicKey]:
        known = self._keys.get(fpr)
        if known is None and self.certificate(fpr) is not None:
            known = self._keys.get(fpr)
        if known is None:
            raise UnknownKeyError(
                f"refused records: sealed with key {fpr.hex()[:16]}, whose certificate the"
                " peer never sent (it must send Certificates before the Records they seal)"
            )
        return known

    def check(
        self, records: Sequence[UpdateRecord], seals: Sequence[wire.Seal], peer: str
    ) -> tuple[list[UpdateRecord], list[ChainRow]]:
        """The records to apply and their chain rows; raise to refuse the batch."""
        out: list[UpdateRecord] = []
        rows: list[ChainRow] = []
        view = self.store.chains.membership() if seals else None
        for seal, run in match_seals(records, seals):
            hashes, problem = self._verify(seal, run)
            late = past_retirement(view, seal, run) if problem is None else None
            if late is not None:
                self._note("retired_key", seal, late[1], None, peer)
                refuse_retired(view, seal, run, peer)
            skip = self._compare_held(seal, run, problem, peer)
            if problem is not None:
                self._note("forgery", seal, run[-1], None, peer)
                raise problem
            self._check_base(seal, run, peer)
            self.runs_verified += 1
            for row, record in zip(_rows(seal, run, hashes), run, strict=True):
                if record.seq not in skip:
                    rows.append(row)
                    out.append(record)
        return out, rows

    def _verify(
        self, seal: wire.Seal, run: list[UpdateRecord]
    ) -> tuple[list[bytes], BadRecordSignatureError | None]:
        region, key = self._key(seal.key)
        if region != seal.origin:
            return chain_hashes(seal.base, run), BadRecordSignatureError(
                f"refused records {seal.origin}#{seal.first}..{seal.last}: sealed with"
                f" {region}'s key, not {seal.origin}'s: a region may relay another's records,"
                " never sign them"
            )
        try:
            return verify_run(seal, run, key), None
        except BadRecordSignatureError as exc:
            return chain_hashes(seal.base, run), exc

    def _compare_held(
        self,
        seal: wire.Seal,
        run: list[UpdateRecord],
        problem: BadRecordSignatureError | None,
        peer: str,
    ) -> set[int]:
        """Compare with what is held; return the seqs to skip (legacy clashes)."""
        held = self.store.chains.held(seal.origin, seal.first, seal.last)
        skip: set[int] = set()
        for record in run:
            mine = held.get(record.seq)
            if mine is None:
                continue
            ours, signed = mine
            if record_bytes(ours) == record_bytes(record):
                continue
            if problem is not None:
                self._note("forgery", seal, record, ours, peer)
                raise BadRecordSignatureError(
                    f"{problem} It also contradicts {record.origin}#{record.seq} as held here;"
                    f" kept as evidence of forgery by {peer}"
                )
            if not signed:
                self._note("legacy", seal, record, ours, peer)
                log.warning(
                    "%s: %s#%d from %s is signed by %s but differs from the unsigned record"
                    " held since before signing; kept the held one, evidence in conflicts",
                    self.region,
                    record.origin,
                    record.seq,
                    peer,
                    record.origin,
                    extra={"event": "legacy_conflict", "peer": peer},
                )
                skip.add(record.seq)
                continue
            self._note("equivocation", seal, record, ours, peer)
            raise EquivocationError(
                f"refused record {record.origin}#{record.seq} relayed by {peer}: {record.origin}"
                f" signed two different records with this number (both kept as evidence);"
                f" {record.origin} is flagged: check that region, and remove it if its key is"
                " compromised"
            )
        return skip

    def _check_base(self, seal: wire.Seal, run: list[UpdateRecord], peer: str) -> None:
        if seal.first == 1:
            held = GENESIS if seal.base == GENESIS else None
        else:
            held = self.store.chains.hash_at(seal.origin, seal.first - 1)
        if held is None or held == seal.base:
            return
        self._note("equivocation", seal, run[0], None, peer)
        raise EquivocationError(
            f"refused records {seal.origin}#{seal.first}..{seal.last} relayed by {peer}: they"
            f" continue a chain of {seal.origin} other than the one held here (a fork: two"
            f" histories signed by {seal.origin}, both kept as evidence); {seal.origin} is"
            " flagged"
        )

    def _note(
        self,
        kind: str,
        seal: wire.Seal,
        offered: UpdateRecord,
        held: UpdateRecord | None,
        peer: str,
    ) -> None:
        conflict = Conflict(
            origin=seal.origin,
            seq=offered.seq,
            kind=kind,
            peer=peer,
            held=None if held is None else record_bytes(held),
            offered=record_bytes(offered),
            seal=_seal_bytes(seal),
        )
        try:
            self.store.chains.note_conflict(conflict, self._clock_ms())
        except CrdtdbError as exc:
            log.error("%s: could not keep the evidence of a %s: %s", self.region, kind, exc)


def key_limits(view: Membership | None, origin: str, fpr: bytes) -> list[tuple[Hlc, int]]:
    """Where ``origin``'s key ``fpr`` stops vouching: ``(t, final_seq)`` pairs, each saying
    "no record stamped at or after ``t`` and numbered past ``final_seq``" (none: no limit).

    Rotated: ``t`` is when the next certificate of ``origin`` was recorded
    (``final_seq`` 0). Removed: the first removal's HLC, and the records that
    stay final.
    """
    member = view.members.get(origin) if view is not None else None
    if member is None:
        return []
    limits: list[tuple[Hlc, int]] = []
    prints = [fp for fp, _, _ in member.fingerprints]
    if fpr.hex() in prints[:-1]:
        limits.append((member.fingerprints[prints.index(fpr.hex()) + 1][1], 0))
    since = member.since
    if member.state == "removed" and since is not None:
        limits.append((since.hlc, member.final_seq))
    return limits


def past_retirement(
    view: Membership | None, seal: wire.Seal, run: Sequence[UpdateRecord]
) -> tuple[Hlc, UpdateRecord] | None:
    """The retirement HLC of ``seal``'s key and the first record of ``run`` past it, if any."""
    for since, final_seq in key_limits(view, seal.origin, seal.key):
        late = next((r for r in run if r.hlc >= since and r.seq > final_seq), None)
        if late is not None:
            return since, late
    return None


def refuse_retired(
    view: Membership | None, seal: wire.Seal, run: Sequence[UpdateRecord], peer: str
) -> None:
    """Raise ``RetiredKeyError`` if ``seal``'s key vouches for a record of ``run`` that
    :func:`key_limits` puts past its retirement (``peer``: who relayed it)."""
    found = past_retirement(view, seal, run)
    if found is not None:
        since, late = found
        raise RetiredKeyError(
            f"refused records {seal.origin}#{seal.first}..{seal.last} relayed by {peer}:"
            f" sealed with {seal.origin}'s key {seal.key.hex()[:16]}, which the cluster"
            f" membership retired at HLC {since} (a newer certificate, or the region's"
            f" removal), and {late.origin}#{late.seq} is stamped {late.hlc}, not before"
            " that: an old key only vouches for what it sealed before it was replaced; if"
            f" the key was stolen, these records are forged: check {peer} and {seal.origin}"
        )


def _rows(seal: wire.Seal, run: Sequence[UpdateRecord], hashes: list[bytes]) -> list[ChainRow]:
    rows = []
    prev = seal.base
    for i, (record, head) in enumerate(zip(run, hashes, strict=True)):
        last = i == len(run) - 1
        rows.append(
            ChainRow(
                record.origin,
                record.seq,
                prev,
                head,
                seal.key if last else None,
                seal.signature if last else None,
            )
        )
        prev = head
    return rows
