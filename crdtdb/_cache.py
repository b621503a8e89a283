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
good). So every applied update is checked against the doc's state vector
(``pycrdt.get_update(update, state)`` must have no structs left), and
updates that are not fully integrated are kept in ``unintegrated`` and
applied again whenever the document advances, until they are.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pycrdt import Doc, Map, Subscription, Transaction, TransactionEvent, get_update

__all__ = ["DATA_ROOT", "META_ROOT", "DocCache", "DocHandle"]

DATA_ROOT = "data"
META_ROOT = "crdtdb"
LIVE_KEY = "live"


class DocHandle:
    __slots__ = (
        "_capture",
        "_subscription",
        "_txn",
        "doc",
        "ensure_live",
        "loaded_through",
        "meta",
        "root",
        "tombstone",
        "unintegrated",
    )

    def __init__(self, client_id: int) -> None:
        # The update observer is subscribed only while capturing: a pycrdt Doc
        # with a live subscription is never freed (the callback is held from
        # Rust, out of reach of Python's GC), so resting handles have none.
        self._capture = _Capture()
        self._subscription: Subscription | None = None
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.root: Map[Any] = self.doc.get(DATA_ROOT, type=Map)
        self.meta: Map[Any] = self.doc.get(META_ROOT, type=Map)
        self.loaded_through = 0
        self.ensure_live = False
        self.tombstone = False
        self.unintegrated: list[bytes] = []
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
        """
        return len(self.root) > 0 or LIVE_KEY in self.meta

    def apply(self, update: bytes) -> None:
        """Apply an update (raises ValueError, changing nothing, if it does not decode)."""
        self.receive(update)
        self.settle([update])

    def receive(self, update: bytes) -> None:
        """Apply an update without checking it integrated: call :meth:`settle` after a batch."""
        self.doc.apply_update(update)

    def settle(self, updates: list[bytes]) -> None:
        """Check once that the updates just received are integrated; keep the ones that are not.

        One state vector for the whole batch: an update held pending until a
        later one of the batch arrived counts as integrated, as it is.
        """
        state = self.doc.get_state()
        stuck = [update for update in updates if not integrated_in(state, update)]
        self.unintegrated.extend(stuck)
        if len(stuck) < len(updates) and self.unintegrated:
            self._retry()  # the document advanced: stuck updates may fit now

    def _retry(self) -> None:
        progress = True
        while progress and self.unintegrated:
            progress = False
            for update in list(self.unintegrated):
                self.doc.apply_update(update)
                if integrated(self.doc, update):
                    self.unintegrated.remove(update)
                    progress = True

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
        self.root.clear()
        if LIVE_KEY in self.meta:
            del self.meta[LIVE_KEY]

    def take_pending(self) -> list[bytes]:
        pending, self.pending = self.pending, []
        self.capturing = False
        self.ensure_live = False
        self.tombstone = False
        return pending


class _Capture:
    """The doc observer: keeps the updates of local edits while ``on``."""

    __slots__ = ("on", "updates")

    def __init__(self) -> None:
        self.on = False
        self.updates: list[bytes] = []

    def __call__(self, event: TransactionEvent) -> None:
        if self.on:
            self.updates.append(event.update)


def integrated(doc: Doc[Any], update: bytes) -> bool:
    """Whether every struct of ``update`` is in ``doc`` (not held pending)."""
    return integrated_in(doc.get_state(), update)


def integrated_in(state: bytes, update: bytes) -> bool:
    """Whether every struct of ``update`` is covered by the state vector ``state``."""
    return get_update(update, state)[:1] == b"\x00"  # zero struct groups left


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

    def __len__(self) -> int:
        return len(self._docs)
