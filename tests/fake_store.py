"""An in-memory region store, so the sync session is tested against more than SQLite.

It provides what a session reads (:mod:`crdtdb.sync.store`), the writes its
intents need, and the few reads and writes the session tests make themselves
(``put``, ``update``, ``delete``, transactions, ``compact``...). Documents are
pycrdt documents (a ``fields`` map and a ``live`` flag), each origin's records
a dict by seq, and the Merkle tree is kept with :mod:`crdtdb.merkle`, stale
digests and all, exactly as the session sees a real store's. No files, no
locks, no cache, no clock skew checks: just the semantics.

``compact(retention_s=0)`` is simplified to what the tests need: it drops
every record older than the newest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from crdtdb import merkle
from crdtdb.chains import ChainRow
from crdtdb.errors import InvalidUpdateError
from crdtdb.hlc import Hlc
from crdtdb.records import REPAIR, WRITE, UpdateRecord

START = Hlc.from_parts(1_800_000_000_000)


def _fields(doc: Doc[Any]) -> Map[Any]:
    fields: Map[Any] = doc.get("fields", type=Map)
    return fields


def _meta(doc: Doc[Any]) -> Map[Any]:
    meta: Map[Any] = doc.get("meta", type=Map)
    return meta


def _decodes(update: bytes) -> bool:
    try:
        Doc().apply_update(update)
    except ValueError:
        return False
    return True


class FakeStore:
    """One region's store, in memory."""

    def __init__(self, region: str, path: Path | None = None) -> None:
        self.region = region
        self.path = path
        self._docs: dict[str, Doc[Any]] = {}
        self._leaves: dict[int, set[str]] = {}
        self._log: dict[str, dict[int, UpdateRecord]] = {}
        self._order: list[UpdateRecord] = []
        self._origins: dict[str, tuple[int, int, int]] = {}  # max seq, contiguous, its hlc
        self._complete: dict[str, int] = {}
        self._frontiers: dict[str, int] = {}
        self._clock = int(START)
        self._tree: dict[int, bytes] = {}
        self._in_tree: dict[str, bytes] = {}  # the digest each document has in the tree
        self._stale: dict[str, None] = {}

    def __enter__(self) -> FakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ documents

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self)

    def put(self, doc_id: str, value: Mapping[str, Any]) -> Hlc | None:
        with self.transaction() as tx:
            tx.put(doc_id, value)
        return tx.hlc

    def update(self, doc_id: str, patch: Mapping[str, Any]) -> Hlc | None:
        with self.transaction() as tx:
            tx.update(doc_id, patch)
        return tx.hlc

    def delete(self, doc_id: str) -> Hlc | None:
        with self.transaction() as tx:
            tx.delete(doc_id)
        return tx.hlc

    def get(self, doc_id: str) -> dict[str, Any] | None:
        doc = self._docs.get(doc_id)
        if doc is None or not _meta(doc).get("live", False):
            return None
        return dict(_fields(doc).to_py() or {})

    def state_vector(self, doc_id: str) -> bytes:
        return self._doc_or_empty(doc_id).get_state()

    def diff(self, doc_id: str, state_vector: bytes = b"\x00") -> bytes:
        try:
            return self._doc_or_empty(doc_id).get_update(state_vector)
        except ValueError:
            raise InvalidUpdateError("not a valid state vector") from None

    def digest(self, doc_id: str) -> bytes | None:
        doc = self._docs.get(doc_id)
        return None if doc is None else merkle.doc_digest(doc)

    def info(self) -> dict[str, Any]:
        live = sum(bool(_meta(doc).get("live", False)) for doc in self._docs.values())
        return {
            "region": self.region,
            "documents": len(self._docs),
            "live_documents": live,
            "log_records": len(self._order),
        }

    def changes(self) -> Iterator[UpdateRecord]:
        return iter(list(self._order))

    def compact(self, *, retention_s: float | None = None) -> int:
        newest = max((record.hlc for record in self._order), default=Hlc(0))
        old = [record for record in self._order if record.hlc < newest]
        for record in old:
            del self._log[record.origin][record.seq]
        self._order = [record for record in self._order if record.hlc >= newest]
        return len(old)

    def _doc_or_empty(self, doc_id: str) -> Doc[Any]:
        return self._docs.get(doc_id) or Doc()

    def _doc(self, doc_id: str) -> Doc[Any]:
        doc = self._docs.get(doc_id)
        if doc is None:
            doc = self._docs[doc_id] = Doc()
            self._leaves.setdefault(merkle.leaf_of(doc_id), set()).add(doc_id)
        return doc

    # ------------------------------------------------------------- the log

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[UpdateRecord]:
        records = self._log.get(origin, {})
        return [records[seq] for seq in sorted(records) if seq > after_seq][:limit]

    def progress(self) -> dict[str, tuple[int, int, Hlc]]:
        return {o: (top, run, Hlc(hlc)) for o, (top, run, hlc) in self._origins.items()}

    def apply_remote_many(self, records: list[UpdateRecord], chain: Sequence[ChainRow] = ()) -> int:
        del chain  # signed records are checked against real stores (test_signing_store.py)
        for record in records:
            record.validated()
        fresh: dict[tuple[str, int], UpdateRecord] = {}
        for record in records:
            key = (record.origin, record.seq)
            if key not in fresh and not self._holds(*key):
                fresh[key] = record
        for record in fresh.values():
            if not _decodes(record.update):
                raise InvalidUpdateError(
                    f"refused record {record.origin}#{record.seq} for {record.doc_id}:"
                    " the update does not decode"
                )
        for record in fresh.values():
            self._doc(record.doc_id).apply_update(record.update)
            self._clock = max(self._clock, int(record.hlc))
            self._append(record)
        return len(fresh)

    def apply_remote(self, record: UpdateRecord) -> bool:
        return self.apply_remote_many([record]) == 1

    def apply_diff(self, doc_id: str, update: bytes) -> Hlc | None:
        if not isinstance(update, bytes) or not update or not _decodes(update):
            raise InvalidUpdateError(f"refused diff for {doc_id}: the update does not decode")
        doc = self._doc(doc_id)
        before = merkle.doc_digest(doc)
        doc.apply_update(update)
        if merkle.doc_digest(doc) == before:
            return None
        return self._commit([(doc_id, update)], REPAIR)

    def _holds(self, origin: str, seq: int) -> bool:
        return seq in self._log.get(origin, {}) or seq <= self._origins.get(origin, (0, 0, 0))[1]

    def _commit(self, updates: list[tuple[str, bytes]], kind: int) -> Hlc:
        self._clock += 1
        hlc = Hlc(self._clock)
        seq = self._origins.get(self.region, (0, 0, 0))[0]
        for i, (doc_id, update) in enumerate(updates, 1):
            self._append(UpdateRecord(doc_id, hlc, self.region, seq + i, update, kind))
        return hlc

    def _append(self, record: UpdateRecord) -> None:
        self._log.setdefault(record.origin, {})[record.seq] = record
        self._order.append(record)
        self._stale[record.doc_id] = None
        top, run, hlc = self._origins.get(record.origin, (0, 0, 0))
        held = self._log[record.origin]
        while run + 1 in held:
            run += 1
            hlc = int(held[run].hlc)
        self._origins[record.origin] = (max(top, record.seq), run, hlc)

    # ---------------------------------------------------------- the tree

    def stale_digests(self, limit: int = 100) -> int:
        return min(limit, len(self._stale))

    def refresh_digests(self, limit: int = 100) -> int:
        picked = list(self._stale)[:limit]
        for doc_id in picked:
            del self._stale[doc_id]
            old, new = self._in_tree.get(doc_id), merkle.doc_digest(self._docs[doc_id])
            delta = merkle.contribution(doc_id, new)
            if old is not None:
                delta = merkle.xor_bytes(delta, merkle.contribution(doc_id, old))
            for node in merkle.path_to_root(merkle.leaf_of(doc_id)):
                self._tree[node] = merkle.xor_bytes(self._tree.get(node), delta)
            self._in_tree[doc_id] = new
        return len(picked)

    def merkle_nodes(self, nodes: list[int], *, flush: bool = True) -> list[bytes]:
        if flush:
            while self.refresh_digests():
                pass
        return [self._tree.get(node, merkle.ZERO) for node in nodes]

    def merkle_root(self) -> bytes:
        return self.merkle_nodes([merkle.node_id(0, 0)])[0]

    def leaf_docs(self, leaf: int, *, flush: bool = True) -> list[tuple[str, bytes]]:
        if flush:
            self.merkle_nodes([])
        docs = sorted(self._leaves.get(leaf, ()))
        return [(doc_id, self._in_tree.get(doc_id, merkle.ZERO)) for doc_id in docs]

    # ------------------------------------------------------------ frontier

    def frontier_entries(self) -> list[tuple[str, int, Hlc]]:
        entries = [
            (origin, run, Hlc(max(hlc, self._complete.get(origin, 0))))
            for origin, (_, run, hlc) in self._origins.items()
            if origin != self.region
        ]
        entries += [
            (region, 0, Hlc(0))
            for region in self._frontiers
            if region != self.region and region not in self._origins
        ]
        own = self._origins.get(self.region, (0, 0, 0))[0]
        return [*entries, (self.region, own, Hlc(self._clock))]

    def frontier_clocks(self) -> list[tuple[str, Hlc]]:
        own = min(hlc for _, _, hlc in self.frontier_entries())
        return [*((r, Hlc(h)) for r, h in self._frontiers.items()), (self.region, own)]

    def frontier(self) -> Hlc:
        return min(hlc for _, hlc in self.frontier_clocks())

    def note_frontier(
        self, entries: list[tuple[str, int, int]], clocks: Sequence[tuple[str, int]] = ()
    ) -> None:
        for origin, seq, hlc in entries:
            if origin != self.region:
                self._origins.setdefault(origin, (0, 0, 0))
                if self._origins[origin][1] >= seq:
                    self._complete[origin] = max(self._complete.get(origin, 0), hlc)
        for region, hlc in clocks:
            if region != self.region:
                self._frontiers[region] = max(self._frontiers.get(region, 0), hlc)

    def expect_regions(self, regions: list[str]) -> None:
        for region in regions:
            if region != self.region:
                self._frontiers.setdefault(region, 0)

    def heartbeat(self) -> Hlc:
        self._clock += 1
        return Hlc(self._clock)


class FakeTransaction:
    """Edits on several documents, committed as one record each under one HLC."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self._before: dict[str, bytes] = {}  # digest of each touched document before
        self._states: dict[str, bytes] = {}  # and its state vector
        self.hlc: Hlc | None = None

    def __enter__(self) -> FakeTransaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            return
        changed = []
        for doc_id, before in self._before.items():
            doc = self._store._docs[doc_id]
            if merkle.doc_digest(doc) != before:
                changed.append((doc_id, doc.get_update(self._states[doc_id])))
        if changed:
            self.hlc = self._store._commit(changed, WRITE)

    def _touch(self, doc_id: str) -> Doc[Any]:
        doc = self._store._doc(doc_id)
        if doc_id not in self._before:
            self._before[doc_id] = merkle.doc_digest(doc)
            self._states[doc_id] = doc.get_state()
        return doc

    def doc(self, doc_id: str) -> Map[Any]:
        doc = self._touch(doc_id)
        if not _meta(doc).get("live", False):
            _meta(doc)["live"] = True
        return _fields(doc)

    def put(self, doc_id: str, value: Mapping[str, Any]) -> None:
        fields = self.doc(doc_id)
        for key in [k for k in list(fields.keys()) if k not in value]:
            del fields[key]
        for key, item in value.items():
            fields[key] = item

    def update(self, doc_id: str, patch: Mapping[str, Any]) -> None:
        fields = self.doc(doc_id)
        for key, item in patch.items():
            fields[key] = item

    def delete(self, doc_id: str) -> None:
        doc = self._touch(doc_id)
        _fields(doc).clear()
        _meta(doc)["live"] = False


STORE_KINDS = ["sqlite", "fake"]
"""The stores the session's tests run against."""


def open_store(kind: str, path: Path, region: str) -> Any:
    """A region's store of ``kind`` in ``path`` (a directory the fake never creates)."""
    if kind == "fake":
        return FakeStore(region, path)
    import crdtdb

    return crdtdb.open(path, region=region)


class Regions:
    """Opens region stores of one kind under a directory, and closes them all after."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.opened: list[Any] = []

    def __call__(self, *regions: str) -> list[Any]:
        """A store per region, each in a directory named after it."""
        return [self.open(region) for region in regions]

    def open(self, region: str, name: str | None = None) -> Any:
        """A store for ``region`` in the directory ``name`` (default: the region's)."""
        store = open_store(self.kind, self.directory / (name or region), region)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()
