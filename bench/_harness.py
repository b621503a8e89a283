"""The tests' harness (``tests/harness/``), for the benchmark scripts of this folder.

The scripts run as ``python bench/<script>.py``: this folder is on
``sys.path``, the repository root is not. This module puts the root there
(after this folder) and re-exports what the benchmarks use, so that tests and
benchmarks start processes, wait, pick ports and write configs with one code.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

from tests.harness.config import make_certs, write_region_config  # noqa: E402
from tests.harness.daemon import STATUS_FILE, daemon_status, start_daemon  # noqa: E402
from tests.harness.link import Link  # noqa: E402
from tests.harness.ports import free_port, free_ports  # noqa: E402
from tests.harness.process import Child, Group  # noqa: E402
from tests.harness.wait import HarnessError, wait_for, wait_until  # noqa: E402

__all__ = [
    "STATUS_FILE",
    "Child",
    "Group",
    "HarnessError",
    "Link",
    "daemon_status",
    "free_port",
    "free_ports",
    "make_certs",
    "start_daemon",
    "wait_for",
    "wait_until",
    "write_region_config",
]
