"""The core benchmark's plain-text report, the targets of the issue and the JSON output."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from _report import table, verdict

from .commits import commit_json, commit_report
from .common import (
    CRDTDB_VARIANTS,
    READ_LABELS,
    SYSTEMS,
    Cell,
    Config,
    Run,
    median_rate,
    median_seconds,
)


def rate(
    results: dict[Cell, list[Run]], measure: str, system: str, docs: int | None
) -> float | None:
    runs = results.get((measure, system, docs))
    return median_rate(runs) if runs else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def write_table(cfg: Config, results: dict[Cell, list[Run]]) -> str:
    cols = [(m, d) for m in ("one", "batched") for d in cfg.doc_counts]
    headers = ["writes/s", *[f"{'one-write' if m == 'one' else 'batched'} D={d}" for m, d in cols]]
    rows = [
        [label, *[fmt(rate(results, f"write-{m}", system, d)) for m, d in cols]]
        for system, label in SYSTEMS.items()
    ]
    return table(headers, rows)


def read_table(cfg: Config, results: dict[Cell, list[Run]]) -> str:
    headers = [
        "reads/s",
        *[f"hot D={d}" for d in cfg.doc_counts],
        f"cold {cfg.cold_docs:,} docs",
        "open+get (ms)",
    ]
    rows = []
    for system in ("raw", "pycrdt-store", "crdtdb"):
        opened = results.get(("open", system, None))
        rows.append(
            [
                READ_LABELS[system],
                *[fmt(rate(results, "read-hot", system, d)) for d in cfg.doc_counts],
                fmt(rate(results, "read-cold", system, None)),
                f"{median_seconds(opened) * 1e3:.2f}" if opened else "-",
            ]
        )
    return table(headers, rows)


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue for one crdtdb configuration, checked for every D."""

    name: str
    measure: str
    system: str
    against: str | None
    """The reference system of a ratio target; None for an absolute rate."""
    threshold: float

    def value(self, results: dict[Cell, list[Run]], docs: int) -> float | None:
        mine = rate(results, self.measure, self.system, docs)
        if self.against is None:
            return mine
        return ratio(mine, rate(results, self.measure, self.against, docs))

    def cell(self, results: dict[Cell, list[Run]], docs: int) -> str:
        value = self.value(results, docs)
        if value is None:
            return "-"
        shown = f"{value:,.0f}/s" if self.against is None else f"{value:.2f}x"
        return f"{shown} {verdict(value >= self.threshold)}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


TARGETS = [
    *[
        Target(f"one-write >= 5,000/s: {SYSTEMS[s]}", "write-one", s, None, 5000)
        for s in CRDTDB_VARIANTS
    ],
    *[
        Target(f"batched >= 0.5x raw batched: {SYSTEMS[s]}", "write-batched", s, "raw", 0.5)
        for s in ("crdtdb-doc", "crdtdb-full-doc")
    ],
    *[
        Target(f"one-write > pycrdt-store: {SYSTEMS[s]}", "write-one", s, "pycrdt-store", 1.0)
        for s in ("crdtdb", "crdtdb-full")
    ],
    *[
        Target(f"batched > pycrdt-store: {SYSTEMS[s]}", "write-batched", s, "pycrdt-store", 1.0)
        for s in ("crdtdb-doc", "crdtdb-full-doc")
    ],
]
"""One-write targets hold for both APIs; batched ones use ``tx.doc()`` (the batching API)."""


def target_table(cfg: Config, results: dict[Cell, list[Run]]) -> str:
    headers = ["target", *[f"D={d}" for d in cfg.doc_counts]]
    rows = [[t.name, *[t.cell(results, d) for d in cfg.doc_counts]] for t in TARGETS]
    return table(headers, rows)


def info_lines(cfg: Config, results: dict[Cell, list[Run]]) -> list[str]:
    """Ratios with no target attached: reads and open time against pycrdt-store."""
    lines = []
    for d in cfg.doc_counts:
        hot = ratio(
            rate(results, "read-hot", "crdtdb", d), rate(results, "read-hot", "pycrdt-store", d)
        )
        lines.append(f"hot get D={d}: crdtdb / pycrdt-store = {hot or 0:.2f}x")
    cold = ratio(
        rate(results, "read-cold", "crdtdb", None), rate(results, "read-cold", "pycrdt-store", None)
    )
    lines.append(f"cold get: crdtdb / pycrdt-store = {cold or 0:.2f}x")
    opened = [median_seconds(results[("open", s, None)]) for s in ("pycrdt-store", "crdtdb")]
    lines.append(f"open+get: pycrdt-store time / crdtdb time = {opened[0] / opened[1]:.2f}x")
    return lines


def report(cfg: Config, results: dict[Cell, list[Run]], env: dict[str, Any]) -> str:
    created = results[("create", "crdtdb", None)][0]
    notes = [
        f"crdtdb core benchmark ({cfg.name}): {cfg.seconds:g} s per timed run, median of"
        f" {cfg.repeats}; pycrdt {env['pycrdt']}, pycrdt-store {env['pycrdt-store']},"
        f" SQLite {env['sqlite']}, Python {env['python']}, {env['cpus']} CPUs",
        "",
        write_table(cfg, results),
        "",
        read_table(cfg, results),
        "",
        f"cold: {cfg.cold_docs:,} distinct docs of the open-time store, crdtdb cache_size="
        f"{cfg.cold_cache:,}; pycrdt-store starts one store per document read.",
        f"open+get: {cfg.open_docs:,}-document store, warm OS page cache; crdtdb wrote it at"
        f" {created.rate:,.0f} docs/s ({cfg.batch:,} puts/transaction); the pycrdt-store file"
        " has the same rows, bulk-loaded.",
        "",
        target_table(cfg, results),
        "",
        *info_lines(cfg, results),
        "",
        *commit_report(cfg, results),
    ]
    return "\n".join(notes)


def to_json(cfg: Config, results: dict[Cell, list[Run]], env: dict[str, Any]) -> dict[str, Any]:
    cells = [
        {
            "measure": m,
            "system": s,
            "docs": d,
            "median_per_s": median_rate(runs),
            "median_seconds": median_seconds(runs),
            "runs": [asdict(run) for run in runs],
        }
        for (m, s, d), runs in results.items()
    ]
    checks = [
        {
            **asdict(t),
            "values": {str(d): t.value(results, d) for d in cfg.doc_counts},
            "met": {str(d): (t.value(results, d) or 0) >= t.threshold for d in cfg.doc_counts},
        }
        for t in TARGETS
    ]
    return {
        "benchmark": "core",
        "config": asdict(cfg),
        "environment": env,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": cells,
        "targets": checks,
        "commit_targets": commit_json(results),
    }
