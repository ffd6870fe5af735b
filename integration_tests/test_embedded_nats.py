"""The embedded server survives the free-port race that parallel tests and a busy machine cause."""

from __future__ import annotations

import socket
from pathlib import Path

from devtools.embedded_nats import EmbeddedNats


def test_a_picked_port_taken_before_the_first_boot_is_picked_again(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    taken = server.port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        server.start()
        try:
            assert server.is_running() and server.port != taken
            booted_on = server.port
            server.restart()
            assert server.port == booted_on  # after the first boot the port is the server's
        finally:
            server.stop()
