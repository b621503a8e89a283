"""The README's API tour runs as written (each Python block, in order, in an empty directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_blocks() -> list[str]:
    """The Python blocks of the README's section "A tour of the API"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## A tour of the API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, re.DOTALL | re.MULTILINE)


def test_the_tour_has_its_blocks() -> None:
    blocks = tour_blocks()
    assert len(blocks) >= 2 and "db.watch(" in blocks[0] and "apply_remote" in blocks[1]


@pytest.mark.integration
def test_the_api_tour_runs_as_written(tmp_path: Path) -> None:
    for number, block in enumerate(tour_blocks(), 1):
        done = subprocess.run(
            [sys.executable, "-c", block],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"block {number} of the tour failed:\n{done.stderr}"
