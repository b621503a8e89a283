"""The analytics area of one region directory: the manifest of each generation of the
materialisation, readers' leases on generations, and collecting unused files.

``DIR/analytics/manifest.json`` names the files of the current generation;
``gen/G.json`` lists generation G's files and ``gen/G.lock`` is its lease (a
shared advisory lock held by each reader of G, released by the operating
system when the reader exits). Only files a generation names are ever
deleted: nothing crdtdb did not create. See :mod:`.materialize` for how
generations are made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crdtdb
from crdtdb.errors import StoreError

__all__ = ["AREA", "Area", "Manifest", "RefreshResult", "area_of", "read_manifest"]

log = logging.getLogger("crdtdb.query")

AREA = "analytics"
"""The folder, inside a region directory, that holds the materialisation."""
FORMAT = 2


@dataclass
class Manifest:
    """One generation of the materialisation (``manifest.json``)."""

    generation: int = 0
    position: int = 0
    """The store's newest log id this generation reflects."""
    hlc: int = 0
    """The store's clock at that cut."""
    epoch: int = 0
    """The store's compaction epoch at that cut."""
    region: str = ""
    built_ms: int = 0
    next_seg: int = 1
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per collection: ``fields`` (name -> type, first seen first), ``files`` (each
    ``{"path", "seg", "rows", "fields"}``: the fields it has columns for, with types)."""
    dead: list[dict[str, Any]] = field(default_factory=list)
    """Files of (_seg, row): rows of earlier files superseded by later ones (``_seg`` is
    a file's own number, ``row`` the row's position in it: integers join fast)."""
    changes: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    frontier: int = 0
    complete: int = 0
    """This store's local frontier at the cut: it held every record with an HLC at or
    below it. A row a file of this generation holds, with an HLC at or below some
    ``t`` no greater than this, is therefore its document's state at ``t`` (time
    travel reads old versions from superseded rows on that ground)."""
    live_rows: int = 0
    dead_rows: int = 0

    def files(self) -> list[str]:
        paths = [f["path"] for c in self.collections.values() for f in c["files"]]
        return paths + [f["path"] for f in self.dead] + [f["path"] for f in self.changes]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        if data.pop("format", None) != FORMAT:
            raise StoreError("the analytics manifest has an unknown format: refresh(full=True)")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What a refresh did."""

    generation: int
    documents: int
    """Documents read from the store and written (re-serialised)."""
    records: int
    """Log records added to ``changes``."""
    merged: bool
    """Whether the segments were merged into one."""
    seconds: float


class Area:
    """The ``analytics`` folder of one region directory."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.root = store / AREA
        self.manifest_path = self.root / "manifest.json"

    def make(self) -> None:
        (self.root / "gen").mkdir(parents=True, exist_ok=True)
        (self.root / "seg").mkdir(exist_ok=True)

    @contextlib.contextmanager
    def refresh_lock(self) -> Iterator[None]:
        self.make()
        with open(self.root / "refresh.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> Manifest | None:
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            if isinstance(data, dict) and data.get("format") != FORMAT:
                log.warning("%s: a materialisation of another format: rebuilding it", self.root)
                return None  # its files stay until a generation of ours collects them
            return Manifest.from_json(data)
        except (ValueError, TypeError) as exc:
            raise StoreError(
                f"{self.manifest_path} does not read ({exc}): rebuild it with"
                " crdtdb.query.refresh(dir, full=True)"
            ) from None

    def write(self, manifest: Manifest) -> None:
        """Publish a generation: its file list and lease lock first, then the manifest."""
        gen = self.root / "gen"
        _write_atomic(gen / f"{manifest.generation}.json", json.dumps(manifest.files()))
        (gen / f"{manifest.generation}.lock").touch()
        _write_atomic(self.manifest_path, json.dumps(manifest.to_json(), indent=1))

    def lease(self, generation: int) -> int | None:
        """A shared lock on a generation (a file descriptor), or None if it is gone."""
        path = self.root / "gen" / f"{generation}.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            still_there = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_there = False
        if not still_there:  # collected between our look and our lock
            os.close(fd)
            return None
        return fd

    def collect(self, current: Manifest) -> int:
        """Delete the files of generations no reader leases; return how many files went.

        Runs under the refresh lock, so no refresh is writing files meanwhile.
        """
        gen = self.root / "gen"
        keep = set(current.files())
        unused: list[Path] = []
        for listing in sorted(gen.glob("*.json"), key=lambda p: _int(p.stem)):
            number = _int(listing.stem)
            if number == current.generation:
                continue
            lock = gen / f"{number}.lock"
            with open(lock, "a+b") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a reader holds it
                    keep.update(json.loads(listing.read_text()))
                    continue
                unused.append(listing)
        removed = 0
        for listing in unused:
            for name in json.loads(listing.read_text()):
                if name not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        (self.root / name).unlink()
                        removed += 1
            listing.unlink()
            (gen / f"{listing.stem}.lock").unlink(missing_ok=True)
        for folder in (self.root / "seg").iterdir():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only empty ones go
        return removed


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def area_of(db: crdtdb.Database) -> Area:
    return Area(db.path)


def read_manifest(db: crdtdb.Database) -> Manifest | None:
    return Area(db.path).read()
