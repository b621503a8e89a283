"""A snapshot's records against their origins' seals (``sync/snapshot_verify.py``).

Real stores sealed by real region keys: eu's records relayed to us as a
session relays them, us's own sealed by us. The copy of us's store a joining
region would install verifies; each way of making up or altering a record in
that copy is refused, saying which record.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import crdtdb
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord
from crdtdb.storage import STORE_FILE
from crdtdb.sync.signing import record_bytes
from crdtdb.sync.snapshot_verify import SealCheckFailed, verify_records

from .test_signing_store import provenance, relay


@pytest.fixture
def store(tmp_path: Path, certs: Path) -> Path:
    """us's store file: 300 of eu's sealed records, relayed, and 40 of its own, sealed."""
    with (
        crdtdb.open(tmp_path / "eu", region="eu") as eu_db,
        crdtdb.open(tmp_path / "us", region="us") as us_db,
    ):
        eu, us = provenance(eu_db, certs), provenance(us_db, certs)
        for i in range(300):
            eu_db.update(f"docs/{i % 7}", {"n": i})
        assert eu.seal_own() == 300
        assert relay(eu, us, "eu") == 300
        for i in range(40):
            us_db.update("docs/us", {"n": i})
        assert us.seal_own() == 40
    return tmp_path / "us" / STORE_FILE


def _verify(path: Path, certs: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return verify_records(conn, (certs / "ca.pem").read_bytes())
    finally:
        conn.close()


def _altered(store: Path, change: Callable[[sqlite3.Connection], None]) -> Path:
    copy = store.with_name("copy.sqlite3")
    shutil.copyfile(store, copy)
    conn = sqlite3.connect(copy)
    with conn:
        change(conn)
    conn.close()
    return copy


def _payload(conn: sqlite3.Connection, origin: str, seq: int) -> bytes:
    row = conn.execute(
        "SELECT payload FROM log WHERE origin = ? AND seq = ?", (origin, seq)
    ).fetchone()
    return bytes(row[0])


def _flip_payload(conn: sqlite3.Connection) -> None:
    payload = bytearray(_payload(conn, "eu", 5))
    payload[-1] ^= 1
    conn.execute("UPDATE log SET payload = ? WHERE origin = 'eu' AND seq = 5", (bytes(payload),))


def _rewrite_chain_too(conn: sqlite3.Connection) -> None:
    """Alter eu#5 and recompute every chain hash after it: only the seal can tell."""
    _flip_payload(conn)
    prev = bytes(
        conn.execute("SELECT prev FROM chain WHERE origin = 'eu' AND seq = 5").fetchone()[0]
    )
    rows = conn.execute(
        "SELECT seq, hlc, kind, doc_id, payload FROM log WHERE origin = 'eu' AND seq >= 5"
        " ORDER BY seq"
    ).fetchall()
    for seq, hlc, kind, doc_id, payload in rows:
        record = UpdateRecord(doc_id, Hlc(hlc), "eu", seq, bytes(payload), kind)
        head = hashlib.sha256(prev + record_bytes(record)).digest()
        conn.execute(
            "UPDATE chain SET prev = ?, hash = ? WHERE origin = 'eu' AND seq = ?", (prev, head, seq)
        )
        prev = head


def _signed_by_us(conn: sqlite3.Connection) -> None:
    """eu's head rows re-pointed at us's key (a region vouching for another's records)."""
    us_key = conn.execute("SELECT fingerprint FROM keys WHERE region = 'us'").fetchone()[0]
    conn.execute("UPDATE chain SET key = ? WHERE origin = 'eu' AND sig IS NOT NULL", (us_key,))


def _eu_certificate_named_us(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM keys WHERE region = 'us'")
    conn.execute("UPDATE keys SET region = 'us' WHERE region = 'eu'")


def _last_seal_dropped(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE chain SET key = NULL, sig = NULL WHERE origin = 'eu' AND seq = 300")


def _record_made_up(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO log (origin, seq, hlc, doc_id, payload, kind)"
        " VALUES ('ap', 1, 1, 'docs/x', ?, 0)",
        (_payload(conn, "eu", 1),),
    )


def test_a_sound_copy_verifies_every_record(store: Path, certs: Path) -> None:
    assert _verify(store, certs) == 340


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_flip_payload, "record eu#5 is not what its chain hash covers"),
        (_rewrite_chain_too, "does not verify with eu's key"),
        (_signed_by_us, "is by us's key: a forgery"),
        (_eu_certificate_named_us, "holds eu's certificate under the name us"),
        (_last_seal_dropped, "are covered by no seal"),
        (_record_made_up, "record ap#1 carries no chain row"),
    ],
    ids=["payload", "chain", "other-key", "certificate", "no-seal", "made-up"],
)
def test_an_altered_or_made_up_record_is_refused_naming_it(
    store: Path, certs: Path, change: Callable[[sqlite3.Connection], None], reason: str
) -> None:
    with pytest.raises(SealCheckFailed, match=reason):
        _verify(_altered(store, change), certs)
