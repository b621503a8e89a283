"""The directory a demo writes to, and the rule that it deletes only what a demo made.

``crdtdb demo`` once wiped the directory it was given, whatever it held. Now:

- no directory given: a fresh temporary one, removed at the end (all of it
  was made by the demo);
- a directory that does not exist or is empty: used, and kept;
- a directory an earlier demo left: it holds the marker file
  :data:`MARKER`, which lists every file and folder that demo made. Those,
  and only those, are removed before the new run, and only if nothing else
  is there; a file the demo did not make (say a notes file, or what a later
  ``crdtdb sql`` wrote into a region) makes it refuse, deleting nothing;
- anything else (a file, a non-empty directory without the marker):
  refused with a :class:`~crdtdb.errors.UsageError` that says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import UsageError

__all__ = ["MARKER", "Workspace", "demo_directory", "prepare", "record"]

MARKER = ".crdtdb-demo.json"
"""The marker file a demo writes at the top of its directory: what it made there."""


def prepare(directory: Path) -> Path:
    """Make ``directory`` ready for a demo run (see the module docstring); returns it."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise UsageError(f"{directory} is not a directory: give a new or an empty one")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MARKER).is_file():
        _remove_earlier_demo(directory)
    elif any(directory.iterdir()):
        raise UsageError(
            f"{directory} is not empty and was not made by `crdtdb demo`, so the demo"
            " leaves it alone: give a new or an empty directory"
        )
    record(directory)
    return directory


def record(directory: Path) -> None:
    """Write the marker listing everything now under ``directory`` (all made by the demo)."""
    made = sorted(_entries(directory))
    temporary = directory / f"{MARKER}.tmp"
    temporary.write_text(json.dumps({"made_by": "crdtdb demo", "paths": made}, indent=1))
    temporary.replace(directory / MARKER)


@dataclass(slots=True)
class Workspace:
    """Where a demo runs: ``path``, and whether it goes when the demo ends."""

    path: Path
    temporary: bool
    """Made by the demo for this run (in the system's temporary folder)."""
    keep: bool = False
    """Set it to leave a temporary workspace behind (say, for a look at a failure)."""


@contextlib.contextmanager
def demo_directory(keep: Path | None) -> Iterator[Workspace]:
    """``keep`` prepared, and recorded at the end; or a temporary directory, removed at the end."""
    if keep is not None:
        workspace = Workspace(prepare(keep), temporary=False, keep=True)
    else:
        workspace = Workspace(Path(tempfile.mkdtemp(prefix="crdtdb-demo-")), temporary=True)
    try:
        yield workspace
    finally:
        if not workspace.temporary:
            record(workspace.path)
        elif not workspace.keep:  # made by mkdtemp above: everything in it is the demo's
            shutil.rmtree(workspace.path, ignore_errors=True)


def _entries(directory: Path) -> Iterator[str]:
    """Every file and folder under ``directory`` (not following links), as relative POSIX paths."""
    for root, folders, files in os.walk(directory):
        base = Path(root).relative_to(directory)
        for name in [*folders, *files]:
            path = (base / name).as_posix()
            if path not in (MARKER, f"{MARKER}.tmp"):
                yield path


def _listed(directory: Path) -> set[str]:
    try:
        paths = json.loads((directory / MARKER).read_text())["paths"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{directory / MARKER} cannot be read, so the demo cannot tell which files"
            f" there it made: remove {directory} yourself, or give another directory"
        ) from None
    safe = {
        p
        for p in paths
        if isinstance(p, str) and ".." not in PurePosixPath(p).parts and not os.path.isabs(p)
    }
    return safe


def _remove_earlier_demo(directory: Path) -> None:
    """Remove what an earlier demo made in ``directory``; refuse (removing nothing) if it
    holds anything else."""
    listed = _listed(directory)
    foreign = sorted(set(_entries(directory)) - listed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise UsageError(
            f"{directory} holds an earlier demo's files and some it did not make ({shown});"
            " the demo deletes only its own: remove them (or the whole directory) yourself,"
            " or give another directory"
        )
    for path in sorted(listed, key=lambda p: p.count("/"), reverse=True):
        target = directory / path
        if target.is_dir() and not target.is_symlink():
            with contextlib.suppress(OSError):  # not empty: it held only listed entries
                target.rmdir()
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
