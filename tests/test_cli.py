"""The ``crdtdb`` command: run as a real subprocess (integration), or its ``main`` in-process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import crdtdb


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crdtdb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
def test_put_get_log_info_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "eu"
    put = run("put", store, "users/alice", '{"name": "Alice", "age": 31}', "--region", "eu")
    assert put.returncode == 0, put.stderr
    written = json.loads(put.stdout)
    assert written["doc_id"] == "users/alice"
    assert crdtdb.Hlc.parse(written["hlc"]) == written["hlc_int"]

    got = run("get", store, "users/alice")
    assert got.returncode == 0 and json.loads(got.stdout) == {"name": "Alice", "age": 31}

    assert run("put", store, "users/alice", '{"age": 32}', "--merge").returncode == 0
    assert json.loads(run("get", store, "users/alice").stdout) == {"name": "Alice", "age": 32}
    old = run("get", store, "users/alice", "--as-of", written["hlc"])
    assert json.loads(old.stdout) == {"name": "Alice", "age": 31}

    lines = [json.loads(line) for line in run("log", store).stdout.splitlines()]
    assert [(r["origin"], r["seq"], r["doc_id"]) for r in lines] == [
        ("eu", 1, "users/alice"),
        ("eu", 2, "users/alice"),
    ]
    since = run("log", store, "--since", lines[0]["hlc"]).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in since] == [2]

    info = json.loads(run("info", store).stdout)
    assert info["region"] == "eu" and info["live_documents"] == 1 and info["log_records"] == 2

    assert run("list", store, "users").stdout.split() == ["users/alice"]
    deleted = run("delete", store, "users/alice")
    assert json.loads(deleted.stdout)["deleted"] is True
    missing = run("get", store, "users/alice")
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    compacted = run("compact", store, "--retention", "0")
    assert compacted.returncode == 0, compacted.stderr
    assert json.loads(compacted.stdout)["records_removed"] == 2  # the newest record stays


@pytest.mark.integration
def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    no_store = run("get", tmp_path / "none", "users/a")
    assert no_store.returncode == 1
    assert no_store.stderr.startswith("error: ") and "region" in no_store.stderr
    assert "Traceback" not in no_store.stderr
    store = tmp_path / "eu"
    bad_json = run("put", store, "users/a", "{not json", "--region", "eu")
    assert bad_json.returncode == 2 and "does not parse" in bad_json.stderr
    bad_id = run("put", store, "nocollection", "{}", "--region", "eu")
    assert bad_id.returncode == 2 and "collection/key" in bad_id.stderr
    bad_hlc = run("log", store, "--since", "yesterday")
    assert bad_hlc.returncode == 2 and "HLC" in bad_hlc.stderr


def test_an_unexpected_error_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever escapes the typed errors (a bug, a damaged file) reaches the user as a line."""
    from crdtdb import cli

    crdtdb.open(tmp_path / "eu", region="eu").close()

    def broken(self: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(crdtdb.Database, "info", broken)
    assert cli.main(["info", str(tmp_path / "eu")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: disk on fire" in err and "Traceback" not in err
    assert cli.main(["sql", str(tmp_path / "nowhere"), "-c", "SELECT 1"]) == 1
    assert "nowhere is not a directory" in capsys.readouterr().err


@pytest.mark.integration
def test_subcommands_with_their_own_parsers_answer_help() -> None:
    for command in ("sql", "export", "certs"):
        shown = run(command, "--help")
        assert shown.returncode == 0 and f"crdtdb {command}" in shown.stdout, shown.stderr


# -- crdtdb status, and what the light commands load ---------------------------------------------


def write_status(data_dir: Path, *, age: float) -> None:
    """A status file like the one a daemon that stopped ``age`` seconds ago left behind."""
    data_dir.mkdir(parents=True, exist_ok=True)
    peer = {
        "region": "us",
        "connected": False,
        "last_contact": None,
        "bytes_in": 10,
        "bytes_out": 20,
        "rounds": 3,
        "repairs": 1,
        "last_error": "peer went away",
    }
    status = {
        "region": "eu",
        "listen": "127.0.0.1:7401",
        "pid": 4242,
        "time": time.time() - age,
        "hlc": "2030-01-01T00:00:00.000Z+0",
        "frontier": "2029-12-31T23:59:59.000Z+0",
        "peers": [peer],
    }
    (data_dir / "sync-status.json").write_text(json.dumps(status))


def _report_age(line: str) -> float:
    """The age in ``... (last report: pid 4242 on 127.0.0.1:7401, 60.0s ago)``."""
    match = re.fullmatch(r".*\(last report: pid 4242 on 127\.0\.0\.1:7401, (\d+\.\d)s ago\)", line)
    assert match, line
    return float(match[1])


def write_config(directory: Path, data_dir: str = "data/eu") -> Path:
    path = directory / "eu.toml"
    path.write_text(
        f'region = "eu"\ndata_dir = "{data_dir}"\nlisten = "127.0.0.1:7401"\n'
        '[tls]\nca = "certs/ca.pem"\ncert = "certs/eu.pem"\nkey = "certs/eu.key"\n'
    )
    return path


def test_status_of_a_stopped_daemon_by_dir_and_by_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crdtdb import cli

    started = time.monotonic()
    write_status(tmp_path / "data" / "eu", age=60)
    # The daemon is down: status says so, and exits 1 so that a script can tell.
    assert cli.main(["status", str(tmp_path / "data" / "eu")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("region eu NOT RUNNING: ")
    assert _report_age(out.splitlines()[0]) == pytest.approx(60.0, abs=0.05)
    assert "us         DISCONNECTED" in out and "last error: peer went away" in out
    assert cli.main(["status", str(write_config(tmp_path))]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.split(", ")[0] == out.splitlines()[0].split(", ")[0]
    # 60 s and the time these calls took on a loaded machine, shown to a tenth of a second.
    assert 60.0 <= _report_age(first) <= 60.0 + (time.monotonic() - started) + 0.05
    assert cli.main(["status", str(tmp_path / "data" / "eu"), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["pid"] == 4242 and shown["running"] is False


def test_status_without_a_daemon_or_with_a_bad_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crdtdb import cli

    assert cli.main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is `crdtdb serve` running for this region?" in err
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('listen = "127.0.0.1:7401"', "listen = 7401"))
    assert cli.main(["status", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: listen: write the address as HOST:PORT") and err.count("\n") == 1


def test_a_bad_command_line_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    from crdtdb import cli

    assert cli.main(["put", "dir"]) == 2
    assert capsys.readouterr().err == (
        "error: the following arguments are required: DOC_ID, JSON (see `crdtdb put --help`)\n"
    )
    assert cli.main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "certs" in capsys.readouterr().out


def loaded_modules(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``crdtdb ARGS`` in a fresh interpreter; its result, and every module it imported."""
    script = (
        "import sys\nfrom crdtdb.cli import main\ncode = main(sys.argv[1:])\n"
        "print('MODULES', *sorted(sys.modules))\nsys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    *output, modules = done.stdout.splitlines() or [""]
    assert modules.startswith("MODULES "), done.stderr
    return (
        subprocess.CompletedProcess(done.args, done.returncode, "\n".join(output), done.stderr),
        set(modules.split()[1:]),
    )


HEAVY = {"aioquic", "duckdb", "crdtdb.sync.node", "crdtdb.sync.transport", "crdtdb.sync.daemon"}


@pytest.mark.integration
def test_status_loads_neither_aioquic_nor_cryptography_nor_the_daemon(tmp_path: Path) -> None:
    write_status(tmp_path / "data" / "eu", age=60)
    for target in (tmp_path / "data" / "eu", write_config(tmp_path)):
        done, modules = loaded_modules("status", target)
        assert done.returncode == 1 and "NOT RUNNING" in done.stdout, done.stderr
        assert "crdtdb.sync.status" in modules  # it did run the status command
        assert not HEAVY & modules and "cryptography" not in modules, sorted(HEAVY & modules)
    done, modules = loaded_modules("status", tmp_path / "nothing-here")
    assert done.returncode == 2 and "crdtdb serve" in done.stderr
    assert not HEAVY & modules and "cryptography" not in modules


@pytest.mark.integration
def test_certs_loads_neither_aioquic_nor_the_daemon(tmp_path: Path) -> None:
    commands: list[list[str | Path]] = [["init", tmp_path], ["issue", tmp_path, "eu"]]
    for args in commands:
        done, modules = loaded_modules("certs", *args)
        assert done.returncode == 0, done.stderr
        assert {"crdtdb.sync.certs", "cryptography"} <= modules  # it did make certificates
        assert not HEAVY & modules, sorted(HEAVY & modules)
    assert json.loads(done.stdout)["region"] == "eu" and (tmp_path / "eu.pem").exists()
