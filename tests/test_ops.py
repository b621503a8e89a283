"""The daemon's operator surface, piece by piece and in process (fast tests).

The data directory lock, the checks made before serving (TLS files, ports,
the ``[metrics]`` key), the log formats, how ``crdtdb status`` decides that
a daemon is down, the metrics and ``/healthz``. The same, end to end with real
daemons, is in ``test_ops_daemon.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import crdtdb
from crdtdb.sync.certs import TlsFilesError, check_own_files, init_ca, issue
from crdtdb.sync.config import ConfigError, RegionConfig, load_config
from crdtdb.sync.errors import StartupError
from crdtdb.sync.lock import LOCK_FILE, DataDirLock, DataDirLockedError
from crdtdb.sync.logs import JsonFormatter, Repeats, setup
from crdtdb.sync.preflight import check_data_dir, check_ports
from crdtdb.sync.status import STATUS_FILE, down_reason

from .harness.config import region_config
from .harness.ports import free_port
from .harness.wait import wait_for, wait_until

# -- one daemon per data directory -----------------------------------------------------------


def test_a_data_dir_is_locked_by_one_daemon_until_it_lets_go(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(DataDirLockedError) as refused:
        DataDirLock(tmp_path)
    assert refused.value.pid == os.getpid()
    assert f"(pid {os.getpid()}) already serves {tmp_path}" in str(refused.value)
    first.release()
    with DataDirLock(tmp_path):  # free again, the file left behind notwithstanding
        pass


# -- the region's own TLS files ----------------------------------------------------------------


def own(certs: Path, region: str, cert: str, key: str, ca: Path | None = None) -> dict[str, str]:
    return check_own_files(
        region=region, ca=ca or certs / "ca.pem", cert=certs / cert, key=certs / key
    )


def test_own_tls_files_that_fit_together_pass(certs: Path) -> None:
    found = own(certs, "eu", "eu.pem", "eu.key")
    assert found["region"] == "eu" and "crdtdb cluster CA" in found["issuer"]


@pytest.mark.parametrize(
    ("region", "cert", "key", "says"),
    [
        ("eu", "us.pem", "us.key", "/us.pem is for region 'us', but this config's region is 'eu'"),
        ("eu", "eu.pem", "us.key", "/us.key is not the key of the certificate"),
        ("eu", "nope.pem", "eu.key", "[tls] cert: no file at "),
        ("eu", "eu.pem", "nope.key", "[tls] key: no file at "),
        ("eu", "ca.pem", "ca.key", "is a CA certificate, not a region's"),
        ("eu", "eu.pem", "eu.pem", "is not an unencrypted PEM private key"),
    ],
)
def test_own_tls_files_that_do_not_fit_are_refused_with_the_cause(
    certs: Path, region: str, cert: str, key: str, says: str
) -> None:
    with pytest.raises(TlsFilesError) as refused:
        own(certs, region, cert, key)
    assert says in str(refused.value)


def test_a_certificate_from_another_ca_is_refused(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_ca(other)
    issue(other, "eu")
    with pytest.raises(TlsFilesError, match=r"is not signed by the CA in .*/certs/ca\.pem"):
        check_own_files(
            region="eu", ca=certs / "ca.pem", cert=other / "eu.pem", key=other / "eu.key"
        )
    with pytest.raises(TlsFilesError, match="is not a PEM certificate"):
        check_own_files(
            region="eu", ca=certs / "eu.key", cert=certs / "eu.pem", key=certs / "eu.key"
        )


# -- ports, data directory, [metrics] ----------------------------------------------------------


def config_with(tmp_path: Path, certs: Path, **changes: Any) -> RegionConfig:
    config = region_config(tmp_path, certs, "eu", [])
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return RegionConfig(**{**fields, **changes})


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path, certs: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as refused:
            check_ports(config_with(tmp_path, certs, port=port))
    assert str(refused.value) == (
        f"cannot listen for peers (QUIC, UDP) on 127.0.0.1:{port}: the port is in use"
        " (another daemon, or another program?)"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = ("127.0.0.1", taken.getsockname()[1])
        config = config_with(tmp_path, certs, port=free_port(), metrics_listen=metrics)
        with pytest.raises(StartupError, match=r"cannot serve metrics \(HTTP, TCP\) on 127"):
            check_ports(config)


def test_a_data_dir_that_cannot_be_used_is_refused_without_creating_it(
    tmp_path: Path, certs: Path
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_data_dir(config_with(tmp_path, certs, data_dir=tmp_path / "file"))
    line = check_data_dir(config_with(tmp_path, certs, data_dir=tmp_path / "a" / "b"))
    assert line.endswith("(will be created)") and not (tmp_path / "a").exists()


def write_toml(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "eu.toml"
    path.write_text(
        'region = "eu"\ndata_dir = "data"\nlisten = "127.0.0.1:7401"\n'
        '[tls]\nca = "ca.pem"\ncert = "eu.pem"\nkey = "eu.key"\n' + extra
    )
    return path


def test_the_metrics_key(tmp_path: Path) -> None:
    assert load_config(write_toml(tmp_path, "")).metrics_listen is None
    config = load_config(write_toml(tmp_path, '[metrics]\nlisten = "127.0.0.1:9464"\n'))
    assert config.metrics_listen == ("127.0.0.1", 9464)
    for extra, says in [
        ("[metrics]\n", "[metrics]: the key 'listen' is required"),
        ('[metrics]\nlisten = "9464"\n', "[metrics] listen: write the address as HOST:PORT"),
        ('[metrics]\nlisten = "127.0.0.1:1"\nport = 2\n', "unknown key(s) ['port'] in [metrics]"),
    ]:
        with pytest.raises(ConfigError) as refused:
            load_config(write_toml(tmp_path, extra))
        assert says in str(refused.value)


# -- logs ------------------------------------------------------------------------------------


def log_record(message: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("crdtdb.sync", logging.WARNING, __file__, 1, message, (), None)
    record.__dict__.update(fields)
    return record


def test_json_log_lines_carry_the_event_fields() -> None:
    line = json.loads(
        JsonFormatter("eu").format(log_record("eu: x", event="peer_lost", peer="us", n=3))
    )
    assert line["message"] == "eu: x" and line["level"] == "warning"
    assert line["region"] == "eu" and line["logger"] == "crdtdb.sync"
    assert (line["event"], line["peer"], line["n"]) == ("peer_lost", "us", 3)
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_aioquic_is_kept_at_warning_and_its_connection_errors_are_left_to_us() -> None:
    root, quic = logging.getLogger(), logging.getLogger("quic")
    saved = (root.handlers[:], root.level, quic.level, quic.filters[:])
    try:
        setup("info", "text")
        assert quic.getEffectiveLevel() == logging.WARNING
        error = "[0123abcd] Error: 298, reason: hostname 'x.crdtdb' doesn't match"
        assert not quic.filter(log_record(error))
        assert quic.filter(log_record("[0123abcd] something else went wrong"))
        setup("debug", "json")
        assert quic.getEffectiveLevel() == logging.DEBUG and quic.filter(log_record(error))
    finally:
        root.handlers[:], quic.filters[:] = saved[0], saved[3]
        root.setLevel(saved[1])
        quic.setLevel(saved[2])


def test_a_recurring_condition_is_logged_when_it_starts_changes_or_every_minute() -> None:
    repeats = Repeats(every=60)
    assert repeats.due("us", "timeout", 0) == 0
    assert repeats.due("us", "timeout", 1) is None
    assert repeats.due("us", "timeout", 2) is None
    assert repeats.due("us", "refused", 3) == 0  # a new reason: at once
    assert repeats.due("us", "refused", 4) is None
    assert repeats.due("us", "refused", 64) == 1  # a minute later, with the count
    assert repeats.clear("us") and not repeats.clear("us")


# -- status ----------------------------------------------------------------------------------


def test_a_daemon_is_down_when_stopped_gone_or_silent() -> None:
    now = time.time()
    alive = {"pid": os.getpid(), "time": now - 1, "state": "running"}
    assert down_reason(alive, now) is None
    assert down_reason({**alive, "state": "stopped"}, now) == "stopped cleanly 1.0s ago"
    assert "no report for 60.0s" in str(down_reason({**alive, "time": now - 60}, now))
    child = os.fork()
    if child == 0:  # a process that is gone once reaped
        os._exit(0)
    os.waitpid(child, 0)
    assert f"(pid {child}) is gone" in str(down_reason({**alive, "pid": child}, now))


def test_status_of_a_missing_config_names_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crdtdb import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["status", "nope.toml"]) == 2
    assert capsys.readouterr().err == "error: no config file at nope.toml\n"


def test_status_of_a_running_then_stopped_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crdtdb import cli

    status = _running_status([])
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    assert cli.main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"region eu listening on 127.0.0.1:7401 pid {os.getpid()}")
    (tmp_path / STATUS_FILE).write_text(json.dumps({**status, "state": "stopped"}))
    assert cli.main(["status", str(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith("region eu NOT RUNNING: stopped cleanly")


# -- metrics and /healthz --------------------------------------------------------------------


def test_the_observer_hooks_land_in_the_metrics() -> None:
    from crdtdb.sync.metrics import Metrics

    metrics = Metrics()
    metrics.known_peers(["us"])
    value = metrics.registry.get_sample_value
    assert value("crdtdb_peer_up", {"peer": "us"}) == 0
    assert value("crdtdb_remote_records_applied_total", {"peer": "us"}) == 0
    metrics.peer_up("us", True)
    metrics.records_received("us", 5, 4)
    metrics.traffic("us", 100, 200, 7)
    metrics.record_lags("us", [0.002, 0.3, -0.1])
    metrics.round_done("us", 2)
    metrics.refused("peer_auth")
    metrics.commits(3)
    metrics.gauges(frontier_age=1.5, wal_bytes=4096)
    assert value("crdtdb_peer_up", {"peer": "us"}) == 1
    assert value("crdtdb_peer_received_records_total", {"peer": "us"}) == 5
    assert value("crdtdb_remote_records_applied_total", {"peer": "us"}) == 4
    assert value("crdtdb_peer_received_bytes_total", {"peer": "us"}) == 100
    assert value("crdtdb_peer_sent_bytes_total", {"peer": "us"}) == 200
    assert value("crdtdb_peer_sent_records_total", {"peer": "us"}) == 7
    assert value("crdtdb_replication_lag_seconds_count", {"peer": "us"}) == 3
    assert value("crdtdb_replication_lag_seconds_bucket", {"peer": "us", "le": "0.005"}) == 2
    assert value("crdtdb_anti_entropy_rounds_total", {"peer": "us"}) == 1
    assert value("crdtdb_anti_entropy_repaired_documents_total", {"peer": "us"}) == 2
    assert value("crdtdb_refused_total", {"reason": "peer_auth"}) == 1
    assert value("crdtdb_commits_seen_total") == 3
    assert value("crdtdb_frontier_age_seconds") == 1.5
    assert value("crdtdb_wal_bytes") == 4096


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_metrics_server_serves_metrics_and_health() -> None:
    from crdtdb.sync.metrics import Metrics, MetricsServer

    metrics = Metrics()
    metrics.commits(2)
    problem: list[str | None] = [None]
    server = MetricsServer("127.0.0.1", 0, metrics.registry, lambda: problem[0])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, body = get(f"{base}/metrics")
        assert code == 200 and "crdtdb_commits_seen_total 2.0" in body
        assert get(f"{base}/healthz") == (200, "ok\n")
        problem[0] = "cannot write to the store: disk I/O error"
        assert get(f"{base}/healthz") == (503, "cannot write to the store: disk I/O error\n")
    finally:
        server.close()


def test_healthz_fails_while_the_event_loop_does_not_answer(
    tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crdtdb.sync import daemon
    from crdtdb.sync.node import Replicator

    monkeypatch.setattr(daemon, "LOOP_DEADLINE", 0.2)
    health = daemon._Health()
    assert health() == "starting"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        with crdtdb.open(tmp_path / "eu", region="eu") as db:
            health.loop = loop
            health.replicator = Replicator(db, region_config(tmp_path, certs, "eu", []))
            wait_until(lambda: health() is None, 10, "the loop to answer")
            loop.call_soon_threadsafe(time.sleep, 2.0)  # the loop is stuck for two seconds
            assert health() == "the event loop did not answer within 0.2 s"
            wait_until(lambda: health() is None, 10, "the loop to answer again")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert health() == "stopped"


def test_a_store_that_refuses_writes_is_unhealthy(tmp_path: Path, certs: Path) -> None:
    from crdtdb.sync.node import Replicator

    async def scenario() -> None:
        with crdtdb.open(tmp_path / "eu", region="eu") as db:
            config = region_config(tmp_path, certs, "eu", [], heartbeat_interval=0.05)
            replicator = Replicator(db, config)
            heartbeats = asyncio.create_task(replicator._heartbeat_loop())
            try:
                await wait_for(lambda: replicator.store_ok_at > time.monotonic() - 0.2, 5)
                assert replicator.store_health() is None
                db.close()  # every write now fails
                await wait_for(lambda: replicator.store_health() is not None, 5)
                assert str(replicator.store_health()).startswith("cannot write to the store: ")
            finally:
                heartbeats.cancel()
                await asyncio.gather(heartbeats, return_exceptions=True)
                await replicator.writer.close()

    asyncio.run(scenario())


def test_watch_draws_the_per_peer_table(tmp_path: Path) -> None:
    from rich.console import Console

    from crdtdb.sync.status import _table

    peer = {
        "region": "us",
        "connected": True,
        "last_contact": time.time() - 0.5,
        "bytes_in": 1234,
        "bytes_out": 5678,
        "records_in": 40,
        "rounds": 3,
        "repairs": 1,
        "lag_records": {"eu": 2},
        "lag_seconds": 0.25,
        "behind_records": 0,
        "last_error": None,
    }
    status = _running_status([peer])
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    console = Console(record=True, width=160)
    console.print(_table(tmp_path / STATUS_FILE))
    text = console.export_text()
    assert text.startswith("region eu listening on 127.0.0.1:7401")
    header = next(line for line in text.splitlines() if line.lstrip().startswith("peer"))
    assert header.split()[:4] == ["peer", "state", "heard", "bytes"] and "repairs" in header
    row = next(line for line in text.splitlines() if line.lstrip().startswith("us "))
    assert row.split() == ["us", "up", "0.5s", "1.2k", "5.7k", "2", "0.2s", "0", "3", "1"]
    (tmp_path / STATUS_FILE).write_text(json.dumps({**status, "state": "stopped"}))
    console = Console(record=True, width=160)
    console.print(_table(tmp_path / STATUS_FILE))
    text = console.export_text()
    assert "NOT RUNNING: stopped cleanly" in text and " DOWN " in text


def test_watch_refuses_a_useless_interval(tmp_path: Path) -> None:
    from crdtdb import cli

    assert cli.main(["status", str(tmp_path), "--watch", "--interval", "0"]) == 2


def _running_status(peers: list[dict[str, object]]) -> dict[str, object]:
    """A status file's content as a running daemon of eu writes it, with ``peers``."""
    return {
        "region": "eu",
        "state": "running",
        "listen": "127.0.0.1:7401",
        "pid": os.getpid(),
        "time": time.time(),
        "hlc": "h",
        "frontier": "f",
        "peers": peers,
    }
