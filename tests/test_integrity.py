"""Core integrity: unique Yjs client ids, out-of-order apply in linear time, merged fields.

Each test here failed before its fix:

- two processes that seed ``random`` alike wrote under one Yjs client id, and
  their regions diverged for good with equal digests;
- records delivered ahead of what they build on were each retried after every
  record that integrated: quadratic (1,000 keystrokes took 20 s);
- ``doc["body"] = pycrdt.Text()`` in two regions kept one region's typing only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pycrdt import Doc, Map, Text

import crdtdb
import crdtdb.clients
from crdtdb import UpdateRecord
from crdtdb.errors import ClientIdCollisionError, DatabaseClosedError, UsageError
from crdtdb.records import REPAIR, UNCHECKED, WRITE

from .conftest import ship

ROOT = Path(__file__).resolve().parents[1]


def sync_both(a: crdtdb.Database, b: crdtdb.Database) -> None:
    ship(a, b)
    ship(b, a)


def same_client_ids(monkeypatch: pytest.MonkeyPatch, client_id: int = 4242) -> None:
    """Make the next stores opened draw ``client_id``, as a seeded generator once did."""
    monkeypatch.setattr("crdtdb.clients.secrets.randbits", lambda bits: client_id)


@pytest.fixture
def shared_doc(tmp_path: Path) -> Iterator[Path]:
    """Stores eu and us (closed) that both hold ``notes/a`` = {"x": 1}."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        eu.put("notes/a", {"x": 1})
        ship(eu, us)
    yield tmp_path


# ----------------------------------------------------------- client ids


@pytest.mark.integration
def test_processes_seeding_random_alike_still_converge(shared_doc: Path) -> None:
    """The issue's reproduction, with two real processes that each call random.seed(0)."""
    script = (
        "import json, random, sys\n"
        "random.seed(0)\n"
        "import crdtdb\n"
        "with crdtdb.open(sys.argv[1]) as db:\n"
        "    db.update('notes/a', {sys.argv[2]: 1})\n"
        "    print(json.dumps(db.info()['clients']['this_process']))\n"
    )
    ids = []
    for region in ("eu", "us"):
        done = subprocess.run(
            [sys.executable, "-c", script, str(shared_doc / region), region],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        ids.append(json.loads(done.stdout))
    assert ids[0] != ids[1]
    with crdtdb.open(shared_doc / "eu") as eu, crdtdb.open(shared_doc / "us") as us:
        sync_both(eu, us)
        assert eu.get("notes/a") == us.get("notes/a") == {"x": 1, "eu": 1, "us": 1}
        assert eu.digest("notes/a") == us.digest("notes/a")


def test_seeding_random_does_not_repeat_client_ids(shared_doc: Path) -> None:
    random.seed(0)
    eu = crdtdb.open(shared_doc / "eu")
    random.seed(0)
    us = crdtdb.open(shared_doc / "us")
    with eu, us:
        assert eu.info()["clients"]["this_process"] != us.info()["clients"]["this_process"]
        eu.update("notes/a", {"eu": 1})
        us.update("notes/a", {"us": 1})
        sync_both(eu, us)
        assert eu.get("notes/a") == us.get("notes/a") == {"x": 1, "eu": 1, "us": 1}


def test_a_second_origin_writing_under_a_bound_client_id_is_refused(
    shared_doc: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """However two regions came to share a client id, the shadowed edit is refused, not lost."""
    same_client_ids(monkeypatch)
    with crdtdb.open(shared_doc / "eu") as eu, crdtdb.open(shared_doc / "us") as us:
        eu.update("notes/a", {"eu": 1})
        us.update("notes/a", {"us": 1})
        (from_eu,) = eu.changes(origin="eu", since=eu.changes().__next__().hlc)
        before = (us.get("notes/a"), us.log_position(), us.merkle_root())
        for attempt in (1, 2):
            with (
                caplog.at_level(logging.ERROR, logger="crdtdb"),
                pytest.raises(ClientIdCollisionError) as refused,
            ):
                us.apply_remote(from_eu)
            assert refused.value.code == "client_id_collision"
            assert "client id 4242" in str(refused.value) and "'us'" in str(refused.value)
            assert (us.get("notes/a"), us.log_position(), us.merkle_root()) == before
            (collision,) = us.info()["clients"]["collisions"]
            assert collision["refused"] == attempt
            assert (collision["client_id"], collision["origin"]) == (4242, "eu")
            assert (collision["bound_origin"], collision["doc_id"]) == ("us", "notes/a")
        assert sum("refused record eu#2" in r.getMessage() for r in caplog.records) == 2
        # The other way round too: eu refuses us's edit.
        with pytest.raises(ClientIdCollisionError):
            eu.apply_remote_many(list(us.changes(origin="us")))


def test_repairs_carry_other_regions_items_without_refusal(tmp_path: Path) -> None:
    """A repair record holds eu's items but is us's record: the check must tell it apart."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
        crdtdb.open(tmp_path / "ap", region="ap") as ap,
    ):
        eu.put("notes/a", {"x": 1})
        assert us.apply_diff("notes/a", eu.diff("notes/a")) is not None  # anti-entropy
        (repair,) = us.changes()
        assert (repair.origin, repair.kind) == ("us", REPAIR)
        assert next(eu.changes()).kind == WRITE
        ship(eu, ap)  # ap binds eu's client id to eu
        assert ap.apply_remote(repair)  # carried items: not a collision
        assert ap.get("notes/a") == {"x": 1}
        # Had the repair passed for an edit, us would have been caught writing as eu:
        forged = UpdateRecord(repair.doc_id, repair.hlc, "us", 2, repair.update, WRITE)
        with pytest.raises(ClientIdCollisionError):
            ap.apply_remote(forged)
        eu_client = eu.info()["clients"]["this_process"]
        assert ap.client_ids() == {eu_client: "eu"}


def test_this_process_never_writes_under_a_client_id_bound_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        eu.put("notes/a", {"x": 1})
        taken = eu.info()["clients"]["this_process"]
        # Drawn at open: a client id the store already knows is never taken.
        ship(eu, us)
        draws = itertools.chain([taken], itertools.repeat(77))
        monkeypatch.setattr("crdtdb.clients.secrets.randbits", lambda bits: next(draws))
        with crdtdb.open(tmp_path / "us") as again:
            assert again.info()["clients"]["this_process"] == 77
        # Bound by another process after this one drew it: its first commit is refused.
        with crdtdb.open(tmp_path / "us") as late:  # draws 77 too (the id is not bound)
            monkeypatch.setattr("crdtdb.clients.secrets.randbits", lambda bits: 78)
            record = _edit_under(77, "notes/b", origin="eu", seq=2, hlc=int(eu.hlc) + 1)
            us.apply_remote(record)
            with pytest.raises(ClientIdCollisionError, match="run the transaction again"):
                late.put("notes/c", {"y": 1})
            assert late.get("notes/c") is None
            late.put("notes/c", {"y": 2})  # under a new client id
            assert late.info()["clients"]["this_process"] == 78
            assert late.get("notes/c") == {"y": 2}


def _edit_under(client_id: int, doc_id: str, *, origin: str, seq: int, hlc: int) -> UpdateRecord:
    doc: Doc[Map[int]] = Doc(client_id=client_id)
    doc.get("data", type=Map)["z"] = 1
    return UpdateRecord(doc_id, crdtdb.Hlc(hlc), origin, seq, doc.get_update())


@pytest.mark.integration
def test_a_forked_child_cannot_write_under_its_parents_client_id(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        db.put("notes/a", {"x": 1})
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                db.put("notes/a", {"x": 2})
                outcome = "wrote"
            except DatabaseClosedError as exc:
                outcome = "refused" if "os.fork()" in str(exc) else repr(exc)
            with crdtdb.open(tmp_path / "eu") as own:
                own.update("notes/a", {"child": 1})
                outcome += f" {own.info()['clients']['this_process'] != db._engine.client_id}"
            os.write(write, outcome.encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            assert pipe.read() == "refused True"
        assert db.get("notes/a") == {"x": 1, "child": 1}
        assert len(set(db.client_ids())) == 2


# ------------------------------------------------------- out-of-order apply


def typed_between(tmp_path: Path, n: int) -> tuple[list[UpdateRecord], list[UpdateRecord], str]:
    """x types n characters; y merges them and types n more between them.

    Returns x's records, y's own records and the final text. y's records each
    build on one of x's characters, so delivered before x's they all wait.
    """
    with (
        crdtdb.open(tmp_path / "x", region="x") as x,
        crdtdb.open(tmp_path / "y", region="y") as y,
    ):
        for _ in range(n):
            with x.transaction() as tx:
                tx.text("notes/a", "body").insert(0, "a")
        ship(x, y)
        for i in range(n):
            with y.transaction() as tx:
                tx.text("notes/a", "body").insert(2 * i + 1, "b")
        final = y.get("notes/a")
        assert final is not None
        return list(x.changes()), list(y.changes(origin="y")), final["body"]


def test_records_ahead_of_their_dependencies_are_retried_when_those_arrive(
    tmp_path: Path,
) -> None:
    n = 300
    xs, ys, final = typed_between(tmp_path, n)
    assert final == "ab" * n
    with crdtdb.open(tmp_path / "z", region="z") as z:
        for record in ys + xs:  # every one of y's records arrives before what it needs
            z.apply_remote(record)
        assert z.get("notes/a") == {"body": final}
        info = z.info()
        assert info["updates_waiting"] == 0
        # Each waiting record is retried about once, when its character arrives; retrying
        # every waiting record after each arrival (the old way) made n * n / 2 = 45,000.
        assert info["updates_reapplied"] <= 2 * n


def test_out_of_order_delivery_converges_in_every_shuffle(tmp_path: Path) -> None:
    xs, ys, final = typed_between(tmp_path, 40)
    for i in range(5):
        shuffled = xs + ys
        random.Random(i).shuffle(shuffled)
        with crdtdb.open(tmp_path / f"z{i}", region="z") as z:
            for record in shuffled:
                z.apply_remote(record)
            assert z.get("notes/a") == {"body": final}


# ----------------------------------------------------------- merged fields


def create_and_type(db: crdtdb.Database, text: str) -> None:
    with db.transaction() as tx:
        tx.text("notes/a", "body").insert(0, text)
        tx.array("notes/a", "tags").append(db.region)
        tx.map("notes/a", "by")[db.region] = True


def orders(eu: list[UpdateRecord], us: list[UpdateRecord]) -> Iterator[list[UpdateRecord]]:
    """Every interleaving of the two logs that keeps each one's own order."""
    total = len(eu) + len(us)
    for picks in itertools.combinations(range(total), len(eu)):
        chosen = set(picks)
        left, right = iter(eu), iter(us)
        yield [next(left) if i in chosen else next(right) for i in range(total)]


def test_a_merged_text_created_in_two_regions_keeps_both_regions_typing(tmp_path: Path) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        create_and_type(eu, "typed in eu")
        create_and_type(us, "typed in us")
        with eu.transaction() as tx:
            tx.doc("notes/a")["body"] += "!"
        logs = (list(eu.changes()), list(us.changes()))
        seen = set()
        for i, order in enumerate(orders(*logs)):
            with crdtdb.open(tmp_path / f"ap{i}", region="ap") as ap:
                for record in order:
                    ap.apply_remote(record)
                doc = ap.get("notes/a")
                assert doc is not None
                assert "typed in eu" in doc["body"] and "typed in us" in doc["body"]
                assert doc["body"].count("!") == 1
                assert sorted(doc["tags"]) == ["eu", "us"]
                assert doc["by"] == {"eu": True, "us": True}
                seen.add((json.dumps(doc, sort_keys=True), ap.digest("notes/a")))
        assert len(seen) == 1  # every delivery order, one result
        sync_both(eu, us)
        assert eu.get("notes/a") == us.get("notes/a")
        assert (json.dumps(eu.get("notes/a"), sort_keys=True), eu.digest("notes/a")) in seen


def test_a_map_key_text_is_last_writer_wins(tmp_path: Path) -> None:
    """What the merged text fixes: ``doc[k] = Text()`` in two regions keeps one text."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        for db in (eu, us):
            with db.transaction() as tx:
                tx.doc("notes/a")["body"] = Text(f"typed in {db.region}")
        sync_both(eu, us)
        body = eu.get("notes/a")["body"]  # type: ignore[index]
        assert body in ("typed in eu", "typed in us")


def test_a_delete_leaves_concurrent_typing_in_a_merged_text(tmp_path: Path) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        with eu.transaction() as tx:
            tx.text("notes/a", "body").insert(0, "old")
            tx.doc("notes/a")["title"] = "t"
        ship(eu, us)
        eu.delete("notes/a")
        with us.transaction() as tx:
            tx.text("notes/a", "body").insert(3, " new")
        sync_both(eu, us)
        assert eu.get("notes/a") == us.get("notes/a") == {"body": " new"}
        eu.delete("notes/a")  # having seen it all: gone everywhere
        sync_both(eu, us)
        assert eu.get("notes/a") is None and us.get("notes/a") is None


def test_merged_fields_read_and_write_like_fields(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        body = tx.text("notes/a", "body")
        body += "héllo"
        assert tx.get("notes/a") == {"body": "héllo"}
        root = tx.doc("notes/a")
        root["body"] += " wörld"  # in place, not a replacement
        assert "body" in root and len(root) == 1
    assert db.get("notes/a") == {"body": "héllo wörld"}
    db.update("notes/a", {"body": "héllo big wörld", "n": 1})  # edits only what differs
    assert db.get("notes/a") == {"body": "héllo big wörld", "n": 1}
    db.put("notes/a", {"n": 2})  # a put without it empties it
    assert db.get("notes/a") == {"n": 2}
    with db.transaction() as tx:
        assert str(tx.text("notes/a", "body")) == ""
        with pytest.raises(UsageError, match="merged text, not a array"):
            tx.array("notes/a", "body")
        items = tx.array("notes/a", "items")
        items.extend([1, {"k": "v"}])
        tx.map("notes/a", "meta")["a"] = [1]
    assert db.get("notes/a") == {"n": 2, "items": [1, {"k": "v"}], "meta": {"a": [1]}}
    db.update("notes/a", {"items": [3], "meta": {"b": 2}})
    assert db.get("notes/a") == {"n": 2, "items": [3], "meta": {"b": 2}}
    with pytest.raises(UsageError, match="merged array: give it a list"):
        db.update("notes/a", {"items": "x"})
    with db.transaction() as tx:
        tx.doc("notes/a")["note"] = "x"
        tx.text("notes/a", "note")
        tx.doc("notes/a")["note"] = Text("a new text")  # into the merged text, kept merged
    assert db.get("notes/a")["note"] == "a new text"  # type: ignore[index]
    db.update("notes/a", {"items": None, "note": None})  # None empties a merged field
    assert db.get("notes/a") == {"n": 2, "meta": {"b": 2}}


def test_an_ordinary_field_becomes_a_merged_one(db: crdtdb.Database) -> None:
    db.put("notes/a", {"body": "plain", "n": 1})
    with db.transaction() as tx:
        tx.text("notes/a", "body").insert(0, "merged")
    assert db.get("notes/a") == {"body": "merged", "n": 1}
    hlc = db.hlc
    db.update("notes/a", {"n": 2})
    assert db.as_of(hlc).get("notes/a") == {"body": "merged", "n": 1}


# ------------------------------------------------------------------ the API


def test_a_transaction_names_the_records_it_wrote(db: crdtdb.Database) -> None:
    with db.transaction() as tx:
        tx.put("a/1", {"x": 1})
        tx.put("a/2", {"x": 2})
    assert [(r.doc_id, r.origin, r.seq, r.hlc) for r in tx.records] == [
        ("a/1", "eu", 1, tx.hlc),
        ("a/2", "eu", 2, tx.hlc),
    ]
    assert list(db.changes()) == list(tx.records)
    with db.transaction() as nothing:
        nothing.get("a/1")
    assert nothing.records == () and nothing.hlc is None


def test_changes_of_one_origin(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    eu, us = pair
    eu.put("a/1", {"x": 1})
    us.put("a/2", {"x": 2})
    eu.put("a/3", {"x": 3})
    ship(eu, us)
    assert [r.doc_id for r in us.changes(origin="eu")] == ["a/1", "a/3"]
    assert [r.doc_id for r in us.changes(origin="us")] == ["a/2"]
    assert [r.seq for r in us.records_from("eu", 1)] == [2]


def test_client_ids_are_shown_by_origin(pair: tuple[crdtdb.Database, crdtdb.Database]) -> None:
    eu, us = pair
    eu.put("a/1", {"x": 1})
    us.put("a/2", {"x": 2})
    ship(eu, us)
    clients = us.info()["clients"]
    mine, theirs = clients["this_process"], eu.info()["clients"]["this_process"]
    assert clients["by_origin"] == {
        "eu": {"count": 1, "newest": [theirs]},
        "us": {"count": 1, "newest": [mine]},
    }
    assert clients["collisions"] == []
    assert us.client_ids() == {mine: "us", theirs: "eu"}


def test_records_before_schema_3_are_not_checked(tmp_path: Path) -> None:
    """Records of a migrated store have no kind: they travel as UNCHECKED, never refused."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "ap", region="ap") as ap,
    ):
        eu.put("notes/a", {"x": 1})
        ship(eu, ap)
        legacy = next(eu.changes())
        # as a schema-2 store's repair of eu's items would look, relayed by us
        relayed = UpdateRecord(legacy.doc_id, legacy.hlc, "us", 1, legacy.update, UNCHECKED)
        assert ap.apply_remote(relayed)
        assert ap.client_ids() == {eu.info()["clients"]["this_process"]: "eu"}
