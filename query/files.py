"""Writing the materialisation's files: typed collection rows and the log's ``changes``.

Helpers of :mod:`.materialize` (and of :mod:`.stream_build`): the SELECT that
turns staged documents into a collection file's rows, ``COPY`` to Parquet
flushed to disk, and the ``changes`` files (staged from a child reader's
Arrow table or from the snapshot, written beside the collection files,
merged once they pile up).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from crdtdb.snapshot import LogRow, Snapshot

from . import arrow_read
from .area import Area, Manifest
from .schema import FieldType, column_names, columns, quote, structure

__all__ = [
    "CHUNK",
    "copy_changes",
    "copy_to",
    "insert",
    "merge_changes",
    "sql_list",
    "stage_changes",
    "typed_select",
]

CHUNK = 100_000
"""Documents handed to DuckDB at a time (bounds the memory a first build takes)."""


def insert(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, Any]) -> None:
    """Append Arrow columns to a DuckDB table (DuckDB scans the Arrow memory directly)."""
    con.register("_arrow_chunk", pa.table(columns))
    con.execute(f"INSERT INTO {table} SELECT * FROM _arrow_chunk")
    con.unregister("_arrow_chunk")


def typed_select(
    source: str, seg: int | str, fields: dict[str, FieldType], collection: str | None = None
) -> str:
    """The rows of ``source`` (columns as in ``staged``) as a collection file holds them.

    ``collection``: only its rows (its name is letters, digits and ``_ . -``).
    """
    where = "" if collection is None else f" WHERE collection = '{collection}'"
    fields = columns(fields)
    names = column_names(list(fields))
    typed = ", ".join(f"t.{quote(f)} AS {quote(names[f])}" for f in fields)
    # json_transform refuses an empty structure: a collection of deleted documents has none
    shape = structure(fields).replace("'", "''") if fields else None
    parsed = f", json_transform(body, '{shape}') AS t" if shape else ""
    return (
        f"SELECT {seg} AS _seg, id, collection, substr(id, length(collection) + 2) AS key,"
        " hlc, to_timestamp((hlc >> 16) / 1000) AS updated_at, origin, NOT live AS deleted,"
        f" body AS _body{', ' + typed if typed else ''}"
        f" FROM (SELECT *{parsed} FROM {source}{where})"
    )


def copy_to(con: duckdb.DuckDBPyConnection, select: str, path: Path) -> None:
    """``COPY (select) TO path`` as Parquet, flushed to disk before the manifest names it."""
    target = str(path).replace("'", "''")
    con.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet)")
    with open(path, "rb") as written:
        os.fsync(written.fileno())


def sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def stage_changes(
    log_con: duckdb.DuckDBPyConnection,
    snap: Snapshot,
    readers: arrow_read.ChildReaders | None,
    after: int,
    read: list[LogRow] | None = None,
) -> tuple[int, pa.Table | None]:
    """The log records after position ``after``: how many, and the Arrow table a child read
    them into, or None when they were read through the snapshot into ``log_rows`` (or are
    ``read`` already: all of them)."""
    table = readers.table("log") if readers is not None else None
    if table is not None:
        log_con.close()
        return int(table.num_rows), table
    log_con.execute(
        "CREATE TABLE log_rows (log_id BIGINT, id VARCHAR, hlc UBIGINT, origin VARCHAR,"
        " seq BIGINT, bytes BIGINT, kind TINYINT)"
    )
    names = ("log_id", "id", "hlc", "origin", "seq", "bytes", "kind")
    kinds = (pa.int64(), pa.string(), pa.uint64(), pa.string(), pa.int64(), pa.int64(), pa.int8())
    count = 0
    for batch in [read] if read is not None else snap.log(after, CHUNK):
        if not batch:
            continue
        columns = zip(*batch, strict=True)
        arrays = {n: pa.array(c, k) for n, c, k in zip(names, columns, kinds, strict=True)}
        insert(log_con, "log_rows", arrays)
        count += len(batch)
    log_con.close()
    return count, None


def copy_changes(
    area: Area, con: duckdb.DuckDBPyConnection, seg: int, arrow: pa.Table | None
) -> str:
    """Write a ``changes`` file (segment number ``seg``) of the staged log records (the
    table ``log_rows``, or ``arrow``); return its name."""
    source = "log_rows"
    if arrow is not None:
        con.register("_arrow_log", arrow)
        source = "_arrow_log"
    (area.root / "seg" / str(seg)).mkdir(parents=True, exist_ok=True)
    name = f"seg/{seg}/changes.parquet"
    copy_to(
        con,
        "SELECT log_id::BIGINT AS log_id, id, split_part(id, '/', 1) AS collection,"
        " hlc::UBIGINT AS hlc, to_timestamp((hlc::UBIGINT >> 16) / 1000) AS updated_at, origin,"
        " seq::BIGINT AS seq, bytes::BIGINT AS bytes,"
        " CASE kind WHEN 0 THEN 'write' WHEN 1 THEN 'repair' ELSE 'unchecked' END AS kind"
        f" FROM {source}",
        area.root / name,
    )
    con.close()
    return name


def merge_changes(area: Area, con: duckdb.DuckDBPyConnection, manifest: Manifest) -> None:
    if len(manifest.changes) <= 1:
        return
    seg = manifest.next_seg
    manifest.next_seg += 1
    (area.root / "seg" / str(seg)).mkdir(parents=True, exist_ok=True)
    name = f"seg/{seg}/changes.parquet"
    files = sql_list([str(area.root / f["path"]) for f in manifest.changes])
    copy_to(con, f"SELECT * FROM read_parquet({files}) ORDER BY log_id", area.root / name)
    rows = sum(f["rows"] for f in manifest.changes)
    manifest.changes = [{"path": name, "rows": rows}]
