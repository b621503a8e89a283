"""Is this region's clock off? The decision, from what its peers' clocks say (pure).

No I/O and no clock of its own: the replicator feeds it samples with the wall
time and the loop's time passed in (:mod:`.clockkeeper` does, and writes the
fence). What it learns from, and what each proves:

- **A peer's own clock in its frontier gossip** (its entry for itself in
  ``Frontier``, every ``heartbeat_interval``). An HLC is never behind its
  region's wall clock, so a peer HLC far *behind* our wall clock proves that
  our clock is ahead of the peer's, by at least the difference less how stale
  the HLC may be (``slack_ms``): the peer ticks it each heartbeat and gossips
  it each heartbeat, so it lags the peer's wall by up to about two heartbeats,
  and by longer while the peer's writer thread is held up (a long batch, a
  slow disk), so the daemon allows at least 5 s: a peer that stalls must not
  fence us. A peer HLC far *ahead* of our wall proves nothing about
  our clock: the peer's HLC may have been dragged ahead of its own wall (by
  up to the maximum offset at each hop) by a third region whose clock runs ahead.
- **A peer's refusal of our records for clock skew** (``Error`` with code
  ``clock_skew``: "remote HLC H is N ms ahead of local wall time"). The peer
  read its wall clock as exactly ``H - N``: that is its wall at about the
  moment we hear it, so the offset is known to within the transit time.
  Whose record it was does not matter. So a clock ahead by more than the
  offset but less than the gossip's slack is caught by the first refusal of
  one of its records (and fenced for ``window_s`` after the last one).

Why only "ahead" fences: a region's records are refused by a peer exactly
when their HLC is more than the maximum offset ahead of that peer's wall
clock, and a region's HLC is at least its wall clock. So a region whose clock
runs ahead of most of its peers writes records most of them refuse: it must
stop acknowledging writes. A region whose clock is *behind* makes records
every peer accepts (HLCs behind are taken); it is the one that refuses its
peers' records, and its logs say so. It is reported (``behind_ms``), not fenced.

**Majority.** The fence holds when, of the peers heard from in the last
``window_s`` seconds, more than half show this region ahead by more than the
maximum offset. In a two-region cluster that is the one peer: the region
whose clock runs ahead is fenced, the other is not (it sees the first one
ahead, which proves nothing against itself). With three regions, one region
whose clock is wrong is fenced by its own view (both others show it off)
while the other two each see one peer off of two, not a majority. No samples
(no peer heard recently): no evidence, no fence.

**Hysteresis.** Once fenced by its peers, a region stays fenced until a
majority shows it ahead by no more than half the maximum offset, so a clock
hovering at the limit does not flap.

**The stored HLC.** Independently of the peers, the region is fenced while
the HLC its store holds is more than the maximum offset ahead of its wall
clock (its clock ran ahead, and was fixed): every record it makes would be
stamped after that HLC (if e happened before f then hlc(e) < hlc(f)), so
every peer would refuse it until the wall clock catches up, at a moment
known in advance (``lift_ms``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from crdtdb.hlc import Hlc

__all__ = ["ClockWatch", "PeerClock", "Verdict", "parse_refusal"]

_REFUSAL = re.compile(r"remote HLC (\S+) is (\d+) ms ahead of local wall time")


def parse_refusal(text: str) -> tuple[Hlc, int] | None:
    """(refused HLC, how far ahead of the refuser's wall clock in ms) from a ``clock_skew``
    refusal's text (:func:`crdtdb.hlc.observe` says so), or None if it says neither."""
    match = _REFUSAL.search(text)
    if match is None:
        return None
    try:
        return Hlc.parse(match[1]), int(match[2])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PeerClock:
    """What one peer's latest samples say about our clock."""

    offset_ms: int
    """The peer's wall clock minus ours, best estimate (negative: the peer is behind us)."""
    lead_ms: int
    """How far ahead of the peer's wall clock ours provably is (a lower bound; <= 0: not
    proven ahead)."""
    source: str
    """``refusal`` (exact) or ``gossip`` (its HLC, within ``slack_ms``)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about this region's clock, now."""

    fenced: bool
    ahead_ms: int = 0
    """How far ahead: of a majority of the peers heard from, or of the stored HLC over
    the wall clock."""
    reason: str = ""
    """``peers`` (our clock is ahead of most of them), ``stored`` (our stored HLC is ahead
    of our wall clock), or empty."""
    message: str = ""
    """What a refused local write says: by how much, which way, what to do."""
    lift_ms: int | None = None
    """When the fence lifts by itself (wall ms), if that is known."""
    behind_ms: int = 0
    """How far behind most peers our clock looks (reported, never fenced)."""
    peers: dict[str, PeerClock] = field(default_factory=dict)
    """The peers heard from recently, and what they say."""


@dataclass(slots=True)
class _Sample:
    offset_ms: int
    lead_ms: int
    at: float


@dataclass(slots=True)
class _Peer:
    gossip: _Sample | None = None
    refusal: _Sample | None = None


class ClockWatch:
    """Samples of the peers' clocks and the fence decision; ``now`` is monotonic seconds."""

    def __init__(self, *, max_offset_ms: int, slack_ms: int, window_s: float) -> None:
        self.max_offset_ms = max_offset_ms
        self.slack_ms = slack_ms
        """How stale a peer's gossiped HLC may be (two of its heartbeats; the daemon allows
        at least 5 s)."""
        self.window_s = window_s
        """Samples older than this are forgotten."""
        self._peers: dict[str, _Peer] = {}
        self._fenced_by_peers = False

    def note_gossip(self, peer: str, peer_hlc: Hlc, wall_ms: int, now: float) -> None:
        """``peer`` gossiped its own clock ``peer_hlc``; our wall clock read ``wall_ms``."""
        offset = peer_hlc.wall_ms - wall_ms
        sample = _Sample(offset, -offset - self.slack_ms, now)
        self._peers.setdefault(peer, _Peer()).gossip = sample

    def note_refusal(
        self, peer: str, refused: Hlc, ahead_ms: int, wall_ms: int, now: float
    ) -> None:
        """``peer`` refused a record with HLC ``refused`` as ``ahead_ms`` ahead of its wall."""
        offset = refused.wall_ms - ahead_ms - wall_ms
        self._peers.setdefault(peer, _Peer()).refusal = _Sample(offset, -offset, now)

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def peer_clocks(self, now: float) -> dict[str, PeerClock]:
        """Per peer heard from in the last ``window_s``: what its latest samples say."""
        found: dict[str, PeerClock] = {}
        for name, peer in sorted(self._peers.items()):
            recent = [
                (kind, s)
                for kind, s in (("refusal", peer.refusal), ("gossip", peer.gossip))
                if s is not None and now - s.at <= self.window_s
            ]
            if not recent:
                continue
            # the refusal is exact; a gossip sample only bounds, so the greater lead wins
            kind, best = max(recent, key=lambda item: item[1].lead_ms)
            exact = next((s for k, s in recent if k == "refusal"), best)
            found[name] = PeerClock(exact.offset_ms, best.lead_ms, kind)
        return found

    def decide(self, *, stored: Hlc, wall_ms: int, now: float) -> Verdict:
        """The verdict for a local write at ``wall_ms``, with ``stored`` the store's HLC."""
        peers = self.peer_clocks(now)
        limit = self.max_offset_ms // 2 if self._fenced_by_peers else self.max_offset_ms
        ahead = majority_value([clock.lead_ms for clock in peers.values()])
        self._fenced_by_peers = ahead is not None and ahead > limit
        behind = majority_value([clock.offset_ms for clock in peers.values()]) or 0
        behind = behind if behind > self.max_offset_ms else 0
        stored_ahead = stored.wall_ms - wall_ms
        if self._fenced_by_peers and ahead is not None:
            names = [name for name, clock in peers.items() if clock.lead_ms > limit]
            return Verdict(
                True, ahead, "peers", self._peers_message(ahead, names, len(peers)), None, 0, peers
            )
        if stored_ahead > self.max_offset_ms:
            lift = stored.wall_ms - self.max_offset_ms
            message = (
                f"this region's stored HLC {stored} is {stored_ahead / 1000:.1f} s ahead of its"
                f" wall clock (the clock ran ahead before it was fixed): every write it makes is"
                f" stamped after that HLC, and its peers refuse HLCs more than"
                f" max_clock_offset_ms={self.max_offset_ms} ms ahead of their clocks; writes"
                f" resume by themselves at {Hlc.from_parts(max(0, lift))}"
            )
            return Verdict(True, stored_ahead, "stored", message, lift, behind, peers)
        return Verdict(False, behind_ms=behind, peers=peers)

    def _peers_message(self, ahead: int, names: list[str], heard: int) -> str:
        return (
            f"this region's clock is {ahead / 1000:.1f} s ahead of most of its peers"
            f" ({', '.join(names)}: {len(names)} of {heard} heard from), more than"
            f" max_clock_offset_ms={self.max_offset_ms} ms, so they would refuse its writes:"
            f" fix this host's clock (NTP); writes resume by themselves once it agrees with"
            f" its peers and its stored HLC is within the offset of it"
        )


def majority_value(values: list[int]) -> int | None:
    """The greatest v such that more than half of ``values`` are >= v (None if empty).

    "Ahead of a majority by more than X" is exactly ``majority_value(leads) > X``.
    """
    if not values:
        return None
    ordered = sorted(values, reverse=True)
    return ordered[len(ordered) // 2]
