"""What an operator sees of real ``crdtdb serve`` daemons: refusals, status, logs, metrics.

Each test starts daemons as child processes (stopped at the end whatever
happens) and waits for conditions with deadlines:

- a second daemon on a data directory is refused, with the first one's pid,
  until the first is killed;
- a misconfiguration (certificate, key, CA, files, port) is refused at start
  with its cause, before the data directory is created; ``--check`` agrees;
- a dial that the peer's TLS refuses is logged with the reason, at WARNING,
  by the side that dials; a peer that never dials us is named;
- ``crdtdb status`` says whether the daemon runs (exit status too), and
  "last contact" follows the peer's heartbeats;
- the metrics endpoint counts what a replication did, and the logs and the
  status say what happened when the peer stopped.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import crdtdb
from crdtdb import membership
from crdtdb.sync.certs import init_ca, issue

from .harness.config import make_certs
from .harness.daemon import daemon_status
from .harness.ports import free_port, free_ports
from .harness.process import Child, Group, file_tail, python_env
from .harness.wait import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
FAST = {"reconnect_min": 0.05, "reconnect_max": 0.5, "anti_entropy_interval": 0.5}


# ------------------------------------------------------------------ helpers


def write_config(
    root: Path,
    region: str,
    port: int,
    peers: Mapping[str, int],
    *,
    name: str | None = None,
    data_dir: str | None = None,
    tls: Mapping[str, str] | None = None,
    metrics: int | None = None,
    sync: Mapping[str, float] = FAST,
) -> Path:
    """A region's TOML config in ``root`` (certificates in ``root/certs``); peers on loopback."""
    files = {"ca": "certs/ca.pem", "cert": f"certs/{region}.pem", "key": f"certs/{region}.key"}
    files.update(tls or {})
    lines = [
        f'region = "{region}"',
        f'data_dir = "{data_dir or f"data/{region}"}"',
        f'listen = "127.0.0.1:{port}"',
        "[tls]",
        *(f'{key} = "{path}"' for key, path in files.items()),
        "[sync]",
        *(f"{key} = {value}" for key, value in sync.items()),
    ]
    if metrics is not None:
        lines += ["[metrics]", f'listen = "127.0.0.1:{metrics}"']
    for peer, peer_port in peers.items():
        lines += ["[[peers]]", f'region = "{peer}"', f'address = "127.0.0.1:{peer_port}"']
    path = root / f"{name or region}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(config: Path, *options: str) -> Child:
    """``crdtdb serve --config CONFIG OPTIONS``, logging to ``CONFIG.log``; stopped by SIGTERM."""
    return Child(
        [sys.executable, "-m", "crdtdb", "serve", "--config", str(config), *options],
        name=f"daemon {config.stem}",
        log=config.with_suffix(".log"),
        read_lines=False,
        cwd=config.parent,
        stop_signal=signal.SIGTERM,
    )


def crdtdb_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``crdtdb ARGS`` to its end (a daemon that should have been refused is killed at the
    deadline, and the test fails)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "crdtdb", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=cwd,
            env=python_env(),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`crdtdb {' '.join(map(str, args))}` did not exit: {exc}") from None


def wait_running(child: Child, data_dir: Path, peers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Wait until ``child`` reported its status (and ``peers`` connected); return the status."""

    def ready() -> dict[str, Any] | None:
        status = daemon_status(data_dir)
        if status is None or status.get("pid") != child.pid:
            return None
        connected = {p["region"] for p in status["peers"] if p["connected"]}
        return status if connected >= set(peers) else None

    def alive() -> None:
        if not child.running:
            raise AssertionError(f"the daemon exited: {child.describe()}")

    status = wait_until(ready, TIMEOUT, f"{child.name} to run with {peers} connected", check=alive)
    assert status is not None
    return status


def peer_status(data_dir: Path, peer: str) -> dict[str, Any]:
    """What the daemon last reported of ``peer`` (empty if nothing yet)."""
    status = daemon_status(data_dir) or {"peers": []}
    return next((p for p in status["peers"] if p["region"] == peer), {})


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a daemon's /metrics, by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(port: int, name: str, **labels: str) -> float | None:
    return scrape(port).get((name, frozenset(labels.items())))


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def log_lines(config: Path) -> list[str]:
    log = config.with_suffix(".log")
    return log.read_text(errors="replace").splitlines() if log.exists() else []


@pytest.fixture
def group() -> Iterator[Group]:
    """Every daemon a test starts: stopped at the end, whatever happened."""
    with Group() as started:
        yield started


# ------------------------------------------------- one daemon per data directory


def test_a_second_daemon_on_a_data_dir_is_refused_until_the_first_is_gone(
    tmp_path: Path, group: Group
) -> None:
    make_certs(tmp_path / "certs", ["eu"])
    first_port, second_port = free_ports(2)
    config = write_config(tmp_path, "eu", first_port, {})
    # Another config (another port) on the same data directory: that is the mistake.
    other = write_config(tmp_path, "eu", second_port, {}, name="eu-again")
    data_dir = tmp_path / "data" / "eu"
    first = group.add(serve(config))
    wait_running(first, data_dir)
    refused = crdtdb_cli("serve", "--config", other)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr == (
        f"error: another `crdtdb serve` (pid {first.pid}) already serves {data_dir.resolve()}:"
        " stop it first, or give this daemon a data_dir of its own\n"
    )
    assert daemon_status(data_dir)["pid"] == first.pid  # type: ignore[index]
    first.kill()  # SIGKILL: the kernel releases the lock
    second = group.add(serve(other))
    assert wait_running(second, data_dir)["listen"] == f"127.0.0.1:{second_port}"


# ----------------------------------------------------- misconfiguration at start


def test_misconfiguration_is_refused_at_start_with_its_cause(tmp_path: Path) -> None:
    make_certs(tmp_path / "certs", ["eu", "us"])
    init_ca(tmp_path / "other")
    issue(tmp_path / "other", "eu")
    port = free_port()
    cases = [
        (
            {"cert": "certs/us.pem", "key": "certs/us.key"},
            "us.pem is for region 'us', but this config's region is 'eu'",
        ),
        ({"key": "certs/us.key"}, "us.key is not the key of the certificate"),
        ({"cert": "certs/missing.pem"}, "[tls] cert: no file at "),
        ({"ca": "certs/missing.pem"}, "[tls] ca: no file at "),
        (
            {"cert": "other/eu.pem", "key": "other/eu.key"},
            "/other/eu.pem (issued by CN=crdtdb cluster CA) is not signed by the CA in ",
        ),
    ]
    for tls, cause in cases:
        config = write_config(tmp_path, "eu", port, {"us": free_port()}, tls=tls)
        for command in (("serve", "--config", config), ("serve", "--config", config, "--check")):
            done = crdtdb_cli(*command)
            assert done.returncode == 2 and done.stderr.startswith("error: "), (tls, done)
            assert done.stderr.count("\n") == 1 and cause in done.stderr, (tls, done.stderr)
            assert not (tmp_path / "data").exists(), f"{command} created the data directory"
    config = write_config(tmp_path, "eu", port, {"us": free_port()})
    checked = crdtdb_cli("serve", "--config", config, "--check")
    assert checked.returncode == 0 and f"ok: {config} can be served" in checked.stdout
    assert not (tmp_path / "data").exists()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        for options in ((), ("--check",)):
            done = crdtdb_cli("serve", "--config", config, *options)
            assert done.returncode == 1, done
            assert done.stderr == (
                f"error: cannot listen for peers (QUIC, UDP) on 127.0.0.1:{port}: the port is"
                " in use (another daemon, or another program?)\n"
            )


# ------------------------------------------------------- misconfiguration at run time


def test_a_wrong_peer_region_is_logged_with_the_tls_reason_by_the_dialer(
    tmp_path: Path, group: Group
) -> None:
    make_certs(tmp_path / "certs", ["eu", "us"])
    eu_port, us_port = free_ports(2)
    us = write_config(tmp_path, "us", us_port, {"eu": eu_port})
    eu = write_config(tmp_path, "eu", eu_port, {"usa": us_port})  # a typo: us runs there
    group.add(serve(us))
    eu_daemon = group.add(serve(eu))
    wanted = (
        f"WARNING crdtdb.sync: eu: cannot reach usa at 127.0.0.1:{us_port}: the QUIC/TLS"
        " handshake failed: hostname 'usa.crdtdb' doesn't match"
    )

    def refusals() -> list[str]:
        return [line for line in log_lines(eu) if wanted in line]

    wait_until(refusals, TIMEOUT, "eu to log why usa refused it", check=group.check)
    assert f"(the server at 127.0.0.1:{us_port} is not region 'usa'" in refusals()[0]
    eu_dir = tmp_path / "data" / "eu"
    wait_running(eu_daemon, eu_dir)
    wait_until(
        lambda: "doesn't match" in (peer_status(eu_dir, "usa").get("last_error") or ""),
        TIMEOUT,
        "eu's status to say why",
    )
    # It keeps dialing (the listener sees each attempt), but says so once, not each time.

    def attempts() -> int:
        return sum("session with" in line for line in log_lines(us))

    wait_until(lambda: attempts() >= 4, TIMEOUT, "eu to dial again a few times")
    assert len(refusals()) == 1, log_lines(eu)
    assert not [line for line in log_lines(eu) if " quic: " in line]  # no duplicate from aioquic


def test_a_peer_that_never_dials_us_is_named(tmp_path: Path, group: Group) -> None:
    make_certs(tmp_path / "certs", ["eu", "us"])
    eu_port, us_port = free_ports(2)
    us = write_config(tmp_path, "us", us_port, {"eu": eu_port})
    eu = write_config(tmp_path, "eu", eu_port, {})  # eu dials ("eu" < "us") but lists no one
    group.add(serve(eu))
    us_daemon = group.add(serve(us))
    wanted = (
        "WARNING crdtdb.sync: us: eu has not connected for 5 s; it dials us (its name sorts"
        " first): check that it runs, and that its config lists us as a peer at"
        f" 127.0.0.1:{us_port}"
    )
    wait_until(
        lambda: any(wanted in line for line in log_lines(us)),
        TIMEOUT,
        "us to say that eu never dialed",
        check=group.check,
    )
    us_dir = tmp_path / "data" / "us"
    wait_running(us_daemon, us_dir)
    wait_until(  # the status file is rewritten every second: it follows the log line
        lambda: "it dials us" in (peer_status(us_dir, "eu").get("last_error") or ""),
        TIMEOUT,
        "us's status to name eu as the peer that never dialed",
    )


# ------------------------------------------------------------------------ status


def test_status_says_whether_the_daemon_runs_and_when_the_peer_was_heard(
    tmp_path: Path, group: Group
) -> None:
    make_certs(tmp_path / "certs", ["eu", "us"])
    eu_port, us_port = free_ports(2)
    # No anti-entropy rounds while the test watches: only heartbeats (every 1 s) come.
    quiet = {**FAST, "anti_entropy_interval": 300, "heartbeat_interval": 1.0}
    eu = write_config(tmp_path, "eu", eu_port, {"us": us_port}, sync=quiet)
    us = write_config(tmp_path, "us", us_port, {"eu": eu_port}, sync=quiet)
    us_dir = tmp_path / "data" / "us"
    group.add(serve(eu))
    us_daemon = group.add(serve(us))
    since = wait_running(us_daemon, us_dir, ("eu",))["time"]

    def idle_for_a_while() -> dict[str, Any] | None:
        status = daemon_status(us_dir)
        return status if status and status["time"] > since + 4 else None

    status = wait_until(idle_for_a_while, TIMEOUT, "us to be connected, idle, for 4 s")
    assert status is not None
    (peer,) = status["peers"]
    assert peer["connected"] and status["time"] - peer["last_contact"] < 2.5, peer
    shown = crdtdb_cli("status", us)
    assert shown.returncode == 0, shown
    assert shown.stdout.startswith(f"region us listening on 127.0.0.1:{us_port} pid ")
    assert "  eu         connected    last contact " in shown.stdout

    assert us_daemon.stop(strict=True) == 0  # SIGTERM: a clean stop
    shown = crdtdb_cli("status", us)
    assert shown.returncode == 1 and shown.stdout.startswith("region us NOT RUNNING: stopped ")
    raw = crdtdb_cli("status", us, "--json")
    assert raw.returncode == 1
    assert json.loads(raw.stdout)["state"] == "stopped" and not json.loads(raw.stdout)["running"]

    crashed = group.add(serve(us))
    wait_running(crashed, us_dir)
    crashed.kill()
    shown = crdtdb_cli("status", us_dir)
    assert shown.returncode == 1, shown
    assert shown.stdout.startswith(
        f"region us NOT RUNNING: its process (pid {crashed.pid}) is gone: crashed or killed"
    )


# ---------------------------------------------------------------- metrics and logs


def membership_records(data_dir: Path) -> int:
    """Records of the region's own on the membership document."""
    with crdtdb.open(data_dir) as db:
        own = db.records_from(db.region, 0, 100_000)
        return sum(record.doc_id == membership.MEMBERS_DOC for record in own)


def test_metrics_count_what_replication_did_and_status_and_logs_tell_a_peer_stopped(
    tmp_path: Path, group: Group
) -> None:
    make_certs(tmp_path / "certs", ["eu", "us"])
    eu_port, us_port, eu_metrics, us_metrics = free_ports(4)
    eu = write_config(tmp_path, "eu", eu_port, {"us": us_port}, metrics=eu_metrics)
    us = write_config(tmp_path, "us", us_port, {"eu": eu_port}, metrics=us_metrics)
    eu_daemon = group.add(serve(eu, "--log-format", "json"))
    us_daemon = group.add(serve(us))
    wait_running(eu_daemon, tmp_path / "data" / "eu", ("us",))
    wait_running(us_daemon, tmp_path / "data" / "us", ("eu",))
    assert healthz(eu_metrics) == (200, "ok\n") and healthz(us_metrics) == (200, "ok\n")
    assert metric(eu_metrics, "crdtdb_peer_up", peer="us") == 1

    with crdtdb.open(tmp_path / "data" / "eu") as db:
        for i in range(40):
            db.put(f"items/eu{i}", {"i": i})
    with crdtdb.open(tmp_path / "data" / "us") as db:
        for i in range(5):
            db.put(f"items/us{i}", {"i": i})

    def counted() -> bool:
        # Each daemon also committed its membership records at start (see crdtdb.membership).
        from_eu = 40 + membership_records(tmp_path / "data" / "eu")
        from_us = 5 + membership_records(tmp_path / "data" / "us")
        return (
            metric(us_metrics, "crdtdb_remote_records_applied_total", peer="eu") == from_eu
            and metric(eu_metrics, "crdtdb_remote_records_applied_total", peer="us") == from_us
            and metric(eu_metrics, "crdtdb_commits_seen_total") == 40
            and metric(us_metrics, "crdtdb_commits_seen_total") == 5
        )

    wait_until(counted, TIMEOUT, "the metrics to count the writes", check=group.check)
    at_us, at_eu = scrape(us_metrics), scrape(eu_metrics)

    def us_(name: str, **labels: str) -> float:
        return at_us[name, frozenset(labels.items())]

    def eu_(name: str, **labels: str) -> float:
        return at_eu[name, frozenset(labels.items())]

    received = us_("crdtdb_peer_received_records_total", peer="eu")
    assert received >= 40 and eu_("crdtdb_peer_sent_records_total", peer="us") >= 40
    assert us_("crdtdb_replication_lag_seconds_count", peer="eu") == received
    assert us_("crdtdb_replication_lag_seconds_bucket", peer="eu", le="+Inf") == received
    assert us_("crdtdb_peer_received_bytes_total", peer="eu") > 0
    assert eu_("crdtdb_peer_sent_bytes_total", peer="us") > 0
    wait_until(
        lambda: (metric(eu_metrics, "crdtdb_anti_entropy_rounds_total", peer="us") or 0) >= 1,
        TIMEOUT,
        "eu to count an anti-entropy round with us",
    )
    assert eu_("crdtdb_anti_entropy_repaired_documents_total", peer="us") >= 0  # it exists
    assert eu_("crdtdb_wal_bytes") > 0
    wait_until(  # the global frontier is known once both regions' clocks were gossiped
        lambda: 0 <= (metric(eu_metrics, "crdtdb_frontier_age_seconds") or -1) < 60,
        TIMEOUT,
        "eu's frontier age to be a matter of seconds",
    )
    assert not [key for key in at_eu if key[0] == "crdtdb_refused_total"]

    assert us_daemon.stop(strict=True) == 0
    wait_until(
        lambda: metric(eu_metrics, "crdtdb_peer_up", peer="us") == 0,
        TIMEOUT,
        "eu's peer_up for us to fall to 0",
    )
    wait_until(
        lambda: peer_status(tmp_path / "data" / "eu", "us").get("connected") is False,
        TIMEOUT,
        "eu's status to report us disconnected (it is rewritten every second)",
    )
    shown = crdtdb_cli("status", eu)
    assert shown.returncode == 0, shown
    peers = shown.stdout.split("\nmembers:")[0]  # the members follow, one line each
    (line,) = [row for row in peers.splitlines() if row.startswith("  us ")]
    assert "DISCONNECTED" in line and "last contact " in line and "it lacks 0 records" in line
    events = [json.loads(line) for line in log_lines(eu)]
    assert all(event["region"] == "eu" for event in events), file_tail(eu.with_suffix(".log"))
    happened = [(e.get("event"), e.get("peer"), e["level"]) for e in events]
    assert ("peer_connected", "us", "info") in happened
    assert ("peer_lost", "us", "info") in happened
    assert happened.index(("peer_connected", "us", "info")) < happened.index(
        ("peer_lost", "us", "info")
    )
    assert healthz(eu_metrics) == (200, "ok\n")
