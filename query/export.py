"""``export()`` and ``crdtdb export``: a region's collections as Parquet files or Iceberg tables.

Each collection is written as the typed rows of its view in
:func:`crdtdb.query.connect` (``id, key, hlc, updated_at, origin``, a column
per top-level field), all through one connection: one cut of the log
(``as_of``, as ``connect`` takes it; by default the present).

Parquet: ``OUT/collection=NAME/part-0.parquet``, Hive-partitioned, a whole
collection per export, written under a temporary name and renamed over the
old file (a reader sees the old partition or the new one). Collections have
different columns: read one with ``read_parquet('OUT/collection=users/*')``,
or all with ``union_by_name=true``; the common columns read as they are. A
field named ``collection`` is written as ``collection_``.
``OUT/_crdtdb_export.json`` marks a directory as ours: an export refuses one
that is neither new, empty nor marked, and never replaces a file the marker
does not name.

Iceberg: a table per collection in namespace REGION of a SQL catalog named
``crdtdb`` (default SQLite ``OUT/catalog.db``, data in ``OUT/warehouse``).
``hlc`` is a long (HLCs are below 2**63), ``updated_at`` a timestamptz, JSON a
string. New columns are added (``union_by_name``); a type Iceberg cannot
promote (long to double or string) re-creates the field columns and rewrites
the table.

The incremental rule. A table's properties keep the cut of the export that
wrote it: the store's log *position* (a log id of this store), compaction
epoch, HLC and whether it was the present. A document can differ between two
cuts only if a record of it entered the log after the earlier position (at
any HLC: a remote record that arrives late with an old HLC has a new
position, so replication lag loses nothing; an ``hlc > previous cut`` rule
would, since a document's ``hlc`` only grows), or, when either export was
``as_of`` a past cut, a record of it has an HLC between the two cuts. Those
documents' rows are deleted (``In("id", ...)``: pyiceberg rewrites the data
files that held them, copy-on-write) and their rows at the new cut appended,
in one catalog commit with the new cut. So an export adds to each table an
OVERWRITE and/or DELETE snapshot for the removal (none when nothing changed)
and always a last APPEND snapshot of the changed rows (possibly none); each
snapshot's summary has the cut (``crdtdb.hlc``, ``crdtdb.hlc_text``,
``crdtdb.region``, ``crdtdb.position``). The table is rewritten whole when
there is no usable earlier cut (another store or region, a position past
this log), when history was compacted under an ``as_of`` export, or when
more than ``MAX_CHANGED_IDS`` documents changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import duckdb

import crdtdb
from crdtdb.errors import CrdtdbError, HistoryCompactedError, StoreError, UsageError
from crdtdb.hlc import Hlc
from crdtdb.ids import RESERVED_COLLECTION, validate_collection

from .area import Manifest, read_manifest
from .connect import AsOfSpec, connect, manifest_json, open_store, refresh_connection
from .schema import RESERVED, quote

__all__ = ["CollectionExport", "ExportResult", "export", "main"]

Format = Literal["parquet", "iceberg"]
MARKER = "_crdtdb_export.json"
PART = "part-0.parquet"
PARTITION = "collection"
BATCH_ROWS = 65_536
"""Rows per Arrow batch streamed from DuckDB into an Iceberg table."""
MAX_CHANGED_IDS = 50_000
"""An Iceberg table with more changed documents than this is rewritten whole (the delete
filter lists them all; copy-on-write would rewrite most of its files anyway)."""


@dataclass(frozen=True, slots=True)
class CollectionExport:
    """What an export wrote for one collection."""

    collection: str
    rows: int
    """Rows written: the whole collection, or (incremental Iceberg) the changed live documents."""
    removed: int
    """Iceberg: documents changed (or deleted) since the last export, whose rows were
    deleted before the append; on a full rewrite, the rows the table had."""
    full: bool
    """Whether the whole collection was written (always, for Parquet)."""
    location: str
    """The Parquet file, or the Iceberg table as ``namespace.table``."""
    snapshot_id: int | None
    """The Iceberg snapshot that holds the export (None for Parquet)."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export` did."""

    format: Format
    out: Path
    hlc: Hlc
    """The cut exported: the records at or below it that the store held at ``position``."""
    position: int
    """The store's log position the export reflects."""
    collections: tuple[CollectionExport, ...]

    def rows(self) -> dict[str, int]:
        return {c.collection: c.rows for c in self.collections}

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "out": str(self.out),
            "hlc": str(self.hlc),
            "hlc_int": int(self.hlc),
        }


@dataclass(frozen=True, slots=True)
class _Cut:
    """The cut an export reflects, as kept in an Iceberg table's properties."""

    hlc: Hlc
    position: int
    epoch: int
    present: bool
    region: str
    store: str

    def properties(self) -> dict[str, str]:
        """Kept in the table's properties, and in the summary of each snapshot of the export."""
        return {
            "crdtdb.hlc": str(int(self.hlc)),
            "crdtdb.hlc_text": str(self.hlc),
            "crdtdb.position": str(self.position),
            "crdtdb.epoch": str(self.epoch),
            "crdtdb.present": "true" if self.present else "false",
            "crdtdb.region": self.region,
            "crdtdb.store": self.store,
        }

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> _Cut | None:
        try:
            hlc, position, epoch = (int(props[f"crdtdb.{k}"]) for k in ("hlc", "position", "epoch"))
            present, region, store = (props[f"crdtdb.{k}"] for k in ("present", "region", "store"))
        except (KeyError, ValueError):
            return None
        return cls(Hlc(hlc), position, epoch, present == "true", region, store)


@dataclass(frozen=True, slots=True)
class _Job:
    """One export under way."""

    con: duckdb.DuckDBPyConnection
    db: crdtdb.Database
    out: Path
    cut: _Cut
    marker: dict[str, Any]
    names: list[str]
    progress: bool | None

    def tracked(self) -> Iterator[str]:
        """The collections, with a progress bar on stderr while they are worked through."""
        if not (sys.stderr.isatty() if self.progress is None else self.progress):
            yield from self.names
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("export", total=len(self.names))
            for name in self.names:
                bar.update(task, description=f"export {name}")
                yield name
                bar.advance(task)


def export(
    db_or_dir: crdtdb.Database | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: Format = "parquet",
    as_of: AsOfSpec = None,
    collections: list[str] | None = None,
    catalog: str | None = None,
    progress: bool | None = None,
) -> ExportResult:
    """Export the collections of a store at one cut (module docstring).

    ``collections``: only these (default: every collection the store has
    held). ``catalog``: an Iceberg SQL catalog ``sqlite:///PATH`` (default
    ``OUT/catalog.db``). ``progress``: a bar on stderr (default: if a terminal).
    """
    if format not in ("parquet", "iceberg"):
        raise UsageError(f"unknown export format {format!r}: use 'parquet' or 'iceberg'")
    if catalog is not None and format != "iceberg":
        raise UsageError("a catalog is only for --format iceberg: leave it out for Parquet")
    target = Path(out).absolute()
    uri = _catalog_uri(catalog, target) if format == "iceberg" else ""
    marker = _claim(target, format)
    db, opened = open_store(db_or_dir)
    try:
        con, manifest = _connect(db, as_of)
        try:
            cut = _cut(db, manifest, manifest_json(con)["cut"])
            job = _Job(con, db, target, cut, marker, _chosen(manifest, collections), progress)
            done = _parquet(job) if format == "parquet" else _iceberg(job, uri)
        finally:
            con.close()
    finally:
        if opened:
            db.close()
    return ExportResult(format, target, cut.hlc, cut.position, tuple(done))


# ------------------------------------------------------------------ common


def _connect(db: crdtdb.Database, as_of: AsOfSpec) -> tuple[duckdb.DuckDBPyConnection, Manifest]:
    """A connection and the manifest of the very generation it reads (a refresh may race)."""
    con = connect(db, as_of=as_of)
    con.execute("SET TimeZone = 'UTC'")  # Iceberg's timestamptz is UTC
    for _ in range(20):
        manifest = read_manifest(db)
        if manifest is not None and manifest.generation == manifest_json(con)["generation"]:
            return con, manifest
        refresh_connection(con)
    con.close()
    raise StoreError(f"{db.path}: the materialisation kept changing under the export: retry")


def _cut(db: crdtdb.Database, manifest: Manifest, cut: Hlc | None) -> _Cut:
    present = cut is None
    hlc = Hlc(manifest.hlc) if cut is None else cut
    store = str(Path(db.path).resolve())
    return _Cut(hlc, manifest.position, manifest.epoch, present, db.region, store)


def _chosen(manifest: Manifest, wanted: list[str] | None) -> list[str]:
    held = sorted(manifest.collections)
    if wanted is None:  # every collection of user data: the membership only when named
        return [name for name in held if name != RESERVED_COLLECTION]
    if not wanted:
        raise UsageError("no collection named: give at least one, or leave the list out for all")
    for name in wanted:
        validate_collection(name)
        if name not in manifest.collections:
            raise UsageError(
                f"the store has no collection {name!r}: choose among {', '.join(held) or 'none'}"
            )
    return sorted(set(wanted))


# ------------------------------------------------------------------ marker


def _claim(out: Path, kind: str) -> dict[str, Any]:
    """The marker of an earlier export into ``out``, or a new one if ``out`` is new or empty."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file: give a directory (new, empty or an earlier export)")
    marker = _read_marker(out)
    if marker is None:
        if out.exists() and any(out.iterdir()):
            raise UsageError(
                f"{out} is not empty and holds no crdtdb export (no {MARKER}): give a new or"
                " empty directory; nothing was written"
            )
        marker = {"crdtdb_export": 1, "format": kind, "collections": {}}
    elif marker.get("format") != kind:
        raise UsageError(
            f"{out} holds a crdtdb {marker.get('format')} export: export {kind} elsewhere"
        )
    return marker


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{out / MARKER} does not read ({exc}): export elsewhere") from None
    if not isinstance(data, dict) or data.get("crdtdb_export") != 1:
        raise UsageError(f"{out / MARKER} is not a crdtdb export marker: export elsewhere")
    return data


def _write_marker(out: Path, marker: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, out / MARKER)


# ----------------------------------------------------------------- parquet


def _parquet(job: _Job) -> list[CollectionExport]:
    owned: dict[str, Any] = job.marker["collections"]
    for name in job.names:
        _check_owned(job.out, name, owned)
        owned[name] = {**owned.get(name, {}), "file": _relative(name)}
    _write_marker(
        job.out, job.marker
    )  # names the files before they exist: a crash leaves them ours
    done = [_write_partition(job.con, job.out, name) for name in job.tracked()]
    for r in done:
        owned[r.collection].update(hlc=int(job.cut.hlc), position=job.cut.position, rows=r.rows)
    _write_marker(job.out, {**job.marker, "region": job.cut.region})
    return done


def _relative(name: str) -> str:
    return f"{PARTITION}={name}/{PART}"


def _check_owned(out: Path, name: str, owned: dict[str, Any]) -> None:
    target = out / _relative(name)
    if target.exists() and owned.get(name, {}).get("file") != _relative(name):
        raise UsageError(f"{target} was not written by crdtdb export: move it away, then retry")


def _write_partition(con: duckdb.DuckDBPyConnection, out: Path, name: str) -> CollectionExport:
    target = out / _relative(name)
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(f".{PART}.{os.getpid()}.tmp")
    try:
        path = str(tmp).replace("'", "''")
        row = con.execute(
            f"COPY ({_parquet_select(con, name)}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
        ).fetchone()
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    rows = int(row[0]) if row else 0
    return CollectionExport(name, rows, 0, True, str(target), None)


def _parquet_select(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """The collection's view, a field named like the partition column renamed."""
    columns = [c[0] for c in con.execute(f"DESCRIBE collections.{quote(name)}").fetchall()]
    taken = {c.lower() for c in columns}
    spare = f"{PARTITION}_"
    while spare.lower() in taken:
        spare += "_"
    renamed = [
        f"{quote(c)} AS {quote(spare)}" if c.lower() == PARTITION else quote(c) for c in columns
    ]
    return f"SELECT {', '.join(renamed)} FROM collections.{quote(name)}"


# ----------------------------------------------------------------- iceberg


def _catalog_uri(catalog: str | None, out: Path) -> str:
    if catalog is None:
        return f"sqlite:///{out / 'catalog.db'}"
    if not catalog.startswith("sqlite:///"):
        raise UsageError(f"catalog {catalog!r}: give a SQLite catalog as sqlite:///PATH")
    folder = Path(catalog.removeprefix("sqlite:///")).parent
    if not folder.is_dir():
        raise UsageError(f"catalog {catalog!r}: the directory {folder} does not exist")
    return catalog


@contextlib.contextmanager
def _catalog_errors(uri: str) -> Iterator[None]:
    """pyiceberg's and SQLAlchemy's errors as crdtdb's, saying what to do."""
    from pyiceberg.exceptions import CommitFailedException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except CommitFailedException as exc:
        raise StoreError(f"another export changed the table meanwhile ({exc}): retry") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"catalog {uri} cannot be used ({exc}): check the path") from exc


def _iceberg(job: _Job, uri: str) -> list[CollectionExport]:
    job.marker.update(catalog=uri, namespace=job.cut.region)
    _write_marker(job.out, job.marker)  # before catalog.db and warehouse/: then they are ours
    with _catalog_errors(uri):
        from pyiceberg.catalog.sql import SqlCatalog

        (job.out / "warehouse").mkdir(exist_ok=True)
        catalog = SqlCatalog("crdtdb", uri=uri, warehouse=f"file://{job.out / 'warehouse'}")
        catalog.create_namespace_if_not_exists(job.cut.region)
        changes = _Changes(job.db, job.cut)
        done = [_export_table(job, catalog, name, changes) for name in job.tracked()]
    for r in done:
        job.marker["collections"][r.collection] = {
            "hlc": int(job.cut.hlc),
            "snapshot": r.snapshot_id,
        }
    _write_marker(job.out, job.marker)
    return done


class _Changes:
    """The documents changed between an earlier cut and this export's, per collection."""

    def __init__(self, db: crdtdb.Database, cut: _Cut) -> None:
        self._db, self._cut = db, cut
        self._found: dict[_Cut, dict[str, set[str]] | None] = {}

    def since(self, earlier: _Cut | None, collection: str) -> set[str] | None:
        """Ids of ``collection`` whose state may differ; None: rewrite the table whole."""
        if earlier is None:
            return None
        if earlier not in self._found:
            ids = self._changed(earlier)
            self._found[earlier] = None if ids is None else _by_collection(ids)
        found = self._found[earlier]
        return None if found is None else found.get(collection, set())

    def _changed(self, earlier: _Cut) -> set[str] | None:
        cut = self._cut
        if (earlier.region, earlier.store) != (cut.region, cut.store):
            return None
        if earlier.position > cut.position:
            return None  # the log is not the one that cut was taken from
        both_present = earlier.present and cut.present
        with self._db.snapshot() as snap:  # its position is at or past the cut's
            if snap.compaction_epoch == earlier.epoch:
                ids = set(snap.changed_after(earlier.position))
            elif both_present:  # records may have been folded away: ask the documents
                ids = set(snap.changed_since_scan(earlier.position))
            else:
                return None
        if not both_present and earlier.hlc != cut.hlc:
            try:
                ids.update(self._db.as_of(min(earlier.hlc, cut.hlc)).changed_after())
            except HistoryCompactedError:
                return None
        return ids


def _by_collection(ids: set[str]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = {}
    for doc_id in ids:
        grouped.setdefault(doc_id.split("/", 1)[0], set()).add(doc_id)
    return grouped


def _export_table(job: _Job, catalog: Any, name: str, changes: _Changes) -> CollectionExport:
    con, cut = job.con, job.cut
    schema = con.sql(_select(name)).limit(0).to_arrow_table().schema
    table = _table(catalog, (cut.region, name), schema, cut)
    changed = changes.since(_Cut.from_properties(table.properties), name)
    with table.transaction() as tx:
        evolved = _evolve(tx, schema)
        full = changed is None or not evolved or len(changed) > MAX_CHANGED_IDS
        removed = _remove(tx, table, None if full else changed, cut.properties())
        with _rows(con, name, None if full else changed) as reader:
            tx.append(reader, snapshot_properties=cut.properties())
        tx.set_properties(cut.properties())
    snapshot = table.current_snapshot()
    rows = int(snapshot.summary.get("added-records") or 0)
    location = f"{cut.region}.{name}"
    return CollectionExport(name, rows, removed, full, location, snapshot.snapshot_id)


@contextlib.contextmanager
def _rows(con: duckdb.DuckDBPyConnection, name: str, ids: set[str] | None) -> Iterator[Any]:
    """The collection's rows (only ``ids`` if given), as an Arrow stream Iceberg takes."""
    sql = _select(name)
    if ids is not None:
        import pyarrow as pa

        con.register("_export_ids", pa.table({"id": pa.array(sorted(ids), pa.string())}))
        sql += " SEMI JOIN _export_ids i ON v.id = i.id"
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    try:
        yield reader
    finally:
        reader.close()
        if ids is not None:
            con.unregister("_export_ids")


def _select(name: str) -> str:
    return f"SELECT * REPLACE (hlc::BIGINT AS hlc) FROM collections.{quote(name)} v"


def _table(catalog: Any, ident: tuple[str, str], schema: Any, cut: _Cut) -> Any:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        owner = {"crdtdb.region": cut.region, "crdtdb.store": cut.store}
        return catalog.create_table(ident, schema=schema, properties=owner)
    if "crdtdb.region" not in table.properties:
        raise UsageError(
            f"Iceberg table {'.'.join(ident)} was not made by crdtdb export: give another"
            " --catalog, or drop the table"
        )
    return table


def _evolve(tx: Any, schema: Any) -> bool:
    """Widen the table to ``schema``; False if columns had to be re-created (rewrite it all)."""
    from pyiceberg.exceptions import ValidationError

    try:
        update = tx.update_schema()
        update.union_by_name(schema)
        update.commit()
        return True
    except ValidationError:  # a type Iceberg cannot promote, e.g. long to double or string
        pass
    drop = tx.update_schema(allow_incompatible_changes=True)
    for field in tx.table_metadata.schema().fields:
        if field.name not in RESERVED:
            drop.delete_column(field.name)
    drop.commit()
    update = tx.update_schema()
    update.union_by_name(schema)
    update.commit()
    return False


def _remove(tx: Any, table: Any, changed: set[str] | None, summary: dict[str, str]) -> int:
    """Delete the rows of ``changed`` (None: every row); return how many documents that was."""
    from pyiceberg.expressions import AlwaysTrue, In

    snapshot = table.current_snapshot()  # the table before this transaction
    if snapshot is None or (changed is not None and not changed):
        return 0
    # In is a pydantic model: mypy sees its fields, not its __new__(term, literals)
    where = AlwaysTrue() if changed is None else In("id", sorted(changed))  # type: ignore[call-arg, arg-type]
    with warnings.catch_warnings():  # "did not match any records": only new documents
        warnings.simplefilter("ignore")
        tx.delete(where, snapshot_properties=summary)
    return int(snapshot.summary.get("total-records") or 0) if changed is None else len(changed)


# --------------------------------------------------------------------- cli


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see crdtdb export --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="crdtdb export",
        description="export a region's collections as Parquet files or Iceberg tables",
    )
    p.add_argument("dir", metavar="DIR", help="the region's data directory")
    p.add_argument("out", metavar="OUT", help="where to write (new, empty or an earlier export)")
    p.add_argument("--format", choices=["parquet", "iceberg"], default="parquet")
    p.add_argument("--as-of", metavar="X", help="an HLC, ISO timestamp, 'frontier' or 'now'")
    p.add_argument("--collections", metavar="A,B", help="only these collections")
    p.add_argument("--catalog", metavar="URI", help="Iceberg SQL catalog, sqlite:///PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    """``crdtdb export DIR OUT ...``: prints the result as JSON; 2 for bad input, 1 for errors."""
    try:
        args = _parser().parse_args(argv)
        wanted = None if args.collections is None else args.collections.split(",")
        result = export(
            args.dir,
            args.out,
            format=args.format,
            as_of=args.as_of,
            collections=None if wanted is None else [c.strip() for c in wanted],
            catalog=args.catalog,
            progress=False if args.no_progress else None,
        )
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        return _fail(exc, 2)
    except (CrdtdbError, OSError, duckdb.Error) as exc:
        return _fail(exc, 1)
    except Exception as exc:  # a library's error: still one line, never a traceback
        return _fail(exc, 1, f"export failed ({type(exc).__name__}): ")
    print(json.dumps(result.to_json(), sort_keys=True))
    return 0


def _fail(exc: BaseException, code: int, prefix: str = "") -> int:
    print(f"error: {prefix}{' '.join(str(exc).split())}", file=sys.stderr)
    return code
