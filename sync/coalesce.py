"""Applying several waiting ``Records`` messages of one session in one store transaction.

At a live rate (say 1,000 one-write commits a second) a ``Records`` message
carries a handful of records, and applying each message on its own cost a
write transaction, a lock, and a pass of bookkeeping per message. When the
writer thread finds several messages of one session waiting, it applies them
together (:func:`apply_together`): each is checked on its own (its seals, as
before), then all their records and chain rows go to the store in one
``apply_remote_many``, and each message still gets its own outcome, so each
is acknowledged as before.

What one-by-one applying would decide differently is never merged: a
message is kept for the next call if it repeats an ``(origin, seq)`` of an
earlier message of the group (one-by-one, the earlier one would be held by
then and the later compared with it), or if one of its runs continues a run
of the group from another hash than that run's last (a fork, which
one-by-one applying refuses as an equivocation). A message whose check
fails ends the group with that refusal, after the messages before it are
applied. A merged apply that the store refuses is redone one message at a
time, so the refusal lands on the message that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from crdtdb.chains import ChainRow
from crdtdb.errors import CrdtdbError
from crdtdb.records import UpdateRecord

from .store import ApplyRecords, Outcome, ReplicaStore, Verifier

__all__ = ["MAX_GROUP_RECORDS", "apply_together"]

MAX_GROUP_RECORDS = 4096
"""Records applied in one merged transaction, at most (so a backlog's messages, already
big, do not hold the store's write lock for long)."""

Single = Callable[[ApplyRecords], Outcome]
"""Applies one message on its own (the writer's one-by-one path)."""


def apply_together(
    store: ReplicaStore,
    intents: Sequence[ApplyRecords],
    verifier: Verifier | None,
    single: Single,
) -> list[Outcome]:
    """Apply a prefix of ``intents`` (messages of one session, in order) in one
    transaction; return one outcome for each message of that prefix (at least one).

    The caller passes the rest again. ``single`` applies one message on its own:
    used for a lone message, and to redo a merged apply the store refused."""
    if len(intents) == 1:
        return [single(intents[0])]
    records: list[UpdateRecord] = []
    chain: list[ChainRow] = []
    counts: list[int] = []
    seen: set[tuple[str, int]] = set()
    heads: dict[tuple[str, int], bytes] = {}
    refusal: Outcome | None = None
    for intent in intents:
        if counts and len(records) + len(intent.records) > MAX_GROUP_RECORDS:
            break
        keys = [(record.origin, record.seq) for record in intent.records]
        if seen.intersection(keys):
            break  # one by one, this one would be compared with what the group holds
        try:
            if verifier is not None:
                mine, rows = verifier.check(intent.records, intent.seals, intent.peer)
            else:
                mine, rows = list(intent.records), []
        except CrdtdbError as exc:
            refusal = Outcome(error=exc)
            break
        if not _continues(rows, heads):
            break
        seen.update(keys)
        heads.update(((row.origin, row.seq), row.hash) for row in rows)
        records += mine
        chain += rows
        counts.append(len(mine))
    if not counts:  # the first message alone: its refusal, or a repeat of nothing
        return [refusal] if refusal is not None else [single(intents[0])]
    group = intents[: len(counts)]
    try:
        applied = store.apply_remote_many(records, chain) if records else 0
    except CrdtdbError:
        return _one_by_one(group, single)
    outcomes = []
    for count in counts:  # the group's total, spread over its messages in order
        share = min(count, applied)
        applied -= share
        outcomes.append(Outcome(share))
    return outcomes + ([refusal] if refusal is not None else [])


def _continues(rows: list[ChainRow], heads: dict[tuple[str, int], bytes]) -> bool:
    """Whether each run of ``rows`` that follows a record of the group follows its hash."""
    previous: ChainRow | None = None
    for row in rows:
        starts_run = previous is None or previous.origin != row.origin or previous.key is not None
        if starts_run:
            head = heads.get((row.origin, row.seq - 1))
            if head is not None and head != row.prev:
                return False
        previous = row
    return True


def _one_by_one(intents: Sequence[ApplyRecords], single: Single) -> list[Outcome]:
    """Each message on its own, up to and including the first refused one."""
    outcomes = []
    for intent in intents:
        outcomes.append(single(intent))
        if outcomes[-1].error is not None:
            break
    return outcomes
