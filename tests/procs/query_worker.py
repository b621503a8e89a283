"""Processes around one store for the query layer's concurrency tests.

Usage: ``query_worker.py ROLE DIR [COUNT]`` where ROLE is

- ``writer``: COUNT transactions, each setting ``pairs/a`` and ``pairs/b`` to
  the same ``n`` (1, 2, 3 ...); prints ``{"ev": "done", "n": COUNT}``.
- ``reader``: loops ``connect(DIR, refresh=False)`` then ``con.refresh()``
  queries until told ``stop`` on stdin; checks each cut is consistent (both
  documents hold one ``n``, and ``changes`` holds exactly ``n`` records of
  each) and prints ``{"ev": "cut", "n": n}`` for each new ``n``, or
  ``{"ev": "torn", ...}`` if a cut is not consistent.
- ``refresher``: loops ``crdtdb.query.refresh(DIR)`` until told ``stop``;
  prints ``{"ev": "refreshed", "generation": G}`` for each new generation.
- ``refresh-once``: one refresh; prints its result.

Each prints ``{"ev": "ready"}`` first.
"""

from __future__ import annotations

import json
import select
import sys
from typing import Any

import crdtdb
from crdtdb import query


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def stopped() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and sys.stdin.readline().strip() in ("stop", "")


def writer(path: str, count: int) -> None:
    with crdtdb.open(path) as db:
        say(ev="ready")
        for n in range(1, count + 1):
            with db.transaction() as tx:
                tx.put("pairs/a", {"n": n})
                tx.put("pairs/b", {"n": n})
    say(ev="done", n=count)


CUT = (
    "SELECT (SELECT list(DISTINCT n) FROM pairs),"
    " (SELECT count(*) FROM changes WHERE id = 'pairs/a'),"
    " (SELECT count(*) FROM changes WHERE id = 'pairs/b')"
)


def reader(path: str) -> None:
    say(ev="ready")
    con = None
    seen = 0
    while not stopped():
        if con is None:
            try:
                con = query.connect(path, refresh=False)
            except crdtdb.CrdtdbError:
                continue  # not built yet
        else:
            query.refresh_connection(con)
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        if "pairs" not in tables:
            continue
        (ns, a, b), *_ = con.execute(CUT).fetchall()
        if len(ns) != 1 or ns[0] != a or a != b:
            say(ev="torn", ns=ns, a=a, b=b)
        elif ns[0] > seen:
            seen = ns[0]
            say(ev="cut", n=seen)


def refresher(path: str) -> None:
    say(ev="ready")
    generation = 0
    while not stopped():
        result = query.refresh(path)
        if result.generation != generation:
            generation = result.generation
            say(ev="refreshed", generation=generation, documents=result.documents)


def main() -> None:
    role, path = sys.argv[1], sys.argv[2]
    if role == "writer":
        writer(path, int(sys.argv[3]))
    elif role == "reader":
        reader(path)
    elif role == "refresher":
        refresher(path)
    elif role == "refresh-once":
        say(ev="ready")
        result = query.refresh(path)
        say(ev="refreshed", generation=result.generation, documents=result.documents)


if __name__ == "__main__":
    main()
