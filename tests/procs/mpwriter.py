"""One of several processes writing to the same store at the same time.

Usage: ``mpwriter.py DIR NAME COUNT [--other NAME]``

Opens (or creates) region ``eu`` in ``DIR``, prints ``{"ev": "ready"}`` and
waits for a ``go`` line on stdin, so that the parent can start several writers
at once. Then it performs operations ``0..COUNT-1`` of :func:`operation` (puts
and updates of its own documents, updates of the shared documents
``shared/x`` and ``shared/y``, multi-document transactions), and finally puts
its marker ``marker/NAME``.

With ``--other``, it then waits (polling ``get``, with a deadline) until it
sees the other writer's marker, and checks that every write of the other
writer is visible to it. The last line is ``{"ev": "done", ...}`` with the
HLCs of its commits in order and what it found missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import crdtdb

Effect = tuple[str, str, Any]
WAIT_S = 120.0  # deadline for the other writer's marker
POLL_S = 0.005


def operation(name: str, i: int) -> list[Effect]:
    """Writer ``name``'s operation ``i``: its own keys only, so every write must survive."""
    kind = i % 4
    if kind == 0:
        return [("put", f"{name}/{i}", {"i": i, "by": name})]
    if kind == 1:
        return [("update", "shared/x", {f"{name}_{i}": i})]
    if kind == 2:
        return [
            ("put", f"{name}/{i}", {"i": i, "by": name}),
            ("update", "shared/x", {f"{name}_{i}": i}),
            ("update", "shared/y", {name: i}),
        ]
    return [("update", f"{name}/{i - 3}", {"u": i})]


def marker(name: str, count: int) -> Effect:
    return ("put", f"marker/{name}", {"done": count})


def expected(name: str, count: int) -> dict[str, dict[str, Any]]:
    """What writer ``name`` wrote: full documents for its own, its keys for shared ones."""
    model: dict[str, dict[str, Any]] = {}
    for i in range(count):
        for kind, doc_id, value in operation(name, i):
            model[doc_id] = value if kind == "put" else {**model.get(doc_id, {}), **value}
    kind, doc_id, value = marker(name, count)
    model[doc_id] = value
    return model


def perform(db: crdtdb.Database, effects: list[Effect]) -> int:
    if len(effects) == 1:
        kind, doc_id, value = effects[0]
        return db.put(doc_id, value) if kind == "put" else db.update(doc_id, value)
    with db.transaction() as tx:
        for kind, doc_id, value in effects:
            getattr(tx, kind)(doc_id, value)
    assert tx.hlc is not None
    return tx.hlc


def missing(db: crdtdb.Database, model: dict[str, dict[str, Any]]) -> list[str]:
    """Documents (or keys of shared documents) in ``model`` that ``db`` does not show."""
    wrong = []
    for doc_id, value in model.items():
        current = db.get(doc_id)
        if doc_id.startswith("shared/"):
            current = current or {}
            wrong += [f"{doc_id}:{k}" for k, v in value.items() if current.get(k) != v]
        elif current != value:
            wrong.append(f"{doc_id}={current!r}")
    return wrong


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("name")
    parser.add_argument("count", type=int)
    parser.add_argument("--other")
    args = parser.parse_args()
    with crdtdb.open(args.dir, region="eu") as db:
        emit({"ev": "ready"})
        assert sys.stdin.readline().strip() == "go"
        hlcs = [perform(db, operation(args.name, i)) for i in range(args.count)]
        hlcs.append(perform(db, [marker(args.name, args.count)]))
        report: dict[str, Any] = {"ev": "done", "name": args.name, "hlcs": hlcs}
        if args.other:
            deadline = time.monotonic() + WAIT_S
            while db.get(f"marker/{args.other}") is None and time.monotonic() < deadline:
                time.sleep(POLL_S)
            report["missing"] = missing(db, expected(args.other, args.count))
            report["shared_x_keys"] = len(db.get("shared/x") or {})
        emit(report)


if __name__ == "__main__":
    main()
