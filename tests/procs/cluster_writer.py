"""An application process of one region for the cluster tests: writes, prints each ack.

Usage: ``cluster_writer.py DIR REGION MODE [--ops N] [--seed S] [--tag T] [--wait-go]``

It opens the region's store through the embedded library (``crdtdb.open``),
the same directory its ``crdtdb serve`` daemon replicates. With ``--wait-go``
it prints ``{"ev": "ready"}`` and waits for a ``go`` line on stdin, so that
several writers start together. Every write is printed as one JSON line
*after* its commit returned (an acknowledged write); the last line is
``{"ev": "done", "ops": N}``.

Modes:

``mix``
    A mixed workload whose final state a test can compute from the acks:
    ``update`` of this region's own keys (``REGION_k``) in documents
    ``shared{T}/0..3`` that every region writes; ``put`` / ``update`` of its
    own documents ``REGION{T}/d*``; ``put`` then ``delete`` of its own
    documents ``REGION{T}/t*`` (deletes only where no other region writes);
    and multi-document transactions doing both at once.
``bulk``
    ``--ops`` single-document puts ``REGION{T}-bulk/N``, one record each, as
    fast as possible (a burst of records for a peer to receive).

Ack lines: ``{"ev": "ack", "ops": [OP, ...]}`` where OP is
``{"op": "put", "doc": ID, "value": {...}}``, ``{"op": "update", "doc": ID,
"set": {...}}`` or ``{"op": "delete", "doc": ID}`` (a transaction acks all
its ops in one line).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

import crdtdb

SHARED_DOCS = 4
SHARED_KEYS = 6
OWN_DOCS = 10
TEMP_DOCS = 5


def emit(value: dict[str, Any]) -> None:
    print(json.dumps(value, sort_keys=True), flush=True)


def ack(*ops: dict[str, Any]) -> None:
    emit({"ev": "ack", "ops": list(ops)})


class Mix:
    """One writer's random but reproducible sequence of operations."""

    def __init__(self, db: crdtdb.Database, region: str, tag: str, seed: int) -> None:
        self.db = db
        self.region = region
        self.shared = f"shared{tag}"
        self.own = f"{region}{tag}"
        self.rng = random.Random(seed)
        self.temp_live: set[str] = set()

    def shared_update(self, i: int) -> dict[str, Any]:
        doc = f"{self.shared}/{self.rng.randrange(SHARED_DOCS)}"
        key = f"{self.region}_{self.rng.randrange(SHARED_KEYS)}"
        value: Any = i if self.rng.random() < 0.5 else f"{self.region}-{i}"
        return {"op": "update", "doc": doc, "set": {key: value}}

    def own_put(self, i: int) -> dict[str, Any]:
        doc = f"{self.own}/d{self.rng.randrange(OWN_DOCS)}"
        value = {"by": self.region, "n": i, "tags": [i, f"t{i}"], "nested": {"i": i}}
        return {"op": "put", "doc": doc, "value": value}

    def own_update(self, i: int) -> dict[str, Any]:
        doc = f"{self.own}/d{self.rng.randrange(OWN_DOCS)}"
        return {"op": "update", "doc": doc, "set": {"u": i, f"k{i % 3}": f"v{i}"}}

    def temp(self, i: int) -> dict[str, Any]:
        doc = f"{self.own}/t{self.rng.randrange(TEMP_DOCS)}"
        if doc in self.temp_live:
            return {"op": "delete", "doc": doc}
        return {"op": "put", "doc": doc, "value": {"tmp": i}}

    def next_ops(self, i: int) -> list[dict[str, Any]]:
        r = self.rng.random()
        if r < 0.35:
            return [self.shared_update(i)]
        if r < 0.55:
            return [self.own_put(i)]
        if r < 0.70:
            return [self.own_update(i)]
        if r < 0.88:
            return [self.temp(i)]
        return [self.shared_update(i), self.own_update(i)]

    def perform(self, ops: list[dict[str, Any]]) -> None:
        with self.db.transaction() as tx:
            for op in ops:
                if op["op"] == "put":
                    tx.put(op["doc"], op["value"])
                elif op["op"] == "update":
                    tx.update(op["doc"], op["set"])
                else:
                    tx.delete(op["doc"])
        for op in ops:  # committed: now it is an acknowledged write
            if op["doc"].split("/")[1].startswith("t"):
                if op["op"] == "delete":
                    self.temp_live.discard(op["doc"])
                else:
                    self.temp_live.add(op["doc"])

    def run(self, count: int) -> None:
        for i in range(count):
            ops = self.next_ops(i)
            self.perform(ops)
            ack(*ops)


def bulk(db: crdtdb.Database, region: str, tag: str, count: int) -> None:
    for i in range(count):
        doc = f"{region}{tag}-bulk/{i}"
        value = {"i": i, "pad": "x" * 200}
        db.put(doc, value)
        ack({"op": "put", "doc": doc, "value": value})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("region")
    parser.add_argument("mode", choices=["mix", "bulk"])
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--wait-go", action="store_true")
    args = parser.parse_args()
    with crdtdb.open(args.dir, region=args.region) as db:
        if args.wait_go:
            emit({"ev": "ready"})
            if sys.stdin.readline().strip() != "go":
                return 1
        if args.mode == "mix":
            Mix(db, args.region, args.tag, args.seed).run(args.ops)
        else:
            bulk(db, args.region, args.tag, args.ops)
        emit({"ev": "done", "ops": args.ops})
    return 0


if __name__ == "__main__":
    sys.exit(main())
