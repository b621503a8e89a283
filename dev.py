#!/usr/bin/env python3
"""Set up the project's environment and run its jobs; needs only Python >= 3.11 and pip.

    python3 dev.py demo [DIR]   # the main job: the embedded-library demo
    python3 dev.py test         # every test (pytest), then ruff and mypy on the package
    python3 dev.py lint         # ruff and mypy only
    python3 dev.py bench [ARGS] # the core benchmark (bench/bench_core.py)
    python3 dev.py bench-sync [ARGS]  # the sync benchmark (bench/bench_sync.py)
    python3 dev.py bench-apply [ARGS] # out-of-order apply (bench/bench_apply.py)
    python3 dev.py bench-query [ARGS] # the query layer (bench/bench_query.py)

Each command first creates ``.venv`` (or refreshes it when pyproject.toml
changed) and installs crdtdb into it in editable mode with its test tools.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

try:
    import fcntl
except ImportError:  # not on Windows: setups are then not serialised
    fcntl = None  # type: ignore[assignment]
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".crdtdb-installed"


def _run(*args: str | Path) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.call([str(a) for a in args], cwd=ROOT)


def ensure_env(extras: str = "dev,bench") -> None:
    """Create or refresh ``.venv``; one process at a time (a lock file serialises them)."""
    with open(ROOT / ".venv.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_env(extras)


def _ensure_env(extras: str) -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    has_pip = (
        PYTHON.exists()
        and subprocess.call(
            [str(PYTHON), "-m", "pip", "--version"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        == 0
    )
    if not has_pip:  # missing, or left broken by an interrupted setup: start again
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    code = _run(
        PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", f".[{extras}]"
    )
    if code != 0:
        sys.exit(f"installing the environment failed (pip exit {code}); see the output above")
    STAMP.write_text(wanted)


def lint() -> int:
    code = _run(BIN / "ruff", "check", "crdtdb", "sync", "query", "tests", "bench", "dev.py")
    code = code or _run(BIN / "ruff", "format", "--check", "crdtdb", "sync", "query")
    return code or _run(BIN / "mypy", "crdtdb", "sync", "query")


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by any python3
        print(f"crdtdb needs Python 3.11 or newer; this is {sys.version.split()[0]}")
        return 2
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "demo":
        ensure_env()
        return _run(PYTHON, "-m", "crdtdb", "demo", *(rest or ["demo-data"]))
    if command == "test":
        ensure_env()
        # pytest's own exit code is kept: 5 ("no tests collected") fails like any error.
        code = _run(PYTHON, "-m", "pytest", *rest)
        return code or lint()
    if command == "lint":
        ensure_env()
        return lint()
    scripts = {"bench": "core", "bench-sync": "sync", "bench-apply": "apply"}
    scripts["bench-query"] = "query"
    if command in scripts:
        ensure_env()
        return _run(PYTHON, f"bench/bench_{scripts[command]}.py", *rest)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
