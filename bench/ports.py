"""Ports for the test bed's servers, picked where outgoing connections never land."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from devtools.embedded_nats import free_port

__all__ = ["NEW", "OLD", "StackAddresses", "listen_port"]

_TAKEN: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def listen_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, for a server that binds it a moment later.

    `free_port()` asks the kernel for port 0 and so returns an ephemeral port, which the
    thousands of outgoing connections a benchmark opens may take as their local port before the
    server binds it. Ports below the range are never handed out that way.
    """
    low, _ = _ephemeral_range()
    floor = 10_000 if low > 12_000 else 1024
    for _ in range(200):
        port = random.randint(floor, low - 1)
        if port in _TAKEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    return free_port(host)


OLD, NEW = "v3.0.6", "v3.0.8"


class StackAddresses:
    """Where each of the test bed's servers listens; picked anew when a port was taken under us."""

    def __init__(self) -> None:
        self.allocate_ports()

    def allocate_ports(self) -> None:
        p = listen_port
        self.nats_port, self.nats_monitor = p(), p()
        self.rpc_port, self.grpc_port = p(), p()
        self.mock_ports = {OLD: p(), NEW: p()}
        self.nginx_port = p()
        self.registry_port, self.registry_grpc = p(), p()
        self.watcher_port = p()
        self.broker_port = p()

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def chain_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def watcher_url(self) -> str:
        return f"http://127.0.0.1:{self.watcher_port}"

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def mock_url(self, version: str) -> str:
        return f"http://127.0.0.1:{self.mock_ports[version]}"
