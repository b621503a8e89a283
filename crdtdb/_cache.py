"""In-memory documents: a bounded LRU of loaded pycrdt docs and their capture hooks.

A :class:`DocHandle` owns one pycrdt ``Doc``. While a transaction edits it,
``capturing`` is on and every pycrdt update the doc emits is kept in
``pending``: exactly the local edits, which become the transaction's log
records. Updates applied from the log (other processes, remote regions) are
applied with capturing off. ``loaded_through`` is the highest log id whose
record for this document is already in the doc, so catching up never applies
a record twice (harmless in a CRDT, but wasted work).

Out-of-order updates: an update that arrives before the updates it depends
on is held "pending" inside yrs and should be integrated once they arrive.
With pycrdt 0.14 that retry sometimes never happens (seen when a pending
update touches more than one shared type: the state vector stays behind for
good; in a random test of three replicas, 128 runs of 300 ended with updates
never integrated). So every applied update is checked against the doc's state
vector (``pycrdt.get_update(update, state)`` must have no structs left), and
one that is not fully integrated waits in the handle for what it lacks: the
first clock it needs that the document does not hold yet, read from the
update's bytes (:mod:`crdtdb.yjs`). It is applied again when the document
holds that clock, and not before; if it still lacks something, it waits for
that next. Retrying every stuck update whenever the document advanced made
out-of-order delivery quadratic (1,000 stuck records took 20 s); now each
retry follows the arrival of what the update waited for.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pycrdt import Array, Doc, Map, Subscription, Text, Transaction, TransactionEvent, get_update

from .merkle import state_vector_clocks
from .shape import shape_text
from .values import load_json, plain, read_json, too_deep
from .yjs import shape

__all__ = ["DATA_ROOT", "FIELD_KINDS", "META_ROOT", "ApplyStats", "DocCache", "DocHandle"]

DATA_ROOT = "data"
META_ROOT = "crdtdb"
LIVE_KEY = "live"
FIELD_MARK = "field:"
"""Prefix of the ``META_ROOT`` key that marks a merged field (its value: the kind)."""
FIELD_KINDS: dict[str, type[Text] | type[Array[Any]] | type[Map[Any]]] = {
    "text": Text,
    "array": Array,
    "map": Map,
}
"""Merged fields: a field held in a root-level shared type of the document, named
``kind:field``, instead of under a key of the ``DATA_ROOT`` map. Yjs merges root
types by name, so two regions that create the same field concurrently both keep
their edits (a map key written twice keeps one of the two values).

A root type cannot be deleted, only emptied, so a merged field is shown while it
holds something: emptying it (a delete, a put without it) hides it, and an edit
made concurrently elsewhere survives and shows again, as with ordinary fields.
Its mark (``FIELD_MARK`` + name in ``META_ROOT``, the kind as value) is written
once and never removed: it only says where to look."""


@dataclass(slots=True)
class ApplyStats:
    """Counters of one store's out-of-order applies (shown by ``Database.info()``)."""

    reapplied: int = 0
    """Updates applied again because what they waited for had arrived."""


_ANY = -1
"""Waiting on no clock in particular (its bytes could not be read, or it lacks
nothing it names): retried whenever the document advances."""


class DocHandle:
    __slots__ = (
        "_capture",
        "_fields",
        "_shared",
        "_subscription",
        "_txn",
        "doc",
        "ensure_live",
        "known",
        "loaded_through",
        "meta",
        "root",
        "stats",
        "tombstone",
        "waiting",
    )

    def __init__(self, client_id: int, stats: ApplyStats | None = None) -> None:
        # The update observer is subscribed only while capturing: a pycrdt Doc
        # with a live subscription is never freed (the callback is held from
        # Rust, out of reach of Python's GC), so resting handles have none.
        self._capture = _Capture()
        self._subscription: Subscription | None = None
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.root: Map[Any] = self.doc.get(DATA_ROOT, type=Map)
        self.meta: Map[Any] = self.doc.get(META_ROOT, type=Map)
        self.loaded_through = 0
        self._shared: dict[str, Any] = {}
        """Root-level shared types by name, as :meth:`field` found them (they never go)."""
        self._fields: dict[str, str] | None = None
        """:meth:`fields`, kept: the marks change only through this handle's methods."""
        self.known: tuple[int, Any] | None = None
        """(generation, what the store's row holds): see ``crdtdb.writes.Writer._known``."""
        self.ensure_live = False
        self.tombstone = False
        self.waiting: dict[int, list[tuple[int, bytes]]] = {}
        """Updates not integrated yet, by the client whose clock they wait for: a heap
        of (clock, update) each, the update retried once that clock is held."""
        self.stats = stats if stats is not None else ApplyStats()
        self._txn: Transaction | None = None

    @property
    def capturing(self) -> bool:
        return self._capture.on

    @capturing.setter
    def capturing(self, on: bool) -> None:
        self._capture.on = on
        if on and self._subscription is None:
            self._subscription = self.doc.observe(self._capture)
        elif not on and self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None

    @property
    def pending(self) -> list[bytes]:
        return self._capture.updates

    @pending.setter
    def pending(self, updates: list[bytes]) -> None:
        self._capture.updates = updates

    @property
    def live(self) -> bool:
        """A document exists while it has content or was created (even empty) by a put.

        A whole-document delete removes every field and the marker that the
        deleting replica has seen. Fields written concurrently elsewhere survive
        the merge, and so the document stays live with just those fields.
        A merged field that holds something keeps it live too.
        """
        # Cheapest first: each look opens a pycrdt transaction, the marks are kept.
        if len(self.root) > 0:
            return True
        if any(len(self.field(name, kind)) for name, kind in self.fields().items()):
            return True
        return LIVE_KEY in self.meta

    def fields(self) -> dict[str, str]:
        """The merged fields ever created here, shown or not: name -> kind (``FIELD_KINDS``).

        Kept between calls (a commit asks several times, and reading the marks opens
        pycrdt transactions): they change only through :meth:`mark_field` or an
        applied update, both of which forget what was kept.
        """
        found = self._fields
        if found is None:
            if len(self.meta) <= (LIVE_KEY in self.meta):
                found = {}  # the common case, without reading the marks
            else:
                found = {
                    key[len(FIELD_MARK) :]: kind
                    for key, kind in self.meta.items()
                    if key.startswith(FIELD_MARK) and kind in FIELD_KINDS
                }
            self._fields = found
        return found

    def field(self, name: str, kind: str) -> Any:
        """The root-level shared type that holds merged field ``name`` of ``kind``."""
        key = f"{kind}:{name}"
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = self.doc.get(key, type=FIELD_KINDS[kind])
        return shared

    def mark_field(self, name: str, kind: str) -> None:
        self.meta[FIELD_MARK + name] = kind
        self._fields = None

    def shown_fields(self) -> dict[str, Any]:
        """The merged fields that hold something: name -> shared type."""
        shown = {}
        for name, kind in self.fields().items():
            shared = self.field(name, kind)
            if len(shared):
                shown[name] = shared
        return shown

    def body(self) -> str | None:
        """The document as canonical JSON text (None if it is not live): see :func:`canonical`."""
        found = self.body_and_shape()
        return None if found is None else found[0]

    def body_and_shape(self) -> tuple[str, str] | None:
        """The document's canonical JSON and its shape (:mod:`crdtdb.shape`); None if not live."""
        if not self.live:
            return None
        if len(self.meta) <= (LIVE_KEY in self.meta):  # no merged field: Yrs encodes it
            value = load_json(str(self.root))
        else:
            value = self.json()
        try:
            return canonical(value), shape_text(value)
        except RecursionError:  # parsed, but too deep to walk (see crdtdb.values)
            raise too_deep() from None

    def json(self) -> dict[str, Any]:
        """The document as plain JSON: ``DATA_ROOT``'s keys, the merged fields shown over them."""
        result: dict[str, Any] = read_json(self.root)
        for name, shared in self.shown_fields().items():
            result[name] = plain(shared)
        return result

    def apply(self, update: bytes) -> None:
        """Apply an update (raises ValueError, changing nothing, if it does not decode)."""
        self.receive(update)
        self.settle([update])

    def receive(self, update: bytes) -> None:
        """Apply an update without checking it integrated: call :meth:`settle` after a batch."""
        self._fields = None
        self.doc.apply_update(update)

    def settle(self, updates: list[bytes]) -> None:
        """Check once that the updates just received are integrated; keep the others waiting.

        One state vector for the whole batch: an update held pending until a
        later one of the batch arrived counts as integrated, as it is. Then
        updates that were waiting for what has now arrived are retried.
        """
        state = self.doc.get_state()
        clocks: dict[int, int] | None = None
        for update in updates:
            rest = get_update(update, state)
            if rest[:1] != b"\x00":
                clocks = clocks or state_vector_clocks(state)
                self._wait(update, rest, clocks)
        if self.waiting:
            self._retry(state)

    def _wait(self, update: bytes, rest: bytes, clocks: dict[int, int]) -> None:
        """Keep ``update`` (``rest``: what of it is not integrated) until what it lacks arrives."""
        try:
            need = shape(rest).first_unmet(clocks)
        except ValueError:
            need = None
        client, clock = need if need is not None else (_ANY, 0)
        heapq.heappush(self.waiting.setdefault(client, []), (clock, update))

    def _retry(self, state: bytes) -> None:
        """Apply again the waiting updates whose missing clock the document now holds."""
        tried_any = b""
        while True:
            clocks = state_vector_clocks(state)
            ready = []
            for client, heap in list(self.waiting.items()):
                if client == _ANY:
                    continue
                while heap and heap[0][0] < clocks.get(client, 0):
                    ready.append(heapq.heappop(heap)[1])
                if not heap:
                    del self.waiting[client]
            if _ANY in self.waiting and tried_any != state:  # once per state of the document
                tried_any = state
                ready += [update for _, update in self.waiting.pop(_ANY)]
            if not ready:
                return
            for update in ready:
                if get_update(update, state)[:1] != b"\x00":  # not integrated by yrs meanwhile
                    self._fields = None
                    self.doc.apply_update(update)
                    self.stats.reapplied += 1
            state = self.doc.get_state()
            clocks = state_vector_clocks(state)
            for update in ready:
                rest = get_update(update, state)
                if rest[:1] != b"\x00":
                    self._wait(update, rest, clocks)

    def begin(self) -> None:
        """Start capturing local edits inside one pycrdt transaction (batched)."""
        if self._txn is None:
            self.capturing = True
            self._txn = self.doc.transaction()
            self._txn.__enter__()

    def finish_edits(self) -> None:
        """Close the edit transaction; a put of a document that is not live creates it."""
        if self._txn is None:
            return
        if self.ensure_live and not self.tombstone and not self.live:
            self.mark_live()  # in the same pycrdt transaction: one update per document
        self.end()

    def end(self) -> None:
        """Close the pycrdt transaction; ``pending`` then holds the edits."""
        if self._txn is not None:
            txn, self._txn = self._txn, None
            txn.__exit__(None, None, None)

    def mark_live(self) -> None:
        """Set the marker that keeps a document live while it has no fields."""
        self.meta[LIVE_KEY] = True

    def clear(self) -> None:
        """Whole-document delete of everything this replica has observed."""
        for name, kind in self.fields().items():
            self.field(name, kind).clear()
        self.root.clear()
        if LIVE_KEY in self.meta:
            del self.meta[LIVE_KEY]

    def take_pending(self) -> list[bytes]:
        pending, self.pending = self.pending, []
        self.capturing = False
        self.ensure_live = False
        self.tombstone = False
        return pending


def canonical(value: Any) -> str:
    """JSON text with keys sorted and no spaces: the same bytes in every region.

    Yrs writes a map's keys in the order of a hash map seeded per process, so
    two replicas holding the same document would write it differently.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Capture:
    """The doc observer: keeps the updates of local edits while ``on``."""

    __slots__ = ("on", "updates")

    def __init__(self) -> None:
        self.on = False
        self.updates: list[bytes] = []

    def __call__(self, event: TransactionEvent) -> None:
        if self.on:
            self.updates.append(event.update)


class DocCache:
    """Least-recently-used documents, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._docs: OrderedDict[str, DocHandle] = OrderedDict()

    def get(self, doc_id: str) -> DocHandle | None:
        handle = self._docs.get(doc_id)
        if handle is not None:
            self._docs.move_to_end(doc_id)
        return handle

    def peek(self, doc_id: str) -> DocHandle | None:
        return self._docs.get(doc_id)

    def put(self, doc_id: str, handle: DocHandle) -> None:
        self._docs[doc_id] = handle
        self._docs.move_to_end(doc_id)
        while len(self._docs) > self.capacity:
            self._docs.popitem(last=False)

    def evict(self, doc_id: str) -> None:
        self._docs.pop(doc_id, None)

    def clear(self) -> None:
        self._docs.clear()

    def waiting(self) -> int:
        """Updates held in loaded documents until what they build on arrives."""
        return sum(len(heap) for handle in self._docs.values() for heap in handle.waiting.values())

    def __len__(self) -> int:
        return len(self._docs)
