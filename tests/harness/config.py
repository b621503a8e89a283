"""A region's certificates and configuration, for daemons and in-process replicators.

:func:`write_region_config` writes the TOML file ``crdtdb serve --config``
reads (the operator's format); :func:`region_config` builds the same as a
``RegionConfig`` for a ``Replicator`` run in the test's own event loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .process import python_env
from .wait import HarnessError

if TYPE_CHECKING:  # crdtdb.sync.transport imports aioquic: only when a config is built
    from crdtdb.sync.config import PeerConfig, RegionConfig

__all__ = ["make_certs", "region_config", "write_region_config"]


def make_certs(directory: Path, regions: Iterable[str], *, cli: bool = False) -> Path:
    """A cluster CA in ``directory`` and a certificate for each region; returns ``directory``.

    With ``cli`` they are made by the ``crdtdb certs`` command, as an operator
    makes them (slower: one process per certificate); else in this process.
    """
    if cli:
        _crdtdb("certs", "init", str(directory))
        for region in regions:
            _crdtdb("certs", "issue", str(directory), region)
        return directory
    from crdtdb.sync.certs import init_ca, issue

    init_ca(directory)
    for region in regions:
        issue(directory, region)
    return directory


def _crdtdb(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdtdb", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
    )
    if result.returncode != 0:
        raise HarnessError(f"crdtdb {' '.join(args)} failed: {result.stderr}")


def _quoted(value: Path | str) -> str:
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_region_config(
    path: Path,
    *,
    region: str,
    data_dir: Path | str,
    port: int,
    certs: Path | str,
    peers: Mapping[str, str],
    sync: Mapping[str, float | str] | None = None,
    tables: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write a region config listening on 127.0.0.1:``port`` to ``path``; returns ``path``.

    ``peers`` maps region -> HOST:PORT. Relative paths are relative to the
    config file's folder; ``sync`` sets the ``[sync]`` options (none: the
    defaults an operator gets); ``tables`` adds more tables (values as JSON, which
    TOML reads alike for booleans, numbers, strings and lists of them).
    """
    certs = Path(certs)
    lines = [
        f"region = {_quoted(region)}",
        f"data_dir = {_quoted(data_dir)}",
        f'listen = "127.0.0.1:{port}"',
        "[tls]",
        f"ca = {_quoted(certs / 'ca.pem')}",
        f"cert = {_quoted(certs / f'{region}.pem')}",
        f"key = {_quoted(certs / f'{region}.key')}",
    ]
    for peer, address in peers.items():
        lines += ["[[peers]]", f"region = {_quoted(peer)}", f"address = {_quoted(address)}"]
    if sync:
        lines.append("[sync]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in sync.items()]
    for table, values in (tables or {}).items():  # e.g. {"cluster": {"auto_join": True}}
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def region_config(
    tmp: Path, certs: Path, region: str, peers: list[PeerConfig], **options: float
) -> RegionConfig:
    """A region listening on an ephemeral loopback port, with fast timers for tests."""
    from crdtdb.sync.config import RegionConfig
    from crdtdb.sync.transport import TlsFiles

    settings: dict[str, float] = {
        "anti_entropy_interval": 0.5,
        "heartbeat_interval": 0.2,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        **options,
    }
    return RegionConfig(
        region=region,
        data_dir=tmp / region,
        host="127.0.0.1",
        port=0,
        tls=TlsFiles(
            ca=certs / "ca.pem", cert=certs / f"{region}.pem", key=certs / f"{region}.key"
        ),
        peers=tuple(peers),
        **settings,  # type: ignore[arg-type]
    )
