"""The one-write commit path: what it keeps in memory between commits stays true.

A commit reads no document row back: what the row holds is kept on the loaded
document (crdtdb.writes.Writer._known) and read again only once another
process may have changed it. These tests change rows from another connection
(as another process would) and check that the next commit still records what
the store must hold.
"""

from __future__ import annotations

from pathlib import Path

import crdtdb


def test_a_digest_refreshed_elsewhere_is_marked_stale_again_by_the_next_commit(
    tmp_path: Path,
) -> None:
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu,
        crdtdb.open(tmp_path / "eu") as daemon,  # another connection: the sync daemon
        crdtdb.open(tmp_path / "us", region="us") as us,
    ):
        eu.update("notes/1", {"v": 1})
        eu.update("notes/1", {"v": 2})
        daemon.merkle_root()  # brings the digest up to date (and marks it fresh)
        eu.update("notes/1", {"v": 3})  # must mark it stale again
        us.apply_remote_many(list(eu.changes()))
        assert us.get("notes/1") == eu.get("notes/1") == {"v": 3}
        assert eu.digest("notes/1") == us.digest("notes/1")
        assert eu.merkle_root() == us.merkle_root()


def test_rows_kept_in_memory_follow_another_process_s_commits(tmp_path: Path) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu") as one, crdtdb.open(tmp_path / "eu") as two:
        one.update("notes/1", {"a": 1})
        two.delete("notes/1")
        one.update("notes/1", {"b": 2})  # live again: its row must say so
        with crdtdb.open(tmp_path / "eu") as fresh:
            assert fresh.list("notes") == ["notes/1"]
        two.update("notes/1", {"c": 3})
        one.update("notes/1", {"d": 4})
        with crdtdb.open(tmp_path / "eu") as fresh:
            assert fresh.get("notes/1") == {"b": 2, "c": 3, "d": 4}
            assert fresh.list("notes") == ["notes/1"]
            info = fresh.info()
            assert info["live_documents"] == 1
            records = list(fresh.changes())
            assert [r.seq for r in records] == [1, 2, 3, 4, 5]
