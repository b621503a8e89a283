"""A Ctrl-C that strikes inside an SQLite statement surfaces as itself.

SQLite calls back into Python for one thing, ``xor_blob``, which folds a
commit's Merkle deltas into the stored tree. Python's sqlite3 turns whatever a
callback raises into "user-defined function raised exception", so a Ctrl-C (or
the SystemExit a SIGTERM handler raises) landing there used to come out as a
store failure: `crdtdb demo` stopped by SIGTERM exited 1 with "a write failed in
SQLite" instead of 143. Here the interrupt is raised inside the callback, on a
real store, and must come out as itself, with nothing of the commit stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import crdtdb
from crdtdb import storage
from crdtdb.digests import EAGER_DIGESTS
from crdtdb.merkle import xor_bytes

MANY = EAGER_DIGESTS + 8
"""Documents created in one transaction: enough for their digests to go into the tree
with the commit, so that the second such commit XORs into nodes the first made."""


def _create(db: crdtdb.Database, first: int) -> None:
    with db.transaction() as tx:
        for i in range(first, first + MANY):
            tx.put(f"users/u{i}", {"n": i})


def _interrupting(interrupt: BaseException) -> object:
    def xor(a: bytes | None, b: bytes | None) -> bytes:
        raise interrupt

    return xor


@pytest.mark.parametrize(
    "interrupt", [KeyboardInterrupt(), SystemExit(143)], ids=["ctrl-c", "sigterm-exit"]
)
def test_an_interrupt_inside_the_merkle_fold_is_raised_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: BaseException
) -> None:
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        _create(db, 0)
        before = db.info()
        monkeypatch.setattr(storage, "xor_bytes", _interrupting(interrupt))
        with pytest.raises(type(interrupt)):
            _create(db, MANY)
        monkeypatch.setattr(storage, "xor_bytes", xor_bytes)
        assert db.get(f"users/u{MANY}") is None  # nothing of the interrupted commit
        assert db.info()["documents"] == before["documents"]
        _create(db, MANY)  # the store goes on: the next commit is whole
        assert db.get(f"users/u{MANY}") == {"n": MANY}
    with crdtdb.open(tmp_path / "eu") as db:
        assert len(list(db.list("users"))) == 2 * MANY


def test_a_real_store_failure_is_still_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ordinary exception in the callback is a failure of the store, typed as one."""
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        _create(db, 0)
        monkeypatch.setattr(storage, "xor_bytes", _interrupting(ValueError("bad blob")))
        with pytest.raises(crdtdb.errors.StoreError, match="user-defined function"):
            _create(db, MANY)
        monkeypatch.setattr(storage, "xor_bytes", xor_bytes)
        _create(db, MANY)
        assert db.get(f"users/u{MANY}") == {"n": MANY}
