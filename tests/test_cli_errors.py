"""What the ``crdtdb`` command says when it is used wrongly: one ``error:`` line, never a
traceback and never reST markup; run in-process (``cli.main``) to stay fast."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest

import crdtdb
from crdtdb import cli

MARKUP = re.compile(r"``|:(meth|class|func|mod|attr|data|exc|obj|ref):`")


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def commands() -> list[list[str]]:
    """Every command and subcommand of ``crdtdb``, as the words that name it."""
    found: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append([*words, name])
                    walk(child, [*words, name])

    walk(cli._parser(), [])
    return found


def test_no_help_text_shows_rest_markup(capsys: pytest.CaptureFixture[str]) -> None:
    names = commands()
    assert ["certs", "issue"] in names and ["sql"] in names and ["export"] in names
    for words in names:
        code, out, err = run(capsys, *words, "--help")
        assert code == 0 and out.startswith("usage: "), (words, err)
        assert not MARKUP.search(out), (words, MARKUP.findall(out))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"crdtdb {crdtdb.__version__}\n", "")


def test_put_reads_the_document_from_stdin_given_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"name": "Alice"}\n'))
    code, out, err = run(capsys, "put", tmp_path / "eu", "users/alice", "-", "--region", "eu")
    assert code == 0 and json.loads(out)["doc_id"] == "users/alice", err
    assert run(capsys, "get", tmp_path / "eu", "users/alice")[1] == '{"name": "Alice"}\n'
    monkeypatch.setattr("sys.stdin", io.StringIO("{oops"))
    code, _, err = run(capsys, "put", tmp_path / "eu", "users/alice", "-")
    assert code == 2 and one_error(err) and "standard input does not parse" in err


def test_negative_limits_are_an_error_in_list_and_log_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "eu"
    crdtdb.open(store, region="eu").close()
    commands: list[list[str | Path]] = [["list", store, "users"], ["log", store]]
    for command in commands:
        for limit in ("-1", "x", "1.5"):  # -1 once listed everything, or nothing
            code, out, err = run(capsys, *command, "--limit", limit)
            assert code == 2 and out == "" and one_error(err) and "--limit" in err, err
        assert run(capsys, *command, "--limit", "0")[0] == 0


def test_a_directory_without_a_store_hints_at_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "put", tmp_path / "new", "users/a", "{}")
    assert code == 1 and one_error(err) and "--region NAME" in err and "crdtdb.open" not in err
    code, _, err = run(capsys, "get", tmp_path / "new", "users/a")
    assert code == 1 and one_error(err) and "--region NAME" in err and "crdtdb.open" not in err
    assert not (tmp_path / "new").exists()
    with pytest.raises(crdtdb.errors.NoStoreError, match=r"crdtdb\.open\(path, region="):
        crdtdb.open(tmp_path / "new")  # the API's hint stays Python


def test_bad_retention_and_far_cuts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "eu"
    assert run(capsys, "put", store, "users/a", '{"a": 1}', "--region", "eu")[0] == 0
    for retention in ("nan", "inf", "-1", "soon"):  # nan and inf once raised tracebacks
        code, _, err = run(capsys, "compact", store, "--retention", retention)
        assert code == 2 and one_error(err) and "--retention" in err, err
    assert run(capsys, "get", store, "users/a", "--as-of", str(2**63 - 1))[:2] == (0, '{"a": 1}\n')
    for cut in (str(2**63), str(2**64 - 1)):  # once an OverflowError, then silently clamped
        code, _, err = run(capsys, "get", store, "users/a", "--as-of", cut)
        assert code == 2 and one_error(err) and "2**63-1" in err, err
        assert run(capsys, "log", store, "--since", cut)[:2] == (0, "")
    for cut in (str(2**64), "-1"):
        code, _, err = run(capsys, "get", store, "users/a", "--as-of", cut)
        assert code == 2 and one_error(err), err


def test_status_and_demo_given_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    code, _, err = run(capsys, "status", a_file)
    assert code == 2 and one_error(err) and "is a file" in err, err
    for demo in (["demo", "--keep"], ["demo", "--embedded", "--keep"]):  # the demo takes no DIR
        code, _, err = run(capsys, *demo, a_file)
        assert code == 2 and one_error(err) and "is not a directory" in err, err
    assert a_file.read_text() == "keep me"


def test_ctrl_c_ends_any_command_quietly_with_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    crdtdb.open(tmp_path / "eu", region="eu").close()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(crdtdb.Database, "info", interrupted)
    monkeypatch.setattr(crdtdb.Database, "put", interrupted)
    assert run(capsys, "info", tmp_path / "eu") == (130, "", "")
    assert run(capsys, "put", tmp_path / "eu", "users/a", "{}") == (130, "", "")


def test_error_lines_quote_at_most_100_characters_of_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "eu"
    crdtdb.open(store, region="eu").close()
    huge = "x" * 5000
    cases: tuple[list[str | Path], ...] = (
        ["get", store, "users/" + huge],
        ["get", store, "users/" + "x" * 500],  # a valid id, but not there
        ["log", store, "--since", huge],
        ["list", store, huge],
        ["list", store, "users", "--limit", huge],
        ["get", tmp_path / huge[:200], "users/a"],
    )
    for args in cases:
        code, _, err = run(capsys, *args)
        assert code in (1, 2) and one_error(err), err
        assert not re.search("x{110}", err), err
