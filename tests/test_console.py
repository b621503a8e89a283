"""``crdtdb sql``: the console and the one-shot runner, as real processes over a real store."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import crdtdb
from crdtdb.query import connect
from crdtdb.query.console import completions, read_catalog, split_sql
from crdtdb.query.render import Result, render

from .harness.process import Child

pytestmark = pytest.mark.integration  # most tests start the console as a process

USERS: dict[str, dict[str, Any]] = {
    "users/alice": {"name": "Alice", "age": 31, "city": "Paris"},
    "users/bob": {"name": "Bob", "age": 25, "city": "Berlin"},
    "users/carol": {"name": "Carol", "age": 40, "city": "Paris"},
}
DEADLINE = 30.0
PROMPT = re.compile(r"crdtdb[^>\n]*>")
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r")


def sql_command(directory: Path) -> list[str]:
    """How to start ``crdtdb sql DIR``: the installed command's own entry point."""
    return [sys.executable, "-m", "crdtdb", "sql", str(directory)]


def run_sql(
    directory: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``crdtdb sql DIR ARGS...`` with ``stdin`` piped in (empty when None)."""
    return subprocess.run(
        [*sql_command(directory), *args],
        input=stdin or "",
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[crdtdb.Database]:
    with crdtdb.open(tmp_path / "eu", region="eu") as db:
        for doc_id, body in USERS.items():
            db.put(doc_id, body)
        yield db


def names_sorted() -> list[str]:
    return sorted(body["name"] for body in USERS.values())


def city_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for body in USERS.values():
        counts[body["city"]] = counts.get(body["city"], 0) + 1
    return counts


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------ -c and formats


def test_command_table_format(store: crdtdb.Database) -> None:
    result = run_sql(store.path, "-c", "SELECT name, age FROM users ORDER BY name")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["name", *names_sorted()]
    by_name = {body["name"]: body["age"] for body in USERS.values()}
    assert [int(r.split("│")[2]) for r in rows[1:]] == [by_name[n] for n in names_sorted()]


def test_command_csv_aggregate(store: crdtdb.Database) -> None:
    sql = "SELECT city, count(*) AS n FROM users GROUP BY city ORDER BY city"
    result = run_sql(store.path, "-c", sql, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["city"]: int(row["n"]) for row in rows} == city_counts()


def test_command_json(store: crdtdb.Database) -> None:
    sql = "SELECT name, age, u.updated_at, NULL AS nothing, body FROM docs JOIN users u USING (id)"
    result = run_sql(store.path, "-c", sql + " ORDER BY name", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == names_sorted()
    assert all(row["nothing"] is None for row in rows)
    assert [row["body"] for row in rows] == sorted(USERS.values(), key=lambda b: b["name"])
    assert all("T" in row["updated_at"] for row in rows)  # a timestamp, in ISO 8601


def test_command_markdown_and_several_statements(store: crdtdb.Database) -> None:
    sql = "SELECT name FROM users ORDER BY name; SELECT count(*) AS n FROM users;"
    result = run_sql(store.path, "-c", sql, "--format", "markdown")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["| name |", "| --- |"]
    assert lines[2:5] == [f"| {name} |" for name in names_sorted()]
    assert lines[5:] == ["| n |", "| ---: |", f"| {len(USERS)} |"]


def test_line_mode_and_nulls(store: crdtdb.Database) -> None:
    sql = ".mode line\nSELECT name, NULL AS gone FROM users WHERE key = 'bob';"
    result = run_sql(store.path, "-c", sql)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"name = {USERS['users/bob']['name']}", "gone = NULL"]


def test_sql_error_is_one_line(store: crdtdb.Database) -> None:
    line = assert_one_line_error(run_sql(store.path, "-c", "SELECT nme FROM users"), 1)
    assert "nme" in line


def test_unknown_table_is_one_line(store: crdtdb.Database) -> None:
    line = assert_one_line_error(run_sql(store.path, "-c", "SELECT * FROM nope"), 1)
    assert "nope" in line


def test_bad_as_of_is_a_usage_error(store: crdtdb.Database) -> None:
    result = run_sql(store.path, "-c", "SELECT 1", "--as-of", "yesterday-ish")
    assert "yesterday-ish" in assert_one_line_error(result, 2)
    far = run_sql(store.path, "-c", "SELECT 1", "--as-of", str(2**63))  # once silently clamped
    assert "2**63-1" in assert_one_line_error(far, 2)


def test_as_of_flag_reads_the_past(store: crdtdb.Database) -> None:
    before = store.hlc
    store.update("users/alice", {"age": 99})
    sql = "SELECT age FROM users WHERE key = 'alice'"
    past = run_sql(store.path, "-c", sql, "--as-of", str(before), "--format", "csv")
    now = run_sql(store.path, "-c", sql, "--format", "csv")
    assert past.stdout.splitlines() == ["age", str(USERS["users/alice"]["age"])], past.stderr
    assert now.stdout.splitlines() == ["age", "99"], now.stderr


def test_missing_directory(tmp_path: Path) -> None:
    line = assert_one_line_error(run_sql(tmp_path / "nowhere", "-c", "SELECT 1"), 1)
    assert "nowhere" in line


def test_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    line = assert_one_line_error(run_sql(tmp_path / "plain", "-c", "SELECT 1"), 1)
    assert "no crdtdb store" in line
    assert list((tmp_path / "plain").iterdir()) == []


def test_empty_store_has_empty_tables(tmp_path: Path) -> None:
    crdtdb.open(tmp_path / "eu", region="eu").close()
    sql = ".tables\nSELECT count(*) AS n FROM docs;"
    result = run_sql(tmp_path / "eu", "-c", sql, "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["changes", "docs", "regions", "n", "0"]


# ---------------------------------------------------------------- piped scripts


def test_script_with_dot_commands_and_time_travel(store: crdtdb.Database) -> None:
    before = store.hlc
    store.update("users/alice", {"city": "Lyon"})
    script = "\n".join(
        [
            ".tables",
            ".mode csv",
            "SELECT name, city",
            "  FROM users ORDER BY name;",
            ".schema users",
            f".asof {before}",
            "SELECT city FROM users WHERE key = 'alice';",
            ".asof now",
            "SELECT city FROM users WHERE key = 'alice'",
        ]
    )
    result = run_sql(store.path, stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[:4] == ["changes", "docs", "regions", "users"]
    cities = {b["name"]: b["city"] for b in USERS.values()} | {"Alice": "Lyon"}
    listed = ["name,city", *[f"{n},{cities[n]}" for n in names_sorted()]]
    assert out[4 : 4 + len(listed)] == listed
    schema = out[4 + len(listed) : out.index(");") + 1]
    assert schema[0] == "CREATE VIEW users ("
    assert {line.split()[0] for line in schema[1:-1]} >= {"id", "name", "age", "city"}
    assert out[-4:] == ["city", USERS["users/alice"]["city"], "city", "Lyon"]


def test_read_file_and_regions(store: crdtdb.Database, tmp_path: Path) -> None:
    script = tmp_path / "count.sql"
    script.write_text(".mode csv\nSELECT count(*) AS n\nFROM users;\n")
    result = run_sql(store.path, "-c", f".read {script}\n.regions")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[:3] == ["n", str(len(USERS)), "region,frontier_at,freshness"]
    assert [line.split(",")[0] for line in out[3:]] == [store.region, "_global"]


def test_script_stops_at_first_error(store: crdtdb.Database) -> None:
    script = "SELECT 'first' AS a;\nSELECT * FROM nope;\nSELECT 'never' AS b;\n"
    result = run_sql(store.path, "--format", "csv", stdin=script)
    assert "nope" in assert_one_line_error(result, 1)
    assert result.stdout.splitlines() == ["a", "first"]


def test_script_bad_dot_command(store: crdtdb.Database) -> None:
    result = run_sql(store.path, stdin=".mode sideways\nSELECT 1;\n")
    assert "sideways" in assert_one_line_error(result, 1)
    assert result.stdout == ""


LONG_QUERY = "SELECT sum(hash(a.range + b.range)) FROM range(1000000) a, range(1000000) b;"
"""A query that runs for hours unless interrupted."""


def test_script_interrupted_exits_130_quietly(store: crdtdb.Database) -> None:
    # The environment as it is: the console must flush its output itself.
    with Child([*sql_command(store.path), "--format", "csv"], env=os.environ) as child:
        child.send(f"SELECT 'started' AS s;\n{LONG_QUERY}")
        child.close_stdin()
        assert child.line(DEADLINE) == "s"
        assert child.line(DEADLINE) == "started"  # the long query is next
        child.signal(signal.SIGINT)
        assert child.wait(DEADLINE) == 130
        assert child.stderr == ""


# ------------------------------------------------------------- pure pieces


def test_split_sql_respects_quotes_and_comments() -> None:
    text = "SELECT 'a;b' AS x; -- c;\nSELECT \"q;\" /* ; */ FROM t;; SELECT 'open;"
    statements, rest = split_sql(text)
    assert statements == ["SELECT 'a;b' AS x;", ' -- c;\nSELECT "q;" /* ; */ FROM t;']
    assert rest == " SELECT 'open;"
    assert split_sql("SELECT 1; -- done\n") == (["SELECT 1;"], "")


def test_table_cut_to_width_and_rows() -> None:
    rows = [(i, "x" * 200) for i in range(3)]
    result = Result(["n", "text"], ["INTEGER", "VARCHAR"], rows, 1234)
    lines = render(result, "table", 60).splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert any(line.rstrip("│ ").endswith("…") for line in lines)
    assert lines[-1] == "… 1,234 rows, 3 shown"


def test_json_values_are_converted() -> None:
    con = duckdb.connect()
    con.execute(
        "SELECT 1.50::DECIMAL(4, 2) AS d, 'a\\x00'::BLOB AS b, uuid() AS u, INTERVAL 1 DAY AS i,"
        " 'nan'::DOUBLE AS f, DATE '2026-12-07' AS day, [1, 2] AS l, '{\"k\": 1}'::JSON AS j"
    )
    columns = [d[0] for d in con.description or []]
    types = [str(d[1]) for d in con.description or []]
    rows = con.fetchall()
    (row,) = json.loads(render(Result(columns, types, rows, 1), "json"))
    assert row["d"] == 1.5 and row["f"] == "nan" and row["day"] == "2026-12-07"
    assert row["b"] == "a\\x00" and len(row["u"]) == 36 and row["i"] == "1 day, 0:00:00"
    assert row["l"] == [1, 2] and row["j"] == {"k": 1}


def test_completion_offers_tables_after_from(store: crdtdb.Database) -> None:
    con = connect(store)
    catalog = read_catalog(con)
    assert completions(catalog, "SELECT * FROM ", "use") == [("users", "table")]
    assert ("city", "column") in completions(catalog, "SELECT ", "ci")
    assert ("select", "keyword") in completions(catalog, "", "sel")
    assert completions(catalog, "", ".ta") == [(".tables", "command")]


# ---------------------------------------------------------------- the console


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process on a pseudo-terminal; reads with deadlines, never fixed sleeps."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=_take_terminal,  # so that Ctrl-C is SIGINT, as in a real terminal
        )
        os.close(slave)
        self.fd, self.raw, self.pos = master, b"", 0

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def expect(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """Wait for ``pattern`` in the output after what was matched last."""
        deadline = time.monotonic() + DEADLINE
        while True:
            match = re.compile(pattern).search(self.text, self.pos)
            if match:
                self.pos = match.end()
                return match
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in output:\n{self.text[self.pos :][-2000:]}"
            if not self._read(left):
                raise AssertionError(f"exited before {pattern!r}:\n{self.text[-2000:]}")

    def interrupt(self, pattern: str) -> None:
        """Press Ctrl-C every half second until ``pattern`` shows.

        More than once if need be: a Ctrl-C that reaches the console while it
        is still leaving raw mode is a keystroke, not a SIGINT for the query.
        """
        deadline = time.monotonic() + DEADLINE
        while not re.compile(pattern).search(self.text, self.pos):
            assert time.monotonic() < deadline, f"no {pattern!r} after Ctrl-C:\n{self.text}"
            self.send("\x03")
            stop = time.monotonic() + 0.5
            while time.monotonic() < stop and self._read(stop - time.monotonic()):
                pass
        self.expect(pattern)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child is gone
                return False
            if not chunk:
                return False
            self.raw += chunk
        return True

    def wait(self) -> int:
        deadline = time.monotonic() + DEADLINE
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read(0.1):  # the terminal closed: the child is exiting
                break
        return self.proc.wait(timeout=DEADLINE)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.fd)


HISTORY = "CRDTDB_SQL_HISTORY"


@pytest.fixture
def console_env(tmp_path: Path) -> dict[str, str]:
    """A terminal without cursor-position queries, and a history file of the test's own."""
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
    env[HISTORY] = str(tmp_path / "history")
    return env


@pytest.fixture
def terminal(store: crdtdb.Database, console_env: dict[str, str]) -> Iterator[Terminal]:
    term = Terminal(sql_command(store.path), console_env)
    try:
        yield term
    finally:
        term.close()


def test_console_session(store: crdtdb.Database, terminal: Terminal) -> None:
    before = store.hlc
    store.update("users/bob", {"age": 26})
    terminal.expect(PROMPT)
    terminal.send(".tables\r")
    terminal.expect(r"changes\s+docs\s+regions\s+users\s")
    terminal.expect(PROMPT)
    terminal.send("SELECT name FROM users ORDER BY name;\r")
    terminal.expect(r"\s+".join(f"│ {n}\\s*│" for n in names_sorted()))
    terminal.expect(PROMPT)
    terminal.send("SELECT city, count(*) AS n\r")
    terminal.expect(r"\.\.\.>")  # the statement goes on
    terminal.send("FROM users GROUP BY city ORDER BY city;\r")
    counts = city_counts()
    terminal.expect(r"\s+".join(f"│ {c}\\s*│\\s*{counts[c]} │" for c in sorted(counts)))
    terminal.expect(PROMPT)
    terminal.send("SELECT nme FROM users;\r")
    terminal.expect(r"Error: [^\n]*nme[^\n]*\n")
    terminal.expect(PROMPT)
    terminal.send("SELECT half a line\x03")  # Ctrl-C drops the line
    terminal.expect(PROMPT)
    terminal.send(LONG_QUERY + "\r")
    terminal.expect(r"range\(1000000\) b;")
    terminal.expect(r"\d+%")  # DuckDB's progress bar (after 2 s): the query is running
    terminal.interrupt(r"Interrupted\n")  # it would run for hours
    terminal.expect(PROMPT)
    terminal.send(f".asof {before}\r")
    terminal.expect(PROMPT)
    terminal.send(".timer on\r")
    terminal.expect(PROMPT)
    terminal.send("SELECT age FROM users WHERE key = 'bob';\r")
    terminal.expect(rf"│\s*{USERS['users/bob']['age']} │")
    terminal.expect(r"Run Time \(s\): real \d")
    terminal.expect(PROMPT)
    terminal.send(".quit\r")
    assert terminal.wait() == 0
    assert "Traceback" not in terminal.text


def test_console_completion_row_limit_and_refresh(
    store: crdtdb.Database, terminal: Terminal
) -> None:
    terminal.expect(PROMPT)
    terminal.send("SELECT name FROM use")
    terminal.expect("use")
    terminal.send("\t")
    terminal.expect("rs")  # the rest of "users", typed by completion
    terminal.send(" ORDER BY name;\r")
    terminal.expect(r"\s+".join(f"│ {n}\\s*│" for n in names_sorted()))
    terminal.send("SELECT * FROM range(100);\r")
    terminal.expect(r"… 100 rows, 40 shown")
    terminal.expect(PROMPT)
    store.put("users/dave", {"name": "Dave", "age": 50, "city": "Rome"})
    terminal.send(".refresh\r")
    terminal.expect("refreshed")
    terminal.send("SELECT count(*) AS n FROM users;\r")
    terminal.expect(rf"│\s*{len(USERS) + 1} │")
    terminal.expect(PROMPT)
    terminal.send("\x04")  # Ctrl-D
    assert terminal.wait() == 0


def test_console_history_persists(store: crdtdb.Database, console_env: dict[str, str]) -> None:
    statement = "SELECT 'remember' || 'ed' AS word;"
    first = Terminal(sql_command(store.path), console_env)
    try:
        first.expect(PROMPT)
        first.send(statement + "\r")
        first.expect(r"│ remembered │")
        first.expect(PROMPT)
        first.send(".exit\r")
        assert first.wait() == 0
    finally:
        first.close()
    assert statement in Path(console_env[HISTORY]).read_text()
    second = Terminal(sql_command(store.path), console_env)
    try:
        second.expect(PROMPT)
        second.send("\x1b[A")  # Up: the previous session's .exit
        second.expect(r"\.exit")
        second.send("\x1b[A")  # Up again: the statement before it
        second.expect("'ed'")
        second.send("\r")
        second.expect(r"│ remembered │")
        second.expect(PROMPT)
        second.send(".quit\r")
        assert second.wait() == 0
    finally:
        second.close()
