"""A removed region's late records, end to end: real daemons on loopback.

ap is removed at eu while the eu-us link is cut, so us has not heard of it;
ap (not knowing either) writes on, and us takes that record. When the link
heals, eu refuses the record with ``retired_key`` (logged, with the HLC of
the removal), us learns of the removal and stops relaying it, and eu and us
go on replicating: the refusal costs no partition.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtdb import Hlc, membership

from .cluster import Cluster, Lab, lab
from .harness.wait import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


@pytest.fixture
def cluster_lab(tmp_path: Path) -> Iterator[Lab]:
    with lab(tmp_path) as made:
        yield made


def removed_in(cluster: Cluster, name: str) -> bool:
    found = membership.read(cluster.db(name))
    return found is not None and found.state("ap") == "removed"


def test_late_records_of_a_removed_region_are_refused_with_a_logged_reason(
    cluster_lab: Lab,
) -> None:
    # ap - us - eu, a chain (ap and eu never talk), the us-eu pair through a proxy.
    with cluster_lab.cluster(("ap", "eu", "us"), links=[("ap", "us"), ("eu", "us")]) as cluster:
        for region in cluster.regions.values():
            region.tables = {"cluster": {"dial_members": False}}
        link = cluster.route("eu", "us")
        cluster.start()
        cluster.wait_ready(timeout=TIMEOUT)
        for i in range(3):
            cluster.db("ap").put(f"notes/ap-{i}", {"n": i})
        wait_until(lambda: cluster.db("eu").get("notes/ap-2") is not None, TIMEOUT, "ap in eu")
        link.partition()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "crdtdb",
                "cluster",
                "remove",
                str(cluster.regions["eu"].data_dir),
                "ap",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        removal = json.loads(done.stdout)
        at = Hlc.parse(removal["hlc"])
        wait_until(lambda: time.time() * 1000 > at.wall_ms + 5, TIMEOUT, "the removal to pass")
        cluster.db("ap").put("notes/late", {"n": 99})  # ap has not heard: taken
        wait_until(
            lambda: cluster.db("us").get("notes/late") is not None,
            TIMEOUT,
            "us (which has not heard either) to take ap's late record",
        )
        assert not removed_in(cluster, "us")
        link.heal()
        eu_log = cluster.regions["eu"].log
        wait_until(
            lambda: "retired_key" in eu_log.read_text(errors="replace"),
            TIMEOUT,
            "eu to refuse ap's late record, relayed by us, as retired_key",
        )
        text = eu_log.read_text(errors="replace")
        assert "which the cluster membership retired at HLC" in text
        assert "relayed by us" in text
        wait_until(lambda: removed_in(cluster, "us"), TIMEOUT, "us to learn of the removal")
        assert cluster.db("eu").get("notes/late") is None
        assert cluster.db("eu").progress()["ap"][1] == removal["final_seq"]
        # The pair goes on: new writes flow both ways, and no refusal follows (us no
        # longer relays the late record, so eu no longer closes the session over it).
        refusals = eu_log.read_text(errors="replace").count("retired_key")
        for n in range(2):
            cluster.db("eu").put(f"notes/eu-{n}", {"n": n})
            wait_until(
                lambda n=n: cluster.db("us").get(f"notes/eu-{n}") is not None,  # type: ignore[misc]
                TIMEOUT,
                "eu's write in us",
            )
            cluster.db("us").put(f"notes/us-{n}", {"n": n})
            wait_until(
                lambda n=n: cluster.db("eu").get(f"notes/us-{n}") is not None,  # type: ignore[misc]
                TIMEOUT,
                "us's write in eu",
            )
        assert eu_log.read_text(errors="replace").count("retired_key") == refusals
        assert cluster.db("eu").get("notes/late") is None
