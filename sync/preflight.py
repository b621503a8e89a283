"""What ``crdtdb serve`` checks before it touches anything; ``crdtdb serve --check`` reports it.

A misconfigured daemon that starts anyway shows the mistake only at run
time, and in the wrong place: a certificate for another region, or a key
that is not the certificate's, made the peers log "bad signature" forever.
So before the data directory is created, the store opened or a port bound:

- the TLS files are readable, the certificate is signed by the CA, valid,
  for this region, and the key is its key (:func:`.certs.check_own_files`);
- the data directory is a directory we may write, or can be created;
- the QUIC port (UDP) and the metrics port (TCP) are free.

Each failure raises with the cause and what to do: a
:class:`~.config.ConfigError` or :class:`~.certs.TlsFilesError` for what the
config says (exit status 2), a :class:`~.errors.StartupError` for what the
machine says (a port taken, the data directory served by another daemon;
exit status 1). The port checks only bind and release, so the daemon's own
bind can still lose a race; it reports that the same way.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from .certs import check_own_files
from .config import ConfigError, RegionConfig, load_config
from .errors import StartupError
from .lock import DataDirLock, DataDirLockedError

__all__ = ["bind_error", "check", "check_data_dir", "check_ports", "check_tls"]


def check_tls(config: RegionConfig) -> str:
    """The region's certificate, key and CA agree (or TlsFilesError); a line for humans."""
    found = check_own_files(
        region=config.region, ca=config.tls.ca, cert=config.tls.cert, key=config.tls.key
    )
    return (
        f"tls: {config.tls.cert} is {found['region']}'s, signed by {found['issuer']},"
        f" valid until {found['not_valid_after']}; {config.tls.key} is its key"
    )


def check_data_dir(config: RegionConfig) -> str:
    """The data directory can be used, without creating it; a line for humans."""
    path = config.data_dir
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"data_dir {path} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"data_dir {path} is not writable by this user")
        return f"data_dir: {path}"
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir {path} cannot be created: {parent} is not writable")
    return f"data_dir: {path} (will be created)"


def bind_error(what: str, host: str, port: int, exc: OSError) -> StartupError:
    """The one-line refusal for a port we cannot bind."""
    if exc.errno == errno.EADDRINUSE:
        cause = "the port is in use (another daemon, or another program?)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        cause = "no interface of this machine has that address"
    elif exc.errno == errno.EACCES:
        cause = "permission denied (ports below 1024 need privileges)"
    else:
        cause = exc.strerror or str(exc)
    return StartupError(f"cannot {what} on {host}:{port}: {cause}")


def _try_bind(kind: socket.SocketKind, host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=kind)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve the address {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the HTTP server will: TIME_WAIT does not block it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)


def check_ports(config: RegionConfig) -> list[str]:
    """The QUIC port (UDP) and the metrics port (TCP) are free; lines for humans."""
    wanted = [("listen for peers (QUIC, UDP)", socket.SOCK_DGRAM, config.host, config.port)]
    if config.metrics_listen is not None:
        host, port = config.metrics_listen
        wanted.append(("serve metrics (HTTP, TCP)", socket.SOCK_STREAM, host, port))
    lines = []
    for what, kind, host, port in wanted:
        try:
            _try_bind(kind, host, port)
        except OSError as exc:
            raise bind_error(what, host, port, exc) from None
        lines.append(f"free: {host}:{port} to {what}")
    return lines


def check(config_path: Path) -> list[str]:
    """``crdtdb serve --check``: everything serve checks before it starts; what was found.

    If a daemon already serves the data directory, its ports are not checked
    (they are its own): the config may be checked before a restart.
    """
    config = load_config(config_path)
    lines = [
        f"config: {config_path}: region {config.region}, listen {config.host}:{config.port},"
        f" {len(config.peers)} peer(s)",
        check_tls(config),
        check_data_dir(config),
    ]
    try:
        held = DataDirLock(config.data_dir) if config.data_dir.is_dir() else None
    except DataDirLockedError as exc:
        who = f"pid {exc.pid}" if exc.pid else "another process"
        lines.append(f"running: a daemon ({who}) serves {config.data_dir}; ports not checked")
    else:
        if held is not None:
            held.release()
        lines += check_ports(config)
    for peer in config.peers:
        who = "we dial it" if config.region < peer.region else "it dials us"
        lines.append(f"peer: {peer.region} at {peer.host}:{peer.port} ({who})")
    return lines
