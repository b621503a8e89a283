"""The automerge-paper editing trace replayed one transaction a keystroke, against bare pycrdt.

The trace (``shared/data/editing-traces/automerge-paper.json.gz``, josephg/editing-traces,
CC BY 4.0) is 259,778 keystrokes of one author typing a paper. Both sides type it into
one text, one transaction a keystroke: bare pycrdt (one ``Doc``, an update observer on,
as an application that keeps its updates would run it) and crdtdb
(``with db.transaction() as tx: tx.text(...).insert/del``, default durability, each
keystroke committed before the next). Both results are checked against the trace's
final text. :func:`replay_rows` is the section; the store's size after the replay is
measured where :func:`crdtdb_replay` leaves the store (see its ``measure`` argument).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text, TransactionEvent

import crdtdb

from .common import Cell, Config, Run, temp_dir

TRACE = "automerge-paper.json.gz"
DOC = "papers/automerge"
FIELD = "body"


def trace_path(name: str = TRACE) -> Path:
    """``../shared`` of the checkout, or ``/work/shared`` (as tests/traces.py looks)."""
    shared = Path(__file__).resolve().parents[3] / "shared"
    if not shared.is_dir():
        shared = Path("/work/shared")
    return shared / "data" / "editing-traces" / name


def load_trace(limit: int | None = None) -> tuple[list[list[tuple[int, int, str]]], str | None]:
    """The trace's keystrokes (each a list of patches ``(pos, deleted, inserted)``), the
    first ``limit`` of them if given, and the final text (None when cut short)."""
    path = trace_path()
    if not path.is_file():
        raise SystemExit(f"the editing trace is missing (looked for {path}): restore shared/data/")
    trace: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    txns = [[(p[0], p[1], p[2]) for p in txn["patches"]] for txn in trace["txns"]]
    if limit is not None and limit < len(txns):
        return txns[:limit], None
    return txns, str(trace["endContent"])


def bare_replay(txns: list[list[tuple[int, int, str]]]) -> tuple[Run, str]:
    """Bare pycrdt: one Text, one transaction and one captured update a keystroke."""
    doc: Doc[Any] = Doc()
    text = doc.get(FIELD, type=Text)
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    doc.observe(keep)
    start = time.perf_counter()
    type_into(doc, text, txns)
    elapsed = time.perf_counter() - start
    return Run(len(txns), elapsed), str(text)


def type_into(doc: Doc[Any], text: Text, txns: list[list[tuple[int, int, str]]]) -> None:
    """Type the trace into ``text`` with bare pycrdt, one transaction per trace transaction."""
    for patches in txns:
        with doc.transaction():
            for pos, deleted, inserted in patches:
                if deleted:
                    del text[pos : pos + deleted]
                if inserted:
                    text.insert(pos, inserted)


def crdtdb_replay(
    txns: list[list[tuple[int, int, str]]],
    path: Path,
    measure: Callable[[crdtdb.Database], None] | None = None,
) -> tuple[Run, str]:
    """crdtdb: one transaction, hence one durable commit, a keystroke. ``measure`` is
    called with the open store after the timed replay (to look at the store)."""
    with crdtdb.open(path / "store", region="eu") as db:
        start = time.perf_counter()
        for patches in txns:
            with db.transaction() as tx:
                text = tx.text(DOC, FIELD)
                for pos, deleted, inserted in patches:
                    if deleted:
                        del text[pos : pos + deleted]
                    if inserted:
                        text.insert(pos, inserted)
        elapsed = time.perf_counter() - start
        found = db.get(DOC)
        if measure is not None:
            measure(db)
    return Run(len(txns), elapsed), str((found or {}).get(FIELD, ""))


def replay_rows(cfg: Config, results: dict[Cell, list[Run]], limit: int | None = None) -> None:
    """The replay section: bare pycrdt, then crdtdb, each checked against the other (and
    against the trace's final text when replayed whole). Once each: the trace is long."""
    txns, final = load_trace(limit)
    bare, bare_text = bare_replay(txns)
    with temp_dir() as path:
        mine, my_text = crdtdb_replay(txns, path)
    if final is not None:
        assert bare_text == final, "bare pycrdt's replay does not give the trace's text"
    assert my_text == bare_text, "crdtdb's replay differs from bare pycrdt's"
    results[("replay", "raw", None)] = [bare]
    results[("replay", "crdtdb-doc", None)] = [mine]
