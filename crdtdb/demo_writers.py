"""The application side of ``crdtdb demo``: one writer per region, through the embedded library.

Each :class:`Writer` is a thread that commits, at a steady rate, one
transaction at a time to its region's store (opened with
:func:`crdtdb.open` on the directory that region's daemon serves), as an
application would. What it writes exercises what merges and what does not:

- ``users/REGION-N`` and ``orders/REGION-N``: new documents with nested
  maps (``address``, ``shipping``) and lists (``tags``, ``items``);
- edits of *any* region's orders: an item appended to the list, the nested
  ``shipping.status`` moved on, so regions edit the same documents at once;
- deletes of orders, also of other regions' (an edit made concurrently
  elsewhere survives the delete: observed-remove);
- ``notes/*``: merged text fields typed into by every region at once, at
  random positions, with small deletions;
- ``boards/activity``: a merged list every region appends to.

Random choices come from a :class:`random.Random` seeded per region, so a
run's mix is the same each time (its timing is not).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .database import Database
from .transaction import Transaction

__all__ = ["NOTES", "WorkloadCounts", "Writer"]

NOTES = ("notes/standup", "notes/design")
"""The documents whose text field ``body`` every region edits concurrently."""

_CITIES = (
    ("Paris", "FR"),
    ("Lyon", "FR"),
    ("Berlin", "DE"),
    ("Austin", "US"),
    ("Boston", "US"),
    ("Osaka", "JP"),
    ("Tokyo", "JP"),
    ("Sydney", "AU"),
)
_ITEMS = ("book", "lamp", "pen", "mug", "desk", "chair", "cable", "plant")
_STATUSES = ("new", "paid", "shipped", "delivered")
_WORDS = (
    "merge",
    "clock",
    "quorum",
    "delta",
    "replica",
    "frontier",
    "digest",
    "commit",
    "region",
    "vector",
)
_REFRESH_S = 1.0
"""How often a writer re-reads which orders exist (its own and the other regions')."""


@dataclass(slots=True)
class WorkloadCounts:
    """What one writer has committed so far, by kind of edit."""

    transactions: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.transactions += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class Writer(threading.Thread):
    """Commits ``rate`` transactions a second to ``db`` until :meth:`stop` is called.

    A commit that fails is counted in ``errors`` and its message kept in
    ``last_error`` (the demo shows it); the writer goes on.
    """

    def __init__(self, db: Database, *, rate: float, seed: int = 0) -> None:
        super().__init__(name=f"writer-{db.region}", daemon=True)
        self.db = db
        self.region = db.region
        self.rate = rate
        self.counts = WorkloadCounts()
        self.errors = 0
        self.last_error: str | None = None
        self._rng = random.Random(f"{seed}-{db.region}")
        self._stop_event = threading.Event()
        self._orders: list[str] = []
        self._users: list[str] = []
        self._listed_at = 0.0
        self._made = 0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.wait(max(0.0, next_at - time.monotonic())):
            next_at += 1.0 / self.rate
            self._write_one()

    def _write_one(self) -> None:
        kind, edit = self._pick()
        try:
            with self.db.transaction() as tx:
                edit(tx)
        except Exception as exc:  # shown by the demo, which keeps going
            self.errors += 1
            self.last_error = f"{kind}: {type(exc).__name__}: {exc}"
        else:
            if tx.records:  # an edit of a document deleted meanwhile may change nothing
                self.counts.add(kind)

    def _pick(self) -> tuple[str, Callable[[Transaction], None]]:
        self._refresh_ids()
        choices: list[tuple[str, Callable[[Transaction], None], int]] = [
            ("new user", self._new_user, 2 if self._users else 10),
            ("new order", self._new_order, 3),
            ("text edit", self._edit_text, 4),
            ("list append", self._log_event, 2),
        ]
        if self._orders:
            choices += [
                ("item appended", self._append_item, 3),
                ("status moved", self._move_status, 2),
                ("order deleted", self._delete_order, 1),
            ]
        names, edits, weights = zip(*choices, strict=True)
        i = self._rng.choices(range(len(choices)), weights)[0]
        return names[i], edits[i]

    def _refresh_ids(self) -> None:
        now = time.monotonic()
        if now - self._listed_at >= _REFRESH_S:
            self._orders = self.db.list("orders")
            self._users = self.db.list("users")
            self._listed_at = now

    def _next_id(self, collection: str) -> str:
        self._made += 1
        return f"{collection}/{self.region}-{self._made}"

    # ------------------------------------------------------------ the edits

    def _new_user(self, tx: Transaction) -> None:
        city, country = self._rng.choice(_CITIES)
        doc_id = self._next_id("users")
        tx.put(
            doc_id,
            {
                "name": f"{self._rng.choice(_WORDS).title()} {self._made}",
                "home_region": self.region,
                "address": {"city": city, "country": country},
                "tags": [self._rng.choice(("new", "vip", "beta"))],
            },
        )
        self._users.append(doc_id)

    def _new_order(self, tx: Transaction) -> None:
        doc_id = self._next_id("orders")
        tx.put(
            doc_id,
            {
                "user": self._rng.choice(self._users) if self._users else None,
                "total": round(self._rng.uniform(5, 200), 2),
                "items": [self._rng.choice(_ITEMS)],
                "shipping": {"status": "new", "from": self.region},
            },
        )
        self._orders.append(doc_id)

    def _append_item(self, tx: Transaction) -> None:
        doc_id = self._rng.choice(self._orders)
        order = tx.get(doc_id)
        if order is None or not isinstance(order.get("items"), list):  # deleted meanwhile
            return
        tx.doc(doc_id)["items"].append(self._rng.choice(_ITEMS))

    def _move_status(self, tx: Transaction) -> None:
        doc_id = self._rng.choice(self._orders)
        order = tx.get(doc_id)
        shipping = order.get("shipping") if order else None
        if not isinstance(shipping, dict) or shipping.get("status") not in _STATUSES:
            return
        step = min(_STATUSES.index(shipping["status"]) + 1, len(_STATUSES) - 1)
        tx.doc(doc_id)["shipping"]["status"] = _STATUSES[step]

    def _delete_order(self, tx: Transaction) -> None:
        doc_id = self._rng.choice(self._orders)
        tx.delete(doc_id)
        self._orders.remove(doc_id)

    def _edit_text(self, tx: Transaction) -> None:
        """Insert a word, or (one time in four) delete one, at a word boundary."""
        body = tx.text(self._rng.choice(NOTES), "body")
        text = str(body)
        starts = [0] + [i + 1 for i, char in enumerate(text) if char == " "]
        start = self._rng.choice(starts)
        if len(starts) > 8 and start < len(text) and self._rng.random() < 0.25:
            end = text.find(" ", start)
            del body[start : len(text) if end < 0 else end + 1]
        else:
            body.insert(start, f"{self._rng.choice(_WORDS)}({self.region}) ")

    def _log_event(self, tx: Transaction) -> None:
        events = tx.array("boards/activity", "events")
        events.append({"region": self.region, "n": self.counts.transactions})
