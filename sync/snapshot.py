"""The sending side of bootstrap by snapshot: a consistent copy of this store, streamed.

A joining region's ``SnapshotPull`` (see :mod:`.wire.snapshot`) reaches the
node as a session event; :class:`SnapshotSender` answers it:

1. It seals this region's newest records (on the writer thread, as before
   any send), so that the copy holds no record of ours without its seal: a
   region that took the copy relays our records and must be able to prove
   them. An application may commit between the sealing and the copy; a copy
   that holds an unsealed record of ours is made again (a few times, then
   the pull is dropped and the joining side falls back to records).
2. It copies the store with SQLite's online backup API in **one step**
   (``backup(pages=-1)``): one read transaction on the source for the whole
   copy, which in WAL mode sees one commit's state however many commits land
   meanwhile, and never holds a writer back. A copy in several steps would be
   restarted by every commit of another connection (and might never end
   under steady writes). ``VACUUM INTO`` is consistent too (it also reads in
   one transaction) but rebuilds every table and index, costing CPU in
   proportion to the rows where the backup copies pages.
3. It announces the copy's size, SHA-256, Merkle root (:func:`tree_root`,
   from its documents' digests) and schema version in a ``SnapshotOffer`` on a
   unidirectional stream of its own, then sends the file in
   ``SnapshotChunk`` frames, each 1 MiB of the file compressed with zlib at
   level 1 in a worker thread (about 3x for a store of small documents;
   aioquic's per-packet cost in Python, not the compression, bounds the
   transfer), keeping at most ``WINDOW_BYTES`` beyond what the
   peer's pulls say it holds. The copy is deleted when the transfer ends.

The transfer is restartable, not resumable: a joining side that lost the
connection pulls a fresh copy (it would be stale anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import sqlite3
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from crdtdb import merkle
from crdtdb.storage import BUSY_TIMEOUT_MS, STORE_FILE

from . import wire
from .provenance import Provenance
from .transport import SessionProtocol
from .writer import StoreWriter

__all__ = ["FAULT_ENV", "OUT_PREFIX", "WINDOW_BYTES", "SnapshotSender", "copy_store", "tree_root"]

log = logging.getLogger("crdtdb.sync")

WINDOW_BYTES = 32 << 20
"""Snapshot bytes sent beyond what the joining side last said it holds."""
OUT_PREFIX = "snapshot-out-"
"""Name of a copy being sent, in the data directory (deleted after; stale ones at start)."""
COPY_ATTEMPTS = 5
FAULT_ENV = "CRDTDB_TEST_SNAPSHOT_FAULT"
"""Tests only: ``corrupt`` (flip a byte of a chunk), ``truncate`` (end the stream half way),
``root`` (announce a wrong Merkle root), ``stall`` (stop sending half way)."""


def tree_root(conn: sqlite3.Connection) -> bytes:
    """The Merkle root the documents' digests make: the XOR of every document's contribution
    that the tree holds (``dirty`` 0 and 1: see :mod:`crdtdb.storage`), recomputed from
    ``docs`` rather than read from ``merkle``, so a copy whose documents were altered
    does not agree with a root announced before."""
    root = bytes(merkle.NODE_BYTES)
    rows = conn.execute(
        "SELECT doc_id, digest FROM docs WHERE dirty IN (0, 1) AND digest IS NOT NULL"
    )
    acc = int.from_bytes(root, "big")
    for doc_id, digest in rows:
        acc ^= int.from_bytes(merkle.contribution(doc_id, bytes(digest)), "big")
    return acc.to_bytes(merkle.NODE_BYTES, "big")


@dataclass(frozen=True, slots=True)
class Copy:
    """A consistent copy of the store, and what the offer says of it."""

    path: Path
    offer: wire.SnapshotOffer
    unsealed: int
    """Records of ours in it without a seal (0 to send it)."""


def copy_store(directory: Path, target: Path, region: str) -> Copy:
    """Copy the store of ``directory`` to ``target`` consistently (see the module docstring)."""
    source = sqlite3.connect(
        f"file:{directory / STORE_FILE}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
    )
    copy = sqlite3.connect(target, isolation_level=None)
    try:
        source.backup(copy)  # pages=-1: all of it in one step, one read transaction
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        root = tree_root(copy)
        held, sealed = copy.execute(
            "SELECT (SELECT max(seq) FROM log WHERE origin = ?),"
            " (SELECT max(seq) FROM chain WHERE origin = ? AND sig IS NOT NULL)",
            (region, region),
        ).fetchone()
        schema = copy.execute("PRAGMA user_version").fetchone()[0]
    finally:
        copy.close()
        source.close()
    digest = hashlib.sha256()
    with target.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    offer = wire.SnapshotOffer(target.stat().st_size, digest.digest(), root, schema or 1)
    return Copy(target, offer, max(0, (held or 0) - (sealed or 0)))


@dataclass(slots=True)
class _Transfer:
    acked: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SnapshotSender:
    """Answers joining regions' pulls, one copy and one stream per session."""

    def __init__(
        self,
        directory: Path,
        region: str,
        provenance: Provenance,
        writer: StoreWriter[SessionProtocol],
    ) -> None:
        self.directory = directory
        self.region = region
        self.provenance = provenance
        self.writer = writer
        self._transfers: dict[SessionProtocol, _Transfer] = {}
        self._served: weakref.WeakSet[SessionProtocol] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._made = 0

    def clean(self) -> None:
        """Delete copies a stopped daemon left behind (only ours, by name)."""
        for stale in self.directory.glob(OUT_PREFIX + "*.sqlite3*"):
            stale.unlink(missing_ok=True)

    def pull(self, protocol: SessionProtocol, message: wire.SnapshotPull) -> None:
        """Start a transfer on a session's first pull; later ones say what the peer holds."""
        transfer = self._transfers.get(protocol)
        if transfer is None:
            if protocol in self._served:  # one snapshot a session: the rest are acks
                return
            self._served.add(protocol)
            transfer = self._transfers[protocol] = _Transfer()
            task = asyncio.create_task(self._serve(protocol, transfer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        transfer.acked = max(transfer.acked, message.received)
        transfer.wake.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, protocol: SessionProtocol, transfer: _Transfer) -> None:
        peer = protocol.session.peer if protocol.session else "?"
        copy: Copy | None = None
        try:
            copy = await self._copy()
            if copy is None:
                log.warning(
                    "%s: no snapshot for %s: new records kept arriving unsealed", self.region, peer
                )
                return
            log.info(
                "%s: sending %s a snapshot of %d bytes",
                self.region,
                peer,
                copy.offer.size,
                extra={"event": "snapshot_send", "peer": peer},
            )
            await self._stream(protocol, transfer, copy)
        except OSError as exc:
            log.warning("%s: cannot send %s a snapshot: %s", self.region, peer, exc)
        finally:
            self._transfers.pop(protocol, None)
            if copy is not None:
                copy.path.unlink(missing_ok=True)

    async def _copy(self) -> Copy | None:
        for _ in range(COPY_ATTEMPTS):
            await self.provenance.sealed_on(self.writer.call)
            self._made += 1
            target = self.directory / f"{OUT_PREFIX}{os.getpid()}-{self._made}.sqlite3"
            target.unlink(missing_ok=True)
            copy = await asyncio.to_thread(copy_store, self.directory, target, self.region)
            if copy.unsealed == 0:
                return copy
            target.unlink(missing_ok=True)
        return None

    async def _stream(self, protocol: SessionProtocol, transfer: _Transfer, copy: Copy) -> None:
        fault = os.environ.get(FAULT_ENV, "")
        offer = copy.offer
        if fault == "root":
            offer = dataclasses.replace(offer, root=bytes(32))
        stream = protocol.send_stream(None, wire.encode(offer))
        half = offer.size // 2
        with copy.path.open("rb") as file:
            offset = 0
            while offset < offer.size:
                while offset - transfer.acked >= WINDOW_BYTES:
                    if _closed(protocol):
                        return
                    transfer.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(transfer.wake.wait(), 1.0)
                if _closed(protocol):
                    return
                data = file.read(wire.SNAPSHOT_CHUNK_BYTES)
                cut = fault in ("truncate", "stall") and offset + len(data) > half
                if cut:
                    data = data[: half - offset]
                if fault == "corrupt" and offset <= half < offset + len(data):
                    flipped = bytearray(data)
                    flipped[half - offset] ^= 0xFF
                    data = bytes(flipped)
                packed = await asyncio.to_thread(zlib.compress, data, 1)  # frees the GIL
                frame = wire.encode(
                    wire.SnapshotChunk(offset, packed),
                    max_message_bytes=wire.MAX_BULK_MESSAGE_BYTES,
                )
                protocol.send_stream(stream, frame, end=cut and fault == "truncate")
                offset += len(data)
                if cut:
                    return
                await asyncio.sleep(0)  # let the loop send, and hear the peer
        protocol.send_stream(stream, b"", end=True)


def _closed(protocol: SessionProtocol) -> bool:
    return protocol.session is None or protocol.session.state == "closed"
