"""Anti-entropy with signed records, two real stores and two sealed sessions in memory
(no network): which differing documents go back as their origins' records, and which
as diffs (sync/resend.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import crdtdb
from crdtdb.records import REPAIR
from crdtdb.storage import STORE_FILE
from crdtdb.sync.provenance import Provenance
from crdtdb.sync.session import SessionOptions, SyncSession
from crdtdb.sync.signing import record_bytes
from crdtdb.sync.writer import perform_pending

from .harness.link import Link
from .test_signing_store import signer


class SealedLink(Link):
    """A :class:`Link` whose sessions send sealed runs and check what they receive, as
    the daemon's do (the dialer is ``dialer``'s)."""

    def __init__(
        self, dialer: Provenance, listener: Provenance, options: SessionOptions | None = None
    ) -> None:
        super().__init__(dialer.store, listener.store)
        self.a = SyncSession(
            dialer.store, dialer=True, now=self.now, sealed=dialer, options=options
        )
        self.b = SyncSession(
            listener.store, dialer=False, now=self.now, sealed=listener, options=options
        )
        self.verifiers = {id(self.a): dialer, id(self.b): listener}

    def perform(self) -> int:
        count = 0
        for session in (self.a, self.b):
            verifier = self.verifiers[id(session)]
            events, performed = perform_pending(session, verifier.store, self.now, verifier)
            self.events.extend(events)
            count += performed
        self._performed += count
        return count


def started(db: crdtdb.Database, certs: Path) -> Provenance:
    made = Provenance(db, (certs / "ca.pem").read_bytes(), signer(certs, db.region), lambda: 1)
    made.start()
    made.seal_own()
    return made


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[crdtdb.Database, Path]]:
    """eu with ten documents (d/3 and d/4 written twice), and where us's store goes."""
    with crdtdb.open(tmp_path / "eu", region="eu") as eu:
        for i in range(10):
            eu.put(f"d/{i}", {"i": i})
        eu.update("d/3", {"again": True})
        eu.update("d/4", {"again": True})
        yield eu, tmp_path / "us"


def synced(eu: crdtdb.Database, us_dir: Path, certs: Path) -> None:
    """us's store, holding everything of eu's (sent as records), then closed."""
    with crdtdb.open(us_dir, region="us") as us:
        link = SealedLink(started(eu, certs), started(us, certs))
        link.settle()
        assert us.records_from("eu", 0) == eu.records_from("eu", 0)
        assert us.merkle_root() == eu.merkle_root()  # every digest in the tree: none stale


def lose(store: Path, origin: str, doc_ids: list[str], *, keep_log: bool = False) -> int:
    """Take what ``origin``'s records of ``doc_ids`` wrote out of a closed store, its
    ``origins`` row still claiming them. ``keep_log``: the records stay in the log, and
    an empty load snapshot past them hides their content (held, not integrated)."""
    marks = ",".join("?" * len(doc_ids))
    lost = 0
    with sqlite3.connect(store / STORE_FILE) as conn:
        if keep_log:
            newest = conn.execute("SELECT max(id) FROM log").fetchone()[0]
            conn.executemany(
                "INSERT OR REPLACE INTO snapshots (doc_id, snapshot) VALUES (?, ?)",
                [(doc_id, b"\x00\x00") for doc_id in doc_ids],
            )
            conn.execute(
                f"UPDATE docs SET snapshot_id = ?, snapshot_bytes = 2 WHERE doc_id IN ({marks})",
                (newest, *doc_ids),
            )
        else:
            lost = conn.execute(
                f"DELETE FROM log WHERE origin = ? AND doc_id IN ({marks})", (origin, *doc_ids)
            ).rowcount
            conn.execute(f"DELETE FROM snapshots WHERE doc_id IN ({marks})", doc_ids)
        conn.execute(f"DELETE FROM bodies WHERE doc_id IN ({marks})", doc_ids)
        # their digests are recomputed from what is left (each must be in the tree now)
        stale = conn.execute(
            f"UPDATE docs SET dirty = 1 WHERE doc_id IN ({marks}) AND dirty = 0", doc_ids
        ).rowcount
        assert stale == len(doc_ids), "the documents' digests were not all in the tree"
    return lost


def repairs(db: crdtdb.Database) -> list[crdtdb.UpdateRecord]:
    return [r for r in db.records_from(db.region, 0) if r.kind == REPAIR]


@pytest.mark.parametrize("dialer", ["eu", "us"])  # the round's walk ends on either side
def test_lost_records_are_resent_as_their_origins_not_repaired_by_diff(
    stores: tuple[crdtdb.Database, Path], certs: Path, dialer: str
) -> None:
    eu, us_dir = stores
    synced(eu, us_dir, certs)
    lose(us_dir, "eu", ["d/3", "d/4", "d/7"])
    with crdtdb.open(us_dir) as us:
        assert us.get("d/3") is None
        sides = (started(eu, certs), started(us, certs))
        link = SealedLink(*(sides if dialer == "eu" else sides[::-1]))
        eu_side = link.a if dialer == "eu" else link.b
        link.settle()  # us claims every eu record: the push sends nothing
        assert us.get("d/3") is None
        link.round()
        link.settle()
        assert us.get("d/3") == {"i": 3, "again": True} and us.get("d/7") == {"i": 7}
        assert [record_bytes(r) for r in us.records_from("eu", 0)] == [
            record_bytes(r) for r in eu.records_from("eu", 0)
        ]
        assert repairs(us) == []
        assert eu_side.anti_entropy.records_first.resent_records >= 5  # runs, from eu#4 on
        assert us.merkle_root() == eu.merkle_root()


def test_records_held_but_not_integrated_are_resent_once_then_repaired_by_diff(
    stores: tuple[crdtdb.Database, Path], certs: Path
) -> None:
    eu, us_dir = stores
    synced(eu, us_dir, certs)
    lose(us_dir, "eu", ["d/5"], keep_log=True)
    with crdtdb.open(us_dir) as us:
        assert us.get("d/5") is None
        link = SealedLink(started(eu, certs), started(us, certs))
        link.settle()
        link.round()  # resends eu#6, which us holds already: no use
        link.settle()
        assert us.get("d/5") is None and repairs(us) == []
        assert link.a.anti_entropy.records_first.resent_records >= 1
        link.round()  # so the diff goes this time
        link.settle()
        assert us.get("d/5") == {"i": 5}
        (repair,) = repairs(us)
        assert repair.doc_id == "d/5" and us.chains.carried(repair.update).carries == ("eu",)


def test_a_regions_own_lost_items_come_back_by_diff(
    stores: tuple[crdtdb.Database, Path], certs: Path
) -> None:
    """us lost what its own record wrote: eu holds us#1, but never sends a region its own
    records (it would refuse them as forged), so us gets a diff and notes whose it is."""
    eu, us_dir = stores
    synced(eu, us_dir, certs)
    with crdtdb.open(us_dir) as us:
        us.put("u/1", {"by": "us"})
        SealedLink(started(eu, certs), started(us, certs)).settle()
        us.merkle_root()
    assert eu.get("u/1") == {"by": "us"}
    lose(us_dir, "us", ["u/1"], keep_log=True)
    with crdtdb.open(us_dir) as us:
        link = SealedLink(started(eu, certs), started(us, certs))
        link.settle()
        link.round()
        link.settle()
        assert us.get("u/1") == {"by": "us"}
        (repair,) = repairs(us)
        assert us.chains.carried(repair.update).carries == ("us",)
        assert link.a.anti_entropy.records_first.resent_records == 0


def test_many_lost_records_are_resent_a_bounded_batch_a_round(
    stores: tuple[crdtdb.Database, Path], certs: Path
) -> None:
    """Each record here is a run of its own, and goes in a message of its own
    (``large_bytes``): resending all 120 at once would overrun what the peer takes before
    it acknowledges (64 messages)."""
    eu, us_dir = stores
    sealer = started(eu, certs)
    for i in range(120):
        eu.put(f"m/{i}", {"i": i})
        sealer.seal_own()
    synced(eu, us_dir, certs)
    lose(us_dir, "eu", [f"m/{i}" for i in range(120)])
    with crdtdb.open(us_dir) as us:
        options = SessionOptions(large_bytes=16)
        link = SealedLink(started(eu, certs), started(us, certs), options)
        link.settle()
        rounds = 0
        while us.merkle_root() != eu.merkle_root() and rounds < 10:
            link.round()
            link.settle()
            rounds += 1
            assert link.open, [e for e in link.events if type(e).__name__ == "Closed"]
        assert us.merkle_root() == eu.merkle_root()
        assert rounds >= 4  # 32 messages a round
        assert [record_bytes(r) for r in us.records_from("eu", 0)] == [
            record_bytes(r) for r in eu.records_from("eu", 0)
        ]
        assert repairs(us) == []
