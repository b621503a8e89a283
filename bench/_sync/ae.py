"""Section 1, anti-entropy efficiency, in memory: two sans-IO sessions on the harness's
in-memory link, one round between stores that differ in 1% of N documents."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _harness import Link
from _report import log

import crdtdb
from crdtdb import Database
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.session import SyncSession

from .common import AE_TYPES, NOW, BenchError, Config, doc_name


class Unpushed:
    """A store as a session sees it, without its log: the round alone must repair.

    The record push would otherwise deliver the divergent edits before
    anti-entropy looks; in production anti-entropy repairs what the push
    missed, which is what is set up here.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def records_from(self, origin: str, after_seq: int, limit: int = 1000) -> list[UpdateRecord]:
        return []


def frames(data: bytes) -> Iterator[tuple[str, int]]:
    """(message type name, frame bytes) of each whole frame in ``data``."""
    pos = 0
    while pos < len(data):
        size = wire.HEADER_BYTES + int.from_bytes(data[pos + 4 : pos + 8], "big")
        yield wire.MESSAGE_TYPES[data[pos + 3]].__name__, size
        pos += size


class CountingLink(Link):
    """The harness's in-memory link (``tests/harness/link.py``), counting each flight's frames.

    Each transfer delivers what the dialer has to the listener, then the
    listener's answer back: so every listener flight answers the dialer's
    flight of the same transfer, and counts as one wait of the dialer (one
    round trip).
    """

    def __init__(self, dialer: Any, listener: Any) -> None:
        super().__init__(dialer, listener, now=NOW)
        self.bytes_by_type: Counter[str] = Counter()
        self.messages_by_type: Counter[str] = Counter()
        self.waits = 0
        self.flights = 0

    def sent(self, sender: SyncSession, lanes: list[tuple[int, bytes]]) -> None:
        ae = False
        for _, data in lanes:
            for kind, size in frames(data):
                self.bytes_by_type[kind] += size
                self.messages_by_type[kind] += 1
                ae = ae or kind in AE_TYPES
        self.flights += ae
        self.waits += ae and sender is self.b

    def reset(self) -> None:
        self.bytes_by_type.clear()
        self.messages_by_type.clear()
        self.waits = self.flights = 0


def make_replica_by_apply(source: Path, dest: Path, limit: int | None = None) -> float:
    """Region us made by ``apply_remote`` of each eu record (the alternative); returns records/s."""
    start, count = time.perf_counter(), 0
    with crdtdb.open(source) as src, crdtdb.open(dest, region="us") as db:
        for record in src.changes(limit=limit):
            db.apply_remote(record)
            count += 1
    return count / (time.perf_counter() - start)


def converge(eu: Database, us: Database) -> None:
    """Push and one round both ways until the stores are equal (setup, not measured)."""
    link = CountingLink(eu, us)
    link.settle()
    link.a.start_round(NOW)
    link.settle()
    if eu.merkle_root() != us.merkle_root():
        raise BenchError("setup: the two anti-entropy stores did not converge")


def diverge(eu: Database, us: Database, cfg: Config) -> dict[str, list[str]]:
    """Make ``divergent`` of the documents differ: changed in eu, in us, deletes only in each."""
    rng = random.Random(7)
    count = max(8, round(cfg.docs * cfg.divergent))
    chosen = [doc_name(i) for i in rng.sample(range(cfg.docs), count)]
    third = count * 3 // 10
    groups = {
        "changed in eu": chosen[:third],
        "changed in us": chosen[third : 2 * third],
        "deletes only in eu": chosen[2 * third : 2 * third + (count - 2 * third) // 2],
        "deletes only in us": chosen[2 * third + (count - 2 * third) // 2 :],
    }
    for name, ids in groups.items():
        db = eu if name.endswith("eu") else us
        with db.transaction() as tx:
            for j, doc_id in enumerate(ids):
                if name.startswith("changed"):
                    tx.doc(doc_id)["n"] = -j  # a new item: the state vector grows
                elif j % 2:
                    del tx.doc(doc_id)["tag"]  # a field delete: the state vector stays
                else:
                    tx.delete(doc_id)  # a whole-document delete: the state vector stays
    return groups


def encoded_size(kind: type[wire.Diffs], docs: list[tuple[str, bytes]]) -> int:
    """Wire bytes of ``docs`` sent as ``kind`` messages of at most 10,000 documents each."""
    step = 10_000
    return sum(len(wire.encode(kind(tuple(docs[i : i + step])))) for i in range(0, len(docs), step))


def bench_ae(cfg: Config, work: Path, replica: Path | None, out: dict[str, Any]) -> None:
    source = work / "eu"
    sample = min(cfg.docs, 2_000)
    rate = make_replica_by_apply(source, work / "apply-probe", limit=sample)
    log(f"  apply_remote of eu's records into a new region: {rate:,.0f} records/s")
    setup: dict[str, Any] = {"apply_remote_per_s": rate}
    if replica is None:  # no bootstrap in this run: make region us record by record
        replica = work / "us"
        start = time.perf_counter()
        make_replica_by_apply(source, replica)
        setup["replica"] = f"apply_remote of every eu record, {time.perf_counter() - start:.1f} s"
    else:
        setup["replica"] = "the bootstrap's region us (QUIC, section 4)"
    log(f"  region us: {setup['replica']}")
    with crdtdb.open(source) as eu, crdtdb.open(replica) as us:
        converge(eu, us)
        groups = diverge(eu, us, cfg)
        (
            eu.merkle_root(),
            us.merkle_root(),
        )  # digests of the edits: computed at commit time's next read
        # what the naive exchange sends once it has the state vectors: each side's
        # diff of every divergent document against the other's state vector
        naive_diffs = [
            (d, mine.diff(d, theirs.state_vector(d)))
            for ids in groups.values()
            for d in ids
            for mine, theirs in ((eu, us), (us, eu))
        ]
        link = CountingLink(Unpushed(eu), Unpushed(us))
        link.settle()  # handshake and frontier gossip: not part of the round
        link.reset()
        start = time.perf_counter()
        link.a.start_round(NOW)
        link.settle()
        seconds = time.perf_counter() - start
        equal = eu.merkle_root() == us.merkle_root()
        values_equal = all(
            json.dumps(eu.get(d), sort_keys=True) == json.dumps(us.get(d), sort_keys=True)
            for ids in groups.values()
            for d in ids
        )
        names = [doc_name(i) for i in range(cfg.docs)]
        state_vectors = [(d, eu.state_vector(d)) for d in names]
        full = [(d, eu.diff(d)) for d in names] + [(d, us.diff(d)) for d in names]
        rounds = (link.a.rounds, link.b.rounds)
    ae_bytes = sum(size for kind, size in link.bytes_by_type.items() if kind in AE_TYPES)
    naive = encoded_size(wire.Diffs, state_vectors) + encoded_size(wire.Diffs, naive_diffs)
    out["ae"] = {
        "setup": setup,
        "groups": {name: len(ids) for name, ids in groups.items()},
        "divergent": sum(len(ids) for ids in groups.values()),
        "bytes": ae_bytes,
        "bytes_by_type": dict(link.bytes_by_type),
        "messages_by_type": dict(link.messages_by_type),
        "round_trips": link.waits,
        "one_way_flights": link.flights,
        "seconds": seconds,
        "repaired": link.a.repairs + link.b.repairs,
        "rounds_finished": rounds,
        "roots_equal": equal,
        "values_equal": values_equal,
        "naive_bytes": naive,
        "full_bytes": encoded_size(wire.Diffs, full),
        "round_trip_limit": math.log(cfg.docs, 16) + 2,
    }
    log(
        f"  round: {ae_bytes:,} bytes, {link.waits} round trips, {seconds:.2f} s;"
        f" naive {naive:,} bytes; roots equal: {equal}"
    )
    if not (equal and values_equal):
        raise BenchError("anti-entropy: the stores differ after the round")
