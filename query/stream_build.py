"""A first build's collection files, written from the child reader's batches as they come.

A first build used to wait for the child to read every document into Arrow,
then write each collection's Parquet file: reading SQLite and writing Parquet
took turns, each on one core. Here the documents come through a pipe
(:mod:`.arrow_read`) in doc id order, so each collection's are one run of
the stream, and the child says first, in the stream's schema metadata,
which shapes each collection's bodies have: its column types (the merge of
those shapes, :mod:`.schema`) are known before its first row. Each
collection's file is then a ``COPY`` whose source is its run of batches,
read while the child goes on reading: the two overlap.

Every batch is kept: once the stream ends, the build goes on as before with
the whole table (the types are worked out again from the staged documents,
the other collections' files are written, the log's file). A streamed file
is kept only where those types are the ones it was written with, and the
child succeeded (exit status 0: it read the snapshot's cut to the end);
otherwise it is deleted and the collection written the ordinary way. A
collection with a body of unknown shape (written before commits noted
shapes) is not streamed; a document its commit did not complete (no body:
too large, or a store migrated from schema 2) is read through the snapshot
afterwards and goes to a second file of the collection.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from crdtdb.snapshot import Snapshot

from .area import Area, Manifest
from .files import copy_to, typed_select
from .schema import FieldType, merge_structure

__all__ = ["COMPLETE", "SHAPES_KEY", "Streamed", "stream_collections"]

SHAPES_KEY = b"crdtdb.shapes"
"""The schema metadata the documents' child writes (see ``_arrow_child.py``)."""
COMPLETE = "origin IS NOT NULL AND (live = 0 OR body IS NOT NULL)"
"""The documents read as their commits wrote them (the others are read through the
snapshot)."""
STAGED_COLUMNS = (
    "id, collection, live <> 0 AS live, hlc::UBIGINT AS hlc, origin, body, shape::INTEGER AS shape"
)
"""The child's columns as the table ``staged`` has them."""


@dataclass(frozen=True, slots=True)
class Streamed:
    """A collection's file written from the stream."""

    path: str
    seg: int
    fields: dict[str, FieldType]


def stream_collections(
    area: Area,
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    reader: pa.RecordBatchReader,
    snap: Snapshot,
) -> tuple[pa.Table, dict[str, Streamed]]:
    """Write each collection's file from its run of ``reader``; return every batch read
    (as a table) and the files written. The caller checks the child's exit status."""
    kinds = _collection_fields(reader.schema, snap)
    runs = _Runs(reader)
    streamed: dict[str, Streamed] = {}
    try:
        while (collection := runs.next_collection()) is not None:
            if collection in runs.done:  # not one run after all: its file lacks these rows
                discard(area, {c: streamed.pop(c) for c in [collection] if c in streamed})
                kinds.pop(collection, None)
            fields = kinds.get(collection)
            if fields is None:
                runs.skip(collection)
                continue
            number = manifest.next_seg
            manifest.next_seg += 1
            (area.root / "seg" / str(number)).mkdir(parents=True, exist_ok=True)
            name = f"seg/{number}/c_{collection}.parquet"
            streamed[collection] = Streamed(name, number, fields)
            _copy_run(con, runs, collection, fields, number, area.root / name)
    except BaseException:  # the child stopped short, or DuckDB failed: none of them is used
        discard(area, streamed)
        raise
    return runs.table(), streamed


def _copy_run(
    con: duckdb.DuckDBPyConnection,
    runs: _Runs,
    collection: str,
    fields: dict[str, FieldType],
    number: int,
    path: Path,
) -> None:
    """``COPY`` one collection's run of the stream to its file, as the batches come."""
    source = pa.RecordBatchReader.from_batches(runs.schema, runs.run(collection))
    con.register("_stream", source)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW _streamed AS SELECT {STAGED_COLUMNS}"
            f" FROM _stream WHERE {COMPLETE}"
        )
        copy_to(con, typed_select("_streamed", number, fields, collection), path)
    finally:
        con.unregister("_stream")
    runs.skip(collection)  # whatever of its run the COPY left unread


def _collection_fields(schema: pa.Schema, snap: Snapshot) -> dict[str, dict[str, FieldType]]:
    """Per collection whose bodies all have a noted shape: its fields, merged from them."""
    metadata = schema.metadata or {}
    if SHAPES_KEY not in metadata:
        return {}
    noted: dict[str, list[int] | None] = json.loads(metadata[SHAPES_KEY])
    numbers = sorted({n for found in noted.values() if found for n in found})
    shapes = snap.shapes(numbers)
    kinds: dict[str, dict[str, FieldType]] = {}
    for collection, found in noted.items():
        if found is None or any(n not in shapes for n in found):
            continue
        fields: dict[str, FieldType] = {}
        for number in found:
            fields = merge_structure(fields, shapes[number])
        kinds[collection] = fields
    return kinds


class _Runs:
    """The stream's batches, cut where the collection changes; every batch kept."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader = reader
        self.schema = reader.schema.remove_metadata()
        self._kept: list[pa.RecordBatch] = []
        self._pending: pa.RecordBatch | None = None
        self.done: set[str] = set()

    def _fill(self) -> pa.RecordBatch | None:
        while self._pending is None or self._pending.num_rows == 0:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return None
            batch = batch.replace_schema_metadata(None)
            self._kept.append(batch)
            self._pending = batch
        return self._pending

    def next_collection(self) -> str | None:
        batch = self._fill()
        return None if batch is None else str(batch.column("collection")[0].as_py())

    def run(self, collection: str) -> Iterator[pa.RecordBatch]:
        """The batches of ``collection``'s run, the last one cut where the next begins."""
        while (batch := self._fill()) is not None:
            other = pc.index(pc.equal(batch.column("collection"), collection), False).as_py()
            rows = batch.num_rows if other == -1 else int(other)
            if rows == 0:
                break
            yield batch.slice(0, rows)
            self._pending = batch.slice(rows)
            if rows < batch.num_rows:
                break
        self.done.add(collection)

    def skip(self, collection: str) -> None:
        for _ in self.run(collection):
            pass

    def table(self) -> pa.Table:
        while self._fill() is not None:  # the rest, if any
            self._pending = None
        return pa.Table.from_batches(self._kept, self.schema)


def discard(area: Area, streamed: dict[str, Streamed]) -> None:
    """Delete streamed files that will not be used (this build created them)."""
    for entry in streamed.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(area.root / entry.path)
