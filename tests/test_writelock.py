"""The kernel write lock that queues the writers of every process on a directory.

Each test holds ``DIR/write.lock`` the way another process would (its own
open file description: ``flock`` locks of two descriptions exclude each other
also within one process) and checks what a write of crdtdb does meanwhile.
"""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import crdtdb
from crdtdb import errors
from crdtdb.writelock import WRITE_LOCK_FILE, WriteLock

DEADLINE = 30.0  # seconds: generous, for a loaded machine


@pytest.fixture
def db(tmp_path: Path) -> Iterator[crdtdb.Database]:
    database = crdtdb.open(tmp_path / "eu", region="eu")
    yield database
    database.close()


def _update_in_thread(db: crdtdb.Database) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def body() -> None:
        try:
            db.update("docs/a", {"n": 1})
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, failures


def test_a_write_waits_for_the_lock_held_elsewhere_and_goes_on_once_it_is_released(
    db: crdtdb.Database, tmp_path: Path
) -> None:
    with (tmp_path / "eu" / WRITE_LOCK_FILE).open("ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        thread, failures = _update_in_thread(db)
        # Without the lock, the update (SQLite's own lock being free) is done in milliseconds.
        thread.join(0.5)
        assert thread.is_alive(), "the write did not wait for the write lock"
        # Read through another handle: the waiting thread holds this one's lock.
        reader = crdtdb.open(tmp_path / "eu")
        try:
            assert reader.get("docs/a") is None
        finally:
            reader.close()
        fcntl.flock(other, fcntl.LOCK_UN)
        thread.join(DEADLINE)
    assert not thread.is_alive() and not failures
    assert db.get("docs/a") == {"n": 1}


def test_the_lock_is_held_only_around_the_commit_not_the_transaction_block(
    db: crdtdb.Database, tmp_path: Path
) -> None:
    with db.transaction() as tx:
        tx.update("docs/a", {"n": 1})
        with (tmp_path / "eu" / WRITE_LOCK_FILE).open("ab") as other:
            # Free while the application's block runs: another process may commit.
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(other, fcntl.LOCK_UN)
    with (tmp_path / "eu" / WRITE_LOCK_FILE).open("ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and released after the commit
    assert db.get("docs/a") == {"n": 1}


@pytest.mark.integration
def test_a_holder_killed_while_it_holds_the_lock_frees_it(
    db: crdtdb.Database, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(600)\n",
            str(tmp_path / "eu" / WRITE_LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        thread, failures = _update_in_thread(db)
        thread.join(0.5)
        assert thread.is_alive(), "the write did not wait for the killed process's lock"
        holder.send_signal(signal.SIGKILL)
        thread.join(DEADLINE)
        assert not thread.is_alive() and not failures
    finally:
        holder.kill()
        holder.wait(DEADLINE)
    assert db.get("docs/a") == {"n": 1}


def test_one_thread_taking_the_lock_twice_through_two_handles_is_refused_not_hung(
    tmp_path: Path,
) -> None:
    first, second = WriteLock(tmp_path), WriteLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(errors.TransactionError, match="already holds this directory"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free again, and from then on the second's to hold
    second.release()
    first.close()
    second.close()


def test_a_lock_file_that_was_there_is_used_as_it_is_never_rewritten(tmp_path: Path) -> None:
    directory = tmp_path / "eu"
    directory.mkdir()
    (directory / WRITE_LOCK_FILE).write_bytes(b"not ours\n")
    db = crdtdb.open(directory, region="eu")
    try:
        db.update("docs/a", {"n": 1})
    finally:
        db.close()
    assert (directory / WRITE_LOCK_FILE).read_bytes() == b"not ours\n"
