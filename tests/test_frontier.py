"""The global frontier: below it every region holds every update."""

from __future__ import annotations

from pathlib import Path

import crdtdb
from crdtdb import Hlc

from .harness.link import Link


def _regions(tmp_path: Path) -> dict[str, crdtdb.Database]:
    dbs = {r: crdtdb.open(tmp_path / r, region=r) for r in ("eu", "us", "ap")}
    for db in dbs.values():
        db.expect_regions(["eu", "us", "ap"])
    return dbs


def _gossip(links: list[Link], rounds: int = 4) -> None:
    for _ in range(rounds):
        for link in links:
            link.a.local_changed()
            link.b.local_changed()
            link.advance(1.0)  # frontier reports are due every second
            link.settle()


def test_frontier_waits_for_every_region_then_passes_the_write(tmp_path: Path) -> None:
    dbs = _regions(tmp_path)
    assert all(db.frontier() == Hlc(0) for db in dbs.values())  # nobody has reported yet
    links = [Link(dbs["eu"], dbs["us"]), Link(dbs["us"], dbs["ap"])]  # a chain
    written = dbs["eu"].put("docs/a", {"v": 1})
    for db in dbs.values():
        db.heartbeat()
    _gossip(links)
    for name, db in dbs.items():
        assert db.frontier() >= written, name
        assert db.as_of(db.frontier()).get("docs/a") == {"v": 1}


def test_frontier_stays_below_a_record_a_region_lacks(tmp_path: Path) -> None:
    dbs = _regions(tmp_path)
    links = [Link(dbs["eu"], dbs["us"]), Link(dbs["us"], dbs["ap"])]
    _gossip(links)
    # ap writes while its link is down: nobody else has the record
    links = [links[0]]
    lonely = dbs["ap"].put("docs/b", {"v": 2})
    for db in dbs.values():
        db.heartbeat()
    _gossip(links)
    for name in ("eu", "us"):
        assert dbs[name].get("docs/b") is None
        assert dbs[name].frontier() < lonely, name
    # and compaction below the frontier cannot drop what ap still needs to hear about
    eu_before = dbs["eu"].info()["log_records"]
    dbs["eu"].compact(retention_s=0)
    assert dbs["eu"].compacted_hlc <= dbs["eu"].frontier() < lonely
    assert eu_before >= dbs["eu"].info()["log_records"]
    links.append(Link(dbs["us"], dbs["ap"]))
    for db in dbs.values():
        db.heartbeat()
    _gossip(links)
    for name, db in dbs.items():
        assert db.get("docs/b") == {"v": 2}, name
        assert db.frontier() >= lonely, name


def test_as_of_the_frontier_is_the_same_everywhere(tmp_path: Path) -> None:
    dbs = _regions(tmp_path)
    links = [Link(dbs["eu"], dbs["us"]), Link(dbs["us"], dbs["ap"]), Link(dbs["eu"], dbs["ap"])]
    for i in range(20):
        name = ("eu", "us", "ap")[i % 3]
        dbs[name].update(f"docs/{i % 4}", {name: i})
        if i % 5 == 0:
            _gossip(links, rounds=1)
    for db in dbs.values():
        db.heartbeat()
    _gossip(links, rounds=1)
    cut = min(db.frontier() for db in dbs.values())
    views = [{f"docs/{i}": db.as_of(cut).get(f"docs/{i}") for i in range(4)} for db in dbs.values()]
    assert views[0] == views[1] == views[2]
    assert any(v is not None for v in views[0].values())
