"""How records to send are cut into ``Records`` messages (pure).

Records go as runs: a sealed run (see :mod:`.signing`) is never split, since
its seal covers it whole; an unsealed record (sessions without signing, in
tests) is a run of its own. Runs are packed into messages of about
``chunk_bytes``; a run holding a record of ``large_bytes`` or more goes in a
message of its own, on that document's bulk lane (the origin seals such a
record as a run of its own, so this holds no other record back).
"""

from __future__ import annotations

from collections.abc import Iterable

from crdtdb.records import UpdateRecord

from . import wire

__all__ = ["Run", "pack"]

Run = tuple[wire.Seal | None, list[UpdateRecord]]
"""A run of one origin's consecutive records and its seal (None: unsealed)."""


def pack(
    runs: Iterable[Run], *, large_bytes: int, chunk_bytes: int
) -> list[tuple[wire.Records, str | None]]:
    """The messages to send, each with the document whose bulk lane it takes (None: main)."""
    out: list[tuple[wire.Records, str | None]] = []
    batch: list[Run] = []
    size = 0
    for seal, run in runs:
        large = next((r for r in run if len(r.update) >= large_bytes), None)
        if large is not None:
            out.append((_message([(seal, run)]), large.doc_id))
            continue
        run_bytes = sum(len(record.update) for record in run)
        if batch and size + run_bytes > chunk_bytes:
            out.append((_message(batch), None))
            batch, size = [], 0
        batch.append((seal, run))
        size += run_bytes
    if batch:
        out.append((_message(batch), None))
    return out


def _message(batch: list[Run]) -> wire.Records:
    records = tuple(record for _, run in batch for record in run)
    return wire.Records(records, tuple(seal for seal, _ in batch if seal is not None))
