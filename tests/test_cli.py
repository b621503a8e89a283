"""The ``crdtdb`` command, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import crdtdb


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crdtdb", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)


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
        ("eu", 1, "users/alice"), ("eu", 2, "users/alice")]
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


def test_demo_converges(tmp_path: Path) -> None:
    demo = run("demo", tmp_path / "demo")
    assert demo.returncode == 0, demo.stderr
    assert "regions converged: True" in demo.stdout
    assert '{"body": "Hello, world!"}' in demo.stdout
    assert '"status": "shipped"' in demo.stdout


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


def test_subcommands_with_their_own_parsers_answer_help() -> None:
    for command in ("sql", "export", "certs"):
        shown = run(command, "--help")
        assert shown.returncode == 0 and f"crdtdb {command}" in shown.stdout, shown.stderr
