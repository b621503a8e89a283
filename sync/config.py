"""The region config file (TOML) of ``crdtdb serve --config region.toml``.

Every key, its default, and what it means is documented in the README; paths
are relative to the config file. Unknown keys are refused (a typo would
otherwise silently fall back to a default), and so are missing required ones.

The ``[cluster]`` table (optional): ``auto_join`` (admit any region with a
CA-signed certificate as a joining member; for test clusters),
``advertise`` (the HOST:PORT other regions reach this one at, recorded in
the membership; default: ``listen``), ``seeds`` (HOST:PORT of members to
join through, instead of or beside ``[[peers]]``) and ``dial_members``
(default true: also connect to the members the membership gives an address
for; false: only to ``[[peers]]`` and seeds, e.g. to keep a chain a chain).
See :mod:`.cluster`.

The ``[metrics]`` table (optional; without it nothing is served):

- ``listen = "127.0.0.1:9464"``: HOST:PORT of the daemon's HTTP endpoint:
  ``/metrics`` (Prometheus text format: commits, records and bytes per peer,
  replication lag, anti-entropy, peer up/down, frontier age, refusals, WAL
  size) and ``/healthz`` (200 while the store is writable and the daemon's
  event loop answers, else 503 with the reason). It has no authentication:
  bind it to loopback or a private interface.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtdb.errors import InvalidRegionError, UsageError
from crdtdb.ids import RegionId, validate_region

__all__ = [
    "ConfigError",
    "PeerConfig",
    "RegionConfig",
    "TlsFiles",
    "load_config",
    "parse_address",
]


class ConfigError(UsageError):
    code = "config"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files of one region: the cluster CA, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class PeerConfig:
    region: str
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionConfig:
    region: str
    data_dir: Path
    host: str
    port: int
    tls: TlsFiles
    peers: tuple[PeerConfig, ...] = ()
    anti_entropy_interval: float = 2.0
    max_clock_offset_ms: int = 500
    heartbeat_interval: float = 1.0
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    poll_interval: float = 0.005
    metrics_listen: tuple[str, int] | None = None
    """``[metrics] listen``: where ``/metrics`` and ``/healthz`` are served (None: not)."""
    auto_join: bool = False
    """``[cluster] auto_join``: admit any CA-signed region that connects (test clusters)."""
    advertise: str | None = None
    """``[cluster] advertise``: the HOST:PORT peers reach us at (default: ``listen``)."""
    seeds: tuple[tuple[str, int], ...] = ()
    """``[cluster] seeds``: HOST:PORT of members to join through; the other members'
    addresses then come from the membership (every pair connects)."""
    dial_members: bool = True
    """``[cluster] dial_members``: connect to every member with an address in the
    membership (the name that sorts first dials), not only to ``[[peers]]``."""
    bootstrap: str = "snapshot"
    """``[sync] bootstrap``: how a region whose directory holds no store yet gets its data:
    ``"snapshot"`` (a peer's store, see :mod:`.bootstrap`) or ``"records"`` (one by one)."""
    extra: dict[str, Any] = field(default_factory=dict)


_TOP = {"region", "data_dir", "listen", "tls", "peers", "sync", "metrics", "cluster"}
_SYNC = {
    "anti_entropy_interval": float,
    "max_clock_offset_ms": int,
    "heartbeat_interval": float,
    "reconnect_min": float,
    "reconnect_max": float,
    "poll_interval": float,
}


def parse_address(text: object, where: str) -> tuple[str, int]:
    """``"127.0.0.1:7401"`` or ``"[::1]:7401"`` -> (host, port)."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"{where}: write the address as HOST:PORT, e.g. '127.0.0.1:7401'")
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    port_ok = port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536
    if not port_ok or not host:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT with a port in 1..65535")
    return host, int(port_text)


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(f"unknown key(s) {extra} in {where}: known keys are {sorted(known)}")


def _region(value: object, where: str) -> RegionId:
    try:
        return validate_region(value)
    except InvalidRegionError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _path(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a path (a string)")
    return (base / value).resolve()


def _positive(value: object, *, whole: bool, where: str) -> int | float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value <= 0
        or (whole and not isinstance(value, int))  # 0.5 ms must not silently become 0
    ):
        raise ConfigError(
            f"{where} must be a positive {'whole number' if whole else 'number'}, not {value!r}"
        )
    return int(value) if whole else float(value)


def _sync_options(table: dict[str, Any]) -> dict[str, Any]:
    _unknown(table, {*_SYNC, "bootstrap"}, "[sync]")
    options: dict[str, Any] = {
        key: _positive(table[key], whole=kind is int, where=f"[sync] {key}")
        for key, kind in _SYNC.items()
        if key in table
    }
    if "bootstrap" in table:
        if table["bootstrap"] not in ("snapshot", "records"):
            raise ConfigError(
                f'[sync] bootstrap is "snapshot" or "records", not {table["bootstrap"]!r}'
            )
        options["bootstrap"] = table["bootstrap"]
    return options


def _metrics_listen(value: object) -> tuple[str, int] | None:
    if value is None:
        return None
    table = _table(value, "[metrics]")
    _unknown(table, {"listen"}, "[metrics]")
    if "listen" not in table:
        raise ConfigError("[metrics]: the key 'listen' is required, e.g. '127.0.0.1:9464'")
    return parse_address(table["listen"], "[metrics] listen")


def _cluster_options(value: object) -> dict[str, Any]:
    """``[cluster]``: ``auto_join``/``dial_members = true|false``, ``advertise =
    "HOST:PORT"``, ``seeds = ["HOST:PORT", ...]``."""
    table = _table(value, "[cluster]")
    _unknown(table, {"auto_join", "advertise", "seeds", "dial_members"}, "[cluster]")
    options: dict[str, Any] = {}
    for flag in ("auto_join", "dial_members"):
        if flag in table:
            if not isinstance(table[flag], bool):
                raise ConfigError(f"[cluster] {flag} must be true or false, not {table[flag]!r}")
            options[flag] = table[flag]
    if "seeds" in table:
        seeds = table["seeds"]
        if not isinstance(seeds, list):
            raise ConfigError('[cluster] seeds is a list of addresses, e.g. ["10.0.0.7:7401"]')
        options["seeds"] = tuple(
            parse_address(seed, f"[cluster] seeds #{i + 1}") for i, seed in enumerate(seeds)
        )
    if "advertise" in table:
        host, port = parse_address(table["advertise"], "[cluster] advertise")
        options["advertise"] = f"{host}:{port}"
    return options


def _peers(value: object, region: str) -> tuple[PeerConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError("peers must be an array of tables: write each peer as [[peers]]")
    peers: dict[str, PeerConfig] = {}
    for i, entry in enumerate(value):
        where = f"[[peers]] #{i + 1}"
        table = _table(entry, where)
        _unknown(table, {"region", "address"}, where)
        host, port = parse_address(table.get("address"), f"{where} address")
        name = _region(table.get("region"), f"{where} region")
        if name == region:
            raise ConfigError(f"{where}: a region does not peer with itself")
        if name in peers:
            raise ConfigError(f"{where}: region {name!r} is listed twice")
        peers[name] = PeerConfig(name, host, port)
    return tuple(peers.values())


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except OSError as exc:  # a directory, no permission...
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text, so not a TOML config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_config(path: Path) -> RegionConfig:
    """Read and check a region config; raises ConfigError saying what to fix."""
    raw = _read(path)
    _unknown(raw, _TOP, str(path))
    for key in ("region", "data_dir", "listen", "tls"):
        if key not in raw:
            raise ConfigError(f"{path}: the key {key!r} is required")
    base = path.resolve().parent
    region = _region(raw["region"], "region")
    host, port = parse_address(raw["listen"], "listen")
    tls_table = _table(raw["tls"], "[tls]")
    _unknown(tls_table, {"ca", "cert", "key"}, "[tls]")
    tls = TlsFiles(
        ca=_path(base, tls_table.get("ca"), "[tls] ca"),
        cert=_path(base, tls_table.get("cert"), "[tls] cert"),
        key=_path(base, tls_table.get("key"), "[tls] key"),
    )
    return RegionConfig(
        region=region,
        data_dir=_path(base, raw["data_dir"], "data_dir"),
        host=host,
        port=port,
        tls=tls,
        peers=_peers(raw.get("peers", []), region),
        metrics_listen=_metrics_listen(raw.get("metrics")),
        **_cluster_options(raw.get("cluster", {})),
        **_sync_options(_table(raw.get("sync", {}), "[sync]")),
    )
