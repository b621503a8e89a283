#!/usr/bin/env python3
"""Set up the project's environment and run its jobs; needs only Python >= 3.11 and pip.

    python3 dev.py demo [ARGS]  # the main job: `crdtdb demo ARGS`, a cluster on this machine
    python3 dev.py test [ARGS]  # the fast tests, the integration tests, then ruff and mypy
    python3 dev.py lint         # ruff and mypy only (code, tests and benchmarks)
    python3 dev.py bench [ARGS] # the core benchmark (bench/bench_core.py)
    python3 dev.py bench-sync [ARGS]  # the sync benchmark (bench/bench_sync.py)
    python3 dev.py bench-apply [ARGS] # out-of-order apply (bench/bench_apply.py)
    python3 dev.py bench-query [ARGS] # the query layer (bench/bench_query.py)

Each command first creates ``.venv`` and installs crdtdb into it in editable
mode with the extras that command needs and no more: none for the demo,
``dev`` (pytest, hypothesis, ruff, mypy) and ``bench`` (the reference systems
the benchmarks compare against, which mypy checks them with) for test and lint,
``bench`` for the benchmarks. The stamp ``.venv/.crdtdb-installed`` records which pyproject.toml
was installed and with which extras: a command that needs another extra adds
it (keeping those installed before), and a changed pyproject.toml reinstalls.

``test`` runs pytest twice, both times with ARGS: the fast set (plain
``pytest``: unit and property tests) and ``pytest -m integration`` (processes,
daemons, large stores); then ruff and mypy. Any failure fails it, and so does
a pytest run that collects no test (exit 5), unless ARGS narrowed the
selection and the other run found tests.

``lint`` runs ``ruff check`` and ``ruff format --check`` on crdtdb, sync,
query, tests, bench and dev.py, then one strict ``mypy`` over crdtdb, sync,
query, tests and bench. mypy is given sync/ and query/ through
``.mypy-layout/crdtdb/`` (symlinks), so that it checks them once, under the
names they are installed as (``crdtdb.sync``, ``crdtdb.query``), the names
the tests and benchmarks import.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
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


def _run_interactive(*args: str | Path) -> int:
    """Like :func:`_run`, for a child that handles Ctrl-C itself: the terminal sends it
    to the child too (one process group), so this process only waits for it
    (``subprocess.call`` would kill it at once, before it stopped what it started)."""
    print("+", " ".join(str(a) for a in args), flush=True)
    child = subprocess.Popen([str(a) for a in args], cwd=ROOT)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after Popen: not inherited
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def ensure_env(*extras: str) -> None:
    """Create or refresh ``.venv`` with these extras; one process at a time (a lock file)."""
    with open(ROOT / ".venv.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_env(set(extras))


def _installed() -> tuple[str, set[str]] | None:
    """(pyproject.toml digest, extras) of the last install, if the stamp can be read."""
    try:
        stamp = json.loads(STAMP.read_text())
        return str(stamp["pyproject"]), set(stamp["extras"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ensure_env(extras: set[str]) -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed = _installed() if PYTHON.exists() else None
    if installed is not None:
        if installed[0] == digest and extras <= installed[1]:
            return
        extras |= installed[1]  # keep the tools an earlier command installed
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
    target = f".[{','.join(sorted(extras))}]" if extras else "."
    code = _run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", target)
    if code != 0:
        sys.exit(f"installing the environment failed (pip exit {code}); see the output above")
    STAMP.write_text(json.dumps({"pyproject": digest, "extras": sorted(extras)}))


LINTED = ("crdtdb", "_crdtdb_entry.py", "sync", "query", "tests", "bench", "dev.py")
TYPED = (
    "crdtdb",
    "_crdtdb_entry.py",
    ".mypy-layout/crdtdb/sync",
    ".mypy-layout/crdtdb/query",
    "tests",
    "bench",
)


def lint() -> int:
    code = _run(BIN / "ruff", "check", *LINTED)
    code = code or _run(BIN / "ruff", "format", "--check", *LINTED)
    return code or _run(BIN / "mypy", *TYPED)


def test(args: list[str]) -> int:
    """The fast set, the integration set, then lint; every step runs, each failure counts."""
    codes = {
        "fast tests": _run(PYTHON, "-m", "pytest", *args),
        "integration tests": _run(PYTHON, "-m", "pytest", "-m", "integration", *args),
    }
    if args and set(codes.values()) != {5}:  # ARGS chose tests that are all in one set
        codes = {name: 0 if code == 5 else code for name, code in codes.items()}
    codes["ruff and mypy"] = lint()
    failed = [f"{name} (exit {code})" for name, code in codes.items() if code]
    print("dev.py test:", f"FAILED: {', '.join(failed)}" if failed else "all passed", flush=True)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by any python3
        print(f"crdtdb needs Python 3.11 or newer; this is {sys.version.split()[0]}")
        return 2
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "demo":
        ensure_env()  # crdtdb alone: no test, lint or benchmark tools
        code = _run_interactive(PYTHON, "-m", "crdtdb", "demo", *rest)
        return 130 if code == -signal.SIGINT else code
    if command == "test":
        ensure_env("dev", "bench")  # mypy checks the benchmarks against their libraries
        return test(rest)
    if command == "lint":
        ensure_env("dev", "bench")
        return lint()
    scripts = {"bench": "core", "bench-sync": "sync", "bench-apply": "apply"}
    scripts["bench-query"] = "query"
    if command in scripts:
        ensure_env("bench")
        return _run(PYTHON, f"bench/bench_{scripts[command]}.py", *rest)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
