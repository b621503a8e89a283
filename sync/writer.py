"""Performing sync sessions' intents: their store writes, batched, off the per-message path.

:func:`perform` does one batch, in order, against a :class:`~.store.ReplicaStore`:

- records and repairs as they came, one store call per intent (a ``Records``
  message is already a batch: one transaction), except that several ``Records``
  messages of one session waiting together go in one transaction
  (:mod:`.coalesce`), each still with its own outcome;
- then the frontier reports, coalesced into one ``note_frontier`` (per peer
  the latest entry per origin, per region the highest clock), so that they
  see the records just applied;
- then one digest refresh for every session that asked, so that the tree it
  leaves covers the batch's repairs;
- and after a refusal nothing more of that session's.

:class:`StoreWriter` is how the node runs it: one worker thread, fed from the
event loop, taking everything that queued while the last batch ran; each
outcome goes back to its session on the loop. The node's other store writes
(heartbeats, background digest refreshes) run on the same thread, so none of
them runs on the event loop and no two of them contend for the store's lock.

:func:`perform_pending` does the same inline, for sessions wired in memory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, ParamSpec, TypeVar

from crdtdb.errors import CrdtdbError, StoreError

from .coalesce import apply_together
from .session import Event, SyncSession
from .store import (
    ApplyDiffs,
    ApplyRecords,
    Intent,
    NoteCertificates,
    NoteFrontier,
    Outcome,
    RefreshDigests,
    ReplicaStore,
    Verifier,
)

__all__ = ["REFRESH_CHUNK", "StoreWriter", "perform", "perform_pending"]

log = logging.getLogger("crdtdb.sync")

REFRESH_CHUNK = 100
"""Digests brought up to date per store transaction by a refresh, so that other
processes get the write lock between chunks."""

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
P = ParamSpec("P")


def perform(
    store: ReplicaStore, batch: Sequence[tuple[K, Intent]], verifier: Verifier | None = None
) -> list[tuple[K, Intent, Outcome]]:
    """Perform a batch of ``(key, intent)``: one outcome each, in order, but none for
    what follows a refusal of the same key's. With a ``verifier``, records are
    applied only if their seals verify (see :mod:`.provenance`)."""
    outcomes: list[Outcome | None] = [None] * len(batch)
    refused: set[K] = set()
    deferred: list[int] = []
    i = 0
    while i < len(batch):
        key, intent = batch[i]
        if key in refused or isinstance(intent, NoteFrontier | RefreshDigests):
            if key not in refused:
                deferred.append(i)
            i += 1
            continue
        if isinstance(intent, ApplyRecords):  # with the same session's next ones, if waiting
            group = [intent]
            while i + len(group) < len(batch) and batch[i + len(group)][0] == key:
                following = batch[i + len(group)][1]
                if not isinstance(following, ApplyRecords):
                    break
                group.append(following)
            results = apply_together(
                store, group, verifier, lambda one: _apply(store, one, verifier)
            )
        else:
            results = [_apply(store, intent, verifier)]
        for outcome in results:
            outcomes[i] = outcome
            i += 1
        if results[-1].error is not None:
            refused.add(key)
    _hold(store, batch, outcomes)
    notes = [i for i in deferred if isinstance(batch[i][1], NoteFrontier)]
    _note(store, batch, notes, outcomes)
    refreshes = [i for i in deferred if isinstance(batch[i][1], RefreshDigests)]
    if refreshes:
        try:
            while store.refresh_digests(REFRESH_CHUNK):
                pass
            done = Outcome()
        except CrdtdbError as exc:
            done = Outcome(error=exc)
        for i in refreshes:
            outcomes[i] = done
    return [
        (key, intent, outcome)
        for (key, intent), outcome in zip(batch, outcomes, strict=True)
        if outcome is not None
    ]


def _apply(
    store: ReplicaStore,
    intent: ApplyRecords | ApplyDiffs | NoteCertificates,
    verifier: Verifier | None,
) -> Outcome:
    applied = 0
    try:
        if isinstance(intent, NoteCertificates):
            if verifier is not None:
                verifier.note_certificates(intent.certificates)
        elif isinstance(intent, ApplyRecords) and verifier is not None:
            records, chain = verifier.check(intent.records, intent.seals, intent.peer)
            applied = store.apply_remote_many(records, chain) if records else 0
        elif isinstance(intent, ApplyRecords):
            applied = store.apply_remote_many(list(intent.records))
        else:
            for doc_id, diff in intent.docs:
                applied += store.apply_diff(doc_id, diff) is not None
    except CrdtdbError as exc:
        return Outcome(applied, error=exc)
    return Outcome(applied)


def _hold(
    store: ReplicaStore, batch: Sequence[tuple[K, Intent]], outcomes: list[Outcome | None]
) -> None:
    """Fill in, for the records applied, what the store now holds of their origins."""
    applied = [
        i
        for i, outcome in enumerate(outcomes)
        if outcome is not None and outcome.error is None and isinstance(batch[i][1], ApplyRecords)
    ]
    if not applied:
        return
    try:
        progress = store.progress()
    except CrdtdbError as exc:
        for i in applied:
            outcomes[i] = Outcome(error=exc)
        return
    for i in applied:
        intent = batch[i][1]
        done = outcomes[i]
        assert isinstance(intent, ApplyRecords) and done is not None
        origins = sorted({record.origin for record in intent.records})
        held = tuple((o, progress[o][1] if o in progress else 0) for o in origins)
        outcomes[i] = Outcome(done.applied, held)


def _note(
    store: ReplicaStore,
    batch: Sequence[tuple[K, Intent]],
    notes: list[int],
    outcomes: list[Outcome | None],
) -> None:
    """Note every frontier report of the batch in one go: they only ever move forward."""
    if not notes:
        return
    entries: dict[tuple[K, str], tuple[str, int, int]] = {}
    clocks: dict[str, int] = {}
    for i in notes:
        key, note = batch[i]
        assert isinstance(note, NoteFrontier)
        for entry in note.entries:
            entries[key, entry[0]] = entry
        for region, hlc in note.clocks:
            clocks[region] = max(clocks.get(region, 0), hlc)
    try:
        store.note_frontier(list(entries.values()), sorted(clocks.items()))
        done = Outcome()
    except CrdtdbError as exc:
        done = Outcome(error=exc)
    for i in notes:
        outcomes[i] = done


def perform_pending(
    session: SyncSession, store: ReplicaStore, now: float, verifier: Verifier | None = None
) -> tuple[list[Event], int]:
    """Take the session's events, performing its intents at once, until none is left.

    Returns the other events, in order, and how many intents were performed.
    """
    events: list[Event] = []
    count = 0
    while True:
        intents: list[tuple[SyncSession, Intent]] = []
        while (event := session.next_event()) is not None:
            if isinstance(event, Intent):
                intents.append((session, event))
            else:
                events.append(event)
        if not intents:
            return events, count
        count += len(intents)
        for _, intent, outcome in perform(store, intents, verifier):
            session.performed(intent, outcome, now)


class StoreWriter(Generic[K]):
    """One worker thread that performs intents (and other store writes) in batches."""

    def __init__(
        self,
        store: ReplicaStore,
        done: Callable[[K, Intent, Outcome], None],
        verifier: Verifier | None = None,
        batch_done: Callable[[list[K]], None] | None = None,
    ) -> None:
        """``done(key, intent, outcome)`` is called on the event loop for each outcome;
        ``verifier`` checks records' seals before they are applied; ``batch_done(keys)``
        after a batch's outcomes, once, with the keys that had one (in order), so that
        what they make a session send (its Acks) goes out together."""
        self._store = store
        self.verifier = verifier
        self._done = done
        self._batch_done = batch_done
        self._queue: list[tuple[K, Intent]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdtdb-writer")
        self.batches = 0

    def submit(self, key: K, intent: Intent) -> None:
        """Queue ``intent`` (of the session ``key`` stands for) for the next batch."""
        self._queue.append((key, intent))
        self._wake.set()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run another store write on the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def run(self) -> None:
        """Perform what is submitted, a batch at a time, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(
                    self._executor, perform, self._store, batch, self.verifier
                )
            except Exception as exc:  # a bug, or an error the store did not wrap
                log.exception("sync writes failed")
                error = StoreError(f"sync writes failed: {exc}")
                results = [(key, intent, Outcome(error=error)) for key, intent in batch]
            self.batches += 1
            for key, intent, outcome in results:
                if outcome.error is not None:  # nothing more of that session's
                    self._queue = [(k, i) for k, i in self._queue if k != key]
                try:
                    self._done(key, intent, outcome)
                except Exception:
                    log.exception("handing back a sync write's outcome failed")
            if self._batch_done is not None:
                try:
                    self._batch_done(list(dict.fromkeys(key for key, _, _ in results)))
                except Exception:
                    log.exception("handing back a sync write batch failed")

    async def close(self) -> None:
        """Wait for the write in progress (if any); drop what is queued."""
        self._queue.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
