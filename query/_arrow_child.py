"""Read one table of a store into an Arrow IPC file, in a process of its own (see .arrow_read).

Run as a script, never imported: this process must not load crdtdb or
Python's ``sqlite3`` beside the ADBC driver's own copy of SQLite (two copies
of SQLite in one process release each other's POSIX locks on a shared file).

Usage: ``_arrow_child.py STORE_FILE documents|log AFTER POSITION EPOCH OUT``.
Exit status 0: OUT written; 3: the store is not at the cut POSITION/EPOCH
(a commit landed in between: the caller reads another way); 2: no driver.
"""

from __future__ import annotations

import sys

QUERIES = {
    "documents": (
        "SELECT d.doc_id AS id, d.collection AS collection, d.live AS live, d.hlc AS hlc,"
        " b.origin AS origin, b.body AS body, b.shape AS shape"
        " FROM docs d LEFT JOIN bodies b ON b.doc_id = d.doc_id ORDER BY d.doc_id"
    ),
    "log": (
        "SELECT id AS log_id, doc_id AS id, hlc, origin, seq, length(payload) AS bytes, kind"
        " FROM log WHERE id > ? AND id <= ? ORDER BY id"
    ),
}


def main(argv: list[str]) -> int:
    store, table, after, position, epoch, out = argv
    try:
        import adbc_driver_sqlite.dbapi as dbapi
        import pyarrow as pa
    except ImportError:
        return 2
    conn = dbapi.connect(store)
    try:
        cursor = conn.cursor()
        cursor.execute(  # the first statement begins the read transaction
            "SELECT (SELECT coalesce(max(id), 0) FROM log),"
            " (SELECT value FROM meta WHERE key = 'compaction_epoch')"
        )
        row = cursor.fetchone()
        if row is None or (int(row[0]), int(row[1] or 0)) != (int(position), int(epoch)):
            return 3
        params = (int(after), int(position)) if table == "log" else ()
        cursor.execute(QUERIES[table], params)
        batches = cursor.fetch_record_batch()
        with pa.OSFile(out, "wb") as sink, pa.ipc.new_stream(sink, batches.schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        return 0
    finally:
        conn.rollback()
        conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
