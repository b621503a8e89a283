"""The sync benchmark's plain-text report, and the targets of the issue it checks."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _report import table, verdict

from .bootstrap import CEILING_RUNS, Transfer
from .common import AE_TYPES, Config
from .large import large_report
from .rate import BacklogRun, RateRun


@dataclass(frozen=True, slots=True)
class Check:
    """One target of the issue: what was measured against the threshold."""

    name: str
    value: float
    threshold: float
    shown: str
    met: bool


def ae_report(ae: dict[str, Any], cfg: Config, checks: list[Check]) -> list[str]:
    groups = ", ".join(f"{n} {name}" for name, n in ae["groups"].items())
    naive, full, mine = ae["naive_bytes"], ae["full_bytes"], ae["bytes"]
    rows = [
        [
            "crdtdb anti-entropy round",
            f"{mine:,}",
            f"{mine / naive:.1%}",
            f"{mine / full:.1%}",
            str(ae["round_trips"]),
            str(ae["one_way_flights"]),
        ],
        [
            "naive: all (doc_id, sv) + diffs",
            f"{naive:,}",
            "100.0%",
            f"{naive / full:.1%}",
            "1",
            "2",
        ],
        ["full state transfer, both ways", f"{full:,}", f"{full / naive:.1%}", "100.0%", "1", "2"],
    ]
    parts = ", ".join(
        f"{kind} {ae['bytes_by_type'][kind]:,} B/{ae['messages_by_type'][kind]}"
        for kind in sorted(ae["bytes_by_type"])
        if kind in AE_TYPES
    )
    share = mine / naive
    limit = ae["round_trip_limit"]
    checks.append(
        Check("anti-entropy bytes <= 5% of naive", share, 0.05, f"{share:.1%}", share <= 0.05)
    )
    checks.append(
        Check(
            f"anti-entropy round trips <= log16(N)+2 = {limit:.2f}",
            ae["round_trips"],
            limit,
            str(ae["round_trips"]),
            ae["round_trips"] <= limit,
        )
    )
    return [
        f"1. anti-entropy, in memory: N={cfg.docs:,}, {ae['divergent']:,} divergent ({groups})",
        table(["exchange", "bytes", "vs naive", "vs full", "round trips", "one-way flights"], rows),
        f"   round: {parts}",
        f"   {ae['repaired']:,} documents repaired in {ae['seconds']:.2f} s (wall time, both"
        f" stores in this process); Merkle roots equal after: {ae['roots_equal']}; region us"
        f" made by {ae['setup']['replica']} (apply_remote would run at"
        f" {ae['setup']['apply_remote_per_s']:,.0f} records/s)",
    ]


def cpu_text(cpu_s: dict[str, float], per: float, unit: str) -> str:
    return ", ".join(f"{name} {s / per:{unit}}" for name, s in sorted(cpu_s.items()))


def lag_report(lag: list[dict[str, Any]], cfg: Config, checks: list[Check]) -> list[str]:
    rows = [
        [
            f"{run['rate']:,}/s" + (f", {run['per_tx']} a tx" if run.get("per_tx", 1) > 1 else ""),
            f"{run['achieved_rate']:,.0f}/s",
            f"{run['writes']:,}",
            f"{run['p50_ms']:.1f}",
            f"{run['p99_ms']:.1f}",
            f"{run['max_ms']:.1f}",
            f"{run['commit_ms_p50']:.2f}",
        ]
        for run in lag
    ]
    targets = {1000: ("lag p99 <= 20 ms at 1,000 writes/s", 20.0)}
    targets[10_000] = ("lag p99 <= 50 ms at 10,000 writes/s (10 a transaction)", 50.0)
    for run in lag:
        if run["rate"] in targets:
            name, bound = targets[run["rate"]]
            p99 = run["p99_ms"]
            checks.append(Check(name, p99, bound, f"{p99:.1f} ms", p99 <= bound))
    cpu = [
        f"   CPU per write at {run['rate']:,}/s (us, daemons include their idle work):"
        f" {cpu_text(run['cpu_s'], run['writes'] / 1e6, ',.0f')}"
        for run in lag
    ]
    return [
        "2. replication lag, commit -> visible in us (two `crdtdb serve` daemons, QUIC loopback)",
        table(
            ["paced at", "achieved", "writes", "p50 ms", "p99 ms", "max ms", "commit ms p50"], rows
        ),
        *cpu,
    ]


def median_of(runs: list[RateRun], value: Callable[[RateRun], float]) -> float:
    return statistics.median(value(run) for run in runs)


def rate_report(rate: dict[str, list[RateRun]], checks: list[Check]) -> list[str]:
    labels = {
        "crdtdb": "crdtdb eu -> us (daemons, QUIC)",
        "pycrdt-websocket": "pycrdt-websocket client -> server",
    }
    arrived = {s: median_of(runs, lambda r: r.arrived_per_s) for s, runs in rate.items()}
    rows = [
        [
            labels[system],
            f"{arrived[system]:,.0f}",
            f"{median_of(runs, lambda r: r.writes_per_s):,.0f}",
            f"{median_of(runs, lambda r: r.drained_after_s):.2f}",
            f"{arrived[system] / arrived['pycrdt-websocket']:.2f}x",
        ]
        for system, runs in rate.items()
    ]
    ratio = arrived["crdtdb"] / arrived["pycrdt-websocket"]
    checks.append(
        Check(
            "replicated updates/s >= 10x pycrdt-websocket",
            ratio,
            10,
            f"{ratio:.2f}x",
            ratio >= 10,
        )
    )
    cpu = [
        f"   CPU per update written, {system} (us, median): "
        + ", ".join(
            f"{name} {statistics.median(r.cpu_us_per_update().get(name, 0) for r in runs):.0f}"
            for name in sorted(runs[0].cpu_s)
        )
        for system, runs in rate.items()
    ]
    return [
        "3. steady-state replicated updates/s (one-write transactions on one document)",
        table(["system", "arrived/s", "written/s", "backlog drained (s)", "vs pycrdt-ws"], rows),
        *cpu,
    ]


def backlog_report(backlog: list[BacklogRun], live: list[RateRun]) -> list[str]:
    """The pipeline's capacity beside the live rate: which of the two limits the live number."""
    drained = statistics.median(r.arrived_per_s for r in backlog)
    live_arrived = median_of(live, lambda r: r.arrived_per_s)
    live_written = median_of(live, lambda r: r.writes_per_s)
    rows = [
        [
            "live: writer running, daemons up",
            f"{live_arrived:,.0f}",
            f"{live_written:,.0f}",
            "-",
            "-",
        ],
        [
            f"backlog: {backlog[0].records:,} records waiting",
            f"{drained:,.0f}",
            f"{statistics.median(r.written_per_s for r in backlog):,.0f}",
            f"{statistics.median(r.first_after_s for r in backlog):.2f}",
            f"{drained / live_arrived:.2f}x",
        ],
    ]
    cpu = ", ".join(
        f"{name} {statistics.median(r.cpu_us_per_record().get(name, 0) for r in backlog):.0f}"
        for name in sorted(backlog[0].cpu_s)
    )
    lagging = median_of(live, lambda r: r.drained_after_s)
    if lagging > max(0.25, 0.1 * median_of(live, lambda r: r.write_seconds)):
        limit = (
            f"live: the pipeline fell behind the writer (still delivering {lagging:.2f} s after"
            " the last commit)"
        )
    else:
        limit = (
            f"live: the pipeline kept up (last record {lagging:.2f} s after the last commit), so"
            f" the writer's commit rate is the limit; a backlog drains at"
            f" {drained / live_arrived:.1f}x the live rate"
        )
    return [
        "   crdtdb replication pipeline, eu -> us: live against a backlog drain (eu's daemon"
        " started with the records already in its log)",
        table(["crdtdb eu -> us", "arrived/s", "written/s", "first after (s)", "vs live"], rows),
        f"   CPU per record in the backlog drain (us, median): {cpu};"
        f" anti-entropy repaired {backlog[-1].anti_entropy_repairs or 0} documents meanwhile",
        f"   {limit}",
    ]


def bootstrap_report(boot: dict[str, Any], cfg: Config, checks: list[Check]) -> list[str]:
    lines = [f"4. bulk bootstrap of a fresh region, N={cfg.docs:,} documents, per document profile"]
    for name, results in boot["profiles"].items():
        lines += profile_report(name, results, results["ceiling"], cfg, checks)
    ceiling: list[Transfer] = boot["ceiling"]
    return [
        *lines,
        f"   ceiling, per profile: median of {2 * CEILING_RUNS} raw aioquic pushes of"
        f" {(ceiling[0].wire or 0) / 1e6:.0f} MB, {CEILING_RUNS} just before and"
        f" {CEILING_RUNS} just after its crdtdb run (all of them: "
        + ", ".join(f"{t.wire_mb_s or 0:.1f}" for t in ceiling)
        + " MB/s)",
    ]


def profile_report(
    name: str, boot: dict[str, Any], ceiling: list[Transfer], cfg: Config, checks: list[Check]
) -> list[str]:
    """One profile's table, its notes and its two target checks."""
    mine: Transfer = boot["crdtdb"]
    ceiling_mb_s = statistics.median(t.wire_mb_s or 0 for t in ceiling)
    ceiling_bytes = ceiling[0].wire or 0
    snap: Transfer | None = boot.get("snapshot")

    def row(label: str, t: Transfer) -> list[str]:
        wire_mb_s = t.wire_mb_s
        return [
            label,
            f"{t.docs:,}",
            f"{t.seconds:.2f}",
            f"{t.docs_per_s:,.0f}",
            f"{t.payload_mb_s:.2f}",
            "-" if wire_mb_s is None else f"{wire_mb_s:.2f}",
            f"{mine.docs_per_s / t.docs_per_s:.2f}x" if t.docs and t is not snap else "-",
            "-" if wire_mb_s is None else f"{wire_mb_s / ceiling_mb_s:.1%}",
        ]

    rows = [
        *([row("crdtdb snapshot -> fresh daemon", snap)] if snap is not None else []),
        row("crdtdb daemon -> fresh daemon (records)", mine),
        row("pycrdt-websocket, a room per doc", boot["ws-rooms"]),
        row("pycrdt-websocket, all in one doc", boot["ws-one-doc"]),
        [
            "aioquic raw, one stream",
            "-",
            f"{ceiling_bytes / 1e6:.0f} MB",
            "-",
            "-",
            f"{ceiling_mb_s:.2f}",
            "-",
            "100.0%",
        ],
    ]
    faster = mine.docs_per_s / boot["ws-rooms"].docs_per_s
    share = (mine.wire_mb_s or 0) / ceiling_mb_s
    # The tiny profile's checks keep the names they had before there were profiles.
    which = "bootstrap" if name == "tiny" else f"bootstrap of {name} docs"
    checks.append(
        Check(
            f"{which} faster than pycrdt-websocket (a room per doc)",
            faster,
            1,
            f"{faster:.2f}x",
            faster > 1,
        )
    )
    checks.append(
        Check(f"{which} wire MB/s >= 50% of raw aioquic", share, 0.5, f"{share:.1%}", share >= 0.5)
    )
    if snap is not None:
        snap_checks(which, snap, mine, ceiling_mb_s, checks, tiny=name == "tiny")
    extra = mine.extra
    written = boot.get("source_docs_per_s")
    source = "" if written is None else f"; source store written at {written:,.0f} docs/s"
    took = f"; {boot['seconds']:.0f} s for the profile" if "seconds" in boot else ""
    return [
        f"   {name}: {boot['document']}, {mine.payload / mine.docs:,.0f} B of CRDT update a"
        f" document{source}{took}",
        table(
            [
                f"{name}: system",
                "docs",
                "seconds",
                "docs/s",
                "payload MB/s",
                "wire MB/s",
                "crdtdb is",
                "of ceiling",
            ],
            rows,
        ),
        f"   crdtdb: {extra['records']:,} records, {mine.wire or 0:,} wire bytes (both ways),"
        f" {extra['seconds_from_daemon_launch']:.2f} s from launching the eu daemon,"
        f" {extra['connections']} QUIC connection(s);"
        f" anti-entropy during it: {extra['anti_entropy_rounds']} rounds,"
        f" {extra['anti_entropy_repairs'] or 0:,} documents repaired,"
        f" {extra['repair_records_created_in_us']:,} repair records created in us;"
        f" CPU per document (us): {cpu_text(extra['cpu_s'], mine.docs / 1e6, '.0f')}",
        *(
            [
                f"   crdtdb snapshot: {(snap.wire or 0) / 1e6:.1f} MB file"
                f" ({snap.extra['compressed_bytes'] / 1e6:.1f} MB compressed, on the wire"
                f" {snap.extra['compressed_bytes'] / snap.seconds / 1e6:.2f} MB/s), timed from"
                f" dialing eu to the store installed;"
                f" {snap.extra['seconds_from_daemon_launch']:.2f} s from launching the us"
                " daemon to the log line; CPU per document (us):"
                f" {cpu_text(snap.extra['cpu_s'], snap.docs / 1e6, '.1f')}"
            ]
            if snap is not None
            else []
        ),
        f"   pycrdt-websocket a room per doc: {boot['ws-rooms'].docs:,} of the documents,"
        f" {cfg.ws_connections} connections at a time{one_doc_sample(boot['ws-one-doc'], cfg)}",
    ]


RECORD_BOOTSTRAP_DOCS_S = 8_916
"""The README's record-by-record bootstrap of 100,000 42-byte documents before snapshots."""


def snap_checks(
    which: str,
    snap: Transfer,
    records: Transfer,
    ceiling_mb_s: float,
    checks: list[Check],
    *,
    tiny: bool,
) -> None:
    """The snapshot's targets: MB/s against the ceiling; for tiny documents, documents/s
    against 5x record by record, both the same run's row and the README's 8,916/s."""
    share = (snap.wire_mb_s or 0) / ceiling_mb_s
    checks.append(
        Check(
            f"snapshot {which} MB/s >= 50% of raw aioquic",
            share,
            0.5,
            f"{share:.1%}",
            share >= 0.5,
        )
    )
    if tiny:
        for against, rate in (
            ("record by record, this run", records.docs_per_s),
            ("the README's record-by-record 8,916/s", RECORD_BOOTSTRAP_DOCS_S),
        ):
            faster = snap.docs_per_s / rate
            checks.append(
                Check(
                    f"snapshot {which} docs/s >= 5x {against}",
                    faster,
                    5,
                    f"{faster:.1f}x",
                    faster >= 5,
                )
            )


def one_doc_sample(one: Transfer, cfg: Config) -> str:
    if one.docs >= cfg.docs:
        return ""
    return (
        f"; all in one doc: {one.docs:,} of them, {one.payload / 1e6:.0f} MB (httpx-ws"
        " reassembles a message in quadratic time: all N stall)"
    )


def report(cfg: Config, out: dict[str, Any], env: dict[str, Any]) -> tuple[str, list[Check]]:
    checks: list[Check] = []
    lines = [
        f"crdtdb sync benchmark ({cfg.name}): pycrdt {env['pycrdt']}, pycrdt-websocket"
        f" {env['pycrdt-websocket']}, aioquic {env['aioquic']}, Python {env['python']},"
        f" {env['cpus']} CPUs, load {env['load_average_before'][0]:.2f} before",
        "",
    ]
    if "ae" in out:
        lines += [*ae_report(out["ae"], cfg, checks), ""]
    if "lag" in out:
        lines += [*lag_report(out["lag"], cfg, checks), ""]
    if "rate" in out:
        lines += rate_report(out["rate"], checks)
        if "rate_backlog" in out:
            lines += backlog_report(out["rate_backlog"], out["rate"]["crdtdb"])
        lines.append("")
    if "bootstrap" in out:
        lines += [*bootstrap_report(out["bootstrap"], cfg, checks), ""]
    if "large" in out:
        lines += [*large_report(out["large"], checks), ""]
    if "lag_daemons" in out:
        d = out["lag_daemons"]
        lines += [
            f"daemons of 2-3 over their life: eu wrote {d['records_written_in_eu']:,} records and"
            f" received {d['records_received_by_eu']:,} from us (us writes none: echoes of eu's"
            f" own); {d['anti_entropy_rounds']} anti-entropy rounds repaired"
            f" {d['anti_entropy_repairs'] or 0:,} documents",
            "",
        ]
    lines.append(
        table(["target", "measured", ""], [[c.name, c.shown, verdict(c.met)] for c in checks])
    )
    return "\n".join(lines), checks
