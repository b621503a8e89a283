"""The ``crdtdb`` command: the front door for operators and scripts.

Subcommands that need replication or DuckDB import them inside the
subcommand, so ``crdtdb get`` stays as light as ``import crdtdb``; ``crdtdb
status`` loads neither aioquic nor cryptography nor the daemon, and ``crdtdb
certs`` only cryptography. Output is JSON (one object, or one object per line
for logs) so that it pipes into ``jq``. Every error, a bad command line
included, goes to stderr as one line ``error: ...`` from :func:`main`, with
exit status 2 for bad input, 130 for Ctrl-C and 1 for everything else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .database import Database
from .database import open as open_db
from .errors import CrdtdbError, NoStoreError, UsageError, shown
from .hlc import Hlc
from .records import REPAIR, UNCHECKED, WRITE, UpdateRecord

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UsageError, so that :func:`main` prints it."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _open(args: argparse.Namespace) -> Database:
    try:
        return open_db(args.dir, region=getattr(args, "region", None))
    except NoStoreError:  # the API's hint is Python: give the command line's instead
        raise NoStoreError(_no_store_hint(args)) from None


def _no_store_hint(args: argparse.Namespace) -> str:
    where = f"there is no crdtdb store in {shown(args.dir)}"
    if "region" in args:
        return f"{where}: to create one, name its region with --region NAME, e.g. --region eu"
    return (
        f"{where}: check the path, or create the store by writing to it:"
        " crdtdb put DIR DOC_ID JSON --region NAME"
    )


def _count(text: str) -> int:
    """argparse type of --limit: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: leave --limit out for no limit")
    return value


def _seconds(text: str) -> float:
    """argparse type of --retention: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not allowed: give seconds >= 0, e.g. 86400"
        )
    return value


def _document_text(argument: str) -> tuple[str, str]:
    """The JSON text of ``put`` (the argument, or stdin for ``-``) and what to say if it
    does not parse."""
    if argument == "-":
        return sys.stdin.read(), "JSON on standard input does not parse ({}): send one object"
    return argument, "JSON argument does not parse ({}): quote it"


def _print(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, sort_keys=True))


def cmd_put(args: argparse.Namespace) -> int:
    text, problem = _document_text(args.json)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(problem.format(exc) + """, e.g. '{"a": 1}'""") from None
    with _open(args) as db:
        hlc = db.update(args.doc_id, value) if args.merge else db.put(args.doc_id, value)
        _print({"doc_id": args.doc_id, "hlc": str(hlc), "hlc_int": int(hlc)})
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _open(args) as db:
        value = (
            db.as_of(Hlc.parse(args.as_of)).get(args.doc_id) if args.as_of else db.get(args.doc_id)
        )
    if value is None:
        print(f"error: {shown(args.doc_id)} does not exist", file=sys.stderr)
        return 1
    _print(value)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args) as db:
        hlc = db.delete(args.doc_id)
    _print(
        {
            "doc_id": args.doc_id,
            "deleted": hlc is not None,
            "hlc": str(hlc) if hlc is not None else None,
        }
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as db:
        for doc_id in db.list(args.collection, limit=args.limit):
            print(doc_id)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    since = Hlc.parse(args.since) if args.since else None
    with _open(args) as db:
        position = db.log_position()  # --follow goes on from here: nothing falls between
        printed: set[tuple[str, int]] = set()
        for record in db.changes(since, limit=args.limit):
            _print_record(db, record)
            if args.follow:
                printed.add((record.origin, record.seq))
        if args.follow:
            import asyncio

            asyncio.run(_follow(db, position, printed))
    return 0


async def _follow(db: Database, position: int, printed: set[tuple[str, int]]) -> None:
    """Print each record the log gains after ``position`` (in arrival order) until Ctrl-C."""
    async for record in db.watch(after=position):
        if (record.origin, record.seq) not in printed:
            _print_record(db, record)


_KIND_NAMES = {WRITE: "write", REPAIR: "repair", UNCHECKED: "unchecked"}


def _print_record(db: Database, record: UpdateRecord) -> None:
    line: dict[str, Any] = {
        "hlc": str(record.hlc),
        "hlc_int": int(record.hlc),
        "origin": record.origin,
        "seq": record.seq,
        "doc_id": record.doc_id,
        "bytes": len(record.update),
        "kind": _KIND_NAMES.get(record.kind, str(record.kind)),
    }
    if record.kind == REPAIR:  # committed by `origin`; whose items it carries:
        carried = db.chains.carried(record.update)
        line["carries"] = list(carried.carries)
        if carried.unbound:
            line["unbound_clients"] = carried.unbound
    _print(line)
    sys.stdout.flush()  # a follower reads each line as it comes


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as db:
        _print(db.info())
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with _open(args) as db, _progress_bar("compacting", "documents") as progress:
        removed = db.compact(retention_s=args.retention, progress=progress)
        _print({"records_removed": removed, "compacted_hlc": str(db.compacted_hlc)})
    return 0


@contextlib.contextmanager
def _progress_bar(what: str, unit: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr while a long operation runs, when stderr is a
    terminal; nothing otherwise (scripts and logs get only the result)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(f"{what} {unit}", *columns, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _sync(module: str) -> Any:
    """A module of crdtdb.sync, imported only by the subcommands that need it.

    (Imported by name: ``sync/`` is installed as ``crdtdb.sync`` by setuptools'
    package-dir mapping, which a type checker run on the source tree cannot follow.)
    """
    return importlib.import_module(f"crdtdb.sync.{module}")


def cmd_serve(args: argparse.Namespace) -> int:
    daemon = _sync("daemon")
    if args.check:
        checked: int = daemon.check_config(Path(args.config))
        return checked
    code: int = daemon.serve(
        Path(args.config),
        log_level=args.log_level,
        log_format=args.log_format,
        verbose=args.verbose,
    )
    return code


def _not_a_file(path: str, wanted: str) -> None:
    if Path(path).is_file():
        raise UsageError(f"{shown(path)} is a file: pass {wanted}")


def cmd_status(args: argparse.Namespace) -> int:
    if not args.target.endswith(".toml"):
        _not_a_file(args.target, "the region's data directory or its .toml config")
    code: int = _sync("status").show_status(
        args.target, as_json=args.json, watch=args.watch, interval=args.interval
    )
    return code


def cmd_certs_init(args: argparse.Namespace) -> int:
    certs = _sync("certs")
    cert_path: Path = certs.init_ca(args.dir, name=args.name, days=args.days, force=args.force)
    about = certs.summary(cert_path)
    _print(
        {
            "ca_cert": str(cert_path),
            "ca_key": str(cert_path.with_name(certs.CA_KEY_FILE)),
            "subject": about["subject"],
            "not_valid_after": about["not_valid_after"],
        }
    )
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    certs = _sync("certs")
    hosts = certs.DEFAULT_HOSTS if args.host is None else tuple(args.host)
    cert_path, key_path = certs.issue(
        args.dir, args.region, days=args.days, hosts=hosts, force=args.force
    )
    about = certs.summary(cert_path)
    _print(
        {
            "region": certs.region_of(cert_path.read_bytes()),
            "cert": str(cert_path),
            "key": str(key_path),
            "names": about["names"],
            "not_valid_after": about["not_valid_after"],
        }
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.dir is not None:
        raise UsageError(
            "`crdtdb demo` takes no DIR: it runs in a temporary directory, and `--keep DIR`"
            " leaves its files in DIR (`--embedded --keep DIR` for the two-store walkthrough)"
        )
    names = ("regions", "duration", "rate", "timeout")
    scale = {k: v for k in names if (v := getattr(args, k)) is not None}
    if args.embedded:
        if scale:
            raise UsageError(
                "--regions, --duration, --rate and --timeout are for the cluster demo,"
                " not --embedded"
            )
        from .demo import run

        return run(args.keep)
    demo = _sync("demo")
    code: int = demo.run(demo.DemoOptions(keep=args.keep, **scale))
    return code


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crdtdb",
        description="crdtdb, a geo-replicated CRDT document database: the command line."
        " Output is JSON; errors are one line on stderr.",
    )
    parser.add_argument("--version", action="version", version=f"crdtdb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str, doc: bool = False
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("dir", metavar="DIR", help="the region's data directory")
        if doc:
            p.add_argument("doc_id", metavar="DOC_ID", help="collection/key, e.g. users/alice")
        p.set_defaults(func=func)
        return p

    p = add(
        "put", cmd_put, "write a document (replaces it; --merge sets only the given keys)", doc=True
    )
    p.add_argument(
        "json", metavar="JSON", help="the document, a JSON object; - reads it from stdin"
    )
    p.add_argument("--merge", action="store_true", help="set only the given top-level keys")
    p.add_argument("--region", help="region name, needed only to create a new store")
    p = add("get", cmd_get, "print a document as JSON", doc=True)
    p.add_argument("--as-of", metavar="HLC", help="read it as it was at this HLC")
    add("delete", cmd_delete, "delete a whole document", doc=True)
    p = add("list", cmd_list, "list the live document ids of a collection")
    p.add_argument("collection")
    p.add_argument("--limit", type=_count, help="at most this many ids")
    p = add("log", cmd_log, "print update records in HLC order, one JSON object per line")
    p.add_argument("--since", metavar="HLC", help="only records after this HLC")
    p.add_argument("--limit", type=_count, help="at most this many records")
    p.add_argument(
        "--follow", action="store_true", help="then print new records as they come, until Ctrl-C"
    )
    add("info", cmd_info, "print counts, clocks and origins of a store")
    p = add("compact", cmd_compact, "fold history older than the retention window")
    p.add_argument(
        "--retention",
        type=_seconds,
        metavar="SECONDS",
        help="keep this much history (default: the store's option, 7 days)",
    )
    _add_demo(sub)
    p = sub.add_parser(
        "serve",
        help="run the sync daemon of one region",
        description="run the sync daemon of one region",
    )
    p.add_argument("--config", required=True, help="the region's TOML config file")
    _add_serve_options(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "status",
        help="show a region's peers, lag and anti-entropy",
        description="show a region's peers, lag and anti-entropy",
    )
    p.add_argument("target", metavar="DIR|CONFIG", help="data directory or config file")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.add_argument(
        "--watch", action="store_true", help="show the per-peer table, refreshed in place"
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="--watch refresh period"
    )
    p.set_defaults(func=cmd_status)
    _add_certs(sub)
    _add_cluster(sub)
    for name, summary in (
        ("sql", "query a region with SQL (DuckDB): a console, or -c SQL"),
        ("export", "export collections as Parquet or Apache Iceberg tables"),
    ):
        p = sub.add_parser(name, help=summary, description=summary, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, module=name: _query(module, a.rest))
    return parser


def _add_demo(sub: Any) -> None:
    """``crdtdb demo``: the defaults are crdtdb.sync.demo.DemoOptions', not imported here."""
    summary = "run three regions on this machine: daemons, writers, a cut, convergence, SQL"
    p = sub.add_parser("demo", help=summary, description=summary)
    p.add_argument("dir", nargs="?", metavar="DIR", help=argparse.SUPPRESS)  # refused, with a hint
    p.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="leave the cluster's files in DIR (new, empty, or an earlier demo's) to explore",
    )
    p.add_argument("--regions", type=int, metavar="N", help="how many regions, 2-9 (default: 3)")
    p.add_argument("--duration", type=float, metavar="S", help="seconds of writing (default: 12)")
    p.add_argument(
        "--rate", type=float, metavar="W", help="transactions a second per region (default: 20)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds the regions get to converge once the writes stop (default: 30)",
    )
    p.add_argument(
        "--embedded",
        action="store_true",
        help="instead: the two-store walkthrough in one process (merge, delete, time travel)",
    )
    p.set_defaults(func=cmd_demo)


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config, its certificates, data directory and ports; then exit",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="least severe log lines shown (default: info; debug also shows aioquic's)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines for people (text, default) or one JSON object per line",
    )
    p.add_argument("--verbose", action="store_true", help="the same as --log-level debug")


def _add_certs(sub: Any) -> None:
    """``crdtdb certs init|issue``: the parser is built here, cryptography loaded only to run."""
    group = sub.add_parser(
        "certs",
        help="cluster CA and region certificates (init, issue)",
        description="the cluster CA and region certificates",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("init", help="create the cluster CA (DIR/ca.pem, DIR/ca.key)")
    p.add_argument("dir", metavar="DIR", type=Path, help="the certificate directory")
    p.add_argument("--name", default="crdtdb cluster CA", help="the CA's common name")
    p.add_argument("--days", type=int, default=3650, help="validity (default: 3650)")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=cmd_certs_init)
    p = actions.add_parser(
        "issue", help="issue DIR/REGION.pem and DIR/REGION.key, signed by the CA"
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the directory holding the CA")
    p.add_argument("region", metavar="REGION", help="the region name, e.g. eu")
    p.add_argument("--days", type=int, default=825, help="validity (default: 825)")
    p.add_argument(
        "--host",
        action="append",
        metavar="NAME_OR_IP",
        # The defaults are crdtdb.sync.certs.DEFAULT_HOSTS, not imported here to keep
        # every other command free of cryptography (a test checks they agree).
        help="a DNS name or IP address the certificate is valid for, repeatable"
        " (default: 127.0.0.1 ::1 localhost)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing certificate")
    p.set_defaults(func=cmd_certs_issue)


def _add_cluster(sub: Any) -> None:
    """``crdtdb cluster list|add|remove`` (in :mod:`crdtdb.cluster_cli`)."""
    from . import cluster_cli

    def run(
        args: argparse.Namespace, command: Callable[[argparse.Namespace, Database], int]
    ) -> int:
        with _open(args) as db:
            return command(args, db)

    cluster_cli.add_parser(sub, run)


def _query(command: str, rest: list[str]) -> int:
    """``crdtdb sql`` and ``crdtdb export``: their own parsers, in crdtdb.query (DuckDB)."""
    module = importlib.import_module(f"crdtdb.query.{'console' if command == 'sql' else command}")
    code: int = module.main(rest)
    return code


_OWN_PARSERS: dict[str, Callable[[list[str]], int]] = {
    "sql": lambda rest: _query("sql", rest),
    "export": lambda rest: _query("export", rest),
}
"""Subcommands that parse their own arguments (``--help`` included)."""


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if words and words[0] in _OWN_PARSERS:
            return _OWN_PARSERS[words[0]](words[1:])
        args = _parser().parse_args(words)
        result: int = args.func(args)
        return result
    except CrdtdbError as exc:
        if not exc.reported:
            print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the system refused (no such directory, permission...): say what
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help and --version end here
        return _exit_status(exc)
    except KeyboardInterrupt:  # Ctrl-C: stop quietly, as shells expect
        return 130
    except Exception as exc:  # a bug of ours, or an error nothing above names: one line
        print(
            f"error: {type(exc).__name__}: {str(exc)[:300]} (unexpected: please report it)",
            file=sys.stderr,
        )
        return 1


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(f"error: {exc.code}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
