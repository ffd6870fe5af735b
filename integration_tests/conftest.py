"""Fixtures that start real processes: a nats-server per test, on a free port, in its own data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from integration_tests.chain_support import ChainControl
    from mock_chain.server import MockChainServer

from cli.provision import run_provision
from devtools.embedded_nats import EmbeddedNats
from integration_tests.backends import BACKEND, ContainerNats, docker_engine_problem, require_engine
from integration_tests.nats_security import Credentials
from shared.bus import Bus
from shared.nats_config import render_server_config
from shared.provisioning import Topology, provision
from shared.settings import NatsSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


# The container backend's own test runs where an engine is (always in `make docker-test`); on the
# local backend without one it is not collected rather than skipped.
collect_ignore = (
    ["test_backend_testcontainers.py"] if BACKEND == "local" and docker_engine_problem() is not None else []
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


def provision_default(url: str) -> None:
    """What `mlnode-upgrade nats provision` does before the services start (no auth on test servers)."""
    run_provision(NatsSettings(url=url, connect_timeout_s=1.0), Topology(), connect_timeout_s=10.0)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own, from the backend MLNODE_TEST_BACKEND names."""
    if BACKEND == "testcontainers":
        require_engine("MLNODE_TEST_BACKEND=testcontainers")
        container = ContainerNats(tmp_path / "nats").start()
        provision_default(container.url)
        yield container  # type: ignore[misc]
        container.stop()
        return
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    provision_default(server.url)
    yield server
    server.stop()


@pytest.fixture
async def chain() -> AsyncIterator[MockChainServer]:
    """A mock chain in this process, blocks on demand; a module overrides it for other parameters."""
    from integration_tests.chain_support import running_chain  # it imports this module

    async with running_chain(voting_period_blocks=3) as server:
        yield server


@pytest.fixture
async def control(chain: MockChainServer) -> AsyncIterator[ChainControl]:
    from integration_tests.chain_support import ChainControl

    ctl = ChainControl(chain)
    yield ctl
    await ctl.aclose()


@pytest.fixture
def nats_settings(nats_server: EmbeddedNats) -> NatsSettings:
    return NatsSettings(url=nats_server.url, connect_timeout_s=1.0, request_timeout_s=2.0)


@pytest.fixture
async def bus(nats_settings: NatsSettings) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_settings, "it")
    yield connected
    await connected.close()


# -- a NATS server with the real users and passwords (shared/nats_config.py) --------------------


@pytest.fixture
def creds(tmp_path: Path) -> Credentials:
    return Credentials.generate(tmp_path / "secrets")


@pytest.fixture
def secured_nats(tmp_path: Path, creds: Credentials) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        tmp_path / "nats",
        config=lambda s: render_server_config(
            server_name=s.name,
            host=s.host,
            port=s.port,
            http_port=s.monitor_port,
            store_dir=s.data_dir / "jetstream",
            users=creds.users,
        ),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def admin(secured_nats: EmbeddedNats, creds: Credentials) -> AsyncIterator[Bus]:
    """The streams provisioned as `dev up` does, and the operator's connection to inspect them."""
    provisioner = await Bus.connect(creds.settings(secured_nats.url, "provisioner"), "provisioner")
    await provision(provisioner)
    await provisioner.close()
    bus = await Bus.connect(creds.settings(secured_nats.url, "admin"), "admin")
    yield bus
    await bus.close()
