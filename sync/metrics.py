"""The daemon's Prometheus metrics and health check (``[metrics] listen = "HOST:PORT"``).

:class:`Metrics` is the replicator's :class:`~.observe.Observer`: it turns
what the replicator reports into metrics in a registry of its own (not
prometheus_client's global one, so that two replicators in one process, as
in the tests, never mix). :class:`MetricsServer` serves them over HTTP from
a thread of its own, beside the event loop:

- ``GET /metrics``: the Prometheus text format;
- ``GET /healthz``: ``200 ok`` while the store is writable and the event loop
  answers; else ``503`` and the reason (see ``crdtdb.sync.daemon``).

The metrics (``peer`` is the peer region's name):

=============================================  =========  ======================================
``crdtdb_commits_seen_total``                  counter    commits of this region seen in its log
                                                          since the daemon started (any process)
``crdtdb_remote_records_applied_total``        counter    records from ``peer`` that were new here
``crdtdb_peer_received_records_total``         counter    records received from ``peer``
``crdtdb_peer_sent_records_total``             counter    records sent to ``peer``
``crdtdb_peer_received_bytes_total``           counter    bytes received from ``peer`` (sessions)
``crdtdb_peer_sent_bytes_total``               counter    bytes sent to ``peer`` (sessions)
``crdtdb_replication_lag_seconds``             histogram  per record from ``peer``: arrival here
                                                          minus its commit (HLC wall time)
``crdtdb_anti_entropy_rounds_total``           counter    anti-entropy rounds with ``peer``
``crdtdb_anti_entropy_repaired_documents_total`` counter  documents repaired here by those rounds
``crdtdb_peer_up``                             gauge      1 while a session with ``peer`` is up
``crdtdb_frontier_age_seconds``                gauge      now minus the global frontier
                                                          (``db.frontier()``); since 1970 until
                                                          every region's clock was gossiped
``crdtdb_refused_total``                       counter    sessions closed on an error, by
                                                          ``reason``: the error code
                                                          (``bad_frame``, ``peer_auth``,
                                                          ``bad_region``...), or
                                                          ``tls_handshake`` for a dial whose
                                                          TLS handshake failed; peers'
                                                          faults only
``crdtdb_store_write_failures_total``          counter    sync sessions closed because our own
                                                          store refused their write, by
                                                          ``reason`` (``store_full``,
                                                          ``store_read_only``, ``store_io``,
                                                          ``store``)
``crdtdb_wal_bytes``                           gauge      size of the store's write-ahead log
=============================================  =========  ======================================

Bytes count what the sync sessions sent and received (their messages), not
QUIC's packet overhead. This module imports prometheus_client; only the
daemon imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .observe import Observer

__all__ = ["LAG_BUCKETS", "Metrics", "MetricsServer"]

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
"""Replication lag buckets (seconds): from a LAN's milliseconds to an hour-long outage."""


class Metrics(Observer):
    """The replicator's observer that keeps Prometheus metrics in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        peer = ("peer",)

        def counter(name: str, doc: str, labels: Sequence[str] = peer) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.commits_seen = Counter(
            "crdtdb_commits_seen", "Commits of this region seen in its log", registry=self.registry
        )
        self.applied = counter("crdtdb_remote_records_applied", "Records from a peer new here")
        self.records_in = counter("crdtdb_peer_received_records", "Records received from a peer")
        self.records_out = counter("crdtdb_peer_sent_records", "Records sent to a peer")
        self.bytes_in = counter("crdtdb_peer_received_bytes", "Bytes received from a peer")
        self.bytes_out = counter("crdtdb_peer_sent_bytes", "Bytes sent to a peer")
        self.lag = Histogram(
            "crdtdb_replication_lag_seconds",
            "Per record received from a peer: its arrival minus its commit (HLC wall time)",
            peer,
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.rounds = counter("crdtdb_anti_entropy_rounds", "Anti-entropy rounds with a peer")
        self.repaired = counter(
            "crdtdb_anti_entropy_repaired_documents", "Documents repaired here by anti-entropy"
        )
        self.up = Gauge(
            "crdtdb_peer_up", "1 while a session with the peer is up", peer, registry=self.registry
        )
        self.frontier_age = Gauge(
            "crdtdb_frontier_age_seconds", "Now minus the global frontier", registry=self.registry
        )
        self.refusals = counter(
            "crdtdb_refused", "Peer messages or connections refused, by reason", ("reason",)
        )
        self.store_failures = counter(
            "crdtdb_store_write_failures",
            "Sync sessions closed because this region's store refused a write, by reason",
            ("reason",),
        )
        self.conflicts = Gauge(
            "crdtdb_record_conflicts",
            "Records kept as evidence of two contents for one (origin, seq), by kind"
            " (equivocation: the origin signed both; forgery: a relay's; legacy;"
            " retired_key: sealed by a retired key over a later record)",
            ("kind",),
            registry=self.registry,
        )
        self.equivocating = Gauge(
            "crdtdb_equivocating_origin",
            "1 for an origin that signed two different records with one seq",
            ("origin",),
            registry=self.registry,
        )
        self.wal_bytes = Gauge(
            "crdtdb_wal_bytes", "Size of the store's write-ahead log", registry=self.registry
        )
        self.clock_offset = Gauge(
            "crdtdb_clock_offset_seconds",
            "The peer's wall clock minus ours, estimated from its HLC or its clock_skew refusal",
            peer,
            registry=self.registry,
        )
        self.clock_fenced = Gauge(
            "crdtdb_clock_fenced",
            "1 while local writes are refused because this region's clock is off",
            registry=self.registry,
        )

    def known_peers(self, peers: Iterable[str]) -> None:
        """Make every configured peer's series exist (at 0) before anything happens."""
        families: list[Counter | Gauge | Histogram] = [
            self.applied,
            self.records_in,
            self.records_out,
            self.bytes_in,
            self.bytes_out,
            self.rounds,
            self.repaired,
            self.up,
            self.lag,
        ]
        for name in peers:
            for family in families:
                family.labels(name)

    # -- Observer

    def peer_up(self, peer: str, up: bool) -> None:
        self.up.labels(peer).set(1 if up else 0)

    def traffic(self, peer: str, bytes_in: int, bytes_out: int, records_out: int) -> None:
        self.bytes_in.labels(peer).inc(bytes_in)
        self.bytes_out.labels(peer).inc(bytes_out)
        self.records_out.labels(peer).inc(records_out)

    def records_received(self, peer: str, received: int, applied: int) -> None:
        self.records_in.labels(peer).inc(received)
        self.applied.labels(peer).inc(applied)

    def record_lags(self, peer: str, lags: Sequence[float]) -> None:
        histogram = self.lag.labels(peer)
        for lag in lags:
            histogram.observe(max(0.0, lag))  # a peer's clock a little ahead: no negative lag

    def round_done(self, peer: str, repaired: int) -> None:
        self.rounds.labels(peer).inc()
        self.repaired.labels(peer).inc(repaired)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def store_write_failed(self, code: str) -> None:
        self.store_failures.labels(code).inc()

    def commits(self, count: int) -> None:
        self.commits_seen.inc(count)

    def gauges(self, *, frontier_age: float, wal_bytes: int) -> None:
        self.frontier_age.set(frontier_age)
        self.wal_bytes.set(wal_bytes)

    def clock(self, fenced: bool, offsets: dict[str, float]) -> None:
        self.clock_fenced.set(1 if fenced else 0)
        for peer, offset in offsets.items():
            self.clock_offset.labels(peer).set(offset)

    def evidence(self, conflicts: Mapping[str, int], equivocating: Sequence[str]) -> None:
        for kind in ("equivocation", "forgery", "legacy", "retired_key", *conflicts):
            self.conflicts.labels(kind).set(conflicts.get(kind, 0))
        for origin in equivocating:
            self.equivocating.labels(origin).set(1)


Health = Callable[[], str | None]
"""None while healthy, else what is wrong (for /healthz); called on the server's thread."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds: not worth a log line each."""


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, served by a thread until :meth:`close`."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        """Binds at once (an OSError if it cannot); serves once :meth:`start` is called."""
        self._metrics = make_wsgi_app(registry)
        self._health = health
        self._server = make_server(
            host, port, self._app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.host = host
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="crdtdb-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            problem = self._health()
            status = "200 OK" if problem is None else "503 Service Unavailable"
            body = ("ok" if problem is None else problem).encode() + b"\n"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [body]
        result: Iterable[bytes] = self._metrics(environ, start_response)
        return result

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()
