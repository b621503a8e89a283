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
from typing import Any

QUERIES = {
    "documents": (
        "SELECT d.doc_id AS id, d.collection AS collection, d.live AS live, d.hlc AS hlc,"
        " b.origin AS origin, b.body AS body, b.shape AS shape"
        " FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id ORDER BY d.doc_id"
    ),
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
        statement, reader = query(
            "SELECT min(collection) AS c FROM docs WHERE live AND collection > " + _text(collection)
        )
        rows = reader.read_all().to_pylist()
        statement.close()
        if not rows or rows[0]["c"] is None:
            return found
        collection = rows[0]["c"]
        statement, reader = query(
            "SELECT DISTINCT shape FROM bodies WHERE doc_id > "
            + _text(collection + "/")
            + " AND doc_id < "
            + _text(collection + "0")
            + " AND body IS NOT NULL"
        )
        numbers = [row["shape"] for row in reader.read_all().to_pylist()]
        statement.close()
        found[collection] = None if None in numbers else sorted(int(n) for n in numbers)


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
    conn.set_autocommit(False)  # one read transaction for both statements

    def query(sql: str) -> tuple[manager.AdbcStatement, pa.RecordBatchReader]:
        statement = manager.AdbcStatement(conn)
        statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
        statement.set_sql_query(sql)
        stream, _ = statement.execute_query()
        return statement, pa.RecordBatchReader._import_from_c(stream.address)

    try:
        statement, reader = query(  # the first statement begins the read transaction
            "SELECT (SELECT coalesce(max(id), 0) FROM log) AS position,"
            " (SELECT coalesce(value, 0) FROM meta WHERE key = 'compaction_epoch') AS epoch"
        )
        cut = reader.read_all().to_pylist()
        statement.close()
        found = (int(cut[0]["position"]), int(cut[0]["epoch"] or 0)) if cut else None
        if found != (int(position), int(epoch)):
            return 3
        schema_metadata = (
            {SHAPES_KEY: json.dumps(shapes(query)).encode()} if table == "documents" else {}
        )
        sql = QUERIES[table].format(after=int(after), position=int(position))
        statement, reader = query(sql)
        schema = reader.schema.with_metadata(schema_metadata)
        sink = pa.PythonFile(sys.stdout.buffer, mode="w") if out == "-" else pa.OSFile(out, "wb")
        with sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        statement.close()
        return 0
    finally:
        conn.rollback()
        conn.close()
        database.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
