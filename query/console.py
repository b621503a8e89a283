"""``crdtdb sql``: SQL over a region's store, at a console or from a script.

Owns the ``crdtdb sql`` command line (:func:`main`): the interactive console
(prompt_toolkit: a history file, statements over several lines ended by ``;``,
completion from DuckDB's catalog, dot commands), running ``-c`` text or a
script piped to standard input, and the output formats. The tables come from
:func:`crdtdb.query.connect`; this module only runs statements and prints.

Formats: ``table`` (aligned, box-drawn; at the console cut to the terminal's
width and to ``.maxrows`` rows), ``csv``, ``json`` (one JSON array of objects
per result, an object a line: timestamps become ISO 8601, decimals numbers,
UUIDs and intervals strings, blobs text with ``\\xNN`` escapes, NaN and
infinities strings, JSON columns nested JSON), ``markdown`` and ``line``.

Exit statuses of ``-c`` and scripts: 0 done; 1 a statement, a dot command or
the store failed (one line on stderr); 2 the command line is wrong (a bad
``--as-of``, say); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

import duckdb
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.history import FileHistory

from crdtdb.errors import CrdtdbError, UsageError

from .connect import SYSTEM_TABLES, connect, refresh_connection
from .render import FORMATS, Result, render

__all__ = ["Catalog", "Result", "Shell", "completions", "main", "render", "split_sql"]

T = TypeVar("T")

MAX_ROWS = 40
"""Rows a table shows at most at the console (``.maxrows`` changes it)."""
MAX_DEPTH = 16
"""How deep ``.read`` may nest."""
HISTORY_ENV = "CRDTDB_SQL_HISTORY"
ERRORS = (duckdb.Error, CrdtdbError, OSError, RuntimeError, ValueError)
"""What a statement or dot command may fail with: reported in one line, never a traceback."""

COMMANDS = {
    ".tables": ("", "list the tables and views"),
    ".schema": ("[NAME]", "the columns of every table and view, or of NAME"),
    ".mode": ("table|csv|json|markdown|line", "how results are printed"),
    ".timer": ("on|off", "print how long each statement took"),
    ".maxrows": ("N", "rows a table shows at most at the console (0: all)"),
    ".asof": ("HLC|TIMESTAMP|frontier|now", "read the store as of a cut (now: the present)"),
    ".refresh": ("", "bring the tables up to date with the store"),
    ".regions": ("", "each region's frontier and how fresh it is"),
    ".read": ("FILE", "run the statements and dot commands in FILE"),
    ".help": ("", "this list"),
    ".quit": ("", "leave (also .exit and Ctrl-D)"),
}
TABLE_CONTEXT = {"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "DESCRIBE", "SUMMARIZE"}
"""Keywords after which only a table name makes sense (completion offers only those)."""


class _Quit(Exception):
    """``.quit``: unwinds whatever is running, which then ends with status 0."""


# ------------------------------------------------------------------ statements

_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/|/\*|['\";]|[^'\";/-]+|.", re.S)


def split_sql(text: str) -> tuple[list[str], str]:
    """The statements of ``text`` ended by ``;`` (outside quotes and comments), and the rest.

    The rest is ``""`` when it holds no SQL (only blanks and comments).
    """
    statements: list[str] = []
    start, content = 0, False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("'", '"', "/*"):  # opened, not closed: the statement goes on
            return statements, text[start:]
        if token == ";":
            if content:
                statements.append(text[start : match.end()])
            start, content = match.end(), False
        elif not token.startswith(("--", "/*")) and not token.isspace():
            content = True
    return statements, text[start:] if content else ""


def _ready(text: str) -> bool:
    """Whether Enter should run ``text`` (else it starts a new line)."""
    stripped = text.strip()
    return not stripped or stripped.startswith(".") or not split_sql(text)[1]


def one_line(exc: BaseException) -> str:
    """An error's message on one line, without DuckDB's ``LINE 1: ...`` excerpt."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(exc).__name__


def _in_worker(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """``work()`` on a thread of its own, so that Ctrl-C here can interrupt DuckDB.

    DuckDB looks for Ctrl-C only between tasks, which can take hours; waiting
    here instead, a KeyboardInterrupt arrives at once and ``con.interrupt()``
    stops the query (again until it does: the query may not have begun yet).
    """
    outcome: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def target() -> None:
        try:
            outcome.put((True, work()))
        except BaseException as exc:  # handed to the waiting thread
            outcome.put((False, exc))

    try:
        _start(threading.Thread(target=target, name="crdtdb-sql", daemon=True))
        done, value = outcome.get()
    except KeyboardInterrupt:
        while True:  # never leave the thread running: it holds the connection
            con.interrupt()
            with contextlib.suppress(queue.Empty):
                outcome.get(timeout=0.1)
                break
        raise
    if not done:
        raise value
    return cast(T, value)


def _start(thread: threading.Thread) -> None:
    """Start ``thread`` with SIGINT held, so that a Ctrl-C comes before or after, not during."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        thread.start()
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


# --------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class Catalog:
    """What ``.tables``, ``.schema`` and completion know, names as one would type them."""

    tables: dict[str, tuple[str, list[tuple[str, str]]]]
    """Name -> (``"VIEW"`` or ``"TABLE"``, [(column, type)])."""
    columns: list[str]
    """Every column name, once."""
    keywords: list[str]
    """DuckDB's keywords, upper case."""


def read_catalog(con: duckdb.DuckDBPyConnection) -> Catalog:
    """The tables and views of ``con`` (names starting with ``_`` are crdtdb's own)."""
    reserved = {k for (k,) in con.execute(_KEYWORDS + _RESERVED).fetchall()}
    base = set(con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall())
    tables: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for schema, table, column, kind in con.execute(_COLUMNS).fetchall():
        name = _table_name(schema, table, reserved)
        if name is not None:
            entry = tables.setdefault(name, ("TABLE" if (schema, table) in base else "VIEW", []))
            entry[1].append((_ident(column, reserved), kind))
    columns = {c: None for _, cols in tables.values() for c, _ in cols}
    keywords = [k.upper() for (k,) in con.execute(_KEYWORDS).fetchall()]
    return Catalog(tables, list(columns), keywords)


_KEYWORDS = "SELECT keyword_name FROM duckdb_keywords()"
_RESERVED = " WHERE keyword_category = 'reserved'"
_COLUMNS = (
    "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns()"
    " WHERE NOT internal AND NOT starts_with(table_name, '_')"
    " ORDER BY schema_name = 'collections', schema_name, table_name, column_index"
)


def _table_name(schema: str, table: str, reserved: set[str]) -> str | None:
    """How to name a table in SQL; None for a collection's twin of a ``main`` view."""
    if schema == "main":
        return _ident(table, reserved)
    if schema == "collections" and table.lower() not in SYSTEM_TABLES:
        return None
    return f"{_ident(schema, reserved)}.{_ident(table, reserved)}"


def _ident(name: str, reserved: set[str]) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name.lower() not in reserved:
        return name
    return '"' + name.replace('"', '""') + '"'


def _sort_key(name: str) -> str:
    return name.replace('"', "").lower()


def _same_name(name: str, wanted: str) -> bool:
    return name.replace('"', "").lower() == wanted.replace('"', "").lower()


def completions(catalog: Catalog, before: str, token: str) -> list[tuple[str, str]]:
    """(text, kind) of what may replace ``token``, the word typed after ``before``."""
    if not before.strip() and token.startswith("."):
        pool = [(name, "command") for name in (*COMMANDS, ".exit")]
    elif re.fullmatch(r"\s*\.mode\s+", before):
        pool = [(name, "format") for name in FORMATS]
    elif re.fullmatch(r"\s*\.schema\s+", before):
        pool = [(name, "table") for name in catalog.tables]
    else:
        pool = _sql_words(catalog, before, token)
    seen: set[str] = set()
    matches = []
    for text, kind in pool:
        if text.lower().startswith(token.lower()) and text.lower() not in seen:
            seen.add(text.lower())
            matches.append((text, kind))
    return matches


def _sql_words(catalog: Catalog, before: str, token: str) -> list[tuple[str, str]]:
    words = re.findall(r"[A-Za-z_]+", before)
    tables = [(name, "table") for name in catalog.tables]
    if words and words[-1].upper() in TABLE_CONTEXT:
        return tables
    lower = token[:1].islower()  # keywords in the case being typed
    keywords = [(k.lower() if lower else k, "keyword") for k in catalog.keywords]
    return [(c, "column") for c in catalog.columns] + tables + keywords


class SqlCompleter(Completer):
    """Tab completion of dot commands, keywords, table and column names."""

    def __init__(self, catalog: Callable[[], Catalog]) -> None:
        self._catalog = catalog

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterator[Completion]:
        before = document.text_before_cursor
        match = re.search(r'[\w."]*$', before)
        token = match.group() if match else ""
        head = before[: len(before) - len(token)]
        for text, kind in completions(self._catalog(), head, token):
            yield Completion(text, -len(token), display_meta=kind)


# ----------------------------------------------------------------------- shell


@dataclass
class Shell:
    """A connection and the console's settings: runs statements and dot commands."""

    con: duckdb.DuckDBPyConnection
    """From :func:`crdtdb.query.connect`."""
    mode: str = "table"
    """The output format, one of :data:`FORMATS`."""
    as_of: str | None = None
    """The cut being read, as given (None: the present)."""
    max_rows: int | None = None
    """Rows a table shows at most (None: all)."""
    fit: bool = False
    """Cut tables to the terminal's width."""
    verbose: bool = False
    """Say what dot commands did (the console does; scripts stay quiet)."""
    timer: bool = False
    """Print each statement's run time."""
    out: TextIO = field(default_factory=lambda: sys.stdout)
    """Where results go."""
    _catalog: Catalog | None = None
    _depth: int = 0

    def run_text(self, text: str) -> None:
        """Run the statements (ended by ``;``) and dot commands (a line each) of ``text``."""
        pending = ""
        for line in text.splitlines(keepends=True):
            if not pending and line.lstrip().startswith("."):
                self.dot(line.strip())
                continue
            statements, pending = split_sql(pending + line)
            for sql in statements:
                self.run_sql(sql)
        if pending:
            self.run_sql(pending)

    def run_sql(self, sql: str) -> None:
        """Run one statement and print its result."""
        started = time.perf_counter()
        self._catalog = None
        result = _in_worker(self.con, lambda: self._execute(sql))
        if result is not None:
            self.write(render(result, self.mode, self._width()))
        if self.timer:
            self.write(f"Run Time (s): real {time.perf_counter() - started:.3f}\n")

    def _execute(self, sql: str) -> Result | None:
        self.con.execute(sql)
        return None if self.con.description is None else self._fetch()

    def _fetch(self) -> Result:
        description = self.con.description or []
        columns, types = [d[0] for d in description], [str(d[1]) for d in description]
        if self.max_rows is None or self.mode != "table":
            rows = self.con.fetchall()
            return Result(columns, types, rows, len(rows))
        rows = self.con.fetchmany(self.max_rows)
        total = len(rows)
        while chunk := self.con.fetchmany(10_000):
            total += len(chunk)
        return Result(columns, types, rows, total)

    def _width(self) -> int | None:
        return shutil.get_terminal_size().columns if self.fit else None

    def catalog(self) -> Catalog:
        """The connection's tables and columns (read again after each statement)."""
        if self._catalog is None:
            self._catalog = read_catalog(self.con)
        return self._catalog

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def prompt(self) -> str:
        return "crdtdb> " if self.as_of is None else f"crdtdb@{self.as_of}> "

    def step(self, text: str) -> bool:
        """Run console input, reporting errors in a line; False when it asked to quit."""
        try:
            self.run_text(text)
        except _Quit:
            return False
        except KeyboardInterrupt:
            print("Interrupted", file=sys.stderr)
        except ERRORS as exc:
            print(f"Error: {one_line(exc)}", file=sys.stderr)
        return True

    # ------------------------------------------------------------ dot commands

    def dot(self, line: str) -> None:
        """Run one dot command (``.help`` lists them)."""
        try:
            name, *args = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"{line}: {exc}") from None
        handler = self._handlers().get(name.lower())
        if handler is None:
            raise UsageError(f"unknown command {name}: .help lists the commands")
        handler(args)

    def _handlers(self) -> dict[str, Callable[[list[str]], None]]:
        return {
            ".tables": self._tables,
            ".schema": self._schema,
            ".mode": self._mode,
            ".timer": self._timer,
            ".maxrows": self._maxrows,
            ".asof": self._asof,
            ".refresh": self._refresh,
            ".regions": self._regions,
            ".read": self._read,
            ".help": self._help,
            ".quit": self._quit,
            ".exit": self._quit,
        }

    def _tables(self, args: list[str]) -> None:
        self.write("".join(f"{name}\n" for name in sorted(self.catalog().tables, key=_sort_key)))

    def _schema(self, args: list[str]) -> None:
        tables = self.catalog().tables
        names = [n for n in tables if not args or _same_name(n, args[0])]
        if not names:
            raise UsageError(f"no table or view named {args[0]}: .tables lists them")
        self.write("".join(_create(name, *tables[name]) for name in names))

    def _mode(self, args: list[str]) -> None:
        if not args:
            self.write(f"{self.mode}\n")
        elif args[0].lower() in FORMATS:
            self.mode = args[0].lower()
        else:
            raise UsageError(f"unknown mode {args[0]}: one of {', '.join(FORMATS)}")

    def _timer(self, args: list[str]) -> None:
        if not args or args[0].lower() not in ("on", "off"):
            raise UsageError(".timer takes on or off")
        self.timer = args[0].lower() == "on"

    def _maxrows(self, args: list[str]) -> None:
        if len(args) != 1 or not args[0].isdigit():
            raise UsageError(".maxrows takes a number of rows (0: all)")
        self.max_rows = int(args[0]) or None

    def _asof(self, args: list[str]) -> None:
        if args:
            spec = " ".join(args)
            try:
                refresh_connection(self.con, as_of=spec)
            except ERRORS:
                refresh_connection(self.con, as_of=self.as_of)  # the cut read before
                raise
            self.as_of = None if spec.lower() == "now" else spec
            self._catalog = None
        if self.verbose or not args:
            self.write(f"as of {self.as_of or 'now'}\n")

    def _refresh(self, args: list[str]) -> None:
        started = time.perf_counter()
        refresh_connection(self.con)
        self._catalog = None
        if self.verbose:
            self.write(f"refreshed in {time.perf_counter() - started:.3f} s\n")

    def _regions(self, args: list[str]) -> None:
        self.run_sql("SELECT region, frontier_at, freshness FROM regions")

    def _read(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError(".read takes one FILE")
        if self._depth >= MAX_DEPTH:
            raise UsageError(f".read nested more than {MAX_DEPTH} deep")
        text = Path(args[0]).read_text(encoding="utf-8")
        self._depth += 1
        try:
            self.run_text(text)
        finally:
            self._depth -= 1

    def _help(self, args: list[str]) -> None:
        usage = [(f"{name} {arg}".strip(), text) for name, (arg, text) in COMMANDS.items()]
        pad = max(len(u) for u, _ in usage)
        lines = [f"{u:<{pad}}  {text}" for u, text in usage]
        lines.append("Statements end with ';' and may span lines; Tab completes names.")
        self.write("\n".join(lines) + "\n")

    def _quit(self, args: list[str]) -> None:
        raise _Quit


def _create(name: str, kind: str, columns: list[tuple[str, str]]) -> str:
    body = ",\n".join(f"    {column} {type_}" for column, type_ in columns)
    return f"CREATE {kind} {name} (\n{body}\n);\n"


# --------------------------------------------------------------------- console


class _History(FileHistory):
    """A history file that never stops the console (an unwritable home, say)."""

    def store_string(self, string: str) -> None:
        with contextlib.suppress(OSError):
            super().store_string(string)


def history_path() -> Path:
    """``$CRDTDB_SQL_HISTORY``, else ``~/.crdtdb_sql_history``."""
    return Path(os.environ.get(HISTORY_ENV) or Path.home() / ".crdtdb_sql_history")


def _continuation(width: int, line_number: int, wrap_count: int) -> str:
    return "...> ".rjust(width)


def _session(shell: Shell) -> PromptSession[str]:
    session: PromptSession[str] = PromptSession(
        history=_History(str(history_path())),
        completer=SqlCompleter(shell.catalog),
        complete_while_typing=False,
        multiline=Condition(lambda: not _ready(session.default_buffer.text)),
        prompt_continuation=_continuation,
    )
    return session


def _console(shell: Shell, directory: str) -> int:
    # A Ctrl-C landing while prompt_toolkit leaves a prompt makes asyncio log a
    # traceback from prompt_toolkit's SIGINT handler; the key itself is handled.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    session = _session(shell)
    shell.write(f"crdtdb SQL on {directory}: end statements with ;  .help for help\n")
    while True:
        try:
            text = session.prompt(shell.prompt())
        except KeyboardInterrupt:  # Ctrl-C: the line is dropped
            continue
        except EOFError:  # Ctrl-D
            return 0
        if not shell.step(text):
            return 0


# ------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdtdb sql", description="SQL over a region's store: a console, or run SQL and exit."
    )
    parser.add_argument("dir", metavar="DIR", help="the region's data directory")
    parser.add_argument("-c", "--command", metavar="SQL", help="run SQL (and dot commands)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--as-of", metavar="CUT", help="an HLC, a timestamp, frontier or now")
    parser.add_argument("--no-refresh", action="store_true", help="read the last materialisation")
    return parser


def _fail(exc: BaseException, status: int) -> int:
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return status


def _batch(shell: Shell, command: str | None) -> int:
    """Run ``-c`` text, or the script on standard input; stop at the first error."""
    try:
        shell.run_text(command if command is not None else sys.stdin.read())
    except _Quit:
        pass
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left (``| head``): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except ERRORS as exc:
        return _fail(exc, 1)
    return 0


def main(argv: list[str]) -> int:
    """``crdtdb sql DIR [-c SQL] [--format F] [--as-of CUT] [--no-refresh]``: the exit status."""
    args = _parser().parse_args(argv)
    try:
        con = connect(args.dir, as_of=args.as_of, refresh=not args.no_refresh)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        return _fail(exc, 2)
    except ERRORS as exc:
        return _fail(exc, 1)
    interactive = args.command is None and sys.stdin.isatty()
    # DuckDB's own default for its progress bar depends on how Python was started
    # (on with -c, off with -m): decide it here, on for a person at a terminal only.
    con.execute(f"SET enable_progress_bar = {'true' if interactive else 'false'}")
    shell = Shell(
        con,
        mode=args.format,
        as_of=None if (args.as_of or "now").lower() == "now" else args.as_of,
        max_rows=MAX_ROWS if interactive else None,
        fit=sys.stdout.isatty(),
        verbose=interactive,
    )
    return _console(shell, args.dir) if interactive else _batch(shell, args.command)
