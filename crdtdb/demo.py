"""The embedded-library demo: two regions, concurrent edits, merge, time travel.

Run with ``crdtdb demo --embedded`` (``crdtdb demo`` runs a real cluster:
:mod:`crdtdb.sync.demo`). It creates two region stores, ``eu`` and ``us``, in
a temporary directory, or in ``--keep DIR`` (new, empty, or an earlier
demo's: see :mod:`crdtdb.demo_dir`), edits the same documents in both
while they are "partitioned", ships each region's log records to the other
with ``changes()`` + ``apply_remote()`` (what the sync daemon does over QUIC),
and shows that both end identical, that a delete concurrent with an edit
keeps the concurrent edit, and that ``as_of`` reads the past.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pycrdt import Text

from .database import Database
from .database import open as open_db
from .demo_dir import demo_directory
from .hlc import Hlc


def _show(label: str, value: Any) -> None:
    print(f"  {label:<34} {json.dumps(value, sort_keys=True)}")


def _ship(source: Database, target: Database, since: Hlc) -> int:
    """Send every record of ``source`` after ``since`` to ``target``; return how many were new."""
    return sum(target.apply_remote(record) for record in source.changes(since))


def run(keep: Path | None = None) -> int:
    with demo_directory(keep) as workspace:
        return _walkthrough(workspace.path)


def _walkthrough(root: Path) -> int:
    with open_db(root / "eu", region="eu") as eu, open_db(root / "us", region="us") as us:
        print(f"crdtdb demo: two regions in {root}/eu and {root}/us\n")
        print("1. eu writes a document; us receives it")
        before = eu.put("users/alice", {"name": "Alice", "tags": ["admin"], "visits": 1})
        _ship(eu, us, Hlc(0))
        _show("us reads users/alice", us.get("users/alice"))

        print("\n2. partition: both regions edit the same document concurrently")
        mark_eu, mark_us = eu.hlc, us.hlc
        with eu.transaction() as tx:
            doc = tx.doc("users/alice")
            doc["tags"].append("eu-editor")
            doc["city"] = "Paris"
        with us.transaction() as tx:
            doc = tx.doc("users/alice")
            doc["tags"].append("us-editor")
            doc["visits"] = 2
            tx.put("orders/17", {"total": 12.5, "items": ["book"]})
        _show("eu sees", eu.get("users/alice"))
        _show("us sees", us.get("users/alice"))

        print("\n3. heal: exchange log records (idempotent, any order)")
        sent = _ship(eu, us, mark_eu) + _ship(us, eu, mark_us)
        _ship(eu, us, Hlc(0))  # duplicates are ignored
        print(f"  {sent} records exchanged")
        _show("eu sees", eu.get("users/alice"))
        _show("us sees", us.get("users/alice"))
        same = eu.digest("users/alice") == us.digest("users/alice")
        print(
            f"  digests equal: {same}; Merkle roots equal: {eu.merkle_root() == us.merkle_root()}"
        )

        print("\n4. eu deletes orders/17 while us edits it concurrently")
        mark_eu, mark_us = eu.hlc, us.hlc
        eu.delete("orders/17")
        us.update("orders/17", {"status": "shipped"})
        _ship(eu, us, mark_eu)
        _ship(us, eu, mark_us)
        _show("eu sees orders/17", eu.get("orders/17"))
        _show("us sees orders/17", us.get("orders/17"))
        print("  (a delete removes what the deleting region had seen; the concurrent edit stays)")

        print("\n5. collaborative text: eu types, us inserts concurrently")
        with eu.transaction() as tx:
            tx.doc("notes/readme")["body"] = Text("Hello world")
        _ship(eu, us, Hlc(0))
        mark_eu, mark_us = eu.hlc, us.hlc
        with eu.transaction() as tx:
            tx.doc("notes/readme")["body"].insert(5, ",")
        with us.transaction() as tx:
            tx.doc("notes/readme")["body"] += "!"
        _ship(eu, us, mark_eu)
        _ship(us, eu, mark_us)
        _show("eu sees notes/readme", eu.get("notes/readme"))
        _show("us sees notes/readme", us.get("notes/readme"))

        print("\n6. time travel: users/alice as of the first write")
        _show(f"as of {before}", eu.as_of(before).get("users/alice"))
        _show("now", eu.get("users/alice"))

        print("\n7. the log of region us (HLC order)")
        for record in us.changes():
            print(
                f"  {record.hlc}  {record.origin}#{record.seq:<3} {record.doc_id}"
                f"  ({len(record.update)} bytes)"
            )
        converged = all(
            eu.get(d) == us.get(d) for d in ("users/alice", "orders/17", "notes/readme")
        )
        converged = converged and eu.merkle_root() == us.merkle_root()
        print(f"\nregions converged: {converged}")
        return 0 if converged else 1
