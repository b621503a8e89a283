"""What the core benchmark's sections and its report share: sizes, systems, timing."""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

KEYS = 50
"""Distinct keys per document: write ``i`` sets ``k{i % KEYS}``."""
STEP = 10
"""Operations between two looks at the clock in a timed run."""
FILL_ROUNDS = 5
"""Read benchmark documents hold this many updates, each rewriting all keys."""
PREFILL = {f"k{k}": -1 for k in range(KEYS)}
"""Every write benchmark document holds this before timing starts (all keys exist)."""
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "core.json"

Mode = Literal["one", "batched"]
Durability = Literal["normal", "full"]
Api = Literal["update", "doc"]
Cell = tuple[str, str, int | None]
"""(measure, system, D) identifies one number of the report."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Sizes of one benchmark run."""

    name: str
    """"quick" or "full": recorded in the output."""
    seconds: float
    """Time budget of one timed run."""
    repeats: int
    """Timed runs per number; the median is reported."""
    doc_counts: tuple[int, ...] = (1, 100)
    """Values of D: documents the writes and hot reads go round-robin over."""
    batch: int = 1000
    """Writes per transaction in the batched mode."""
    max_ops: int = 5_000_000
    """Hard cap on operations in one timed run."""
    open_docs: int
    """Documents in the store whose open time is measured."""
    cold_docs: int
    """Distinct documents the cold reads go round-robin over."""
    cold_cache: int
    """crdtdb ``cache_size`` for cold reads (smaller than ``cold_docs``)."""
    replay_keystrokes: int | None = None
    """Keystrokes of the automerge-paper trace replayed (None: all 259,778)."""


QUICK = Config(
    name="quick",
    seconds=0.2,
    repeats=3,
    open_docs=10_000,
    cold_docs=2_000,
    cold_cache=200,
    replay_keystrokes=20_000,
)
FULL = Config(
    name="full", seconds=1.0, repeats=3, open_docs=100_000, cold_docs=10_000, cold_cache=1_000
)


@dataclass(frozen=True, slots=True)
class Run:
    """One timed run: ``ops`` operations in ``seconds``."""

    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


SYSTEMS = {
    "raw": "raw pycrdt (in memory)",
    "pycrdt-store": "pycrdt-store SQLiteYStore",
    "crdtdb": "crdtdb update()",
    "crdtdb-doc": "crdtdb tx.doc()[k]=v",
    "crdtdb-full": "crdtdb full, update()",
    "crdtdb-full-doc": "crdtdb full, tx.doc()[k]=v",
}
READ_LABELS = {
    "raw": SYSTEMS["raw"],
    "pycrdt-store": SYSTEMS["pycrdt-store"],
    "crdtdb": "crdtdb get()",
}
CRDTDB_VARIANTS: dict[str, tuple[Durability, Api]] = {
    "crdtdb": ("normal", "update"),
    "crdtdb-doc": ("normal", "doc"),
    "crdtdb-full": ("full", "update"),
    "crdtdb-full-doc": ("full", "doc"),
}


def key_of(i: int) -> str:
    return f"k{i % KEYS}"


def doc_id(d: int) -> str:
    return f"bench/{d}"


def touched(start: int, n: int, docs: int) -> list[int]:
    """The documents writes ``start .. start + n - 1`` go to."""
    return sorted({(start + j) % docs for j in range(min(n, docs))})


@contextmanager
def temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="crdtdb-bench-") as tmp:
        yield Path(tmp)


def timed(step: Callable[[int], int], cfg: Config) -> Run:
    """Call ``step(ops_done)`` (it returns how many ops it did) until the budget is spent."""
    gc.collect()
    ops = 0
    start = time.perf_counter()
    while True:
        ops += step(ops)
        elapsed = time.perf_counter() - start
        if elapsed >= cfg.seconds or ops >= cfg.max_ops:
            return Run(ops, elapsed)


async def timed_async(step: Callable[[int], Awaitable[int]], cfg: Config) -> Run:
    """:func:`timed` for coroutines (pycrdt-store is async)."""
    gc.collect()
    ops = 0
    start = time.perf_counter()
    while True:
        ops += await step(ops)
        elapsed = time.perf_counter() - start
        if elapsed >= cfg.seconds or ops >= cfg.max_ops:
            return Run(ops, elapsed)


def median_rate(runs: list[Run]) -> float:
    return statistics.median(run.rate for run in runs)


def median_seconds(runs: list[Run]) -> float:
    return statistics.median(run.seconds for run in runs)
