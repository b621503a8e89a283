"""A large document written in one region reaches the others about once each.

Three real ``crdtdb serve`` daemons in a full mesh, with their metrics
endpoints on: an 8 MiB document written in eu must become visible in us and
ap, and each region must have received at most 1.2x the document's update
bytes, summed over its peers (``crdtdb_peer_received_bytes_total``). Without
the lazy relay (:mod:`crdtdb.sync.relay`) us and ap each relay eu's record to
the other (2x). Without the round rule a round started while the record was
still on its way sent the document again as a diff (8x once); since
records-first repairs (:mod:`crdtdb.sync.resend`) a round leaves a document
whose records are coming alone anyway, so that rule is pinned by the
in-memory tests of ``tests/test_relay.py``. A chain A-B-C (A and C not
peering) with the same document still converges: the relay happens when
nobody else serves the region.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, Lab, lab
from .harness.ports import free_ports
from .harness.wait import wait_until

pytestmark = pytest.mark.integration

REGIONS = ("eu", "us", "ap")
TIMEOUT = 120.0  # an 8 MiB document on a loaded two-core machine
SIZE = 8 << 20
ALLOWED = 1.2
GOSSIP_SLACK = 64 * 1024
_RECEIVED = re.compile(r'^crdtdb_peer_received_bytes_total\{peer="([^"]+)"\} (\S+)$', re.M)


@pytest.fixture
def cluster_lab(tmp_path: Path) -> Iterator[Lab]:
    with lab(tmp_path) as made:
        yield made


def with_metrics(cluster: Cluster) -> dict[str, int]:
    """Serve each region's metrics on a free port; region -> port."""
    ports = dict(zip(cluster.regions, free_ports(len(cluster.regions)), strict=True))
    for name, port in ports.items():
        cluster.regions[name].tables = {"metrics": {"listen": f"127.0.0.1:{port}"}}
    return ports


def peer_bytes(port: int, direction: str) -> dict[str, float]:
    """Per peer, bytes ``received`` from it or ``sent`` to it, per the metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^crdtdb_peer_{direction}_bytes_total\{{peer="([^"]+)"\}} (\S+)$'
    return {peer: float(value) for peer, value in re.findall(pattern, text, re.M)}


def received_bytes(port: int) -> float:
    """Bytes this region received from all its peers."""
    return sum(peer_bytes(port, "received").values())


def quiet(ports: dict[str, int]) -> bool:
    """Nothing sent is still on its way: every pair's sent and received counts agree
    (within what gossip adds between two reads of the metrics)."""
    sent = {name: peer_bytes(port, "sent") for name, port in ports.items()}
    got = {name: peer_bytes(port, "received") for name, port in ports.items()}
    return all(
        abs(count - got[peer].get(name, 0.0)) < GOSSIP_SLACK
        for name, counts in sent.items()
        for peer, count in counts.items()
    )


def wait_counted(port: int, before: float, size: int) -> float:
    """Wait until the region's metrics count at least ``size`` bytes received since
    ``before``; return the count. A region holding the document has received its
    bytes, but its daemon reports a session's traffic to the metrics once a second
    (and later on a loaded machine), so :func:`quiet` can hold, within its gossip
    slack, a moment before the last of them are counted."""
    wait_until(
        lambda: received_bytes(port) - before >= size,
        TIMEOUT,
        f"the metrics to count the {size} bytes of the update as received",
        interval=0.5,
    )
    return received_bytes(port) - before


def big_text(seed: str) -> str:
    """SIZE characters that do not repeat much (no compression anywhere helps)."""
    line = "".join(f"{seed}-{i:07d} " for i in range(SIZE // 12 + 1))
    return line[:SIZE]


def holds(cluster: Cluster, region: str, doc_id: str, body: str) -> bool:
    doc = cluster.db(region).get(doc_id)
    return doc is not None and doc.get("body") == body


def write_and_wait(cluster: Cluster, writer: str, readers: tuple[str, ...]) -> int:
    """Write the large document in ``writer``; wait until every reader holds it.
    Returns the update's size in bytes (the record as stored)."""
    body = big_text(writer)
    cluster.db(writer).put("docs/big", {"body": body})
    for region in readers:
        wait_until(
            lambda region=region: holds(cluster, region, "docs/big", body),  # type: ignore[misc]
            TIMEOUT,
            f"the 8 MiB document in {region}",
            interval=0.2,
        )
    return len(cluster.db(writer).diff("docs/big"))


def test_a_large_document_reaches_each_region_about_once(cluster_lab: Lab) -> None:
    with cluster_lab.cluster(REGIONS) as cluster:
        ports = with_metrics(cluster)
        cluster.start()
        cluster.wait_ready(timeout=60)
        before = {name: received_bytes(port) for name, port in ports.items()}
        size = write_and_wait(cluster, "eu", ("us", "ap"))
        assert size > SIZE // 2  # the update carries the text
        cluster.wait_converged(["docs/big"], timeout=TIMEOUT)
        for name in ("us", "ap"):  # it did come over the wire, and is counted
            wait_counted(ports[name], before[name], size)
        # Whatever else was sent (a relay, a round's diff) must land and be counted.
        wait_until(lambda: quiet(ports), TIMEOUT, "every byte sent to arrive", interval=0.5)
        for name in ("us", "ap"):
            got = received_bytes(ports[name]) - before[name]
            assert got <= ALLOWED * size, (
                f"{name} received {got / 1e6:.1f} MB for a {size / 1e6:.1f} MB update"
            )


def test_a_large_document_is_relayed_along_a_chain(cluster_lab: Lab) -> None:
    with cluster_lab.cluster(REGIONS, links=[("eu", "us"), ("us", "ap")]) as cluster:
        ports = with_metrics(cluster)
        cluster.start()
        cluster.wait_ready(timeout=60)
        before = received_bytes(ports["ap"])
        size = write_and_wait(cluster, "eu", ("us", "ap"))  # ap only through us
        cluster.wait_converged(["docs/big"], timeout=TIMEOUT)
        assert wait_counted(ports["ap"], before, size) >= size  # relayed through us
