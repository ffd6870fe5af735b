"""Ports for the test bed's servers, picked where outgoing connections never land."""

from __future__ import annotations

from devtools.embedded_nats import free_port

__all__ = ["NEW", "OLD", "StackAddresses", "listen_port"]

# The harness's own picker, ports below the ephemeral range (which the thousands of outgoing
# connections a benchmark opens may take), is the one the test stacks use.
listen_port = free_port


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
