"""crdtdb.query.export: Parquet and Iceberg exports of real stores, read back by other readers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

import crdtdb
from crdtdb import membership
from crdtdb.errors import UsageError
from crdtdb.query.export import export, main

from .conftest import ship

USERS = {
    "alice": {"name": "Alice", "age": 31, "tags": ["a", "b"], "address": {"city": "Paris"}},
    "bob": {"name": "Bob", "age": 42, "tags": [], "address": {"city": "Lyon", "zip": 69001}},
    "carol": {"name": "Carol", "age": 27, "tags": ["c"]},
    "dave": {"name": "Dave", "age": 50},
}
ORDERS = {
    "1": {"total": 12.5, "items": [{"sku": "x", "qty": 2}]},
    "2": {"total": 7.25, "items": [{"sku": "y", "qty": 1}, {"sku": "z", "qty": 3}]},
}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[crdtdb.Database]:
    """users (dave deleted) and orders, in region eu."""
    with crdtdb.open(tmp_path / "eu", region="eu") as database:
        for key, value in USERS.items():
            database.put(f"users/{key}", value)
        for key, value in ORDERS.items():
            database.put(f"orders/{key}", value)
        database.delete("users/dave")
        yield database


def live_users(db: crdtdb.Database) -> dict[str, dict[str, Any]]:
    return {doc_id: db.get(doc_id) or {} for doc_id in db.list("users")}


def hive(out: Path, options: str = "") -> str:
    return f"read_parquet('{out}/*/*.parquet', hive_partitioning = true{options})"


# ----------------------------------------------------------------- parquet


def test_parquet_reads_back_with_duckdb(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = export(db, out)
    assert result.rows() == {"orders": 2, "users": 3}
    con = duckdb.connect()
    counts = dict(
        con.execute(f"SELECT collection, count(*) FROM {hive(out)} GROUP BY 1").fetchall()
    )
    assert counts == {"orders": 2, "users": 3}  # dave deleted
    rows = con.execute(
        f"SELECT id, age, address.city FROM {hive(out, ', union_by_name = true')}"
        " WHERE collection = 'users' ORDER BY id"
    ).fetchall()
    assert rows == [
        ("users/alice", 31, "Paris"),
        ("users/bob", 42, "Lyon"),
        ("users/carol", 27, None),
    ]
    orders = f"read_parquet('{out}/collection=orders/*.parquet')"
    total = con.execute(f"SELECT sum(total), sum(items[1].qty) FROM {orders}").fetchone()
    assert total == (19.75, 3)


def test_the_membership_is_exported_only_when_named(db: crdtdb.Database, tmp_path: Path) -> None:
    membership.ensure(db, "eu", "active")  # what a daemon records at start
    out = tmp_path / "out"
    assert export(db, out).rows() == {"orders": 2, "users": 3}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "collection=orders",
        "collection=users",
    ]
    named = tmp_path / "named"
    assert export(db, named, collections=["_cluster"]).rows() == {"_cluster": 1}


def test_parquet_field_named_like_the_partition(db: crdtdb.Database, tmp_path: Path) -> None:
    db.put("orders/3", {"total": 1.0, "collection": "spring"})
    out = tmp_path / "out"
    export(db, out)
    read = f"SELECT max(collection_) FROM read_parquet('{out}/collection=orders/*.parquet')"
    assert duckdb.connect().execute(read).fetchone() == ("spring",)


def test_parquet_reads_back_with_pyarrow(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export(db, out)
    table = ds.dataset(out, partitioning="hive").to_table(columns=["collection", "id", "hlc"])
    counts = table.group_by("collection").aggregate([("id", "count")]).to_pylist()
    assert {row["collection"]: row["id_count"] for row in counts} == {"orders": 2, "users": 3}
    assert "users/dave" not in table.column("id").to_pylist()
    users = ds.dataset(out / "collection=users").to_table()
    assert pc.sum(users.column("age")).as_py() == sum(v["age"] for v in live_users(db).values())
    assert sorted(users.column("tags").to_pylist()) == [[], ["a", "b"], ["c"]]


def test_parquet_as_of_an_earlier_hlc(db: crdtdb.Database, tmp_path: Path) -> None:
    before = db.update("users/alice", {"age": 32})
    db.update("users/alice", {"age": 33})
    db.put("users/erin", {"name": "Erin", "age": 1})
    db.delete("users/bob")
    export(db, tmp_path / "then", as_of=before)
    export(db, tmp_path / "now")
    con = duckdb.connect()
    read = "SELECT id, age FROM read_parquet('{}/collection=users/*.parquet') ORDER BY id"
    then = con.execute(read.format(tmp_path / "then")).fetchall()
    assert then == [("users/alice", 32), ("users/bob", 42), ("users/carol", 27)]
    now = con.execute(read.format(tmp_path / "now")).fetchall()
    assert now == [("users/alice", 33), ("users/carol", 27), ("users/erin", 1)]


def test_parquet_collections_replaces_only_those(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export(db, out)
    orders = (out / "collection=orders" / "part-0.parquet").read_bytes()
    db.update("users/alice", {"age": 99})
    db.put("orders/3", {"total": 1.0})
    result = export(db, out, collections=["users"], progress=True)
    assert result.rows() == {"users": 3}
    assert (out / "collection=orders" / "part-0.parquet").read_bytes() == orders
    con = duckdb.connect()
    ages = con.execute(f"SELECT sum(age) FROM read_parquet('{out}/collection=users/*')").fetchone()
    assert ages == (99 + 42 + 27,)
    assert [p.name for p in (out / "collection=users").iterdir()] == ["part-0.parquet"]


def test_refuses_a_directory_that_is_not_an_export(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        export(db, out)
    with pytest.raises(UsageError, match="not empty"):
        export(db, out, format="iceberg")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_refuses_a_partition_file_it_did_not_write(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export(db, out, collections=["orders"])
    foreign = out / "collection=users" / "part-0.parquet"
    foreign.parent.mkdir()
    foreign.write_bytes(b"not ours")
    with pytest.raises(UsageError, match="not written by crdtdb"):
        export(db, out)
    assert foreign.read_bytes() == b"not ours"


# ----------------------------------------------------------------- iceberg


def catalog(out: Path) -> SqlCatalog:
    return SqlCatalog(
        "crdtdb", uri=f"sqlite:///{out}/catalog.db", warehouse=f"file://{out}/warehouse"
    )


def current_summary(table: Table) -> dict[str, str]:
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    return {"operation": snapshot.summary.operation.value, **snapshot.summary.additional_properties}


def test_iceberg_export_then_only_the_changes(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "ice"
    for key in ("frank", "grace", "heidi"):  # unchanged: kept by the copy-on-write rewrite
        db.put(f"users/{key}", {"name": key.title(), "age": 60})
    first = export(db, out, format="iceberg")
    users = catalog(out).load_table(("eu", "users"))
    table = users.scan().to_arrow()
    assert table.num_rows == 6
    assert pc.sum(table.column("age")).as_py() == 31 + 42 + 27 + 3 * 60
    summary = current_summary(users)
    assert summary["crdtdb.hlc"] == str(int(first.hlc))
    assert summary["crdtdb.hlc_text"] == str(first.hlc)
    assert summary["crdtdb.region"] == "eu"

    db.update("users/alice", {"age": 32})
    db.update("users/bob", {"age": 43})
    db.delete("users/carol")
    db.put("users/erin", {"name": "Erin", "age": 5})
    second = export(db, out, format="iceberg")
    by_name = {c.collection: c for c in second.collections}
    assert (by_name["users"].full, by_name["users"].rows, by_name["users"].removed) == (
        False,
        3,
        4,
    )
    assert (by_name["orders"].rows, by_name["orders"].removed) == (0, 0)
    users = catalog(out).load_table(("eu", "users"))
    snapshots = users.snapshots()
    # first export: one append; second: a copy-on-write removal of the 4 changed ids, then
    # an append of the 3 live ones (never the whole collection again)
    operations = [s.summary.operation.value for s in snapshots if s.summary is not None]
    assert operations in (["append", "overwrite", "append"], ["append", "delete", "append"])
    last = current_summary(users)
    assert last["added-records"] == "3"
    assert last["crdtdb.hlc"] == str(int(second.hlc)) and second.hlc > first.hlc
    rows = users.scan().to_arrow().select(["id", "age", "name"]).to_pylist()
    assert sorted((r["id"], r["age"], r["name"]) for r in rows) == sorted(
        (doc_id, value["age"], value["name"]) for doc_id, value in live_users(db).items()
    )
    assert catalog(out).load_table(("eu", "orders")).scan().to_arrow().num_rows == 2


def test_iceberg_takes_a_late_record_with_an_old_hlc(tmp_path: Path) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        us.put("users/zed", {"age": 9})  # written first, delivered after eu's export
        for key in ("a", "b", "c"):
            eu.put(f"users/{key}", {"age": 1})
        first = export(eu, tmp_path / "ice", format="iceberg")
        assert first.hlc > us.hlc
        ship(us, eu)
        second = export(eu, tmp_path / "ice", format="iceberg")
        (users,) = second.collections
        assert (users.full, users.rows) == (False, 1)
        table = catalog(tmp_path / "ice").load_table(("eu", "users")).scan().to_arrow()
        ids = sorted(table.column("id").to_pylist())
        assert ids == ["users/a", "users/b", "users/c", "users/zed"]


def test_iceberg_schema_widens_and_retypes(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "ice"
    export(db, out, format="iceberg", collections=["users"])
    db.update("users/alice", {"email": "a@example.org"})  # a new column
    result = export(db, out, format="iceberg", collections=["users"])
    assert not result.collections[0].full
    table = catalog(out).load_table(("eu", "users")).scan().to_arrow()
    emails = dict(
        zip(table.column("id").to_pylist(), table.column("email").to_pylist(), strict=True)
    )
    assert emails == {"users/alice": "a@example.org", "users/bob": None, "users/carol": None}
    db.update("users/bob", {"age": 42.5})  # BIGINT -> DOUBLE: Iceberg cannot promote long
    result = export(db, out, format="iceberg", collections=["users"])
    assert result.collections[0].full
    table = catalog(out).load_table(("eu", "users")).scan().to_arrow()
    assert sorted(table.column("age").to_pylist()) == [27.0, 31.0, 42.5]


def test_iceberg_as_of_then_present(db: crdtdb.Database, tmp_path: Path) -> None:
    out = tmp_path / "ice"
    before = db.update("users/alice", {"age": 32})
    db.update("users/alice", {"age": 33})
    db.delete("users/bob")
    export(db, out, format="iceberg", as_of=before, collections=["users"])
    ages = catalog(out).load_table(("eu", "users")).scan().to_arrow().to_pydict()
    assert dict(zip(ages["id"], ages["age"], strict=True)) == {
        "users/alice": 32,
        "users/bob": 42,
        "users/carol": 27,
    }
    result = export(db, out, format="iceberg", collections=["users"])
    assert not result.collections[0].full  # only alice and bob differ between the cuts
    ages = catalog(out).load_table(("eu", "users")).scan().to_arrow().to_pydict()
    assert dict(zip(ages["id"], ages["age"], strict=True)) == {"users/alice": 33, "users/carol": 27}


# --------------------------------------------------------------------- cli


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{dir}", "{out}", "--format", "csv"], 2, "invalid choice: 'csv'"),
        (["{dir}", "{out}", "--as-of", "yesterday-ish"], 2, "as_of='yesterday-ish'"),
        ([], 2, "required: DIR, OUT"),
        (["{tmp}/nowhere", "{out}"], 1, "is not a directory"),
        (["{dir}", "{out}", "--collections", "nope"], 2, "no collection 'nope'"),
        (["{dir}", "{out}", "--catalog", "sqlite:////no/such/dir/c.db"], 2, "a catalog is only"),
        (["{dir}", "{out}", "--format", "iceberg", "--catalog", "sqlite:////no/c.db"], 2, "/no "),
        (["{dir}", "{tmp}"], 2, "not empty and holds no crdtdb export"),
    ],
)
def test_cli_bad_input_is_one_line(
    db: crdtdb.Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    argv = [a.format(dir=db.path, out=tmp_path / "out", tmp=tmp_path) for a in args]
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message in captured.err and "Traceback" not in captured.err


def test_cli_exports(
    db: crdtdb.Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ice"
    argv = [str(db.path), str(out), "--format", "iceberg", "--collections", "users,orders"]
    assert main(argv) == 0
    assert '"format": "iceberg"' in capsys.readouterr().out
    assert catalog(out).load_table(("eu", "orders")).scan().to_arrow().num_rows == 2
