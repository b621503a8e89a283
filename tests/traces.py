"""The real editing traces in ``shared/data/editing-traces`` (josephg/editing-traces, CC BY 4.0).

They live beside the repository, not in it: ``../shared`` of a checkout, or
``/work/shared``. A missing trace fails the test that needs it (never skips).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

__all__ = ["apply_patches", "load_trace", "trace_path"]


def trace_path(name: str) -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared"
    if not shared.is_dir():
        shared = Path("/work/shared")
    return shared / "data" / "editing-traces" / name


def load_trace(name: str) -> dict[str, Any]:
    path = trace_path(name)
    if not path.is_file():
        pytest.fail(
            f"the editing trace {name} is missing (looked for {path}): it is part of the"
            " shared test data (josephg/editing-traces, CC BY 4.0); restore shared/data/"
        )
    trace: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    return trace


def apply_patches(txns: list[dict[str, Any]]) -> str:
    """The text the transactions' patches make, applied in order to an empty text."""
    text = ""
    for txn in txns:
        for pos, deleted, inserted in txn["patches"]:
            text = text[:pos] + inserted + text[pos + deleted :]
    return text
