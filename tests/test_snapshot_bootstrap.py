"""Bootstrap by snapshot between real daemons on loopback (``crdtdb.sync.bootstrap``).

eu holds documents; us starts on an empty directory and pulls eu's store.
Faults are injected into eu's sender through ``FAULT_ENV`` (tests only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import crdtdb
from crdtdb.database import BOOTSTRAP_MARKER
from crdtdb.errors import BootstrappingError, NoStoreError
from crdtdb.sync.bootstrap import BOOTSTRAP_PART
from crdtdb.sync.snapshot import FAULT_ENV

from .harness.config import write_region_config
from .harness.daemon import start_daemon
from .harness.ports import free_ports
from .harness.process import Child, python_env
from .harness.wait import wait_until

pytestmark = pytest.mark.integration

DOCS = 300
FAST = {
    "anti_entropy_interval": 0.5,
    "heartbeat_interval": 0.2,
    "reconnect_min": 0.05,
    "reconnect_max": 0.5,
}


@dataclass
class Pair:
    root: Path
    certs: Path
    ports: list[int]
    children: list[Child]

    def dir(self, region: str) -> Path:
        return self.root / region

    def log(self, region: str) -> Path:
        return self.root / f"{region}.log"

    def start(self, region: str, *, fault: str | None = None) -> Child:
        other = "us" if region == "eu" else "eu"
        mine, theirs = (0, 1) if region == "eu" else (1, 0)
        config = write_region_config(
            self.root / f"{region}.toml",
            region=region,
            data_dir=self.dir(region),
            port=self.ports[mine],
            certs=self.certs,
            peers={other: f"127.0.0.1:{self.ports[theirs]}"},
            sync=FAST,
        )
        child = start_daemon(config, log=self.log(region), name=f"daemon {region}")
        if fault is not None:
            child.stop()
            env = python_env(**{FAULT_ENV: fault})
            child = Child(
                child.argv,
                name=f"daemon {region}",
                log=self.log(region),
                read_lines=False,
                env=env,
                stop_signal=child.stop_signal,
            )
        self.children.append(child)
        return child

    def text(self, region: str) -> str:
        return self.log(region).read_text(errors="replace") if self.log(region).exists() else ""


@contextlib.contextmanager
def pair(tmp_path: Path, certs: Path) -> Iterator[Pair]:
    setup = Pair(tmp_path, certs, free_ports(2), [])
    with crdtdb.open(setup.dir("eu"), region="eu") as eu, eu.transaction() as tx:
        for i in range(DOCS):
            tx.put(f"notes/{i}", {"i": i, "text": "x" * (i % 50)})
    try:
        yield setup
    finally:
        for child in setup.children:
            child.stop()


def held(directory: Path) -> dict[str, object]:
    with crdtdb.open(directory) as db:
        return {doc_id: db.get(doc_id) for doc_id in db.list("notes")}


def converged(setup: Pair, count: int = DOCS) -> None:
    def same() -> bool:
        if not (setup.dir("us") / "crdtdb.sqlite3").exists():
            return False
        try:
            with crdtdb.open(setup.dir("us")) as us, crdtdb.open(setup.dir("eu")) as eu:
                return len(us.list("notes")) >= count and us.merkle_root() == eu.merkle_root()
        except (BootstrappingError, NoStoreError):
            return False

    wait_until(same, 60, "us to hold eu's documents, with the same Merkle root")


def test_a_joining_region_takes_a_snapshot_then_follows_by_delta_push(
    tmp_path: Path, certs: Path
) -> None:
    with pair(tmp_path, certs) as setup:
        setup.start("eu")
        setup.start("us")
        converged(setup)
        assert "bootstrapped from eu's snapshot" in setup.text("us")
        assert held(setup.dir("us")) == held(setup.dir("eu"))
        with crdtdb.open(setup.dir("us")) as us:
            assert us.region == "us"
        # Later writes arrive by the normal delta push, both ways; ours number from 1.
        with crdtdb.open(setup.dir("eu")) as eu:
            eu.put("notes/later", {"from": "eu"})
        with crdtdb.open(setup.dir("us")) as us:
            us.put("notes/ours", {"from": "us"})
            wait_until(lambda: us.get("notes/later") is not None, 30, "eu's later write in us")
            # Ours (the daemon's membership entries, then this write) number from 1.
            own = [r.seq for r in us.changes() if r.origin == "us"]
            assert own == list(range(1, len(own) + 1))
        with crdtdb.open(setup.dir("eu")) as eu:
            wait_until(lambda: eu.get("notes/ours") is not None, 30, "us's write in eu")
        assert not (setup.dir("us") / BOOTSTRAP_PART).exists()
        assert not (setup.dir("us") / BOOTSTRAP_MARKER).exists()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("corrupt", "SHA-256 differs"),
        ("truncate", "truncated"),
        ("root", "Merkle root"),
    ],
)
def test_a_bad_snapshot_is_refused_and_records_sync_instead(
    tmp_path: Path, certs: Path, fault: str, reason: str
) -> None:
    with pair(tmp_path, certs) as setup:
        setup.start("eu", fault=fault)
        setup.start("us")
        wait_until(lambda: "syncing record by record" in setup.text("us"), 60, "the fallback")
        text = setup.text("us")
        assert text.count(reason) == 3, text[-3000:]  # each attempt refused, for that reason
        assert "bootstrapped from" not in text
        converged(setup)  # nothing was lost: records carried everything


def test_a_daemon_killed_mid_bootstrap_restarts_cleanly_and_tries_again(
    tmp_path: Path, certs: Path
) -> None:
    with pair(tmp_path, certs) as setup:
        eu = setup.start("eu", fault="stall")
        us = setup.start("us")
        part = setup.dir("us") / BOOTSTRAP_PART
        wait_until(lambda: part.exists() and part.stat().st_size > 0, 60, "a part received")
        # An application opening the joining directory meanwhile is told to wait.
        with pytest.raises(BootstrappingError, match="retry once it has finished"):
            crdtdb.open(setup.dir("us"), region="us")
        us.kill()
        assert not (setup.dir("us") / "crdtdb.sqlite3").exists()
        eu.stop()
        setup.start("eu")
        setup.start("us")
        converged(setup)
        assert "bootstrapped from eu's snapshot" in setup.text("us")
        assert not part.exists()


def test_a_region_that_holds_data_is_never_replaced(tmp_path: Path, certs: Path) -> None:
    with pair(tmp_path, certs) as setup:
        with crdtdb.open(setup.dir("us"), region="us") as us:
            us.put("notes/mine", {"from": "us"})
        setup.start("eu")
        setup.start("us")
        converged(setup, DOCS + 1)
        text = setup.text("us")
        assert "snapshot" not in text
        with crdtdb.open(setup.dir("us")) as us:
            assert us.get("notes/mine") == {"from": "us"}
            own = [r.seq for r in us.changes() if r.origin == "us"]
            assert own[0] == 1


def test_a_region_whose_peer_is_down_serves_at_once_and_syncs_by_records(
    tmp_path: Path, certs: Path
) -> None:
    with pair(tmp_path, certs) as setup:
        setup.start("us")
        wait_until(lambda: "cannot reach it" in setup.text("us"), 60, "us to give up on eu")
        wait_until(lambda: "listening on" in setup.text("us"), 30, "us to serve")
        with crdtdb.open(setup.dir("us")) as us:  # no marker left behind: applications open
            assert us.region == "us"
        setup.start("eu")
        converged(setup)
        assert "bootstrapped from" not in setup.text("us")
