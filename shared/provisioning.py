"""Provisioning: the streams, KV buckets and durable consumers, created by their own credentials.

Services may not create or change any of these (see `shared/nats_config.py`): they bind to what
this step made and wait, saying what is missing, until it exists. The step is idempotent (create,
or update to the declared configuration; consumer positions and bucket contents are kept), so
`dev up`, the demo, compose and Kubernetes run it before the services every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.bus import ALL_STREAMS, BucketSpec, Bus, BusError, StreamSpec
from shared.consumer import ConsumerSpec, ensure_consumer
from shared.logging import get_logger
from shared.nats_config import ServiceGrant, grants_for

log = get_logger(__name__)

__all__ = [
    "Provisioned",
    "Topology",
    "broker_bucket",
    "broker_consumer",
    "chain_watcher_bucket",
    "provision",
    "registry_bucket",
    "registry_consumers",
]


def chain_watcher_bucket(name: str = "chain_watcher") -> BucketSpec:
    return BucketSpec(name, "The chain-watcher's cursor: last published block, version, plans", 8)


def registry_bucket(name: str = "registry") -> BucketSpec:
    return BucketSpec(name, "version-registry state: current, last used, plans, history")


def broker_bucket(name: str = "broker") -> BucketSpec:
    return BucketSpec(name, "Broker state: nodes, pending stops, transition progress", history=8)


def registry_consumers(
    chain_durable: str = "version-registry-chain",
    broker_durable: str = "version-registry-broker",
    ack_wait_s: float = 30.0,
) -> tuple[ConsumerSpec, ConsumerSpec]:
    return (
        ConsumerSpec("CHAIN", chain_durable, ("chain.>",), ack_wait_s=ack_wait_s, batch=256),
        ConsumerSpec("BROKER", broker_durable, ("broker.refreshed",), ack_wait_s=ack_wait_s),
    )


def broker_consumer(durable: str = "broker", ack_wait_s: float = 30.0) -> ConsumerSpec:
    return ConsumerSpec("VERSION", durable, ("version.changed",), ack_wait_s=ack_wait_s)


@dataclass(frozen=True)
class Topology:
    """Everything on the server the services use, with the names their settings give."""

    chain_watcher_bucket: str = "chain_watcher"
    registry_bucket: str = "registry"
    registry_chain_durable: str = "version-registry-chain"
    registry_broker_durable: str = "version-registry-broker"
    registry_ack_wait_s: float = 30.0
    broker_bucket: str = "broker"
    broker_durable: str = "broker"
    broker_ack_wait_s: float = 30.0
    streams: tuple[StreamSpec, ...] = ALL_STREAMS

    def buckets(self) -> tuple[BucketSpec, ...]:
        return (
            chain_watcher_bucket(self.chain_watcher_bucket),
            registry_bucket(self.registry_bucket),
            broker_bucket(self.broker_bucket),
        )

    def consumers(self) -> tuple[ConsumerSpec, ...]:
        return (
            *registry_consumers(
                self.registry_chain_durable, self.registry_broker_durable, self.registry_ack_wait_s
            ),
            broker_consumer(self.broker_durable, self.broker_ack_wait_s),
        )

    def grants(self) -> tuple[ServiceGrant, ...]:
        """The NATS grants that match these names (for rendering a server config)."""
        return grants_for(
            chain_watcher_bucket=self.chain_watcher_bucket,
            registry_bucket=self.registry_bucket,
            registry_chain_durable=self.registry_chain_durable,
            registry_broker_durable=self.registry_broker_durable,
            broker_bucket=self.broker_bucket,
            broker_durable=self.broker_durable,
        )


@dataclass
class Provisioned:
    streams: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"streams {', '.join(self.streams)}; buckets {', '.join(self.buckets)}; "
            f"consumers {', '.join(self.consumers)}"
        )


async def provision(bus: Bus, topology: Topology | None = None) -> Provisioned:
    """Create or update every stream, bucket and consumer; safe to run any number of times."""
    topology = topology or Topology()
    done = Provisioned()
    await bus.ensure_streams(topology.streams)
    done.streams = [s.name for s in topology.streams]
    for bucket in topology.buckets():
        await bus.while_cluster_forms(lambda b=bucket: bus.ensure_bucket(b))  # type: ignore[misc]
        done.buckets.append(bucket.name)
    for spec in topology.consumers():
        try:
            await bus.while_cluster_forms(lambda s=spec: ensure_consumer(bus, s))  # type: ignore[misc]
        except BusError:
            log.error("provisioning failed", extra={"consumer": spec.durable, "stream": spec.stream})
            raise
        done.consumers.append(f"{spec.stream}/{spec.durable}")
    log.info("provisioned", extra={"summary": done.summary()})
    return done
