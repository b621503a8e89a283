"""The materialisation: the merged state of a store as Parquet files that DuckDB reads.

Why Parquet segments and a manifest, not a DuckDB database file: a DuckDB file
opened read-write by one process cannot be opened by any other, even
read-only (measured with DuckDB 2.0.1: "Could not set lock on file"), so one
shared ``.duckdb`` file would let one analyst lock out every other reader,
or the refresher lock out the readers. Parquet files are immutable and any
number of processes read them at once. So:

- ``DIR/analytics/manifest.json`` names the files of the current
  *generation* and the log position (``position``, a log id) and HLC the
  generation reflects. A refresh writes new files, then replaces the
  manifest with an atomic rename: a reader sees the old generation or the
  new one, never a mix, and a refresh holds a reader back for no longer than
  that rename.
- Each refresh adds a *segment*: per collection, one file of the documents
  that changed since the last refresh (their JSON body and one typed column
  per top-level field, see :mod:`.schema`); one file naming the rows of
  earlier segments that those documents supersede (``dead``); and one file
  of the log records since (``changes``). Only the documents changed since
  the watermark are read and written: the first build costs time in
  proportion to the store, a refresh in proportion to what changed.
- When superseded rows pass a quarter of the live ones, or segments pile up,
  a refresh merges all segments into one (a rewrite in proportion to the
  store, done in DuckDB, rare).
- The store itself is read through :meth:`crdtdb.Database.snapshot`, one
  SQLite read transaction: it never holds a writer back, and everything a
  generation holds comes from one cut of the log. Document JSON is what each
  commit wrote to the store's ``bodies`` table (the CRDT is decoded here only
  for documents too large for that, and for stores older than schema 3), with
  the shape the commit noted (:mod:`crdtdb.shape`): column types come from
  merging the distinct shapes, not from parsing every body again.
- A first build reads through child processes (:mod:`.arrow_read`), and
  writes each collection's file from the documents' batches as they arrive
  (:mod:`.stream_build`): reading SQLite and writing Parquet overlap. The
  snapshot is let go before an incremental refresh writes its files, and
  that writing runs at a lower scheduling priority (:mod:`.priority`), so
  the store's writers on busy cores are not kept waiting for a CPU by it.
- One refresh at a time: a second process waits on ``refresh.lock`` (an
  advisory file lock), then finds little or nothing left to do.
- A reader leases the generation it reads (a shared lock on
  ``gen/G.lock``); a refresh deletes the files of a generation only once no
  process holds its lease (the lock is released by the operating system when
  a reader exits or crashes), and only files named in a generation's list:
  nothing crdtdb did not create.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

import crdtdb
from crdtdb.snapshot import DocRow, LogRow, Snapshot

from . import arrow_read
from .area import Area, Manifest, RefreshResult
from .files import (
    CHUNK,
    copy_changes,
    copy_to,
    insert,
    merge_changes,
    sql_list,
    stage_changes,
    typed_select,
)
from .priority import background, lower_priority, write_stamp, yielding
from .schema import merge_structure
from .stream_build import COMPLETE, STAGED_COLUMNS, Streamed, discard, stream_collections

__all__ = ["Progress", "copy_to", "dead_relation", "refresh", "typed_select"]

log = logging.getLogger("crdtdb.query")

MERGE_DEAD_SHARE = 0.25
"""Merge the segments once superseded rows are this share of the live ones."""
MERGE_SEGMENTS = 24
"""... or once a collection has this many files."""

THREADS = os.cpu_count() or 1
"""DuckDB's threads for writing files (its default: one a core)."""

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as a long refresh goes."""


# ----------------------------------------------------------------- refresh


def refresh(
    db: crdtdb.Database, *, full: bool = False, progress: Progress | None = None
) -> RefreshResult:
    """Bring the materialisation up to date with the store; see the module docstring.

    ``full`` rebuilds every document's row and the collections' types from
    scratch (types otherwise only widen). Safe from several processes at once.
    The work runs in a thread of lower scheduling priority (:func:`yielding`).
    """
    return yielding(_refresh_now, db, full, progress)


def _refresh_now(db: crdtdb.Database, full: bool, progress: Progress | None) -> RefreshResult:
    started = time.perf_counter()
    area = Area(db.path)
    with area.refresh_lock():
        old = area.read()
        stamp = write_stamp(db.path)
        with db.snapshot() as snap:
            manifest, documents, records, merged = _refresh(area, old, snap, full, progress, stamp)
        if manifest is not old:
            area.write(manifest)
            area.collect(manifest)
    seconds = time.perf_counter() - started
    if documents or records:
        log.info(
            "%s: materialised %d documents and %d log records in %.2f s%s",
            db.region,
            documents,
            records,
            seconds,
            " (segments merged)" if merged else "",
        )
    return RefreshResult(manifest.generation, documents, records, merged, seconds)


def _refresh(
    area: Area,
    old: Manifest | None,
    snap: Snapshot,
    full: bool,
    progress: Progress | None,
    stamp: object = None,
) -> tuple[Manifest, int, int, bool]:
    """One refresh on ``snap``; ``stamp``: :func:`.priority.write_stamp` from before it."""
    regions, frontier = _regions(snap)
    unchanged = (
        old is not None and old.position == snap.position and old.epoch == snap.compaction_epoch
    )
    if unchanged and not full and old is not None:
        if (old.regions, old.frontier) == (regions, frontier):
            return old, 0, 0, False
        return _successor(old, snap, regions, frontier), 0, 0, False
    # An incremental refresh stages with DuckDB on this thread alone, then, if the store
    # was written meanwhile, runs the rest at a lower priority, DuckDB's workers started
    # after it (see .priority). A first build is waited for, and has every core to itself.
    with ThreadPoolExecutor(1, thread_name_prefix="crdtdb-supersede") as scanner:
        # An incremental refresh's DuckDB opens (on the scanner's thread, before its scan
        # lowers its priority) while this thread reads the log: about 15 ms of 0.15 s.
        connecting = None
        if old is not None and not full:
            connecting = scanner.submit(duckdb.connect, config={"threads": 1})
        try:
            base, batches, total, ids, log_read = _plan(old, snap, full)
        except BaseException:
            if connecting is not None:
                connecting.result().close()
            raise
        manifest = _successor(base, snap, regions, frontier)
        bulk = (old is None or full) and total >= arrow_read.CHILD_READ_MIN
        readers = None
        if bulk:
            readers = arrow_read.child_readers(area.store, snap, base.position, area.root)
        connection = connecting.result() if connecting is not None else None
        if connection is None:
            connection = duckdb.connect(config={} if bulk else {"threads": 1})
        with connection as con:
            found = None  # the rows they supersede are found while their bodies are read
            try:
                if ids is not None:
                    found = _start_superseding(scanner, area, con, manifest, ids)
                plan = (batches, total, base.position, log_read)
                staged = _stage(area, con, snap, readers, plan, manifest, progress)
                if not bulk:
                    if write_stamp(area.store) != stamp:  # a writer is at work: yield to it
                        background()
                    con.execute(f"SET threads = {THREADS}")
                merged = _write_files(area, con, manifest, staged, found)
            finally:  # the scan's cursor closes before its connection does
                if found is not None:
                    wait([found])
    documents, records = staged[0], staged[1]
    return manifest, documents, records, merged


def _write_files(
    area: Area,
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    staged: tuple[int, int, dict[str, int], pa.Table | None, dict[str, Streamed]],
    found: Future[int] | None,
) -> bool:
    """Write the files of what :func:`_stage` staged, and merge segments if it is time;
    whether they were merged.

    The log records' file is written beside the documents' (DuckDB lets go of the
    interpreter lock): the two COPYs share the cores instead of taking turns.
    """
    documents, records, counts, log_rows, streamed = staged
    with ThreadPoolExecutor(1) as worker:
        changes = None
        if records:
            seg = manifest.next_seg
            manifest.next_seg += 1
            changes = worker.submit(copy_changes, area, con.cursor(), seg, log_rows)
        if documents:
            _write_segment(area, con, manifest, counts, streamed, found)
        if changes is not None:
            manifest.changes = [*manifest.changes, {"path": changes.result(), "rows": records}]
    if len(manifest.changes) > MERGE_SEGMENTS:
        merge_changes(area, con, manifest)
    merged = _should_merge(manifest)
    if merged:
        _merge(area, con, manifest)
    return merged


def _plan(
    old: Manifest | None, snap: Snapshot, full: bool
) -> tuple[Manifest, Iterable[list[DocRow]], int, list[str] | None, list[LogRow] | None]:
    """What a refresh starts from, and the documents it reads (with how many, and their
    ids unless it reads them all); and the log records it stages, if read already.

    An incremental refresh of up to ``CHUNK`` log records reads them first, and takes
    the changed documents' ids from them: the log's range is read once, not once for
    the ids and once more for the ``changes`` file."""
    if old is None or full:
        base = Manifest(
            generation=old.generation if old else 0,
            next_seg=old.next_seg if old else 1,
            changes=old.changes if old else [],
            position=old.position if old else 0,
        )
        return base, snap.documents(CHUNK), snap.document_count(), None, None
    log_read: list[LogRow] | None = None
    if old.epoch != snap.compaction_epoch:  # records may have been folded away since
        ids = snap.changed_since_scan(old.position)
    elif snap.position - old.position <= CHUNK:  # log ids grow by one a record
        log_read = [row for batch in snap.log(old.position, CHUNK) for row in batch]
        ids = sorted({row[1] for row in log_read})
    else:
        ids = snap.changed_after(old.position)
    return old, snap.rows(ids, CHUNK), len(ids), ids, log_read


def _start_superseding(
    scanner: ThreadPoolExecutor,
    area: Area,
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    ids: list[str],
) -> Future[int] | None:
    """Find, on ``scanner``'s thread, the rows of earlier files that an incremental
    refresh's documents supersede (the table ``superseded``, and how many), while this
    thread reads their bodies from SQLite: the scan reads the ``id`` column of every
    earlier file, as long as the reading of the bodies on a large store, and neither
    waits for the other (both let go of the interpreter lock while they work). The scan
    runs at ``REFRESH_NICE`` from the start (it holds no snapshot): on busy cores it
    yields to the store's writers. None: no earlier file to look in."""
    earlier = _earlier_files(area, manifest, {doc_id.split("/", 1)[0] for doc_id in ids})
    if not earlier:
        return None
    dead = dead_relation(area, manifest)
    return scanner.submit(_find_superseded, con.cursor(), earlier, dead, ids)


def _earlier_files(area: Area, manifest: Manifest, collections: Iterable[str]) -> list[str]:
    """The paths of the files ``manifest`` holds for these collections."""
    return [
        str(area.root / f["path"])
        for c in sorted(collections)
        for f in manifest.collections.get(c, {}).get("files", [])
    ]


def _find_superseded(
    con: duckdb.DuckDBPyConnection, earlier: list[str], dead: str, ids: list[str]
) -> int:
    """Make the table ``superseded``: the (_seg, row) of the rows of ``earlier`` files
    whose id is one of ``ids``, but those ``dead`` already; return how many."""
    lower_priority()
    try:
        con.register("_changed_ids", pa.table({"id": pa.array(ids, pa.string())}))
        con.execute(_SUPERSEDED.format(files=sql_list(earlier), staged="_changed_ids", dead=dead))
        return int(con.execute("SELECT count(*) FROM superseded").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


def _stage(
    area: Area,
    con: duckdb.DuckDBPyConnection,
    snap: Snapshot,
    readers: arrow_read.ChildReaders | None,
    plan: tuple[Iterable[list[DocRow]], int, int, list[LogRow] | None],
    manifest: Manifest,
    progress: Progress | None,
) -> tuple[int, int, dict[str, int], pa.Table | None, dict[str, Streamed]]:
    """Stage the documents and the log records in ``con``, widen the types; then end the
    snapshot. ``plan``: the documents' batches, how many, the log position whose
    records are already in the materialisation, and the records after it if they were
    read already. Returns (documents, records, rows per
    collection, the log records as Arrow if a child read them, else None: they are in
    the table ``log_rows``; the collection files written as the documents streamed in)."""
    batches, total, start, log_read = plan
    streamed: dict[str, Streamed] = {}
    try:
        table, streamed = _read_documents(area, con, manifest, readers, snap)
        if table is not None:
            documents = _stage_table(con, table, snap, total, progress)
        else:
            documents = _stage_documents(con, batches, total, progress)
        summary = con.execute(_SUMMARY).fetchall()
        shapes = snap.shapes(sorted({row[1] for row in summary if row[1] is not None}))
        # The log is read while DuckDB works out the documents' types (both let go
        # of the interpreter lock while they work); then the snapshot ends, before
        # the files are written: a long read transaction keeps SQLite from recycling
        # its WAL, and every commit of a writer in another process then retries a
        # checkpoint.
        with ThreadPoolExecutor(1) as worker:
            staging = worker.submit(stage_changes, con.cursor(), snap, readers, start, log_read)
            try:
                counts = _widen(con, manifest, shapes, summary)
            finally:
                records, log_rows = staging.result()
    except BaseException:
        discard(area, streamed)
        raise
    finally:
        if readers is not None:
            readers.close()
        snap.close()
    # a file streamed with other types than every document's (a document read through
    # the snapshot widened them) is written again the ordinary way
    stale = {c for c, s in streamed.items() if manifest.collections[c]["fields"] != s.fields}
    discard(area, {c: streamed.pop(c) for c in stale})
    return documents, records, counts, log_rows, streamed


def _read_documents(
    area: Area,
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    readers: arrow_read.ChildReaders | None,
    snap: Snapshot,
) -> tuple[pa.Table | None, dict[str, Streamed]]:
    """The documents a child read (None if it could not: then read through the snapshot),
    and the collection files written from them as they came (:mod:`.stream_build`)."""
    if readers is None:
        return None, {}
    reader = readers.stream("documents")
    if reader is None:
        readers.succeeded("documents")
        return None, {}
    try:
        table, streamed = stream_collections(area, con, manifest, reader, snap)
    except (pa.ArrowException, duckdb.Error, OSError) as exc:  # the child stopped short
        log.warning("%s: reading the documents through a child failed (%s)", area.store, exc)
        readers.abandon("documents")
        return None, {}
    if not readers.succeeded("documents"):
        discard(area, streamed)
        return None, {}
    return table, streamed


def _successor(
    base: Manifest, snap: Snapshot, regions: list[dict[str, Any]], frontier: int
) -> Manifest:
    manifest = Manifest(**{**base.__dict__})
    manifest.collections = {name: dict(c) for name, c in base.collections.items()}
    manifest.dead = list(base.dead)
    manifest.changes = list(base.changes)
    manifest.generation = base.generation + 1
    manifest.position = snap.position
    manifest.hlc = int(snap.hlc)
    manifest.epoch = snap.compaction_epoch
    manifest.region = snap.region
    manifest.built_ms = int(time.time() * 1000)
    manifest.regions, manifest.frontier = regions, frontier
    manifest.complete = min((r["frontier_hlc"] for r in regions), default=0)
    return manifest


def _regions(snap: Snapshot) -> tuple[list[dict[str, Any]], int]:
    rows = [
        {
            "region": row.origin,
            "frontier_hlc": int(row.complete_hlc),
            "records": row.max_seq,
            "contiguous_seq": row.contiguous_seq,
        }
        for row in snap.origins()
    ]
    return rows, int(snap.frontier())


def _stage_documents(
    con: duckdb.DuckDBPyConnection,
    batches: Iterable[list[DocRow]],
    total: int,
    progress: Progress | None,
) -> int:
    """Load the documents into the temporary table ``staged``; return how many."""
    _create_staged(con)
    return _stage_rows(con, batches, total, progress)


def _create_staged(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TEMP TABLE staged (id VARCHAR, collection VARCHAR, live BOOLEAN, hlc UBIGINT,"
        " origin VARCHAR, body VARCHAR, shape INTEGER)"
    )


def _stage_rows(
    con: duckdb.DuckDBPyConnection,
    batches: Iterable[list[DocRow]],
    total: int = 0,
    progress: Progress | None = None,
    table: str = "staged",
) -> int:
    done = 0
    for batch in batches:
        ids, collections, live, hlcs, origins, _, bodies, shapes = zip(*batch, strict=True)
        insert(
            con,
            table,
            {
                "id": pa.array(ids, pa.string()),
                "collection": pa.array(collections, pa.string()),
                "live": pa.array(live, pa.int8()).cast(pa.bool_()),
                "hlc": pa.array(hlcs, pa.uint64()),
                "origin": pa.array(origins, pa.string()),
                "body": pa.array(bodies, pa.string()),
                "shape": pa.array(shapes, pa.int32()),
            },
        )
        done += len(batch)
        if progress is not None:
            progress("documents", done, total)
    return done


def _stage_table(
    con: duckdb.DuckDBPyConnection,
    table: pa.Table,
    snap: Snapshot,
    total: int,
    progress: Progress | None,
) -> int:
    """Make ``staged`` a view of documents read as Arrow (by a child reader): DuckDB scans
    the Arrow memory where it lies, no copy into a table of its own.

    The few that their commits did not complete (a body too large to write, a
    document of a migrated store) are read through the snapshot instead, into
    ``staged_rest``.
    """
    incomplete = pc.fill_null(
        pc.or_(
            pc.and_(pc.not_equal(table["live"], 0), pc.is_null(table["body"])),
            pc.is_null(table["origin"]),
        ),
        True,
    )
    con.register("_arrow_documents", table)
    con.execute(
        "CREATE TEMP TABLE staged_rest (id VARCHAR, collection VARCHAR, live BOOLEAN,"
        " hlc UBIGINT, origin VARCHAR, body VARCHAR, shape INTEGER)"
    )
    con.execute(
        f"CREATE TEMP VIEW staged AS SELECT {STAGED_COLUMNS} FROM _arrow_documents"
        f" WHERE {COMPLETE} UNION ALL SELECT * FROM staged_rest"
    )
    if pc.any(incomplete).as_py():
        rest = table.filter(incomplete)["id"].to_pylist()
        _stage_rows(con, snap.rows(rest, CHUNK), table="staged_rest")
    if progress is not None:
        progress("documents", total, total)
    return int(table.num_rows)


def _write_segment(
    area: Area,
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    counts: dict[str, int],
    streamed: dict[str, Streamed],
    found: Future[int] | None = None,
) -> None:
    """One file per collection of the staged documents (written already for those
    ``streamed``: then one more of those read through the snapshot, if any), and the rows
    they supersede (``found``: in the table ``superseded`` already, see
    :func:`_start_superseding`)."""
    folder = f"seg/{manifest.next_seg}"
    (area.root / folder).mkdir(parents=True, exist_ok=True)
    superseded = _supersede(area, con, manifest, folder, list(counts), found)
    complete = _complete_counts(con, counts) if streamed else {}
    for collection, rows in sorted(counts.items()):
        state = manifest.collections[collection]
        source = "staged"
        if collection in streamed:
            done = streamed[collection]
            written = complete.get(collection, 0)
            entry = _entry(manifest, done.path, done.seg, written, state)
            state["files"] = [*state["files"], entry]
            source, rows = "staged_rest", rows - written
            if not rows:
                continue
        name = f"{folder}/c_{collection}.parquet"
        number = _new_file(
            con, typed_select(source, 0, state["fields"], collection), area, manifest, name
        )
        state["files"] = [*state["files"], _entry(manifest, name, number, rows, state)]
    manifest.live_rows += sum(counts.values()) - superseded
    manifest.dead_rows += superseded


def _complete_counts(con: duckdb.DuckDBPyConnection, counts: dict[str, int]) -> dict[str, int]:
    """Per collection, the documents of the child's table that the snapshot did not read:
    ``staged`` is those and ``staged_rest`` (see :func:`_stage_table`), so its ``counts``
    less the few of ``staged_rest``."""
    rest = dict(con.execute("SELECT collection, count(*) FROM staged_rest GROUP BY ALL").fetchall())
    return {collection: rows - rest.get(collection, 0) for collection, rows in counts.items()}


def _new_file(
    con: duckdb.DuckDBPyConnection, select: str, area: Area, manifest: Manifest, name: str
) -> int:
    """Write a collection file, its rows numbered ``_seg`` = a number of its own; return it."""
    number = manifest.next_seg
    manifest.next_seg += 1
    copy_to(con, f"SELECT * REPLACE ({number} AS _seg) FROM ({select})", area.root / name)
    return number


def _entry(
    manifest: Manifest, name: str, number: int, rows: int, state: dict[str, Any]
) -> dict[str, Any]:
    """A collection file in the manifest: what it holds and the cut it vouches for."""
    return {
        "path": name,
        "seg": number,
        "rows": rows,
        "fields": state["fields"],
        "complete": manifest.complete,
        "position": manifest.position,
    }


_SUMMARY = (
    "SELECT collection, CASE WHEN live THEN shape END AS shape,"
    " live AND shape IS NULL AND body IS NOT NULL AS unnoted, count(*) AS rows"
    " FROM staged GROUP BY ALL"
)
"""What :func:`_widen` needs of the staged documents, in one scan: per collection, the
shapes their commits noted of the live ones, whether some live body has none, how many."""


def _widen(
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    shapes: dict[int, str],
    summary: list[tuple[str, int | None, bool, int]],
) -> dict[str, int]:
    """Merge the staged documents' types into their collections' (every document counts);
    return how many documents each collection has staged.

    A document's shape is the one its commit noted (``shapes``, by the numbers
    ``summary`` found: :data:`_SUMMARY`), or, where none was, what DuckDB's
    ``json_structure`` makes of its body.
    """
    counts: dict[str, int] = {}
    structures: list[tuple[str, str]] = []
    unnoted = False
    for collection, number, without, rows in summary:
        counts[collection] = counts.get(collection, 0) + rows
        if number is not None:
            structures.append((collection, shapes[number]))
        unnoted = unnoted or without
    if unnoted:
        structures += con.execute(
            "SELECT collection, json_structure(body) AS s FROM staged"
            " WHERE live AND body IS NOT NULL AND (shape IS NULL) GROUP BY ALL"
        ).fetchall()
    for collection in counts:
        manifest.collections.setdefault(collection, {"fields": {}, "files": []})
    for collection, shape in structures:
        state = manifest.collections[collection]
        state["fields"] = merge_structure(state["fields"], shape)
    return counts


_SUPERSEDED = (
    "CREATE TABLE superseded AS SELECT f._seg, f.file_row_number AS row"
    " FROM read_parquet({files}, union_by_name = true, file_row_number = true)"
    " f SEMI JOIN {staged} s ON f.id = s.id"
    " ANTI JOIN {dead} d ON f._seg = d._seg AND f.file_row_number = d.row"
)
"""The rows of earlier files with the ids of ``staged``, but for those superseded before
(counted once: ``dead_rows`` decides when the segments are merged)."""


def _supersede(
    area: Area,
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    folder: str,
    collections: list[str],
    found: Future[int] | None = None,
) -> int:
    """Write the (_seg, row) of earlier rows of the staged documents; return how many.
    ``found``: they are in the table ``superseded`` already (see :func:`_start_superseding`)."""
    name = f"{folder}/dead.parquet"
    if found is not None:
        count = found.result()
    else:
        earlier = _earlier_files(area, manifest, collections)
        if not earlier:
            return 0
        con.execute(
            _SUPERSEDED.format(
                files=sql_list(earlier), staged="staged", dead=dead_relation(area, manifest)
            )
        )
        count = int(con.execute("SELECT count(*) FROM superseded").fetchone()[0])  # type: ignore[index]
    if count:
        copy_to(con, "SELECT * FROM superseded", area.root / name)
        manifest.dead = [*manifest.dead, {"path": name, "rows": count}]
    con.execute("DROP TABLE superseded")
    return count


def _should_merge(manifest: Manifest) -> bool:
    if manifest.dead_rows > MERGE_DEAD_SHARE * max(manifest.live_rows, 1):
        return True
    return any(len(c["files"]) > MERGE_SEGMENTS for c in manifest.collections.values())


def _merge(area: Area, con: duckdb.DuckDBPyConnection, manifest: Manifest) -> None:
    """Rewrite every collection as one file of its current rows, in today's types."""
    folder = f"seg/{manifest.next_seg}"
    (area.root / folder).mkdir(parents=True, exist_ok=True)
    dead = dead_relation(area, manifest)
    total = 0
    for collection, state in sorted(manifest.collections.items()):
        files = sql_list([str(area.root / f["path"]) for f in state["files"]])
        con.execute(
            "CREATE OR REPLACE TEMP TABLE current AS SELECT f.id, f.collection,"
            " NOT f.deleted AS live, f.hlc, f.origin, f._body::VARCHAR AS body, NULL AS shape FROM"
            f" read_parquet({files}, union_by_name = true, file_row_number = true) f"
            f" ANTI JOIN {dead} d ON f._seg = d._seg AND f.file_row_number = d.row"
        )
        rows = int(con.execute("SELECT count(*) FROM current").fetchone()[0])  # type: ignore[index]
        name = f"{folder}/c_{collection}.parquet"
        number = _new_file(con, typed_select("current", 0, state["fields"]), area, manifest, name)
        state["files"] = [_entry(manifest, name, number, rows, state)]
        total += rows
    manifest.dead, manifest.live_rows, manifest.dead_rows = [], total, 0
    merge_changes(area, con, manifest)


def dead_relation(area: Area, manifest: Manifest) -> str:
    """The superseded rows, ``(_seg, row)``, as an SQL relation."""
    if not manifest.dead:
        return "(SELECT NULL::INTEGER AS _seg, NULL::BIGINT AS row WHERE false)"
    return f"read_parquet({sql_list([str(area.root / f['path']) for f in manifest.dead])})"
