"""Free ports on loopback, for daemons and servers that a test or a benchmark starts."""

from __future__ import annotations

import socket

__all__ = ["free_port", "free_ports"]

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 for both UDP and TCP right now.

    Each is bound on both protocols and all are held open together before any
    is released, so the ports differ from each other; another process may
    still take one afterwards (there is no way around that short of passing
    the bound socket on).
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            udp.bind((HOST, 0))
            port: int = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            try:
                tcp.bind((HOST, port))
            except OSError:  # taken for TCP: try another
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port() -> int:
    """One port free on 127.0.0.1 for both UDP and TCP right now."""
    (port,) = free_ports(1)
    return port
