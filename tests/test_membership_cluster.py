"""Membership end to end: real daemons on loopback, changed with the ``crdtdb cluster`` command.

- A region with a CA-signed certificate that no member added is refused in
  both logs, none of its data gets in, and the frontier keeps moving (the
  finding: it used to freeze for ever once such a region had connected).
- With ``auto_join`` it is admitted (joining, then active); while it is away
  the frontier waits for it, and removing it lets the frontier move again.
- Without it, an operator admits it with ``crdtdb cluster add`` while it keeps
  dialling: no daemon restarts, it converges, and ``cluster list`` shows it.
- Decommission under load: a region is removed while the others write;
  their frontier passes it, compaction runs, ``as_of(frontier)`` answers the
  same in every remaining region, and the removed region is refused when it
  comes back.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtdb import Hlc, membership

from .cluster import Cluster, Lab, lab
from .harness.wait import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
MEMBERS = ("ap", "eu", "us")
LINKS = [("ap", "eu"), ("ap", "us"), ("eu", "us")]


@pytest.fixture
def cluster_lab(tmp_path: Path) -> Iterator[Lab]:
    with lab(tmp_path) as made:
        yield made


def crdtdb_cli(*args: str) -> dict[str, Any]:
    """Run the ``crdtdb`` command; its one JSON line of output."""
    done = subprocess.run(
        [sys.executable, "-m", "crdtdb", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def cluster_list(data_dir: Path) -> list[dict[str, Any]]:
    """``crdtdb cluster list DIR --json``: one row per member."""
    done = subprocess.run(
        [sys.executable, "-m", "crdtdb", "cluster", "list", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def is_age(value: object) -> bool:
    """A number of seconds that ``cluster list`` may show as an age: 0 up to the test's
    timeout (no bool, no None)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < TIMEOUT


def pid_of(cluster: Cluster, region: str) -> int:
    child = cluster.regions[region].child
    assert child is not None, f"{region} was never started"
    return child.pid


def logged(cluster: Cluster, region: str, text: str) -> bool:
    return text in cluster.regions[region].log.read_text(errors="replace")


def state_in(cluster: Cluster, region: str, of: str) -> str | None:
    found = membership.read(cluster.db(region))
    return found.state(of) if found else None


def with_outsider(cluster_lab: Lab, **cluster_table: object) -> Cluster:
    """eu, us and ap peer with each other; af lists them all, but none lists af."""
    cluster = cluster_lab.cluster((*MEMBERS, "af"), links=LINKS)
    cluster.regions["af"].peers = list(MEMBERS)
    if cluster_table:
        for name in cluster.regions:
            cluster.regions[name].tables = {"cluster": dict(cluster_table)}
    return cluster


def frontiers_pass(cluster: Cluster, names: tuple[str, ...], hlc: Hlc) -> bool:
    return all(cluster.db(name).frontier() > hlc for name in names)


def test_a_region_that_is_not_a_member_is_refused_and_holds_nobody_back(
    cluster_lab: Lab,
) -> None:
    with with_outsider(cluster_lab) as cluster:
        cluster.start(*MEMBERS)
        cluster.wait_ready(*MEMBERS, timeout=TIMEOUT)
        cluster.db("af").put("notes/af", {"text": "from a region nobody added"})
        cluster.close_db("af")
        cluster.start("af")
        # Refused in both logs, with the command that would admit it.
        wait_until(
            lambda: all(logged(cluster, r, "not_a_member") for r in ("af", *MEMBERS)),
            TIMEOUT,
            "af and every member to log the not_a_member refusal",
        )
        assert logged(cluster, "af", "crdtdb cluster add DIR af")
        cluster.terminate("af")
        af_clock = cluster.db("af").hlc
        wait_until(
            lambda: frontiers_pass(cluster, MEMBERS, af_clock),
            TIMEOUT,
            "the frontier to move past the moment af left",
        )
        for name in MEMBERS:
            db = cluster.db(name)
            assert db.get("notes/af") is None  # nothing of af got in
            assert "af" not in db.progress()
            assert state_in(cluster, name, "af") is None
        # And after restarting the whole cluster, too.
        for name in MEMBERS:
            cluster.restart(name)
        cluster.wait_ready(*MEMBERS, timeout=TIMEOUT)
        now = max(cluster.db(name).hlc for name in MEMBERS)
        wait_until(lambda: frontiers_pass(cluster, MEMBERS, now), TIMEOUT, "the frontier to move")


def test_auto_join_admits_a_region_and_removing_it_frees_the_frontier(cluster_lab: Lab) -> None:
    with with_outsider(cluster_lab, auto_join=True) as cluster:
        cluster.start(*MEMBERS)
        cluster.wait_ready(*MEMBERS, timeout=TIMEOUT)
        cluster.db("af").put("notes/af", {"text": "from af"})
        cluster.close_db("af")
        cluster.start("af")
        cluster.wait_ready("af", timeout=TIMEOUT)
        wait_until(
            lambda: all(state_in(cluster, r, "af") == "active" for r in MEMBERS),
            TIMEOUT,
            "af to be an active member everywhere",
        )
        assert logged(cluster, "eu", "admitting af as joining") or logged(
            cluster, "us", "admitting af as joining"
        )
        wait_until(
            lambda: all(cluster.db(r).get("notes/af") is not None for r in MEMBERS),
            TIMEOUT,
            "af's document everywhere",
        )
        cluster.terminate("af")
        af_clock = cluster.db("af").hlc
        cluster.close_db("af")
        # af is a member: while it is away, the frontier waits for it...
        wait_until(
            lambda: all(cluster.db(r).hlc.wall_ms > af_clock.wall_ms + 2000 for r in MEMBERS),
            TIMEOUT,
            "the members' clocks to move on",
        )
        assert all(cluster.db(r).frontier() <= af_clock for r in MEMBERS)
        # ...until it is removed.
        removed = crdtdb_cli("cluster", "remove", str(cluster.regions["us"].data_dir), "af")
        assert removed["state"] == "removed"
        wait_until(
            lambda: frontiers_pass(cluster, MEMBERS, af_clock),
            TIMEOUT,
            "the frontier to move past af once removed",
        )
        # af comes back: refused, in its log and the members'.
        cluster.start("af")
        wait_until(
            lambda: (
                logged(cluster, "af", "peer closed: removed")
                and any(
                    logged(cluster, r, "closed: removed: region af was removed") for r in MEMBERS
                )
            ),
            TIMEOUT,
            "af to be refused as removed",
        )


def test_an_operator_admits_a_refused_region_with_cluster_add(cluster_lab: Lab) -> None:
    """eu and us peer statically; af lists them, but no member added it and nobody has
    auto_join. af is refused both ways and nothing crosses; ``crdtdb cluster add`` on eu
    admits it while every daemon keeps running (af keeps dialling)."""
    members = ("eu", "us")
    with cluster_lab.cluster(("af", *members), links=[("eu", "us")]) as cluster:
        cluster.regions["af"].peers = list(members)  # af sorts first: it dials both
        cluster.start(*members)
        cluster.wait_ready(*members, timeout=TIMEOUT)
        written: dict[str, Any] = {}
        for name in members:
            for i in range(3):
                doc_id, body = f"notes/{name}-{i}", {"by": name, "n": i}
                cluster.db(name).put(doc_id, body)
                written[doc_id] = body
        wait_until(
            lambda: cluster.db("eu").merkle_root() == cluster.db("us").merkle_root(),
            TIMEOUT,
            "eu and us to converge",
        )
        cluster.db("af").put("notes/af", {"text": "written before it was added"})
        cluster.close_db("af")
        pids = {r: pid_of(cluster, r) for r in members}
        cluster.start("af")

        # 1. Refused in both logs (with the command that admits it); nothing crosses.
        wait_until(
            lambda: all(logged(cluster, r, "not_a_member") for r in ("af", *members)),
            TIMEOUT,
            "af, eu and us to log the not_a_member refusal",
        )
        assert logged(cluster, "eu", "crdtdb cluster add DIR af --address HOST:PORT")

        def af_status() -> dict[str, Any] | None:
            status = cluster.regions["af"].status()
            return status if status is not None and status["pid"] == pid_of(cluster, "af") else None

        status = wait_until(af_status, TIMEOUT, "af to report its status")
        assert [p["region"] for p in status["peers"] if p["connected"]] == []
        af = cluster.db("af")
        assert all(af.get(doc_id) is None for doc_id in written)  # none of theirs got in
        assert not set(af.progress()) & set(members)
        for name in members:
            db = cluster.db(name)
            assert db.get("notes/af") is None  # nothing of af got in
            assert "af" not in db.progress()
            assert state_in(cluster, name, "af") is None
        assert state_in(cluster, "af", "af") == "joining"  # it does not claim to be active

        # 2. The operator admits it on eu, with the real command.
        address = f"127.0.0.1:{cluster.regions['af'].port}"
        added_at = time.time()
        added = crdtdb_cli(
            "cluster", "add", str(cluster.regions["eu"].data_dir), "af", "--address", address
        )
        assert added == {"region": "af", "state": "joining", "address": address}

        # 3. Admitted with no restart: joining (maybe too briefly to see), then active.
        seen: list[str | None] = []

        def active_everywhere() -> bool:
            state = state_in(cluster, "eu", "af")
            if not seen or seen[-1] != state:
                seen.append(state)
            return all(state_in(cluster, r, "af") == "active" for r in members)

        wait_until(active_everywhere, TIMEOUT, "af to turn active in eu and us")
        assert seen in (["joining", "active"], ["active"]), seen
        for name in members:
            found = membership.read(cluster.db(name))
            assert found is not None
            changes = {(c.state, c.by) for c in found.members["af"].changes}
            assert ("joining", "eu") in changes, changes  # the add, kept in the history
            added_hlc = min(c.hlc for c in found.members["af"].changes if c.by == "eu")
            activated = [c.hlc for c in found.members["af"].changes if c.state == "active"]
            assert activated and min(activated) > added_hlc, changes  # active only once added
            assert found.members["af"].address == address
        assert {r: pid_of(cluster, r) for r in members} == pids  # same daemons, never restarted
        assert all(cluster.regions[r].starts == 1 for r in members)
        wait_until(
            lambda: len({cluster.db(r).merkle_root() for r in ("af", *members)}) == 1,
            TIMEOUT,
            "af, eu and us to converge",
        )
        assert {doc_id: af.get(doc_id) for doc_id in written} == written
        assert cluster.db("eu").get("notes/af") == {"text": "written before it was added"}
        af.put("notes/af-admitted", {"text": "written once admitted"})
        wait_until(
            lambda: cluster.db("eu").get("notes/af-admitted") == {"text": "written once admitted"},
            TIMEOUT,
            "af's new write to reach eu",
        )

        # 4. ``cluster list`` on eu shows it, its address, its last contact and frontier age.
        def listed() -> dict[str, Any] | None:
            rows = {r["region"]: r for r in cluster_list(cluster.regions["eu"].data_dir)}
            row = rows.get("af")
            known = row is not None and None not in (row["last_contact"], row["freshness_s"])
            return rows if known else None

        rows = wait_until(listed, TIMEOUT, "eu's list to show af's last contact and frontier age")
        assert set(rows) == {"af", "eu", "us"}
        row = rows["af"]
        assert (row["state"], row["address"]) == ("active", address)
        assert {"state": "joining", "by": "eu"} in [
            {"state": c["state"], "by": c["by"]} for c in row["changes"]
        ]
        assert added_at <= row["last_contact"] <= time.time()  # heard from since the add
        assert is_age(row["freshness_s"]), row


def test_decommission_under_load(cluster_lab: Lab) -> None:
    """ap is stopped and removed while eu and us write; ap is refused when it returns."""
    remaining = ("eu", "us")
    with cluster_lab.cluster(MEMBERS) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        ids: list[str] = []
        for name in MEMBERS:
            for i in range(5):
                cluster.db(name).put(f"docs/{name}-{i}", {"n": i, "by": name})
                ids.append(f"docs/{name}-{i}")
        cluster.wait_converged(ids, timeout=TIMEOUT)
        cluster.terminate("ap")
        counter = itertools.count()

        def write() -> None:
            n = next(counter)
            for name in remaining:
                doc_id = f"load/{name}-{n % 7}"
                cluster.db(name).update(doc_id, {name: n})
                if doc_id not in ids:
                    ids.append(doc_id)

        for _ in range(20):
            write()
        removed = crdtdb_cli("cluster", "remove", str(cluster.regions["eu"].data_dir), "ap")
        at = Hlc.parse(removed["hlc"])

        def passed() -> bool:
            write()  # the others keep writing while we wait
            return frontiers_pass(cluster, remaining, at)

        wait_until(passed, TIMEOUT, "the remaining regions' frontier to pass the removal")
        wait_until(
            lambda: cluster.db("eu").merkle_root() == cluster.db("us").merkle_root(),
            TIMEOUT,
            "eu and us to converge",
        )
        folded = {name: cluster.db(name).compact(retention_s=0) for name in remaining}
        assert all(count > 0 for count in folded.values()), folded
        horizon = max(cluster.db(name).compacted_hlc for name in remaining)
        wait_until(
            lambda: min(cluster.db(n).frontier() for n in remaining) >= horizon,
            TIMEOUT,
            "a frontier at or past both compaction horizons",
        )
        cut = min(cluster.db(name).frontier() for name in remaining)
        answers = [
            {doc_id: cluster.db(name).as_of(cut).get(doc_id) for doc_id in ids}
            for name in remaining
        ]
        assert answers[0] == answers[1]
        assert answers[0]["docs/ap-4"] == {"n": 4, "by": "ap"}  # ap's records are kept
        # ap comes back: it dials eu and us (its name sorts first); both refuse it.
        cluster.start("ap")
        wait_until(
            lambda: (
                logged(cluster, "ap", "peer closed: removed")
                and all(logged(cluster, r, "region ap was removed") for r in remaining)
            ),
            TIMEOUT,
            "ap to be refused as removed",
        )
        assert state_in(cluster, "eu", "ap") == state_in(cluster, "us", "ap") == "removed"

        # and its clock no longer counts for the fence, nor shows in status
        def clock_peers(name: str) -> set[str]:
            status = cluster.regions[name].status()
            return set(status["clock"]["peers"]) if status is not None else {"?"}

        wait_until(
            lambda: clock_peers("eu") == {"us"} and clock_peers("us") == {"eu"},
            10.0,  # well before an unheard peer's samples age out (30 s)
            "eu's and us's status to drop ap's clock (and keep each other's)",
        )


def test_cluster_list_shows_members_and_last_contact(cluster_lab: Lab) -> None:
    with cluster_lab.cluster(("eu", "us")) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        data_dir = cluster.regions["eu"].data_dir

        def listed() -> bool:
            rows = cluster_list(data_dir)
            states = {r["region"]: r["state"] for r in rows}
            # a member's frontier clock is known once it has gossiped one
            clocked = all(r["freshness_s"] is not None for r in rows)
            return states == {"eu": "active", "us": "active"} and clocked

        wait_until(listed, TIMEOUT, "both regions listed as active, with their frontier ages")
        rows = {r["region"]: r for r in cluster_list(data_dir)}
        assert rows["us"]["address"] == f"127.0.0.1:{cluster.regions['us'].port}"
        assert rows["us"]["last_contact"] is not None
        assert is_age(rows["us"]["freshness_s"]) and is_age(rows["eu"]["freshness_s"]), rows
        assert rows["us"]["fingerprint"] and len(rows["us"]["fingerprint"]) == 64
        status = cluster.regions["eu"].status()
        assert status is not None
        assert {m["region"] for m in status["members"]} == {"eu", "us"}


def test_a_rotated_certificate_retires_the_old_one(cluster_lab: Lab) -> None:
    """us restarts with a new key and certificate; its old ones are refused from then on."""
    from crdtdb.sync.cluster import fingerprint

    def fingerprint_at(region: str, of: str) -> str | None:
        found = membership.read(cluster.db(region))
        member = found.members.get(of) if found else None
        return member.fingerprint if member else None

    with cluster_lab.cluster(("eu", "us")) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        certs = cluster.root / "certs"
        old = {name: (certs / name).read_bytes() for name in ("us.pem", "us.key")}
        wait_until(
            lambda: fingerprint_at("eu", "us") == fingerprint(old["us.pem"]),
            TIMEOUT,
            "eu to learn us's certificate",
        )
        cluster.terminate("us")
        done = subprocess.run(
            [sys.executable, "-m", "crdtdb", "certs", "issue", str(certs), "us", "--force"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        new = fingerprint((certs / "us.pem").read_bytes())
        cluster.start("us")
        cluster.wait_ready(timeout=TIMEOUT)  # no downtime beyond the restart
        wait_until(lambda: fingerprint_at("eu", "us") == new, TIMEOUT, "eu to learn the new one")
        cluster.terminate("us")
        for name, data in old.items():  # the old key and certificate come back
            (certs / name).write_bytes(data)
        cluster.start("us")
        wait_until(
            lambda: (
                logged(cluster, "eu", "closed: retired_certificate")
                and logged(cluster, "us", "peer closed: retired_certificate")
            ),
            TIMEOUT,
            "the old certificate to be refused in both logs",
        )
        assert logged(cluster, "us", "was replaced by a newer one")


def test_regions_joining_through_one_seed_each_connect_every_pair(cluster_lab: Lab) -> None:
    """No [[peers]] at all: ap names eu as its seed, eu names us, us names ap; af joins
    later through us. Every pair ends up connected, and everything converges."""
    seed_of = {"ap": "eu", "eu": "us", "us": "ap", "af": "us"}
    with cluster_lab.cluster((*MEMBERS, "af"), links=[]) as cluster:
        for name, seed in seed_of.items():
            address = f"127.0.0.1:{cluster.regions[seed].port}"
            cluster.regions[name].tables = {"cluster": {"auto_join": True, "seeds": [address]}}

        def connected(names: tuple[str, ...]) -> bool:
            return all(
                cluster.ready(name, [other for other in names if other != name]) for name in names
            )

        def converged(names: tuple[str, ...]) -> bool:
            return len({cluster.db(name).merkle_root() for name in names}) == 1

        cluster.start(*MEMBERS)
        wait_until(lambda: connected(MEMBERS), TIMEOUT, "every pair of ap, eu, us connected")
        for name in MEMBERS:
            cluster.db(name).put(f"notes/{name}", {"from": name})
        wait_until(lambda: converged(MEMBERS), TIMEOUT, "ap, eu and us to converge")
        wait_until(
            lambda: all(state_in(cluster, n, m) == "active" for n in MEMBERS for m in MEMBERS),
            TIMEOUT,
            "ap, eu and us active everywhere",
        )
        cluster.start("af")
        everyone = (*MEMBERS, "af")
        wait_until(lambda: connected(everyone), TIMEOUT, "af connected to every region")
        wait_until(lambda: converged(everyone), TIMEOUT, "af to catch up")
        assert cluster.db("af").get("notes/ap") == {"from": "ap"}
        wait_until(
            lambda: all(state_in(cluster, n, "af") == "active" for n in everyone),
            TIMEOUT,
            "af active everywhere",
        )

        # One connection per pair: once settled, no seed dial keeps replacing it.
        def connects(name: str) -> int:
            return cluster.regions[name].log.read_text(errors="replace").count("connected to")

        before = {name: connects(name) for name in everyone}
        start = max(cluster.db(name).hlc for name in everyone)
        wait_until(
            lambda: all(cluster.db(n).hlc.wall_ms > start.wall_ms + 3000 for n in everyone),
            TIMEOUT,
            "three seconds of the cluster's clocks",
        )
        assert {name: connects(name) for name in everyone} == before
        assert connected(everyone)


def test_static_regions_dial_a_member_that_joined_through_a_seed(cluster_lab: Lab) -> None:
    """ap and eu list only each other ([[peers]]); us joins through ap as its seed. eu sorts
    before us, so eu dials us (a static config dials learned members too); once us is
    removed, nobody dials it any more."""
    with cluster_lab.cluster(("ap", "eu", "us"), links=[("ap", "eu")]) as cluster:
        for name in ("ap", "eu"):
            cluster.regions[name].tables = {"cluster": {"auto_join": True}}
        seed = f"127.0.0.1:{cluster.regions['ap'].port}"
        cluster.regions["us"].tables = {"cluster": {"seeds": [seed]}}
        cluster.start("ap", "eu")
        cluster.wait_ready("ap", "eu", timeout=TIMEOUT)
        cluster.start("us")
        wait_until(
            lambda: cluster.ready("eu", ["ap", "us"]) and cluster.ready("us", ["ap", "eu"]),
            TIMEOUT,
            "eu (static) to dial us, which it learned from the membership",
        )
        assert logged(cluster, "eu", "connected to us")
        cluster.db("eu").put("notes/eu", {"from": "eu"})
        cluster.db("us").put("notes/us", {"from": "us"})
        wait_until(
            lambda: len({cluster.db(n).merkle_root() for n in ("ap", "eu", "us")}) == 1,
            TIMEOUT,
            "ap, eu and us to converge",
        )
        assert cluster.db("us").get("notes/eu") == {"from": "eu"}
        # Removed: eu neither dials it nor keeps it in its status.
        cluster.terminate("us")
        crdtdb_cli("cluster", "remove", str(cluster.regions["ap"].data_dir), "us")
        wait_until(
            lambda: state_in(cluster, "eu", "us") == "removed",
            TIMEOUT,
            "eu to learn that us was removed",
        )

        def forgotten() -> bool:
            status = cluster.regions["eu"].status()
            return status is not None and "us" not in {p["region"] for p in status["peers"]}

        wait_until(forgotten, TIMEOUT, "eu to stop dialling us")


def test_a_region_that_leaves_is_drained_then_removed(cluster_lab: Lab) -> None:
    """ap leaves (``crdtdb cluster leave`` on its own directory, its daemon running): it
    refuses writes at once; eu and us remove it once they hold every record it wrote."""
    with cluster_lab.cluster(MEMBERS) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        for i in range(20):
            cluster.db("ap").put(f"docs/ap-{i}", {"n": i})
        ap_dir = str(cluster.regions["ap"].data_dir)
        left = crdtdb_cli("cluster", "leave", ap_dir)
        assert left["state"] == "leaving"
        final_seq = left["final_seq"]
        assert final_seq == cluster.db("ap").progress()["ap"][1] >= 21
        done = subprocess.run(
            [sys.executable, "-m", "crdtdb", "put", ap_dir, "docs/late", "{}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and done.stderr.startswith("error: ")
        # (ap may already have heard that it was removed: the drain is quick)
        assert re.search(
            r"refused local write: region ap (is leaving|was removed from)", done.stderr
        )
        assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
        remaining = ("eu", "us")
        wait_until(
            lambda: all(state_in(cluster, r, "ap") == "removed" for r in remaining),
            TIMEOUT,
            "eu and us to remove ap once drained",
        )
        assert any(logged(cluster, r, "removed ap from the cluster: it left") for r in remaining)
        for name in remaining:
            db = cluster.db(name)
            found = membership.read(db)
            assert found is not None and found.members["ap"].final_seq >= final_seq
            assert db.progress()["ap"][1] >= final_seq  # nothing ap wrote was left behind
            assert db.get("docs/ap-19") == {"n": 19}
        now = max(cluster.db(name).hlc for name in remaining)
        wait_until(
            lambda: frontiers_pass(cluster, remaining, now),
            TIMEOUT,
            "the frontier to move on without ap",
        )
