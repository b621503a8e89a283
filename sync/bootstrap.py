"""The joining side of bootstrap by snapshot: pull a peer's store, check it, take it over.

A daemon whose data directory holds **no store at all** (a region that has
never held anything) starts, before it opens the directory, by pulling a
snapshot from one of its peers (``[sync] bootstrap = "snapshot"``, the
default; ``"records"`` syncs record by record as before). A directory that
holds a store, even an empty one, is never bootstrapped: what it holds is
never replaced.

- **Applications wait.** ``BOOTSTRAP_MARKER`` sits in the directory from
  before the store is looked for until the install is done; meanwhile
  ``crdtdb.open`` refuses with a ``BootstrappingError`` (code
  ``bootstrapping``) saying to retry. An application that opened the
  directory just before (and so created a store) wins: the install never
  replaces a file (below), the snapshot is dropped and records sync.
- **Transfer.** Over QUIC to the peer, with the sync handshake (``Hello``,
  ``Auth``, ``AuthOk``), then ``SnapshotPull`` (see :mod:`.wire.snapshot`);
  the file arrives in ``BOOTSTRAP_PART``, hashed as it comes.
- **Checks before install**, each refusal logged with its reason, the part
  file deleted, nothing else touched: the size and SHA-256 the offer
  announced (a corrupted chunk, a truncated stream), ``PRAGMA
  integrity_check``, the application id, the schema version (this
  crdtdb's ``SCHEMA_VERSION``), and the Merkle root recomputed from the
  documents' digests against the one announced (a forged store), and every
  record's chain hash and seal against its origin's certified key
  (:mod:`.snapshot_verify`: records made up under another origin's name).
- **Takeover**, in the part file: the region becomes ours (``meta``), the
  peer's clock fence goes (it fenced the peer's clock, not ours), and our
  frontier row, if the peer held one, goes (we report our own). The
  origins' progress, the log, the chains and seals of every origin
  (the peer's records stay the peer's), the keys, the conflicts, the client
  bindings and the membership document stay as the snapshot holds them: the
  peer's own records are its origin's, and our sequence numbers start at 1
  because the snapshot holds no record of ours (a snapshot that does is
  refused: this region is not new). Our process draws a fresh Yjs client id
  on open, one not bound in ``clients``.
- **Install**: ``os.link`` of the part file to the store's name, which
  fails rather than replace a store that appeared meanwhile (``rename``
  would replace it), then the part file and the marker go. One atomic step:
  the store is there whole or not at all.
- **Killed part way**: the marker and the part file remain; the next start
  deletes the part and pulls again. Killed after the link: the store is
  there, so the next start removes the marker and serves it.
- After the install the daemon serves as usual: the normal delta push brings
  what was committed after the copy, from the per-origin progress the
  snapshot holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path

from crdtdb.database import BOOTSTRAP_MARKER
from crdtdb.errors import CrdtdbError, RemoteDataError
from crdtdb.fence import FENCE_KEY
from crdtdb.storage import APPLICATION_ID, SCHEMA_VERSION, STORE_FILE, STORED_HLC

from . import wire
from .certs import sign_challenge
from .config import PeerConfig, RegionConfig
from .errors import ProtocolError
from .snapshot import tree_root
from .snapshot_verify import SealCheckFailed, verify_records
from .transport import StreamProtocol, dial_streams

__all__ = ["BOOTSTRAP_PART", "PeerDeclined", "SnapshotRefused", "bootstrap", "wanted"]

log = logging.getLogger("crdtdb.sync")

BOOTSTRAP_PART = "bootstrap.part"
"""The snapshot being received, in the data directory."""
ATTEMPTS = 3
"""Snapshots pulled from one peer before it is given up on (then records sync)."""
CONNECT_S = 3.0
"""A peer that does not complete the QUIC handshake within this is given up on at once:
a region that starts before its peers must not wait long to serve."""
STALL_S = 20.0
"""No snapshot bytes for this long: give up on that peer."""
PULL_EVERY = 8 << 20
"""Bytes received between two ``SnapshotPull`` acknowledgements."""
PULL_INTERVAL_S = 0.5
"""A ``SnapshotPull`` at least this often: it also keeps the peer's session from closing
on silence (it closes after a few seconds without a word)."""


class SnapshotRefused(RemoteDataError):
    """A peer's snapshot failed a check; nothing of it was installed."""

    code = "snapshot_refused"


class PeerDeclined(SnapshotRefused):
    """The peer closed the connection with an ``Error`` (an older version, say)."""

    code = "snapshot_declined"


def wanted(config: RegionConfig) -> bool:
    """Whether this daemon should bootstrap its directory from a snapshot before it opens it."""
    if config.bootstrap != "snapshot" or not config.peers:
        return False
    return not (config.data_dir / STORE_FILE).exists()


async def bootstrap(config: RegionConfig) -> bool:
    """Pull, check and install a peer's snapshot; False if none could be (records sync then)."""
    directory = config.data_dir
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / BOOTSTRAP_MARKER
    marker.write_text(f"{os.getpid()}\n")
    part = directory / BOOTSTRAP_PART
    try:
        if (directory / STORE_FILE).exists():  # an application came first: keep its store
            return False
        unavailable: set[str] = set()  # cannot be reached, or will not send one
        tries = {peer.region: 0 for peer in config.peers}
        while len(unavailable) < len(config.peers):
            for peer in config.peers:
                if (directory / STORE_FILE).exists():
                    return False
                if peer.region in unavailable:
                    continue
                tries[peer.region] += 1
                outcome = await _attempt(config, peer, part, tries[peer.region])
                if outcome == "installed":
                    return True
                if outcome == "unavailable" or tries[peer.region] >= ATTEMPTS:
                    unavailable.add(peer.region)
        log.warning("%s: no snapshot installed: syncing record by record", config.region)
        return False
    finally:
        part.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)


async def _attempt(config: RegionConfig, peer: PeerConfig, part: Path, attempt: int) -> str:
    """One pull from ``peer``: ``installed``, ``refused`` (it may be tried again) or
    ``unavailable``. A peer that cannot be reached, or that
    will not send a snapshot (an older version, say), is not asked again (``ATTEMPTS``)."""
    part.unlink(missing_ok=True)
    started = time.monotonic()
    reached = False
    try:
        async with dial_streams(
            peer.host, peer.port, peer.region, config.tls, timeout=CONNECT_S
        ) as protocol:
            reached = True
            receiver = _Receiver(config, peer.region, protocol, part)
            try:
                offer = await receiver.run()
            finally:
                receiver.file.close()
            wire_bytes = receiver.wire
        _check(part, offer, config.region, config.tls.ca.read_bytes())
        _take_over(part, config.region)
        _install(part, config.data_dir)
    except (OSError, TimeoutError, ConnectionError, CrdtdbError) as exc:
        reason = str(exc) or type(exc).__name__
        if not reached or isinstance(exc, PeerDeclined):
            log.info(
                "%s: no snapshot from %s: %s",
                config.region,
                peer.region,
                reason if reached else f"cannot reach it at {peer.host}:{peer.port} ({reason})",
                extra={"event": "snapshot_unavailable", "peer": peer.region},
            )
            return "unavailable"
        log.warning(
            "%s: snapshot from %s refused (attempt %d of %d): %s",
            config.region,
            peer.region,
            attempt,
            ATTEMPTS,
            reason,
            extra={"event": "snapshot_refused", "peer": peer.region},
        )
        return "refused"
    finally:
        part.unlink(missing_ok=True)
    log.info(
        "%s: bootstrapped from %s's snapshot: %d bytes (%d compressed) in %.2f s",
        config.region,
        peer.region,
        offer.size,
        wire_bytes,
        time.monotonic() - started,
        extra={"event": "bootstrapped", "peer": peer.region, "bytes": offer.size},
    )
    return "installed"


class _Receiver:
    """One pull: the handshake, then the offer and the chunks into the part file."""

    def __init__(self, config: RegionConfig, peer: str, protocol: StreamProtocol, part: Path):
        self.config, self.peer, self.protocol = config, peer, protocol
        self.file = part.open("wb")
        self.main = wire.FrameDecoder()
        self.bulk = wire.FrameDecoder(max_message_bytes=wire.MAX_BULK_MESSAGE_BYTES)
        self.nonce = os.urandom(wire.NONCE_BYTES)
        self.offer: wire.SnapshotOffer | None = None
        self.received = self.acked = self.wire = 0
        self.pulled = 0.0
        self.sha = hashlib.sha256()
        self.failed: BaseException | None = None
        self.changed = asyncio.Event()
        self.opened = False
        protocol.on_data = self._data

    async def run(self) -> wire.SnapshotOffer:
        self._send(wire.Hello(wire.PROTOCOL_VERSION, self.config.region, self.nonce))
        heard = time.monotonic()
        while True:
            if self.failed is not None:
                raise self.failed
            offer = self.offer
            if offer is not None and self.received >= offer.size:
                return offer
            if self.protocol.closed.is_set():
                raise ConnectionError(f"the connection closed: {self.protocol.terminated}")
            if time.monotonic() - heard > STALL_S:
                raise TimeoutError(
                    f"no snapshot bytes for {STALL_S:g} s ({self.received:,} received)"
                )
            now = time.monotonic()
            if self.opened and now - self.pulled >= PULL_INTERVAL_S:
                self._pull()  # also keeps the peer's session from closing on silence
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), PULL_INTERVAL_S)
                heard = time.monotonic()
            except TimeoutError:
                pass

    def _send(self, message: wire.Message) -> None:
        self.protocol.send(wire.encode(message))

    def _pull(self) -> None:
        self.acked, self.pulled = self.received, time.monotonic()
        self._send(wire.SnapshotPull(self.received))

    def _data(self, stream_id: int, data: bytes, end: bool) -> None:
        try:
            if stream_id == self.protocol.main_stream:
                self.main.feed(data)
                while (message := self.main.next_message()) is not None:
                    self._on_main(message)
            else:
                self.bulk.feed(data)
                while (message := self.bulk.next_message()) is not None:
                    self._on_bulk(message)
                size = self.offer.size if self.offer else None
                if end and self.received != size:
                    raise SnapshotRefused(
                        f"the snapshot stream ended after {self.received:,} of"
                        f" {size or 0:,} bytes (truncated)"
                    )
        except (ProtocolError, CrdtdbError, OSError) as exc:
            self.failed = exc
        self.changed.set()

    def _on_main(self, message: wire.Message) -> None:
        if isinstance(message, wire.Hello):
            wire.check_version(message)
            if message.region != self.peer:
                raise SnapshotRefused(f"expected region {self.peer!r}, it says {message.region!r}")
            key = self.config.tls.key.read_bytes()
            signature = sign_challenge(
                key,
                server_nonce=message.nonce,
                client_nonce=self.nonce,
                client_region=self.config.region,
                server_region=self.peer,
            )
            cert = self.config.tls.cert.read_bytes()
            self._send(wire.Auth(self.config.region, cert, signature))
        elif isinstance(message, wire.AuthOk):
            self.opened = True
            self._pull()
        elif isinstance(message, wire.Error):
            raise PeerDeclined(f"the peer closed: {message.code}: {message.message}")
        # Frontier, Clocks, Heartbeat: the peer's session gossiping; not wanted here.

    def _on_bulk(self, message: wire.Message) -> None:
        if isinstance(message, wire.SnapshotOffer) and self.offer is None:
            self.offer = message
            return
        if not isinstance(message, wire.SnapshotChunk) or self.offer is None:
            raise SnapshotRefused(f"unexpected {type(message).__name__} on the snapshot stream")
        self.wire += len(message.data)
        data = _unpacked(message.data, self.offer, self.offer.size - self.received)
        if message.offset != self.received or not data:
            raise SnapshotRefused(
                f"a chunk at {message.offset} of {len(data)} bytes, expected one at"
                f" {self.received} within {self.offer.size}"
            )
        self.file.write(data)
        self.sha.update(data)
        self.received += len(data)
        if self.received == self.offer.size:
            self.file.flush()
            os.fsync(self.file.fileno())
            if self.sha.digest() != self.offer.sha256:
                raise SnapshotRefused(
                    "the snapshot's SHA-256 differs from the one announced (a corrupted chunk)"
                )
        if self.received - self.acked >= PULL_EVERY:
            self._pull()


def _unpacked(data: bytes, offer: wire.SnapshotOffer, room: int) -> bytes:
    """A chunk's file bytes, at most ``room`` of them (no more than the offer left)."""
    if offer.compression == wire.snapshot.NONE:
        if len(data) > room:
            raise SnapshotRefused(f"a chunk of {len(data)} bytes where {room} remain")
        return data
    unpacker = zlib.decompressobj()
    try:  # bounded: a small chunk must not unpack into gigabytes
        out = unpacker.decompress(data, min(room, wire.SNAPSHOT_CHUNK_BYTES) + 1)
    except zlib.error as exc:
        raise SnapshotRefused(f"a chunk does not decompress: {exc}") from None
    if len(out) > min(room, wire.SNAPSHOT_CHUNK_BYTES) or not unpacker.eof:
        raise SnapshotRefused("a chunk unpacks to more than a chunk, or past the offer's size")
    return out


def _check(part: Path, offer: wire.SnapshotOffer, region: str, ca_pem: bytes) -> None:
    """Refuse a snapshot that is not a sound store of this crdtdb, or not the one announced."""
    conn = sqlite3.connect(f"file:{part}?immutable=1", uri=True)
    try:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check(8)")]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SnapshotRefused(f"the snapshot is not an SQLite database: {exc}") from None
        if problems != ["ok"]:
            raise SnapshotRefused(f"the snapshot fails integrity_check: {'; '.join(problems)}")
        if app_id != APPLICATION_ID:
            raise SnapshotRefused(f"the snapshot is not a crdtdb store (application_id {app_id})")
        if version != SCHEMA_VERSION or offer.schema != SCHEMA_VERSION:
            raise SnapshotRefused(
                f"the snapshot has schema version {version}, this crdtdb writes"
                f" {SCHEMA_VERSION}: run the same crdtdb version on both regions"
            )
        root = tree_root(conn)
        stored = conn.execute("SELECT hash FROM merkle WHERE node = 0").fetchone()
        if root != offer.root or (stored is not None and bytes(stored[0]) != root):
            raise SnapshotRefused(
                f"the snapshot's documents make Merkle root {root.hex()[:16]}, the peer"
                f" announced {offer.root.hex()[:16]}: a forged or damaged snapshot"
            )
        ours = conn.execute("SELECT 1 FROM log WHERE origin = ? LIMIT 1", (region,)).fetchone()
        if ours is not None:
            raise SnapshotRefused(
                f"the snapshot holds records of {region!r} itself: this region is not new"
            )
        try:
            verify_records(conn, ca_pem)  # every record is what its origin sealed
        except SealCheckFailed as exc:
            raise SnapshotRefused(f"the snapshot's records fail their seals: {exc}") from None
    finally:
        conn.close()


def _take_over(part: Path, region: str) -> None:
    """Make the snapshot this region's store (see the module docstring)."""
    conn = sqlite3.connect(part, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # The peer's clock, read while the store is still the peer's (its own origin row
        # holds its last local HLC): this region's clock starts at or above every record.
        (clock,) = conn.execute(STORED_HLC).fetchone()
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_hlc'", (clock,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'region'", (region,))
        conn.execute("DELETE FROM meta WHERE key = ?", (FENCE_KEY,))
        conn.execute("DELETE FROM frontiers WHERE region = ?", (region,))
        conn.execute("DELETE FROM origins WHERE origin = ?", (region,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    with part.open("rb+") as file:
        os.fsync(file.fileno())


def _install(part: Path, directory: Path) -> None:
    store = directory / STORE_FILE
    try:
        os.link(part, store)  # never replaces: fails if a store appeared meanwhile
    except FileExistsError:
        raise SnapshotRefused(
            f"a store appeared in {directory} during the bootstrap: kept, snapshot dropped"
        ) from None
    part.unlink()
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
