"""Who belongs to the cluster, as a replicated CRDT document.

The membership is the document ``_cluster/members`` of the reserved
collection ``_cluster`` (see :data:`RESERVED_COLLECTION`): it replicates,
merges and is repaired like any other document, so every region learns every
change without a protocol of its own. Ordinary writes cannot touch it (a
``ReservedCollectionError``); the functions here edit it, and ``list()``,
``collections()`` and the query views leave it out unless asked by name.

Layout: one root-level map per region (Yjs merges root types by name, so
two regions adding the same region concurrently both keep their keys), with

- ``"<state>@<by>"`` for each state change (``joining``, ``active``,
  ``leaving``, ``removed``), value ``{"hlc": "<int>", "final_seq": n}``
  (``final_seq``: for ``leaving``, every record the region wrote; for
  ``removed``, its records the remover held):
  written once by region ``by`` and never changed. Keys, not one ``state``
  value: a Yjs map key written concurrently keeps one writer's value (by
  client id), so "removed" could lose to a concurrent "active". With one key
  per change every region ends up holding every change, and the state is the
  furthest one present: **state only moves forward, ``removed`` wins**, in
  any delivery order;
- ``"address"``: where it listens (HOST:PORT; last writer wins, as it
  should: the newest address);
- ``"cert:<sha256>"`` for each certificate fingerprint the region recorded
  for itself (a daemon does at start), value ``{"hlc": "<int>", "by":
  region}``: the current certificate is the one recorded last (highest HLC,
  then fingerprint); any other one recorded is *retired* and refused
  cluster-wide (rotation and revocation without a CRL). Entries another
  region wrote are ignored: one that saw an old certificate late must not
  make it current again.

HLCs are stored as decimal strings: document numbers read back as floats,
which cannot hold 64 bits.

**Leaving** (:func:`leave`, ``crdtdb cluster leave DIR`` on the region's own
directory) is a drain: the region records ``leaving@<itself>`` with
``final_seq``, the number of its last record (that change included), and
from then on refuses local writes (:func:`leaving_message`, asked by the commit
path; a ``RegionLeavingError``). The others keep waiting for it in the
frontier, as for any member; once a region holds its records 1..final_seq
its daemon removes it (:func:`drained`), and the ``removed`` rule takes over
with nothing it acknowledged left behind.

The frontier rule built on it is :func:`counted_origins` (used by
:mod:`crdtdb.frontier`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .hlc import Hlc, tick
from .ids import RESERVED_COLLECTION, collection_of, validate_region

if TYPE_CHECKING:
    from .database import Database

__all__ = [
    "MEMBERS_DOC",
    "RESERVED_COLLECTION",
    "STATES",
    "WAITED_STATES",
    "Member",
    "Membership",
    "StateChange",
    "add",
    "drained",
    "ensure",
    "leave",
    "leaving_message",
    "parse",
    "read",
    "read_conn",
    "record_fingerprint",
    "remove",
    "writes_members_only",
]

MEMBERS_DOC = "_cluster/members"
STATES = ("joining", "active", "leaving", "removed")
"""A region's states, in the only order it may move through them."""
WAITED_STATES = frozenset({"joining", "active", "leaving"})
"""The states of a region the frontier waits for (every state but ``removed``)."""
_CERT = "cert:"


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state change of a member: to ``state``, at ``hlc``, made by region ``by``."""

    state: str
    hlc: Hlc
    by: str
    final_seq: int = 0
    """For ``removed``: the removed region's records held by ``by`` then (1..final_seq);
    for ``leaving``: every record the region wrote (it writes no more)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One region as the membership document describes it."""

    region: str
    changes: tuple[StateChange, ...]
    address: str | None
    fingerprints: tuple[tuple[str, Hlc, str], ...]
    """(sha256 hex, HLC recorded, recorded by), oldest first; the last one is current."""

    @property
    def state(self) -> str | None:
        """The furthest state any change reached (None: no change recorded yet)."""
        if not self.changes:
            return None
        return max(self.changes, key=lambda c: STATES.index(c.state)).state

    @property
    def since(self) -> StateChange | None:
        """The first change into the current state (the one that made it so)."""
        state = self.state
        reached = [c for c in self.changes if c.state == state]
        return min(reached, key=lambda c: (c.hlc, c.by)) if reached else None

    @property
    def final_seq(self) -> int:
        """For a removed region: its records 1..final_seq are the ones every region keeps."""
        return max((c.final_seq for c in self.changes if c.state == "removed"), default=0)

    @property
    def drain_seq(self) -> int | None:
        """For a leaving region: the last of its records (None: it never left)."""
        own = [c.final_seq for c in self.changes if c.state == "leaving" and c.by == self.region]
        return max(own) if own else None

    @property
    def fingerprint(self) -> str | None:
        """The current certificate's fingerprint (None: none recorded yet)."""
        return self.fingerprints[-1][0] if self.fingerprints else None

    @property
    def retired(self) -> frozenset[str]:
        """Fingerprints recorded for it that are no longer current: refused everywhere."""
        return frozenset(fp for fp, _, _ in self.fingerprints[:-1])


@dataclass(frozen=True, slots=True)
class Membership:
    """The cluster's members, as read from the membership document."""

    members: dict[str, Member]
    _waited: frozenset[str] = field(init=False, repr=False, compare=False)
    _removed: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Read on every frontier computation: worked out once per distinct document.
        states = {r: m.state for r, m in self.members.items()}
        waited = frozenset(r for r, state in states.items() if state in WAITED_STATES)
        removed = {r: self.members[r].final_seq for r, s in states.items() if s == "removed"}
        object.__setattr__(self, "_waited", waited)
        object.__setattr__(self, "_removed", removed)

    def state(self, region: str) -> str | None:
        member = self.members.get(region)
        return member.state if member else None

    def waited(self) -> frozenset[str]:
        """Regions the frontier waits for: members that are not removed."""
        return self._waited

    def removed(self) -> dict[str, int]:
        """Removed regions, each with its final sequence number."""
        return dict(self._removed)

    def retired_fingerprint(self, fingerprint: str) -> str | None:
        """The region whose retired certificate this is (None: not a retired one)."""
        for region, member in self.members.items():
            if fingerprint in member.retired:
                return region
        return None

    def to_json(self) -> list[dict[str, Any]]:
        """One entry per member, sorted by region: what ``crdtdb cluster list --json`` shows."""
        out = []
        for region, member in sorted(self.members.items()):
            since = member.since
            out.append(
                {
                    "region": region,
                    "state": member.state,
                    "address": member.address,
                    "since_hlc": int(since.hlc) if since else None,
                    "since": str(since.hlc) if since else None,
                    "by": since.by if since else None,
                    "fingerprint": member.fingerprint,
                    "changes": [
                        {"state": c.state, "hlc": int(c.hlc), "by": c.by}
                        for c in sorted(member.changes, key=lambda c: (c.hlc, c.state, c.by))
                    ],
                }
            )
        return out


# ------------------------------------------------------------------ reading


def _hlc(value: object) -> Hlc:
    try:
        return Hlc(int(str(value)))
    except (TypeError, ValueError):
        return Hlc(0)


def _member(region: str, fields: dict[str, Any]) -> Member:
    changes: list[StateChange] = []
    prints: list[tuple[str, Hlc, str]] = []
    for key, value in fields.items():
        entry = value if isinstance(value, dict) else {}
        if key.startswith(_CERT):
            if entry.get("by") == region:
                prints.append((key[len(_CERT) :], _hlc(entry.get("hlc")), region))
            continue
        state, sep, by = key.partition("@")
        if sep and state in STATES:
            final = entry.get("final_seq", 0)
            final_seq = int(final) if isinstance(final, int | float) else 0
            changes.append(StateChange(state, _hlc(entry.get("hlc")), by, final_seq))
    address = fields.get("address")
    prints.sort(key=lambda p: (p[1], p[0]))
    return Member(
        region,
        tuple(sorted(changes, key=lambda c: (STATES.index(c.state), c.hlc, c.by))),
        address if isinstance(address, str) else None,
        tuple(prints),
    )


def parse(body: dict[str, Any]) -> Membership:
    """The membership held in the document's JSON (entries that do not parse are skipped)."""
    members = {
        region: _member(region, fields)
        for region, fields in body.items()
        if isinstance(fields, dict) and not region.startswith("_")
    }
    return Membership(members)


_parsed: dict[str, Membership] = {}


def read_conn(conn: sqlite3.Connection) -> Membership | None:
    """The membership as stored, read through ``conn`` (None: the store holds none).

    Cheap enough for every frontier computation: one indexed row, parsed once
    per distinct body. The body is the document's JSON, kept for documents up
    to 16 KiB; a larger membership is replayed from the log.
    """
    row = conn.execute("SELECT body FROM bodies WHERE doc_id = ?", (MEMBERS_DOC,)).fetchone()
    if row is None:
        return None
    body = row[0]
    if body is None:
        body = _replayed(conn)
        if body is None:
            return None
    found = _parsed.get(body)
    if found is None:
        if len(_parsed) > 64:
            _parsed.clear()
        found = _parsed[body] = parse(json.loads(body))
    return found


def _replayed(conn: sqlite3.Connection) -> str | None:
    from ._cache import DocHandle
    from .engine import load_into

    handle = DocHandle(0)
    load_into(conn, MEMBERS_DOC, handle)
    return handle.body()


def read(db: Database) -> Membership | None:
    """The membership this store holds (None: none yet, as in an embedded-only store)."""
    body = db.get(MEMBERS_DOC)
    return None if body is None else parse(body)


# ------------------------------------------------------------------ writing


def _write(db: Database, region: str, values: dict[str, Any]) -> None:
    with db.transaction(_reserved=True) as tx:
        fields = tx.map(MEMBERS_DOC, region)
        for key, value in values.items():
            fields[key] = value


def _now(db: Database) -> str:
    """The HLC a change is recorded at: past every HLC this region issued or saw."""
    return str(int(tick(db.hlc, db.options.clock())))


def _change(db: Database, state: str, by: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return f"{state}@{by}", {"hlc": _now(db), **extra}


def ensure(
    db: Database,
    region: str,
    state: str,
    *,
    address: str | None = None,
    fingerprint: str | None = None,
) -> bool:
    """Make ``region`` at least ``state`` (never backwards, never out of ``removed``), with
    ``address`` and ``fingerprint`` recorded; write only what is missing. Returns whether
    the region is a member (False: it is removed, and nothing was written)."""
    region = validate_region(region)
    if state not in STATES[:2]:
        raise UsageError(
            f"a member is made one of {STATES[:2]}, not {state!r} (a region leaves with"
            " `crdtdb cluster leave`, and is removed with `crdtdb cluster remove`)"
        )
    members = read(db)
    member = members.members.get(region) if members else None
    if member is not None and member.state == "removed":
        return False
    values: dict[str, Any] = {}
    current = member.state if member else None
    if current is None or STATES.index(state) > STATES.index(current):
        key, value = _change(db, state, db.region)
        values[key] = value
    if address is not None and (member is None or member.address != address):
        values["address"] = address
    if fingerprint is not None and region != db.region:
        raise UsageError("a region records only its own certificate's fingerprint")
    if fingerprint is not None and (
        member is None or fingerprint not in {fp for fp, _, _ in member.fingerprints}
    ):  # set once: a retired certificate never becomes current again
        values[_CERT + fingerprint] = {"hlc": _now(db), "by": db.region}
    if values:
        _write(db, region, values)
    return True


def add(db: Database, region: str, *, address: str | None = None) -> Member:
    """``crdtdb cluster add``: admit ``region`` as ``joining`` (it turns ``active`` once
    its first anti-entropy round finds nothing to repair)."""
    region = validate_region(region)
    members = read(db)
    member = members.members.get(region) if members else None
    if member is not None and member.state == "removed":
        raise UsageError(
            f"region {region!r} was removed from the cluster and cannot come back under that"
            " name: give the new region another name"
        )
    ensure(db, region, "joining", address=address)
    found = read(db)
    assert found is not None
    return found.members[region]


def remove(db: Database, region: str) -> Member:
    """``crdtdb cluster remove``: mark ``region`` removed (for good: removed wins).

    Its records this store holds contiguously (1..n) become final: every region
    keeps exactly those, and the frontier stops waiting for it once it holds them.
    """
    region = validate_region(region)
    if region == db.region:
        raise UsageError(
            f"a region does not remove itself: run `crdtdb cluster remove {region}` against"
            " another member's directory"
        )
    members = read(db)
    member = members.members.get(region) if members else None
    if member is None or member.state != "removed":
        held = db.progress().get(region, (0, 0, Hlc(0)))[1]
        key, value = _change(db, "removed", db.region, final_seq=held)
        _write(db, region, {key: value})
    found = read(db)
    assert found is not None
    return found.members[region]


def record_fingerprint(db: Database, fingerprint: str) -> None:
    """Record ``fingerprint`` as this region's current certificate (if it is new)."""
    found = read(db)
    member = found.members.get(db.region) if found else None
    if member is not None and fingerprint in {fp for fp, _, _ in member.fingerprints}:
        return  # current, or retired: never current again
    _write(db, db.region, {_CERT + fingerprint: {"hlc": _now(db), "by": db.region}})


def leave(db: Database) -> Member:
    """``crdtdb cluster leave DIR``: this region leaves the cluster (a drain, see above).

    Records ``leaving@<region>`` with ``final_seq``: the sequence number the change
    itself is committed at, so every record this region wrote is 1..final_seq. From
    then on its local writes are refused; should another process's write slip in
    between reading the counter and committing, the change is written again (it is
    the one write still allowed), numbered after it.
    """
    region = db.region
    found = read(db)
    member = found.members.get(region) if found else None
    if member is None or member.state is None:
        raise UsageError(
            f"region {region} is not a member of a cluster (its store holds no membership"
            " entry for it): there is nothing to leave"
        )
    if member.state == "removed":
        raise UsageError(f"region {region} was already removed from the cluster")
    if member.drain_seq is not None:
        return member
    predicted = db.progress().get(region, (0, 0, Hlc(0)))[1] + 1
    for _ in range(8):
        with db.transaction(_reserved=True) as tx:
            fields = tx.map(MEMBERS_DOC, region)
            fields[f"leaving@{region}"] = {"hlc": _now(db), "final_seq": predicted}
        written = max((r.seq for r in tx.records if r.origin == region), default=0)
        if written == predicted:
            break
        predicted = written + 1
    found = read(db)
    assert found is not None
    return found.members[region]


def writes_members_only(doc_ids: list[str]) -> bool:
    """Whether a write touches the reserved collection only (taken from any region)."""
    return all(collection_of(doc_id) == RESERVED_COLLECTION for doc_id in doc_ids)


def leaving_message(conn: sqlite3.Connection, region: str) -> str | None:
    """Why ``region`` refuses local writes (the start of a :class:`RegionLeavingError`'s
    message), or None while it takes them; read through ``conn``."""
    found = read_conn(conn)
    member = found.members.get(region) if found else None
    if member is None or member.state not in ("leaving", "removed"):
        return None
    since = member.since
    when = f" at {since.hlc} by {since.by}" if since else ""
    if member.state == "leaving":
        return f"refused local write: region {region} is {member.state} the cluster{when}"
    return f"refused local write: region {region} was removed from the cluster{when}"


def drained(view: Membership, held: dict[str, int]) -> list[str]:
    """Leaving regions whose every record (1..final_seq) this store holds (``held``:
    contiguous sequence per origin): the ones it may now remove."""
    return sorted(
        region
        for region, member in view.members.items()
        if member.state == "leaving"
        and member.drain_seq is not None
        and held.get(region, 0) >= member.drain_seq
    )
