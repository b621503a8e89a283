"""Read one table of a store into an Arrow IPC file, in a process of its own (see .arrow_read).

Run as a script, never imported: this process must not load crdtdb or
Python's ``sqlite3`` beside the ADBC driver's own copy of SQLite (two copies
of SQLite in one process release each other's POSIX locks on a shared file).
It uses the driver manager's low-level API: the DB-API module imports
``pyarrow.dataset`` and pandas, 0.6 s of a child's start.

Usage: ``_arrow_child.py STORE_FILE documents|log AFTER POSITION EPOCH OUT``
(OUT ``-``: standard output, for a reader that takes the batches as they come).
Exit status 0: OUT written; 3: the store is not at the cut POSITION/EPOCH
(a commit landed in between: the caller reads another way); 2: no driver.

The documents come in doc id order, so each collection's are one run (its ids
share the prefix ``collection/``); the stream's schema metadata
``crdtdb.shapes`` carries, per collection of live documents, the shape
numbers its written bodies have (``null`` where some body has none): what a
reader needs to know the collection's column types before the first row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

JOINED = (
    "SELECT d.doc_id AS id, d.collection AS collection, d.live AS live, d.hlc AS hlc,"
    " b.origin AS origin, b.body AS body, b.shape AS shape"
    " FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id"
    " WHERE d.doc_id >= {start} ORDER BY d.doc_id"
)
"""The documents from id ``start`` on, each with its body (if it has one)."""
DOCS = "SELECT doc_id AS id, collection, live, hlc FROM docs ORDER BY doc_id"
BODIES = "SELECT doc_id, origin, body, shape FROM bodies ORDER BY doc_id"
"""The two scans :func:`documents` reads side by side (see there)."""
QUERIES = {
    "log": (
        "SELECT id AS log_id, doc_id AS id, hlc, origin, seq, length(payload) AS bytes, kind"
        " FROM log WHERE id > {after:d} AND id <= {position:d} ORDER BY id"
    ),
}
SHAPES_KEY = b"crdtdb.shapes"
BATCH_ROWS = 65_536
"""Rows per Arrow batch (the driver's default, 1,024, makes many small ones)."""


def shapes(query: Any) -> dict[str, list[int] | None]:
    """Per collection of live documents, the shape numbers of its written bodies (one seek
    per collection in ``docs_live``, then one scan of ``bodies``, by ranges of ids)."""
    found: dict[str, list[int] | None] = {}
    collection = ""
    while True:
        reader = query(
            "SELECT min(collection) AS c FROM docs WHERE live AND collection > " + _text(collection)
        )
        rows = reader.read_all().to_pylist()
        if not rows or rows[0]["c"] is None:
            return found
        collection = rows[0]["c"]
        reader = query(
            "SELECT DISTINCT shape FROM bodies WHERE doc_id > "
            + _text(collection + "/")
            + " AND doc_id < "
            + _text(collection + "0")
            + " AND body IS NOT NULL"
        )
        numbers = [row["shape"] for row in reader.read_all().to_pylist()]
        found[collection] = None if None in numbers else sorted(int(n) for n in numbers)


def documents(query: Any) -> tuple[Any, Iterator[Any]]:
    """The documents in doc id order, with their bodies: the stream's schema, and its
    Arrow batches (to be read before the statements are closed, see :func:`main`).

    Every document has its ``bodies`` row (but in a store migrated from schema 2,
    until it is written again), so the two tables, each scanned in id order, line
    up row for row: two scans side by side cost about 20% less than the join's
    seek into ``bodies`` for every document. From the first batch where they do
    not line up, the rest comes from the join (:data:`JOINED`), in the same order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    docs = query(DOCS)
    bodies = query(BODIES)
    fields = [*docs.schema, *list(bodies.schema)[1:]]
    schema = pa.schema([f.with_name(n) for f, n in zip(fields, _NAMES, strict=True)])

    def batches() -> Iterator[Any]:
        for batch in docs:
            other = _next(bodies)
            if (
                other is None
                or other.num_rows != batch.num_rows
                or not pc.all(pc.equal(batch.column(0), other.column(0))).as_py()
            ):
                start = batch.column(0)[0].as_py()
                joined = query(JOINED.format(start=_text(start)))
                yield from joined
                return
            yield pa.RecordBatch.from_arrays([*batch.columns, *other.columns[1:]], schema=schema)

    return schema, batches()


_NAMES = ("id", "collection", "live", "hlc", "origin", "body", "shape")


def _next(reader: Any) -> Any:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _conform(batch: Any, schema: Any) -> Any:
    """``batch`` with the stream's column types (the driver infers a query's types from
    its first rows: the join's may differ from the side-by-side scans' where a column
    was all null)."""
    if batch.schema.equals(schema):
        return batch
    import pyarrow as pa

    columns = [c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _text(value: str) -> str:
    """An SQL string literal (collection names are letters, digits and ``_ . -``)."""
    return "'" + value.replace("'", "''") + "'"


def main(argv: list[str]) -> int:
    store, table, after, position, epoch, out = argv
    # pyarrow runs without NumPy (since 16), which it would import if it could: about
    # 0.1 s of the child's start, every first build waiting on it. Nothing here needs it.
    sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        import adbc_driver_manager as manager
        import adbc_driver_sqlite
        import pyarrow as pa
    except ImportError:
        return 2
    database = adbc_driver_sqlite.connect(store)
    conn = manager.AdbcConnection(database)
    conn.set_autocommit(False)  # one read transaction for every statement

    opened: list[manager.AdbcStatement] = []  # closed at the end, before the connection

    def query(sql: str) -> pa.RecordBatchReader:
        statement = manager.AdbcStatement(conn)
        opened.append(statement)
        statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
        statement.set_sql_query(sql)
        stream, _ = statement.execute_query()
        return pa.RecordBatchReader._import_from_c(stream.address)

    try:
        reader = query(  # the first statement begins the read transaction
            "SELECT (SELECT coalesce(max(id), 0) FROM log) AS position,"
            " (SELECT coalesce(value, 0) FROM meta WHERE key = 'compaction_epoch') AS epoch"
        )
        cut = reader.read_all().to_pylist()
        found = (int(cut[0]["position"]), int(cut[0]["epoch"] or 0)) if cut else None
        if found != (int(position), int(epoch)):
            return 3
        schema_metadata = (
            {SHAPES_KEY: json.dumps(shapes(query)).encode()} if table == "documents" else {}
        )
        if table == "documents":
            schema, batches = documents(query)
        else:
            sql = QUERIES[table].format(after=int(after), position=int(position))
            reader = query(sql)
            schema, batches = reader.schema, iter(reader)
        schema = schema.with_metadata(schema_metadata)
        sink = pa.PythonFile(sys.stdout.buffer, mode="w") if out == "-" else pa.OSFile(out, "wb")
        with sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(_conform(batch, schema))
        return 0
    finally:
        for statement in opened:
            statement.close()
        conn.rollback()
        conn.close()
        database.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
