"""``crdtdb cluster list|add|remove|leave DIR ...``: the cluster's membership from the command line.

Run against a member's data directory while its daemon runs, like the other
commands that write the store: the change is a commit of that region, which
its daemon replicates to every other region (see :mod:`crdtdb.membership`).
``list`` also reads the daemon's status file, when there is one, for the last
contact with each member.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from . import membership
from .database import Database
from .errors import UsageError, shown
from .hlc import Hlc

__all__ = ["add_parser", "members_table"]

STATUS_FILE = "sync-status.json"


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not HOST:PORT, e.g. 10.0.0.7:7401")
    return text


def members_table(db: Database, status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per member: the membership's entry, with ``last_contact`` (from the daemon's status
    file, wall-clock seconds) and ``freshness_s`` (age of its frontier clock known here)."""
    found = membership.read(db)
    if found is None:
        return []
    contact = {p["region"]: p.get("last_contact") for p in (status or {}).get("peers", [])}
    clocks = dict(db.frontier_clocks())
    now = time.time()
    rows = []
    for entry in found.to_json():
        region = entry["region"]
        clock = clocks.get(region)
        rows.append(
            {
                **entry,
                "last_contact": None if region == db.region else contact.get(region),
                "frontier": str(clock) if clock is not None else None,
                "freshness_s": (round(max(0.0, now - clock.wall_ms / 1000), 3) if clock else None),
            }
        )
    return rows


def _status(directory: Path) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = json.loads((directory / STATUS_FILE).read_text())
        return status
    except (OSError, ValueError):
        return None


def _ago(moment: float | None) -> str:
    return "never" if moment is None else f"{max(0.0, time.time() - moment):.1f}s ago"


def cmd_list(args: argparse.Namespace, db: Database) -> int:
    rows = members_table(db, _status(Path(args.dir)))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no membership yet: this store never ran as part of a cluster")
        return 0
    for row in rows:
        me = " (this region)" if row["region"] == db.region else ""
        fresh = "?" if row["freshness_s"] is None else f"{row['freshness_s']:.1f}s"
        print(
            f"{row['region']:<12} {row['state'] or '?':<8} {row['address'] or '-':<22}"
            f" since {row['since'] or '?'} by {row['by'] or '?'};"
            f" last contact {_ago(row['last_contact']) if not me else '-'};"
            f" frontier age {fresh}{me}"
        )
    return 0


def cmd_add(args: argparse.Namespace, db: Database) -> int:
    check_store(db)
    member = membership.add(db, args.name, address=args.address)
    print(json.dumps({"region": args.name, "state": member.state, "address": member.address}))
    return 0


def cmd_remove(args: argparse.Namespace, db: Database) -> int:
    check_store(db)
    member = membership.remove(db, args.name)
    _print_change(args.name, member, member.final_seq)
    return 0


def cmd_leave(args: argparse.Namespace, db: Database) -> int:
    check_store(db)
    member = membership.leave(db)
    _print_change(db.region, member, member.drain_seq)
    return 0


def _print_change(region: str, member: membership.Member, final_seq: int | None) -> None:
    """The state change just written, as one JSON line."""
    since = member.since
    print(
        json.dumps(
            {
                "region": region,
                "state": member.state,
                "final_seq": final_seq,
                "hlc": str(since.hlc if since else Hlc(0)),
            }
        )
    )


def add_parser(sub: Any, run: Any) -> None:
    """Add ``crdtdb cluster ...`` to the subcommands ``sub``; ``run(args, fn)`` opens the
    store and calls ``fn(args, db)``."""
    group = sub.add_parser(
        "cluster",
        help="the cluster's members (list, add, remove, leave)",
        description="the cluster's membership, a replicated document: run against a member's"
        " data directory (its daemon replicates the change)",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("list", help="members, states, addresses, last contact, freshness")
    p.add_argument("dir", metavar="DIR", help="a member's data directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=lambda a: run(a, cmd_list))
    p = actions.add_parser("add", help="admit a region (joining, then active once in sync)")
    p.add_argument("dir", metavar="DIR", help="a member's data directory")
    p.add_argument("name", metavar="NAME", help="the region to admit")
    p.add_argument("--address", type=_address, metavar="HOST:PORT", help="where it listens")
    p.set_defaults(func=lambda a: run(a, cmd_add))
    p = actions.add_parser(
        "remove", help="remove a region for good: refused everywhere, not waited for"
    )
    p.add_argument("dir", metavar="DIR", help="a member's data directory (not its own)")
    p.add_argument("name", metavar="NAME", help="the region to remove")
    p.set_defaults(func=lambda a: run(a, cmd_remove))
    p = actions.add_parser(
        "leave",
        help="this region leaves: it takes no more writes, and is removed once a peer holds"
        " all it wrote",
    )
    p.add_argument("dir", metavar="DIR", help="the leaving region's own data directory")
    p.set_defaults(func=lambda a: run(a, cmd_leave))


def check_store(db: Database) -> None:
    """Refuse to add or remove through a store that is not part of a cluster yet."""
    if membership.read(db) is None:
        raise UsageError(
            f"{db.path} holds no membership: run it with `crdtdb serve` (or add/remove"
            " through a member's directory)"
        )
