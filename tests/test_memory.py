"""Memory: many small documents are written and read without holding them all.

The issue's requirement: "1,000,000 small documents can be written and read
without holding them all in memory (bounded document cache)". A child process
(``procs/bulk.py``) writes N documents in transactions of 1,000, reads each one
back, and reports its peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not
inherit the pytest parent's peak) at every tenth of each phase, and the length
of the document cache after every operation.

How much growth is allowed. A document loaded in crdtdb's cache costs 5 to
7 KB of resident memory (measured with pycrdt 0.14.13: a pycrdt ``Doc`` with
its two root maps, the handle and its cache entry; 7 KB while the doc has an
update observer); the child measures it again in every run (``doc_bytes``, by
holding 10,000 loaded documents in a cache of that size). Holding all N
documents would therefore cost 5 to 7 GB for N = 1,000,000 and 100 to 140 MB
for N = 20,000. With a bounded cache nothing in the process grows with N (nor
may it in ``info()`` afterwards, which brings the Merkle root up to date): the
cache holds at most ``cache_size`` documents (7 MB for 1,000), SQLite's page
cache is bounded (2 MB by default) and the WAL is checkpointed. So between
N/10 and N documents (written, then all read back), the peak RSS may grow by
at most a tenth of what holding those 0.9 N documents would cost, and never by
more than ``MAX_GROWTH`` (allocator slack and SQLite's caches, whatever N is).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .harness.process import running

pytestmark = pytest.mark.integration

LINE_TIMEOUT = 900.0  # seconds between two progress lines (a tenth of a phase) at most
MAX_GROWTH = 32 * 1024 * 1024
MIN_DOC_BYTES = 1000  # a loaded pycrdt document costs more than this; below: measurement broke


def run_bulk(store: Path, n: int, cache_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``bulk.py``; return its checkpoints and its final report."""
    checkpoints: list[dict[str, Any]] = []
    with running("bulk.py", str(store), str(n), "--cache-size", str(cache_size)) as child:
        for _ in range(30):  # "open", at most 11 per phase, then "done"
            message = json.loads(child.line(LINE_TIMEOUT))
            if message["ev"] == "done":
                break
            checkpoints.append(message)
        else:
            pytest.fail(f"bulk.py never reported done: {child.describe()}")
        assert child.finish(60) == []
        assert child.proc.returncode == 0, child.describe()
    return checkpoints, message


def check_bounded(tmp_path: Path, n: int, cache_size: int) -> None:
    checkpoints, done = run_bulk(tmp_path / "eu", n, cache_size)

    assert done["bad"] == [], f"documents read back wrong: {done['bad']}"
    assert done["live_documents"] == n == done["log_records"]
    assert done["max_cache"] <= cache_size, f"cache held {done['max_cache']} > {cache_size}"
    assert all(c["cache"] <= cache_size for c in checkpoints)

    writes = [c for c in checkpoints if c["phase"] == "write"]
    reads = [c for c in checkpoints if c["phase"] == "read"]
    tenth = next(c for c in writes if c["done"] >= n // 10)
    assert reads[-1]["done"] == n
    assert checkpoints[-1]["phase"] == "info"
    assert done["doc_bytes"] > MIN_DOC_BYTES, done
    holding_them = (n - tenth["done"]) * done["doc_bytes"]
    allowed = min(MAX_GROWTH, holding_them / 10)
    trail = [(c["phase"], c["done"], round(c["peak_rss"] / 2**20)) for c in checkpoints]
    budget = (
        f"allowed {allowed / 2**20:.1f} MiB; holding them all would cost"
        f" {holding_them / 2**20:.0f} MiB at {done['doc_bytes']:.0f} bytes each;"
        f" peak RSS (MiB) by phase and count: {trail}"
    )

    growth = reads[-1]["peak_rss"] - tenth["peak_rss"]
    assert growth <= allowed, (
        f"writing and reading: peak RSS grew by {growth / 2**20:.1f} MiB from {tenth['done']}"
        f" to {n} documents: are evicted documents freed? ({budget})"
    )
    growth = checkpoints[-1]["peak_rss"] - tenth["peak_rss"]
    assert growth <= allowed, (
        f"info() after {n} writes: peak RSS grew by {growth / 2**20:.1f} MiB from"
        f" {tenth['done']} documents: does it hold per-document state for all? ({budget})"
    )


def test_twenty_thousand_documents_with_a_cache_of_100(tmp_path: Path) -> None:
    check_bounded(tmp_path, 20_000, 100)


def test_a_million_documents_with_a_cache_of_1000(tmp_path: Path) -> None:
    # Minutes on a 2-core machine: 1.5 to 3 of writes, 1 to 2 of reads, then info().
    check_bounded(tmp_path, 1_000_000, 1000)
