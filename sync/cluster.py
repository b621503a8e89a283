"""The daemon's side of the cluster membership (:mod:`crdtdb.membership`).

What the membership document means for a running region:

- **Static clusters.** At start the daemon makes its configured peers
  ``active`` members and itself ``joining`` (``active`` alone, with no peer
  or seed: it founds the cluster), recording its own address and
  certificate fingerprint: in a static cluster each region is made active
  by the peers whose configs list it, so a config with ``[[peers]]`` works
  as it always did, and a region no member lists stays ``joining`` until a
  clean anti-entropy round once it is admitted. It never brings back a
  region the membership says is removed (removed wins), and says so in its
  log.
- **Admission.** A peer with a CA-signed certificate that is not a member is
  refused at the handshake (``not_a_member``: the message, in both logs,
  names the command that adds it), unless ``[cluster] auto_join = true``:
  then it is added as ``joining``, and turns ``active`` after the first
  anti-entropy round with it that finds nothing to repair.
- **Decommission.** A removed region is refused (``removed``), by name,
  and not dialled any more.
- **Leaving** (``crdtdb cluster leave`` on the region itself): the region
  refuses local writes and names its last record; it stays a member, served
  and waited for, until a region holds every record it wrote: that region's
  daemon then removes it (:meth:`ClusterView.drain`), so nothing it
  acknowledged is lost by the removal.
- **Certificates.** Each daemon records its own certificate's fingerprint at
  start (only a region itself does: another region that saw an old
  certificate first must not make it current again). A certificate the
  membership records as replaced by a newer one of the same region is
  refused cluster-wide (``retired_certificate``): restarting a region with a
  new key and certificate rotates it, and revokes the old one without a CRL.
- **Joining through seeds.** With ``[cluster] seeds``, the daemon dials
  each seed address until it is connected to the region found there (with
  ``auto_join`` on the seed, or after ``crdtdb cluster add`` there, it is
  admitted), makes itself ``joining`` (``active`` after its first clean
  anti-entropy round), and records its address in the membership. A seed
  dial is only a way in: it is made only while no session with the seed's
  region is up, so it never competes with that pair's own connection for
  long (the newer one replaces the older).
- **Learned members.** Every daemon, whether its config names ``[[peers]]``
  or seeds, connects to every member the membership gives an address for
  (a configured peer's address wins over the recorded one): the name that
  sorts first dials, so each pair ends up with one connection, and a static
  region dials a newcomer that sorts after it as the newcomer expects. A
  removed member is never dialled. ``[cluster] dial_members = false`` keeps
  a region to its configured peers and seeds (a chain stays a chain).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from crdtdb import membership
from crdtdb.database import Database
from crdtdb.errors import CrdtdbError
from crdtdb.membership import Membership

from .config import RegionConfig
from .errors import RemoteProtocolError

__all__ = ["Admission", "ClusterView", "check_seed_region", "fingerprint"]

log = logging.getLogger("crdtdb.sync")


def fingerprint(certificate: bytes) -> str:
    """SHA-256 of a certificate's DER bytes, in hex (``certificate``: PEM or DER)."""
    if certificate.lstrip().startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        certificate = x509.load_pem_x509_certificate(certificate).public_bytes(Encoding.DER)
    return hashlib.sha256(certificate).hexdigest()


def check_seed_region(certificate: bytes | None, region: str) -> None:
    """A seed was dialled by address: its TLS certificate must be for the region it names."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from .cert_verify import region_of

    if certificate is None:
        raise RemoteProtocolError("the seed presented no certificate", code="bad_region")
    pem = x509.load_der_x509_certificate(certificate).public_bytes(Encoding.PEM)
    named = region_of(pem)
    if named != region:
        raise RemoteProtocolError(
            f"the seed says it is region {region!r} but its certificate is for {named!r}",
            code="bad_region",
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """A peer let in, and the state the membership must give it (on the writer)."""

    region: str
    state: str | None = None
    """Make it at least this (``joining`` for an auto-join), or None: nothing to write."""


class ClusterView:
    """The membership as this daemon last read it, and the decisions built on it."""

    def __init__(self, db: Database, config: RegionConfig, own_fingerprint: str) -> None:
        self.db = db
        self.config = config
        self.own_fingerprint = own_fingerprint
        self.view: Membership | None = None
        self.mesh = config.dial_members
        """Dial every member the membership gives an address for (``dial_members``)."""
        self.draining = False
        """A removal of drained leaving regions is being written (one at a time)."""
        self._pending_port: int | None = None
        """The port to record this region at, while the store refused to (see start)."""

    def start(self, port: int) -> None:
        """Make this region (listening on ``port``) and its configured peers members (never
        a removed one). A store that refuses the write (say, the clock fence holds) is
        tried again by :meth:`retry_start`, every second."""
        try:
            self._start(port)
        except CrdtdbError as exc:
            self._pending_port = port
            log.warning(
                "%s: cannot record this region in the membership yet (trying again every"
                " second): %s",
                self.db.region,
                exc,
                extra={"event": "membership_pending"},
            )
        self.refresh()

    def retry_start(self) -> None:
        """Record this region in the membership, if :meth:`start` could not."""
        port, self._pending_port = self._pending_port, None
        if port is not None:
            try:
                self._start(port)
            except CrdtdbError:
                self._pending_port = port

    def _start(self, port: int) -> None:
        region = self.db.region
        address = self.config.advertise or f"{self.config.host}:{port}"
        # A region with peers or seeds joins: it is active once a round with a peer finds
        # nothing to repair (or once a peer whose config lists it says so). Claiming
        # active itself would make an outsider that lists members look active the moment
        # it is admitted, before it holds a copy. A region alone founds the cluster.
        state = "joining" if self.config.seeds or self.config.peers else "active"
        if not membership.ensure(
            self.db, region, state, address=address, fingerprint=self.own_fingerprint
        ):
            log.error(
                "%s: this region was removed from the cluster: its peers refuse it; to bring"
                " this machine back, give it a new region name, certificate and data directory",
                region,
                extra={"event": "removed_self"},
            )
        view = membership.read(self.db)
        if view is not None and self.own_fingerprint in view.members[region].retired:
            log.error(
                "%s: this region's certificate (sha256 %s...) was replaced by a newer one: its"
                " peers refuse it; configure the region's current certificate and key",
                region,
                self.own_fingerprint[:16],
                extra={"event": "retired_certificate"},
            )
        for peer in self.config.peers:
            if not membership.ensure(self.db, peer.region, "active"):
                log.warning(
                    "%s: the config lists %s as a peer, but it was removed from the cluster:"
                    " it is not dialled nor let in; take it out of the config",
                    region,
                    peer.region,
                    extra={"event": "config_lists_removed", "peer": peer.region},
                )

    def refresh(self) -> Membership | None:
        self.view = membership.read(self.db)
        return self.view

    # ------------------------------------------------------------- admission

    def admit(self, region: str, certificate: bytes | None, *, dialing: bool = False) -> Admission:
        """Let ``region`` (authenticated by ``certificate``) in, or raise why not.

        ``dialing``: we dialled it (a configured peer, a member, or a seed we join
        through): only a removed region or a retired certificate is refused then.
        """
        view = self.refresh()
        member = view.members.get(region) if view else None
        print_ = fingerprint(certificate) if certificate else None
        if member is not None and member.state == "removed":
            since = member.since
            raise RemoteProtocolError(
                f"region {region} was removed from the cluster"
                + (f" by {since.by} at {since.hlc}" if since else "")
                + ": it is refused for good; to bring that machine back, give it a new region"
                " name, certificate and empty data directory, and add it with"
                " `crdtdb cluster add DIR NAME` on a member",
                code="removed",
            )
        if print_ is not None and view is not None:
            owner = view.retired_fingerprint(print_)
            if owner is not None:
                current = (view.members[owner].fingerprint or "?")[:16]
                raise RemoteProtocolError(
                    f"this certificate of region {owner} (sha256 {print_[:16]}...) was replaced"
                    f" by a newer one (sha256 {current}...): it is refused cluster-wide; use"
                    " the region's current certificate",
                    code="retired_certificate",
                )
        if (member is not None and member.state is not None) or dialing:
            return Admission(region)
        if self.config.auto_join:
            log.info(
                "%s: admitting %s as joining (auto_join = true)",
                self.db.region,
                region,
                extra={"event": "auto_join", "peer": region},
            )
            return Admission(region, "joining")
        raise RemoteProtocolError(
            f"region {region} is not a member of this cluster: on any member, run"
            f" `crdtdb cluster add DIR {region} --address HOST:PORT` (DIR: that member's data"
            " directory), or set auto_join = true in [cluster] (test clusters)",
            code="not_a_member",
        )

    def record(self, admission: Admission) -> None:
        """Write what ``admission`` says (on the writer thread: it is a store write)."""
        if admission.state is not None:
            membership.ensure(self.db, admission.region, admission.state)
        self.refresh()

    # ----------------------------------------------------------------- peers

    def state(self, region: str) -> str | None:
        return self.view.state(region) if self.view else None

    def removed(self, region: str) -> bool:
        return self.state(region) == "removed"

    def removed_regions(self) -> list[str]:
        return sorted(self.view.removed()) if self.view is not None else []

    def dial_targets(self) -> dict[str, tuple[str, int]]:
        """Regions to keep a connection with, and where: configured peers, then (unless
        ``dial_members = false``) every other member with an address in the membership,
        whether this region's config is static or seeded; never a removed one nor this
        one."""
        from .config import parse_address

        targets = {p.region: (p.host, p.port) for p in self.config.peers}
        view = self.view
        if view is not None and self.mesh:
            for region, member in view.members.items():
                if region in targets or member.state not in membership.WAITED_STATES:
                    continue
                if member.address:
                    try:
                        targets[region] = parse_address(member.address, "address")
                    except ValueError:
                        continue
        for region in view.removed() if view is not None else ():
            targets.pop(region, None)
        targets.pop(self.db.region, None)
        return targets

    def drained(self) -> list[str]:
        """Leaving regions whose every record this store holds: to remove now."""
        view = self.view
        if view is None or not any(m.state == "leaving" for m in view.members.values()):
            return []
        held = {origin: entry[1] for origin, entry in self.db.progress().items()}
        return [r for r in membership.drained(view, held) if r != self.db.region]

    def drain(self, regions: list[str]) -> None:
        """Remove leaving ``regions`` this store holds every record of (on the writer)."""
        for region in regions:
            member = membership.remove(self.db, region)
            log.info(
                "%s: removed %s from the cluster: it left, and every record it wrote"
                " (1..%d) is held here",
                self.db.region,
                region,
                member.final_seq,
                extra={"event": "drained", "peer": region},
            )
        self.refresh()

    def report(self) -> list[dict[str, object]]:
        """The members for the status file."""
        return self.view.to_json() if self.view else []
