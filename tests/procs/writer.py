"""Write to a store without end, reporting every write before and after it is acknowledged.

Usage: ``writer.py DIR --start I [--durability normal|full] [--snapshot-min-bytes B]``

Prints ``{"ev": "ready"}`` once the store is open, then for each operation ``i``
(from ``--start``, at most ``LIMIT`` of them) two JSON lines, flushed:

- ``{"ev": "intent", "i": i, "effects": [[kind, doc_id, value], ...]}`` before
  the write starts, and
- ``{"ev": "ack", "i": i, "hlc": hlc}`` after the call returned (committed).

``kind`` is ``put`` (the document now equals ``value``), ``update`` (these
top-level keys were set) or ``delete``. All effects of one operation are one
commit. The parent kills this process with SIGKILL at some point; everything
acknowledged must then be on disk, and the one operation that may have an
intent but no ack must be on disk either entirely or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import crdtdb

LIMIT = 200_000  # the parent kills us long before; bounded in case it does not
PAD = "x" * 50

Effect = tuple[str, str, Any]


def operation(i: int) -> list[Effect]:
    """The effects of operation ``i``: a deterministic mix of puts, updates, deletes, txs."""
    kind = i % 10
    if kind <= 5:
        return [("put", f"w/{i}", {"i": i, "pad": PAD})]
    if kind == 6:  # a transaction; every fifth one is large (atomicity under a kill)
        parts = 40 if (i // 10) % 5 == 0 else 2
        effects: list[Effect] = [("put", f"t/{i}-{j}", {"i": i, "part": j}) for j in range(parts)]
        return [*effects, ("update", f"hot/{i % 3}", {f"k{i}": i})]
    if kind == 7:
        return [("update", f"hot/{i % 3}", {f"k{i}": i})]
    if kind == 8:
        return [("delete", f"w/{i - 5}", None)]  # i - 5 is an earlier put of this run
    return [
        ("update", f"w/{i - 9}", {"i2": i}),  # kind 9: edit an earlier doc + a nested one
        ("put", f"n/{i}", {"i": i, "tags": ["a", "b", i], "m": {"x": i, "y": [1.5, None]}}),
    ]


def perform(db: crdtdb.Database, effects: list[Effect]) -> int:
    if len(effects) == 1:
        kind, doc_id, value = effects[0]
        if kind == "put":
            return db.put(doc_id, value)
        if kind == "update":
            return db.update(doc_id, value)
        hlc = db.delete(doc_id)
        assert hlc is not None, f"{doc_id} should have existed"
        return hlc
    with db.transaction() as tx:
        for kind, doc_id, value in effects:
            assert kind in ("put", "update")
            getattr(tx, kind)(doc_id, value)
    assert tx.hlc is not None
    return tx.hlc


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--durability", default="normal")
    parser.add_argument("--snapshot-min-bytes", type=int)
    args = parser.parse_args()
    assert args.start % 10 == 0, "operations refer back to earlier ones of the same run"
    options: dict[str, Any] = {"durability": args.durability}
    if args.snapshot_min_bytes is not None:  # small: load snapshots are rewritten often
        options["snapshot_min_bytes"] = args.snapshot_min_bytes
    db = crdtdb.open(args.dir, region="eu", **options)
    emit({"ev": "ready"})
    for i in range(args.start, args.start + LIMIT):
        effects = operation(i)
        emit({"ev": "intent", "i": i, "effects": effects})
        hlc = perform(db, effects)
        emit({"ev": "ack", "i": i, "hlc": int(hlc)})
    db.close()


if __name__ == "__main__":
    main()
