"""The query benchmark's report: the machine, the code measured, one row per measure."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from _report import table, verdict

MIN_BUILD_RATIO = 0.5
"""Target: the first materialisation runs at least at half the ceiling's documents/s."""
MAX_REFRESH_SHARE = 0.05
"""Target: a refresh after 1% changed takes at most 5% of the first build's time."""
MAX_QUERY_RATIO = 1.5
"""Target: a query through the collection view at most 1.5x the same on a typed Parquet file."""
MAX_AS_OF_RATIO = 3.0
"""Target: the group-by as of a past cut at most 3x the present one (the query alone)."""
MIN_WRITER_RATIO = 0.8
"""Target: the writer keeps 80% of its commit rate beside a reader and a refresher."""


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pa.__version__,
        "platform": platform.platform(),
        **code_version(),
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and the files of the package that differ from it (work in progress)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "crdtdb", "query", "sync").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": changed}


def measures(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measure: the crdtdb figure, the reference, the ratio, the target."""
    b, r, t, w = res["build"], res["refresh"], res["time_travel"], res["writer"]
    dps = b["docs_per_s"]
    rows = [
        _row(
            f"first materialisation, {b['documents']:,} docs (docs/s)",
            f"{dps['crdtdb']:,.0f}",
            f"{dps[b['ceiling']]:,.0f} ({b['ceiling']})",
            b["ratio"],
            f">= {MIN_BUILD_RATIO:g}x",
            b["ratio"] >= MIN_BUILD_RATIO,
        ),
        _row("  pyarrow, dicts -> Parquet (docs/s)", "", f"{dps['pyarrow']:,.0f}", None, "", None),
        _row(
            "  DuckDB, JSON text -> Parquet (docs/s)", "", f"{dps['duckdb']:,.0f}", None, "", None
        ),
        _row(
            f"refresh after 1% changed ({r['changed']:,} docs) vs first build",
            f"{r['seconds']:.2f} s",
            f"{b['median_s']['crdtdb']:.2f} s",
            r["share"],
            f"<= {MAX_REFRESH_SHARE:.0%}",
            r["share"] <= MAX_REFRESH_SHARE,
            ratio_text=f"{r['share']:.1%}",
        ),
        _row(
            "  RefreshResult.documents = changed",
            f"{r['documents']:,}",
            f"{r['changed']:,}",
            None,
            "equal",
            r["documents"] == r["changed"],
        ),
    ]
    for q in res["queries"]:
        for name in ("group_by", "selective"):
            m = q[name]["median_s"]
            label = f"{name.replace('_', '-')} ({q['stage']}, {q[name]['rows']:,} rows)"
            ratio = q[name]["ratio"]
            rows.append(
                _row(
                    f"{label}: view vs Parquet",
                    _ms(m["view"]),
                    _ms(m["parquet"]),
                    ratio,
                    f"<= {MAX_QUERY_RATIO:g}x",
                    ratio <= MAX_QUERY_RATIO,
                )
            )
            rows.append(
                _row(
                    "  docs ->> JSON vs Parquet",
                    _ms(m["json"]),
                    _ms(m["parquet"]),
                    q[name]["json_ratio"],
                    "",
                    None,
                )
            )
    qs, cs = t["query_s"], t["connect_query_s"]
    rows += [
        _row(
            f"as_of group-by, {t['changed']:,} changed: query",
            _ms(qs["as_of"]),
            f"{_ms(qs['present'])} (present)",
            t["query_ratio"],
            f"<= {MAX_AS_OF_RATIO:g}x",
            t["query_ratio"] <= MAX_AS_OF_RATIO,
        ),
        _row(
            "  connect + query",
            _ms(cs["as_of"]),
            f"{_ms(cs['present'])} (present)",
            t["connect_query_ratio"],
            "(info)",
            None,
        ),
        _row(
            f"writer commits/s beside reader+refresher ({w['seconds']:g} s runs)",
            f"{w['median_rate']['with']:,.0f}",
            f"{w['median_rate']['alone']:,.0f} (alone)",
            w["ratio"],
            f">= {MIN_WRITER_RATIO:g}x",
            w["ratio"] >= MIN_WRITER_RATIO,
        ),
        _row(
            "  writer's time waiting for a CPU (run queue)",
            _pct(w["runqueue_share"]["with"]),
            f"{_pct(w['runqueue_share']['alone'])} (alone)",
            None,
            "",
            None,
        ),
        _row(
            "  writer's CPU time per commit",
            f"{w['cpu_per_commit_s']['with'] * 1e6:,.0f} us",
            f"{w['cpu_per_commit_s']['alone'] * 1e6:,.0f} us (alone)",
            None,
            "",
            None,
        ),
        _row(
            "  reader queries / refresher refreshes per s beside it",
            f"{w['helper_rates']['reader']:.1f} / {w['helper_rates']['refresher']:.1f}",
            "",
            None,
            "",
            None,
        ),
    ]
    return rows


def _pct(share: float) -> str:
    return f"{share:.0%}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _row(
    measure: str,
    crdtdb_text: str,
    reference: str,
    ratio: float | None,
    target: str,
    met: bool | None,
    ratio_text: str | None = None,
) -> dict[str, Any]:
    if ratio_text is None and ratio is not None:
        ratio_text = f"{ratio:.2f}x"
    return {
        "measure": measure,
        "crdtdb": crdtdb_text,
        "reference": reference,
        "ratio": ratio,
        "ratio_text": ratio_text or "",
        "target": target,
        "met": met,
    }


def report(rows: list[dict[str, Any]]) -> str:
    headers = ["measure", "crdtdb", "reference", "ratio", "target", "result"]
    cells = [
        [
            r["measure"],
            r["crdtdb"],
            r["reference"],
            r["ratio_text"],
            r["target"],
            "" if r["met"] is None else verdict(r["met"]),
        ]
        for r in rows
    ]
    return table(headers, cells)
