"""Section 5: a large document written in one region of three (a full mesh of ``crdtdb
serve`` daemons, with the defaults an operator gets): seconds until it is visible in each
other region, and bytes each region received for it (its metrics, summed over its peers),
against raw aioquic carrying the update's bytes one way on the same loopback link.

Targets (issue 14): visible at a peer within 2x raw aioquic's time, and at most 1.2x the
update's bytes received per region (a relay must not send what the receiver already has
from another peer).
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from _harness import daemon_status, free_ports, make_certs, wait_until, write_region_config
from _report import log

import crdtdb

from .bootstrap import quic_ceiling
from .common import POLL_S, Children, Config

REGIONS = ("eu", "us", "ap")
SIZE = 8 << 20
"""Characters of the document's one text field (8 MiB, as a new user tried it)."""
_BYTES = re.compile(r'^crdtdb_peer_(received|sent)_bytes_total\{peer="([^"]+)"\} (\S+)$', re.M)


def _traffic(port: int) -> dict[tuple[str, str], float]:
    """(received|sent, peer) -> bytes, from a daemon's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(kind, peer): float(value) for kind, peer, value in _BYTES.findall(text)}


def _quiet(metrics: dict[str, int]) -> bool:
    """Every byte sent has arrived (within what gossip adds between two reads)."""
    traffic = {name: _traffic(port) for name, port in metrics.items()}
    return all(
        abs(count - traffic[peer].get(("received", name), 0.0)) < 64 * 1024
        for name, counts in traffic.items()
        for (kind, peer), count in counts.items()
        if kind == "sent"
    )


def _text(size: int) -> str:
    """``size`` characters that do not repeat much."""
    return "".join(f"large-{i:07d} " for i in range(size // 14 + 1))[:size]


def large_run(work: Path, certs: Path) -> dict[str, Any]:
    """One run: three daemons, the document written in eu, seen in us and ap."""
    ports = free_ports(6)
    listen, metrics = (
        dict(zip(REGIONS, ports[:3], strict=True)),
        dict(zip(REGIONS, ports[3:], strict=True)),
    )
    configs = {
        region: write_region_config(
            work / f"large-{region}.toml",
            region=region,
            data_dir=work / f"large-{region}",
            port=listen[region],
            certs=certs,
            peers={p: f"127.0.0.1:{listen[p]}" for p in REGIONS if p != region},
            tables={"metrics": {"listen": f"127.0.0.1:{metrics[region]}"}},
        )
        for region in REGIONS
    }
    with Children(work) as children:
        for region in REGIONS:
            children.daemon(configs[region], region)
        for region in REGIONS:
            wait_until(
                lambda region=region: (
                    len(  # type: ignore[misc]
                        [p for p in _peers(work / f"large-{region}") if p.get("connected")]
                    )
                    == 2
                ),
                60,
                f"{region} connected to both peers",
                interval=POLL_S,
                check=children.check,
            )
        before = {region: _traffic(metrics[region]) for region in REGIONS}
        body = _text(SIZE)
        with crdtdb.open(work / "large-eu", region="eu") as eu:
            begun = time.perf_counter()
            eu.put("docs/large", {"body": body})
            committed = time.perf_counter()
            update_bytes = len(eu.diff("docs/large"))
        visible: dict[str, float] = {}
        readers = {r: crdtdb.open(work / f"large-{r}", region=r) for r in REGIONS[1:]}
        try:

            def seen() -> bool:
                for region, db in readers.items():
                    if region not in visible:
                        doc = db.get("docs/large")
                        if doc is not None and doc.get("body") == body:
                            visible[region] = time.perf_counter() - committed
                return len(visible) == len(readers)

            wait_until(seen, 300, "the large document in us and ap", interval=0.02)
        finally:
            for db in readers.values():
                db.close()
        wait_until(lambda: _quiet(metrics), 120, "every byte sent to arrive", interval=0.5)
        received = {
            region: sum(
                v - before[region].get(key, 0.0)
                for key, v in _traffic(metrics[region]).items()
                if key[0] == "received"
            )
            for region in REGIONS
        }
    return {
        "update_bytes": update_bytes,
        "commit_s": committed - begun,
        "visible_s": visible,
        "received_bytes": received,
    }


def _peers(data: Path) -> list[dict[str, Any]]:
    return list((daemon_status(data) or {}).get("peers") or [])


def bench_large(cfg: Config, work: Path, out: dict[str, Any]) -> None:
    """Fill ``out["large"]``: one run of the large document, and the raw aioquic ceiling
    for its bytes (median of ``cfg.repeats`` pushes)."""
    certs = make_certs(work / "certs-large", REGIONS)
    run = large_run(work, certs)
    mb = max(1, math.ceil(run["update_bytes"] / 1e6))
    raw = quic_ceiling(replace(cfg, ceiling_mb=mb), work, certs, cfg.repeats)
    seconds = sorted(t.seconds * run["update_bytes"] / (t.wire or 1) for t in raw)
    run["raw_aioquic_s"] = seconds[len(seconds) // 2]
    out["large"] = run
    worst = max(run["visible_s"].values())
    log(
        f"  large document: {run['update_bytes'] / 1e6:.1f} MB, committed in"
        f" {run['commit_s']:.2f} s, visible in {worst:.2f} s (raw aioquic"
        f" {run['raw_aioquic_s']:.3f} s)"
    )


def large_report(large: dict[str, Any], checks: list[Any]) -> list[str]:
    """The section's table, and its two targets appended to ``checks``."""
    from _report import table

    from .report import Check  # here: report imports this module

    update, raw = large["update_bytes"], large["raw_aioquic_s"]
    rows = [
        [
            region,
            f"{large['visible_s'][region]:.2f}" if region in large["visible_s"] else "writer",
            f"{large['visible_s'][region] / raw:.1f}x" if region in large["visible_s"] else "-",
            f"{large['received_bytes'][region] / 1e6:.1f}",
            f"{large['received_bytes'][region] / update:.2f}x",
        ]
        for region in REGIONS
    ]
    lines = [
        f"5. large document: {update / 1e6:.1f} MB update written in eu (committed in"
        f" {large['commit_s']:.2f} s); raw aioquic carries its bytes in {raw:.3f} s",
        table(["region", "visible s", "vs raw", "received MB", "vs update"], rows),
    ]
    worst = max(large["visible_s"].values()) / raw
    most = max(large["received_bytes"][r] for r in REGIONS[1:]) / update
    checks += [
        Check("large doc visible <= 2x raw aioquic", worst, 2.0, f"{worst:.1f}x", worst <= 2),
        Check("large doc bytes per region <= 1.2x", most, 1.2, f"{most:.2f}x", most <= 1.2),
    ]
    return lines
