"""`mlnode-upgrade nats provision`: create or update the streams, buckets and consumers.

Run before the services (dev up, the demo, compose and Kubernetes do), with the provisioning
credentials (`PROVISION_NATS__USER=provisioner`, `PROVISION_NATS__PASSWORD_FILE=...`). The bucket
and consumer names come from the services' own settings (their env prefixes), so provisioning and
the services agree on them wherever both read the same environment.
"""

from __future__ import annotations

import asyncio

from pydantic_settings import SettingsConfigDict

from services.broker.settings import BrokerSettings
from services.chain_watcher.settings import ChainWatcherSettings
from services.version_registry.settings import RegistrySettings
from shared.bus import Bus
from shared.provisioning import Provisioned, Topology, provision
from shared.settings import NatsSettings, ServiceSettings, load_settings

__all__ = ["ProvisionSettings", "run_provision", "topology_from_env"]


class ProvisionSettings(ServiceSettings):
    """`PROVISION_NATS__URL`, `PROVISION_NATS__USER`, `PROVISION_NATS__PASSWORD_FILE`, ..."""

    model_config = SettingsConfigDict(env_prefix="PROVISION_", env_nested_delimiter="__", extra="ignore")

    connect_timeout_s: float = 60.0  # how long to wait for NATS to come up


def topology_from_env() -> Topology:
    """The names the three services will use, read from their settings as they will read them."""
    watcher = load_settings(ChainWatcherSettings)
    registry = load_settings(RegistrySettings)
    broker = load_settings(BrokerSettings)
    return Topology(
        chain_watcher_bucket=watcher.bucket,
        registry_bucket=registry.bucket,
        registry_chain_durable=registry.chain_durable,
        registry_broker_durable=registry.broker_durable,
        registry_ack_wait_s=registry.ack_wait_s,
        broker_bucket=broker.bucket,
        broker_durable=broker.durable,
        broker_ack_wait_s=broker.ack_wait_s,
    )


async def _provision(nats: NatsSettings, topology: Topology, connect_timeout_s: float) -> Provisioned:
    bus = await Bus.connect(nats, "provisioner", give_up_after_s=connect_timeout_s)
    try:
        return await provision(bus, topology)
    finally:
        await bus.close()


def run_provision(
    nats: NatsSettings, topology: Topology | None = None, *, connect_timeout_s: float = 60.0
) -> Provisioned:
    return asyncio.run(_provision(nats, topology or topology_from_env(), connect_timeout_s))
