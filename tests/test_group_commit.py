"""Group commit: threads of one process committing at once share one SQLite transaction.

Each member keeps its own HLC, sequence number and records, returns only after
the group's COMMIT, and a member that raises leaves nothing of itself; a group
whose COMMIT fails fails every member and stores nothing (see crdtdb/group.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crdtdb
from crdtdb.errors import StoreFullError

from .harness.process import running
from .harness.wait import wait_until
from .test_full_disk import small_fs  # noqa: F401  (the 3 MiB tmpfs fixture)

TIMEOUT = 30.0


def _commits(db: crdtdb.Database) -> list[str]:
    """The write transactions this process's connection begins from now on (one a group;
    reads of documents from disk run in read transactions of their own)."""
    seen: list[str] = []
    db._engine.conn.set_trace_callback(
        lambda sql: seen.append("COMMIT") if sql == "BEGIN IMMEDIATE" else None
    )
    return seen


def _log(db: crdtdb.Database) -> list[tuple[int, int, str]]:
    """(seq, hlc, doc_id) of every record, by seq."""
    return sorted((r.seq, int(r.hlc), r.doc_id) for r in db.changes())


def _joining(db: crdtdb.Database, count: int) -> Callable[[], bool]:
    """Whether ``count`` threads are waiting for the lock to run a transaction."""
    return lambda: len(db._engine.lock._joining) >= count


class Joined:
    """What :func:`_in_one_group` saw: the joiners' results or errors, and the first's."""

    def __init__(self, count: int) -> None:
        self.results: list[Any] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self.first_error: BaseException | None = None
        self.first: crdtdb.Transaction | None = None


def _in_one_group(
    db: crdtdb.Database,
    first: Callable[[crdtdb.Transaction], None],
    joiners: list[Callable[[], Any]],
) -> Joined:
    """Run ``first`` in a transaction that ends only once every joiner waits to commit,
    so that they all join its group."""
    seen = Joined(len(joiners))
    entered = threading.Event()

    def join(k: int) -> None:
        entered.wait(TIMEOUT)
        try:
            seen.results[k] = joiners[k]()
        except BaseException as exc:
            seen.errors[k] = exc

    threads = [
        threading.Thread(target=join, args=(k,), name=f"joiner-{k}") for k in range(len(joiners))
    ]
    for thread in threads:
        thread.start()
    try:
        with db.transaction() as tx:
            seen.first = tx
            first(tx)
            entered.set()
            wait_until(_joining(db, len(joiners)), TIMEOUT, "the joiners to wait for the lock")
    except BaseException as exc:
        seen.first_error = exc
    entered.set()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    return seen


def _taking_the_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is waiting inside the engine lock's acquire."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "_take":
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def db(tmp_path: Path) -> Iterator[crdtdb.Database]:
    with crdtdb.open(tmp_path / "eu", region="eu") as store:
        yield store


def test_waiting_transactions_join_one_commit_and_return_after_it(db: crdtdb.Database) -> None:
    order: list[str] = []
    sub = db.subscribe(lambda record: order.append(f"committed {record.doc_id}"))
    commits = _commits(db)

    def second() -> crdtdb.Hlc:
        return db.update("g/b", {"v": 2})

    def third() -> crdtdb.Hlc:
        return db.put("g/c", {"v": 3})

    seen = _in_one_group(db, lambda tx: tx.doc("g/a").update({"v": 1}), [second, third])
    order.append("first returned")
    sub.close()
    tx, results = seen.first, seen.results
    assert tx is not None and seen.errors == [None, None] and seen.first_error is None
    assert commits == ["COMMIT"], "the three transactions were not committed as one group"
    # The first member returned only after the group's COMMIT (subscribers hear it first).
    assert order.index("first returned") > max(i for i, o in enumerate(order) if o.startswith("c"))
    log = _log(db)
    assert [seq for seq, _, _ in log] == [1, 2, 3]
    hlcs = [hlc for _, hlc, _ in log]
    assert len(set(hlcs)) == 3 and hlcs == sorted(hlcs), "each member has its own HLC, in order"
    assert tx.hlc is not None and int(tx.hlc) == hlcs[0]
    assert sorted(int(h) for h in results) == hlcs[1:]
    assert [r.seq for r in tx.records] == [1]
    # The counters the group stored are the last member's: another process goes on from them.
    with crdtdb.open(db.path) as other:
        info = other.info()
        assert info["origins"]["eu"]["max_seq"] == 3
        assert info["origins"]["eu"]["contiguous_seq"] == 3
        assert int(crdtdb.Hlc.parse(info["last_hlc"])) >= hlcs[-1]
        assert other.update("g/d", {"v": 4}) > crdtdb.Hlc(hlcs[-1])
    assert {doc: db.get(doc) for doc in ("g/a", "g/b", "g/c")} == {
        "g/a": {"v": 1},
        "g/b": {"v": 2},
        "g/c": {"v": 3},
    }


def test_a_member_that_raises_leaves_nothing_and_the_others_commit(db: crdtdb.Database) -> None:
    commits = _commits(db)

    def raising() -> None:
        db.update("g/bad", {"v": 1, "nan": float("nan")})  # refused inside its transaction

    seen = _in_one_group(
        db, lambda tx: tx.doc("g/a").update({"v": 1}), [raising, lambda: db.update("g/c", {"v": 3})]
    )
    assert [type(e) for e in seen.errors] == [crdtdb.errors.InvalidValueError, type(None)]
    assert commits == ["COMMIT"]
    assert db.get("g/bad") is None
    assert db.get("g/a") == {"v": 1}
    assert db.get("g/c") == {"v": 3}
    assert [(seq, doc) for seq, _, doc in _log(db)] == [(1, "g/a"), (2, "g/c")]


def test_a_with_block_waiting_for_the_lock_does_not_hold_a_group_open(
    db: crdtdb.Database,
) -> None:
    """A ``with`` block runs application code, which may wait for a thread whose commit is
    in the open group: it commits the group when it takes the lock instead of joining."""
    commits = _commits(db)
    returned = threading.Event()
    waited: list[bool] = []

    def block() -> None:
        with db.transaction() as tx:
            tx.doc("g/b")["v"] = 2
            waited.append(returned.wait(TIMEOUT))  # the first member returned meanwhile

    thread = threading.Thread(target=block)
    with db.transaction() as tx:
        tx.doc("g/a")["v"] = 1
        thread.start()
        wait_until(lambda: _taking_the_lock(thread), TIMEOUT, "the block to wait for the lock")
    returned.set()
    thread.join(TIMEOUT)
    assert waited == [True]
    assert len(commits) == 2
    assert [doc for _, _, doc in _log(db)] == ["g/a", "g/b"]


def test_a_member_whose_commit_raises_takes_back_only_its_own_clock_and_seq(
    tmp_path: Path,
) -> None:
    """The commit itself raises for one member (its wall clock, injected, fails while it
    issues the HLC): the group goes on without it, with no gap in the sequence."""
    refuse = threading.local()

    def clock() -> int:
        if getattr(refuse, "on", False):
            raise OSError("the clock failed")
        return crdtdb.hlc.system_wall_ms()

    with crdtdb.open(tmp_path / "eu", region="eu", clock=clock) as db:
        commits = _commits(db)

        def failing() -> None:
            refuse.on = True
            db.update("g/bad", {"v": 1})

        seen = _in_one_group(
            db, lambda tx: tx.doc("g/a").update({"v": 1}), [failing, lambda: db.update("g/c", {})]
        )
        assert isinstance(seen.errors[0], OSError) and seen.errors[1] is None
        assert commits == ["COMMIT"]
        assert db.get("g/bad") is None
        log = _log(db)
        assert [(seq, doc) for seq, _, doc in log] == [(1, "g/a"), (2, "g/c")]
        assert log[0][1] < log[1][1]
        assert db.update("g/d", {"v": 4}) > crdtdb.Hlc(log[1][1])
        assert [seq for seq, _, _ in _log(db)] == [1, 2, 3]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plans=st.lists(
        st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6),
        min_size=2,
        max_size=6,
    )
)
def test_concurrent_commits_keep_every_guarantee(tmp_path_factory: Any, plans: Any) -> None:
    """Threads write at once, some transactions raising, some sharing a document: the
    log has exactly the committed writes, seqs 1..N, one distinct HLC each in seq order,
    and every document holds its last committed write."""
    path = tmp_path_factory.mktemp("group") / "eu"
    with crdtdb.open(path, region="eu") as db:
        start = threading.Barrier(len(plans))
        acked: list[tuple[int, str]] = []
        lock = threading.Lock()

        def run(t: int, plan: list[tuple[bool, bool]]) -> None:
            start.wait(TIMEOUT)
            for i, (shared, raises) in enumerate(plan):
                doc = "g/shared" if shared else f"g/{t}"
                if i % 2:  # a one-shot write (may join a group), refused if it raises
                    try:
                        hlc = db.update(doc, {f"t{t}": float("nan") if raises else i})
                    except crdtdb.errors.InvalidValueError:
                        continue
                else:  # a with block (may lead a group)
                    try:
                        with db.transaction() as tx:
                            tx.doc(doc)[f"t{t}"] = i
                            if raises:
                                raise KeyError("abandoned")
                    except KeyError:
                        continue
                    assert tx.hlc is not None
                    hlc = tx.hlc
                with lock:
                    acked.append((int(hlc), doc))

        threads = [threading.Thread(target=run, args=(t, p)) for t, p in enumerate(plans)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        log = _log(db)
        assert [seq for seq, _, _ in log] == list(range(1, len(acked) + 1))
        assert sorted(acked) == [(hlc, doc) for _, hlc, doc in log]
        assert len({hlc for hlc, _, _ in log}) == len(log)
        assert db.info()["origins"].get("eu", {}).get("max_seq", 0) == len(log)
        assert [hlc for _, hlc, _ in log] == sorted(hlc for _, hlc, _ in log)
        for t, plan in enumerate(plans):
            for shared in (False, True):
                written = [i for i, (s, raises) in enumerate(plan) if s == shared and not raises]
                doc = db.get("g/shared" if shared else f"g/{t}") or {}
                assert doc.get(f"t{t}") == (written[-1] if written else None)


@pytest.mark.integration
def test_a_group_whose_commit_fails_fails_every_member_and_stores_nothing(
    small_fs: Path,  # noqa: F811
) -> None:
    store = small_fs / "eu"
    filler = small_fs / "filler-made-by-the-test"
    with crdtdb.open(store, region="eu") as db:
        db.put("before/1", {"ok": True})
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 160_000))  # room for one page cache spill
        big = os.urandom(150_000).hex()
        commits = _commits(db)
        seen = _in_one_group(
            db,
            lambda tx: tx.put("g/a", {"pad": big}),
            [lambda: db.put("g/b", {"pad": big}), lambda: db.put("g/c", {"pad": big})],
        )
        assert commits == ["COMMIT"], "the three puts were not one group"
        errors = [seen.first_error, *seen.errors]
        assert all(isinstance(e, StoreFullError) for e in errors), errors
        assert len({str(e) for e in errors}) == 1 and "disk is full" in str(errors[0])
        assert seen.first is not None and seen.first.hlc is None and seen.first.records == ()
        for doc in ("g/a", "g/b", "g/c"):
            assert db.get(doc) is None
        assert [doc for _, _, doc in _log(db)] == ["before/1"]
        filler.unlink()
        db.put("after/1", {"ok": True})
        assert [(seq, doc) for seq, _, doc in _log(db)] == [(1, "before/1"), (2, "after/1")]
    with crdtdb.open(store) as again:  # and on disk, seen by a new connection
        assert [doc for _, _, doc in _log(again)] == ["before/1", "after/1"]


@pytest.mark.integration
def test_writes_acknowledged_by_a_group_survive_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    acked: dict[int, tuple[int, int]] = {}  # thread -> (its last acknowledged i, hlc)
    hlcs: list[int] = []

    def take(line: str) -> None:
        message = json.loads(line)
        acked[message["t"]] = (message["i"], message["hlc"])
        hlcs.append(message["hlc"])

    with running("group_writer.py", str(store), "--threads", "8") as child:
        assert json.loads(child.line(TIMEOUT)) == {"ev": "ready"}
        while len(hlcs) < 400:
            take(child.line(TIMEOUT))
        for line in child.kill():
            take(line)
    assert len(acked) == 8
    with crdtdb.open(store) as db:
        log = _log(db)
        assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))
        stored = [hlc for _, hlc, _ in log]
        assert len(set(stored)) == len(stored) and stored == sorted(stored)
        assert set(hlcs) <= set(stored), "an acknowledged commit is missing"
        for t, (last, _) in acked.items():
            doc = db.get(f"group/{t}")
            assert doc is not None and doc["t"] == t and doc["i"] >= last
