"""``connect()``: a DuckDB connection over a region's materialised state.

The connection is the user's own ``duckdb.DuckDBPyConnection`` (in memory),
with views over the files of one generation of the materialisation (see
:mod:`.materialize`), so every table in it reflects one cut of the log:

- ``docs(id, collection, key, body JSON, hlc UBIGINT, updated_at
  TIMESTAMPTZ, origin, deleted BOOLEAN)``;
- ``changes(id, collection, hlc, updated_at, origin, seq, bytes, kind)``;
- one view per collection, named after it, with ``id, key, hlc,
  updated_at, origin`` and a typed column per top-level field (deleted
  documents left out); every collection view is also in the schema
  ``collections`` (``collections."docs"`` when a collection is named like
  one of the tables above);
- ``regions(region, frontier_hlc, frontier_at, freshness, records,
  contiguous_seq)``, with a ``_global`` row for the global frontier.

Time travel (``as_of``): documents unchanged since the cut are read from the
materialisation; only the documents changed after it are replayed from the
log (``AsOf.version``) and put in their place, so its cost grows with what
changed after the cut, not with the store.
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import crdtdb
from crdtdb.errors import InvalidHlcError, StoreError, UsageError
from crdtdb.history import checked_cut
from crdtdb.hlc import MAX_LOGICAL, Hlc
from crdtdb.ids import RESERVED_COLLECTION

from .area import Area, Manifest
from .materialize import dead_relation, refresh, typed_select
from .schema import column_names, columns, quote, sql_type, structure

__all__ = ["AsOfSpec", "connect", "open_store", "refresh_connection", "resolve_cut"]

AsOfSpec = Hlc | int | str | datetime | None
"""What ``as_of`` accepts: an Hlc (or its int), its text, an ISO-8601 timestamp,
a datetime, ``"frontier"`` or ``"now"``/None (the present)."""

SYSTEM_TABLES = ("docs", "changes", "regions")
_EMPTY_DOCS = (
    "SELECT NULL::INTEGER AS _seg, NULL::VARCHAR AS id, NULL::VARCHAR AS collection,"
    " NULL::VARCHAR AS key, NULL::UBIGINT AS hlc, NULL::TIMESTAMPTZ AS updated_at,"
    " NULL::VARCHAR AS origin, NULL::BOOLEAN AS deleted, NULL::VARCHAR AS _body,"
    " NULL::BIGINT AS file_row_number WHERE false"
)
_EMPTY_CHANGES = (
    "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS collection, NULL::UBIGINT AS hlc,"
    " NULL::TIMESTAMPTZ AS updated_at, NULL::VARCHAR AS origin, NULL::BIGINT AS seq,"
    " NULL::BIGINT AS bytes, NULL::VARCHAR AS kind WHERE false"
)


@dataclass
class _State:
    """What a connection of ours reads: kept beside it, keyed by the connection."""

    path: Path
    as_of: AsOfSpec
    generation: int = 0
    cut: Hlc | None = None
    lease: list[int] = field(default_factory=list)


_states: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, _State] = weakref.WeakKeyDictionary()


def connect(
    db_or_dir: crdtdb.Database | str | os.PathLike[str],
    *,
    as_of: AsOfSpec = None,
    refresh: bool = True,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's tables and collection views (module docstring).

    ``refresh`` first brings the materialisation up to date (the default);
    without it the connection reads the last one built. ``connection``: set up
    these views in a DuckDB connection of yours instead of a new one.
    Refresh it later with ``con.refresh()`` (or :func:`refresh_connection`).
    """
    con = connection if connection is not None else duckdb.connect()
    state = _State(
        Path(db_or_dir.path if isinstance(db_or_dir, crdtdb.Database) else db_or_dir), as_of
    )
    _states[con] = state
    weakref.finalize(con, _release, state.lease)
    _attach(con, state, db_or_dir, refresh)
    return con


def refresh_connection(con: duckdb.DuckDBPyConnection, *, as_of: AsOfSpec | str = "keep") -> None:
    """Bring a connection from :func:`connect` up to date (and move its cut if ``as_of``)."""
    state = _states.get(con)
    if state is None:
        raise UsageError("this DuckDB connection was not made by crdtdb.query.connect()")
    if as_of != "keep":
        state.as_of = as_of
    _attach(con, state, state.path, True)


def _refresh_method(con: duckdb.DuckDBPyConnection) -> None:
    """``con.refresh()``: the materialisation brought up to date, the views moved to it."""
    refresh_connection(con)


if not hasattr(duckdb.DuckDBPyConnection, "refresh"):  # never over one DuckDB may add
    duckdb.DuckDBPyConnection.refresh = _refresh_method  # type: ignore[attr-defined]


def _release(lease: list[int]) -> None:
    for fd in lease:
        os.close(fd)
    lease.clear()


def _attach(
    con: duckdb.DuckDBPyConnection,
    state: _State,
    db_or_dir: crdtdb.Database | str | os.PathLike[str],
    do_refresh: bool,
) -> None:
    db, opened = open_store(db_or_dir)
    try:
        if do_refresh:
            refresh(db)
        area = Area(db.path)
        manifest, fd = _leased_manifest(area, db)
        cut = resolve_cut(db, state.as_of)
        old = list(state.lease)
        state.lease[:] = [fd]
        _release(old)
        state.generation, state.cut = manifest.generation, cut
        _create_views(con, area, manifest, db, cut)
    finally:
        if opened:
            db.close()


def open_store(
    db_or_dir: crdtdb.Database | str | os.PathLike[str],
) -> tuple[crdtdb.Database, bool]:
    """The store a query-layer call names, and whether the call opened it (and must close it)."""
    if isinstance(db_or_dir, crdtdb.Database):
        return db_or_dir, False
    path = Path(db_or_dir)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise StoreError(
            f"{path} is not a directory (it {what}): give the data directory of a crdtdb region"
        )
    return crdtdb.open(path), True


def _leased_manifest(area: Area, db: crdtdb.Database) -> tuple[Manifest, int]:
    """The current manifest, and a lease on its generation (built first if there is none)."""
    for _ in range(100):
        manifest = area.read()
        if manifest is None:
            refresh(db)
            continue
        fd = area.lease(manifest.generation)
        if fd is not None:
            return manifest, fd
    raise StoreError(f"{area.root}: the materialisation kept changing under this reader")


def resolve_cut(db: crdtdb.Database, as_of: AsOfSpec) -> Hlc | None:
    """The HLC cut ``as_of`` names (None: the present)."""
    if as_of is None or (isinstance(as_of, str) and as_of.strip().lower() == "now"):
        return None
    if isinstance(as_of, str) and as_of.strip().lower() == "frontier":
        return db.frontier()
    if isinstance(as_of, datetime):
        return _from_datetime(as_of)
    if isinstance(as_of, str) and "#" not in as_of and not as_of.strip().isdigit():
        try:
            moment = datetime.fromisoformat(as_of.strip())
        except ValueError:
            raise InvalidHlcError(
                f"as_of={as_of[:100]!r} is neither an HLC, a timestamp like"
                " 2026-12-07T10:00:00Z, 'frontier' nor 'now'"
            ) from None
        return _from_datetime(moment)
    if isinstance(as_of, (int, str)):
        return checked_cut(as_of)
    raise InvalidHlcError(f"as_of cannot be a {type(as_of).__name__}")


def _from_datetime(moment: datetime) -> Hlc:
    if moment.tzinfo is None:
        raise InvalidHlcError(
            f"timestamp {moment.isoformat()} has no time zone: add one (Z for UTC)"
        )
    # everything committed during that millisecond: the largest counter
    return Hlc.from_parts(int(moment.timestamp() * 1000), MAX_LOGICAL)


# ------------------------------------------------------------------- views


def _create_views(
    con: duckdb.DuckDBPyConnection,
    area: Area,
    manifest: Manifest,
    db: crdtdb.Database,
    cut: Hlc | None,
) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS collections")
    for (name,) in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE schema_name = 'collections'"
    ).fetchall():
        con.execute(f"DROP VIEW collections.{quote(name)}")
    dead = dead_relation(area, manifest)
    if cut is not None:
        _replay(con, area, db, manifest, cut)
    files = [str(area.root / f["path"]) for c in manifest.collections.values() for f in c["files"]]
    base = (
        "SELECT _seg, id, collection, key, hlc, updated_at, origin, deleted, _body,"
        f" file_row_number FROM {_read(files)}"
        if files
        else _EMPTY_DOCS
    )
    docs = f"SELECT f.* EXCLUDE (file_row_number) FROM ({base}) f{_live(dead)}"
    # The membership (crdtdb.membership) is not user data: only collections."_cluster" shows it.
    docs = f"SELECT * FROM ({docs}) WHERE collection != '{RESERVED_COLLECTION}'"
    if cut is not None:
        docs = (
            f"SELECT * FROM ({docs}) WHERE id NOT IN (SELECT id FROM _asof_ids)"
            " UNION ALL BY NAME SELECT 0 AS _seg, id, collection, key, hlc, updated_at, origin,"
            " deleted, _body FROM _asof_typed"
        )
    con.execute(
        "CREATE OR REPLACE VIEW docs AS SELECT id, collection, key, _body::JSON AS body, hlc,"
        f" updated_at, origin, deleted FROM ({docs})"
    )
    _changes_view(con, area, manifest, cut)
    _regions_view(con, manifest)
    main_views = {name.lower() for name in SYSTEM_TABLES}
    for collection, state in sorted(manifest.collections.items()):
        select = _collection_select(area, collection, state, dead, cut is not None)
        con.execute(f"CREATE VIEW collections.{quote(collection)} AS {select}")
        if collection.lower() not in main_views and collection != RESERVED_COLLECTION:
            main_views.add(collection.lower())
            con.execute(f"CREATE OR REPLACE VIEW main.{quote(collection)} AS {select}")


def _read(paths: list[str]) -> str:
    """Collection files as one relation, with each row's position in its file."""
    return f"read_parquet({_sql_list(paths)}, union_by_name = true, file_row_number = true)"


def _live(dead: str) -> str:
    """The join that leaves out superseded rows (matched by file number and position)."""
    return f" ANTI JOIN {dead} d ON f._seg = d._seg AND f.file_row_number = d.row"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _collection_select(
    area: Area, collection: str, state: dict[str, Any], dead: str, as_of: bool
) -> str:
    """The view of one collection: its live rows, one typed column per field."""
    fields = columns(state["fields"])
    names = column_names(list(fields))
    parts = [
        _file_group(area, [f["path"] for f in group], columns(group[0]["fields"]), fields)
        for group in _groups(state["files"])
    ]
    union = " UNION ALL BY NAME ".join(parts)
    rows = f"SELECT f.* EXCLUDE (file_row_number) FROM ({union}) f{_live(dead)}"
    if as_of:
        rows = (
            f"SELECT * FROM ({rows}) WHERE id NOT IN (SELECT id FROM _asof_ids)"
            f" UNION ALL BY NAME SELECT * EXCLUDE (_body) FROM _asof_typed"
            f" WHERE collection = '{collection}'"
        )
    shown = ", ".join(quote(names[f]) for f in fields)
    return (
        "SELECT id, key, hlc, updated_at, origin"
        f"{', ' + shown if shown else ''} FROM ({rows}) WHERE NOT deleted"
    )


def _file_group(area: Area, paths: list[str], had: dict[str, Any], fields: dict[str, Any]) -> str:
    """Files written with the same fields, as rows with today's columns.

    A column the files hold with today's type is read as it is; a field they
    lack is NULL; one whose type has widened since is parsed again from the body.
    """
    names = column_names(list(fields))
    stale = {f: t for f, t in fields.items() if f in had and had[f] != t}
    shape = structure(stale).replace("'", "''")
    columns = []
    for name, kind in fields.items():
        column = quote(names[name])
        if name in stale:
            columns.append(f"t.{quote(name)} AS {column}")
        elif name in had:
            columns.append(column)
        else:
            columns.append(f"NULL::{sql_type(kind)} AS {column}")
    parsed = f", json_transform(_body, '{shape}') AS t" if stale else ""
    return (
        "SELECT _seg, id, collection, key, hlc, updated_at, origin, deleted, file_row_number"
        f"{''.join(', ' + c for c in columns)}"
        f" FROM (SELECT *{parsed} FROM {_read([str(area.root / p) for p in paths])})"
    )


def _groups(files: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Files grouped by the fields (and types) they were written with."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in files:
        groups.setdefault(json.dumps(entry["fields"], sort_keys=True), []).append(entry)
    return list(groups.values())


def _changes_view(
    con: duckdb.DuckDBPyConnection, area: Area, manifest: Manifest, cut: Hlc | None
) -> None:
    files = [str(area.root / f["path"]) for f in manifest.changes]
    source = (
        "SELECT id, collection, hlc, updated_at, origin, seq, bytes, kind"
        f" FROM read_parquet({_sql_list(files)})"
        if files
        else _EMPTY_CHANGES
    )
    where = "" if cut is None else f" WHERE hlc <= {int(cut)}"
    con.execute(f"CREATE OR REPLACE VIEW changes AS SELECT * FROM ({source}){where}")


def _regions_view(con: duckdb.DuckDBPyConnection, manifest: Manifest) -> None:
    rows = [
        (r["region"], r["frontier_hlc"], r["records"], r["contiguous_seq"])
        for r in manifest.regions
    ]
    rows.append(("_global", manifest.frontier, None, None))
    table = pa.table(
        {
            "region": pa.array([r[0] for r in rows], pa.string()),
            "frontier_hlc": pa.array([r[1] for r in rows], pa.uint64()),
            "records": pa.array([r[2] for r in rows], pa.int64()),
            "contiguous_seq": pa.array([r[3] for r in rows], pa.int64()),
        }
    )
    con.register("_regions_rows", table)
    con.execute("CREATE OR REPLACE TEMP TABLE _regions AS SELECT * FROM _regions_rows")
    con.unregister("_regions_rows")
    con.execute(
        "CREATE OR REPLACE VIEW regions AS SELECT region, frontier_hlc,"
        " to_timestamp((frontier_hlc >> 16) / 1000) AS frontier_at,"
        " now() - to_timestamp((frontier_hlc >> 16) / 1000) AS freshness, records,"
        " contiguous_seq FROM _regions ORDER BY region = '_global', region"
    )


def _replay(
    con: duckdb.DuckDBPyConnection, area: Area, db: crdtdb.Database, manifest: Manifest, cut: Hlc
) -> None:
    """Stage, as of ``cut``, the documents whose state then is not their row now.

    Those are the documents with a record after the cut, or changed since the
    materialisation. Their state at the cut is, in order of cost: absent (every
    record after the cut); an older row of theirs still in the files, when the
    log shows that no record at or below the cut reached the store after that
    row's file was written (see :func:`_vouched`); else replayed from the log.
    """
    view = db.as_of(cut)  # refuses a cut below the compaction horizon
    changed = set(view.changed_after())
    with db.snapshot() as snap:
        changed.update(snap.changed_after(manifest.position))
    ids = sorted(changed - view.created_after(sorted(changed)))
    _table(con, "_asof_ids", {"id": pa.array(sorted(changed), pa.string())})
    _table(con, "_asof_wanted", {"id": pa.array(ids, pa.string())})
    rows = _vouched(con, area, manifest, view, db.compacted_hlc)
    found = {row[0] for row in rows}
    for doc_id in ids:
        version = None if doc_id in found else view.version(doc_id)
        if version is not None:
            body, hlc, origin = version
            rows.append((doc_id, doc_id.split("/", 1)[0], body is not None, int(hlc), origin, body))
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * 6
    staged = {
        "id": pa.array(columns[0], pa.string()),
        "collection": pa.array(columns[1], pa.string()),
        "live": pa.array(columns[2], pa.bool_()),
        "hlc": pa.array(columns[3], pa.uint64()),
        "origin": pa.array(columns[4], pa.string()),
        "body": pa.array(columns[5], pa.string()),
    }
    _table(con, "_asof_staged", staged)
    selects = [
        typed_select("_asof_staged", 0, state["fields"], collection)
        for collection, state in manifest.collections.items()
    ]
    union = " UNION ALL BY NAME ".join(selects) if selects else _EMPTY_DOCS
    con.execute(f"CREATE OR REPLACE TEMP TABLE _asof_typed AS {union}")


def _table(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, Any]) -> None:
    con.register(f"{name}_rows", pa.table(columns))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_rows")
    con.unregister(f"{name}_rows")


def _vouched(
    con: duckdb.DuckDBPyConnection,
    area: Area,
    manifest: Manifest,
    view: crdtdb.AsOf,
    horizon: Hlc,
) -> list[tuple[Any, ...]]:
    """The wanted documents' states at the cut that older rows in the files give.

    A row is its document's state at log position P (its file's ``position``).
    If its HLC is at or below the cut and no record of the document after P has
    an HLC at or below the cut, it is the state at the cut: the store then held
    every record at or below its file's ``complete``, so a record it lacked
    would have reached the log after P, where :meth:`AsOf.settled` looks. Only
    files whose ``complete`` is at or above the compaction horizon count: the
    log below it is gone.
    """
    files = [
        f
        for c in manifest.collections.values()
        for f in c["files"]
        if f.get("complete", 0) >= horizon
    ]
    if not files:
        return []
    position = {f["seg"]: f.get("position", 0) for f in files}
    candidates = con.execute(
        "SELECT id, collection, NOT deleted, hlc, origin, _body::VARCHAR, _seg FROM"
        f" {_read([str(area.root / f['path']) for f in files])} SEMI JOIN _asof_wanted USING (id)"
        f" WHERE hlc <= {int(view.hlc)} QUALIFY row_number() OVER"
        " (PARTITION BY id ORDER BY hlc DESC, origin DESC, _seg DESC) = 1"
    ).fetchall()
    by_position: dict[int, list[str]] = {}
    for row in candidates:
        by_position.setdefault(position[row[6]], []).append(row[0])
    settled = set()
    for after, ids in by_position.items():
        settled |= view.settled(ids, after)
    return [row[:6] for row in candidates if row[0] in settled]


def manifest_json(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What a connection reads: its store, generation and cut (for the console's .status)."""
    state = _states.get(con)
    if state is None:
        return {}
    return {"path": str(state.path), "generation": state.generation, "cut": state.cut}
