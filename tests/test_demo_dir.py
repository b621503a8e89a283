"""``crdtdb demo`` never deletes what it did not create (a fast test, in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import crdtdb
from crdtdb.cli import main


def _user_files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("mode", [["--embedded"], []], ids=["embedded", "cluster"])
def test_demo_refuses_a_directory_holding_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: list[str]
) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    with crdtdb.open(target / "store", region="eu") as db:  # an existing store
        db.put("users/alice", {"name": "Alice"})
    before = _user_files(target)

    code = main(["demo", *mode, "--keep", str(target)])

    assert code == 2
    assert _user_files(target) == before  # nothing deleted, nothing changed
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "Traceback" not in err
    with crdtdb.open(target / "store") as db:
        assert db.get("users/alice") == {"name": "Alice"}


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["DIR"], "takes no DIR"),
        (["--regions", "1"], "--regions must be 2 to 9"),
        (["--duration", "0"], "--duration must be"),
        (["--embedded", "--rate", "5"], "are for the cluster demo"),
    ],
)
def test_demo_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], hint: str
) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    words = [str(target) if a == "DIR" else a for a in args]
    assert main(["demo", *words]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and hint in err and err.count("\n") == 1
    assert _user_files(target) == {"notes.txt": b"my notes"}


def test_an_earlier_demos_directory_is_reused_only_if_it_holds_nothing_else(
    tmp_path: Path,
) -> None:
    from crdtdb.demo_dir import MARKER, prepare, record

    target = prepare(tmp_path / "demo")
    (target / "eu").mkdir()
    (target / "eu" / "crdtdb.sqlite3").write_bytes(b"made by the demo")
    record(target)

    prepare(target)  # only the demo's own files: removed, the marker stays
    assert [p.name for p in target.iterdir()] == [MARKER]

    (target / "eu").mkdir()
    record(target)
    (target / "eu" / "mine.txt").write_text("added later")
    with pytest.raises(crdtdb.errors.UsageError, match=r"did not make \(eu/mine.txt\)"):
        prepare(target)
    assert (target / "eu" / "mine.txt").read_text() == "added later"


def test_a_tampered_marker_cannot_delete_outside(tmp_path: Path) -> None:
    from crdtdb.demo_dir import MARKER, prepare

    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    target = tmp_path / "demo"
    target.mkdir()
    (target / MARKER).write_text(json.dumps({"paths": ["../precious.txt", str(outside)]}))
    prepare(target)
    assert outside.read_text() == "keep me"


def test_the_demo_help_states_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI writes the defaults out (it does not import crdtdb.sync to read them)."""
    import re

    from crdtdb.sync.demo import DemoOptions

    assert main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    defaults = DemoOptions()
    for name in ("regions", "duration", "rate", "timeout"):
        stated = re.search(rf"--{name} \w+ [^(]*\(default: ([\d.]+)\)", text)
        assert stated is not None, name
        assert float(stated[1]) == getattr(defaults, name), name
