"""The broker's core, composed: what happens on `version.changed`, at start-up and each reconcile.

Each job has its own module:

- `switch` carries out one switch across the nodes (`transition` decides which, `handoff` how);
- `scheduler` says who may touch a node (one operation at a time, a switch pre-empts upkeep);
- `handoff_runner` drives the pure `handoff` machine against the MLNodes;
- `outcomes` persists the switch record and publishes `broker.refreshed`;
- `pending_stops` keeps the stops still to be confirmed;
- `upkeep` brings nodes up and retries pending stops between switches;
- `probing` reports readiness for the next plan; `node_admin` changes the node list;
- `status` is the read-only view the HTTP app reads;
- `work_book` keeps each node's work as the API node set it, for a handoff to carry;
- `stager` moves a share of the nodes to the next version ahead of its height (`staging` decides).

This module only follows the registry and the events, and runs the reconcile round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.broker.handoff import HandoffPolicy
from services.broker.handoff_runner import HandoffRunner
from services.broker.load_times import LoadTimeBook
from services.broker.metrics import BrokerMetrics
from services.broker.models import NodeConfig
from services.broker.node_admin import NodeAdmin, NodeExists, NodeMissing
from services.broker.node_store import BrokerStore
from services.broker.outcomes import SwitchLedger, switch_fields
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import NodePool
from services.broker.ports import Gateway, Publisher, RegistryReader
from services.broker.probing import ReadinessProber
from services.broker.scheduler import NodeScheduler
from services.broker.stager import Stager
from services.broker.staging import StagingPolicy
from services.broker.status import BrokerStatus
from services.broker.switch import SwitchRunner
from services.broker.switch_log import SwitchHistory
from services.broker.transition import change_from_event, change_from_registry
from services.broker.upkeep import Upkeep
from services.broker.work_book import WorkBook
from shared.events import BrokerReadiness, VersionChanged
from shared.logging import get_logger

__all__ = ["Coordinator", "NodeExists", "NodeMissing", "Policies"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Policies:
    """Bounds for the three kinds of node work."""

    handoff: HandoffPolicy = field(default_factory=HandoffPolicy)
    # A pending stop is tried once per round; the round repeats until it is confirmed.
    pending: HandoffPolicy = field(default_factory=lambda: HandoffPolicy(stop_attempts=1))
    # Upkeep: bring the current version up where it is not serving.
    heal: HandoffPolicy = field(default_factory=HandoffPolicy)
    # The staged switch: which share of the nodes moves ahead of the height (0: none).
    staging: StagingPolicy = field(default_factory=lambda: StagingPolicy(share=0.0))
    default_block_time_s: float = 6.0  # until the registry has measured the chain's


class Coordinator:
    def __init__(
        self,
        store: BrokerStore,
        gateway: Gateway,
        pool: NodePool,
        publisher: Publisher,
        registry: RegistryReader,
        metrics: BrokerMetrics,
        policies: Policies | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        policies = policies or Policies()
        self.store = store
        self.pool = pool
        self.registry = registry
        self.metrics = metrics
        scheduler = NodeScheduler()
        self.works = WorkBook(store.work)
        self.load_times = LoadTimeBook(store.load_times)
        runner = HandoffRunner(pool, gateway, self.works, self.load_times, clock=clock, sleep=sleep)
        self.history = SwitchHistory(store.switch_log)
        self.ledger = SwitchLedger(store.transition, publisher, metrics, self.history, wall=wall)
        self.pending = PendingStopBook(
            store.pending, metrics, wall=wall, on_confirmed=self.history.stop_confirmed
        )
        self.switch = SwitchRunner(
            pool,
            scheduler,
            runner,
            self.ledger,
            self.pending,
            metrics,
            policies.handoff,
            clock=clock,
            wall=wall,
            first_wave=lambda target, serving: self.stager.first_wave(target, serving),
        )
        self.upkeep = Upkeep(
            pool, scheduler, runner, self.pending, bring_up_policy=policies.heal, stop_policy=policies.pending
        )
        self.prober = ReadinessProber(pool, gateway, registry, publisher, metrics)
        self.stager = Stager(
            pool,
            scheduler,
            runner,
            self.works,
            self.load_times,
            registry,
            self.prober,
            store.staging,
            policies.staging,
            policies.handoff,
            policies.default_block_time_s,
            switching=self.switch.running,
        )
        self.nodes = NodeAdmin(
            store.nodes, pool, gateway, scheduler, self.pending, self.ledger, self.switch, self.upkeep
        )
        self.status = BrokerStatus(
            pool, self.ledger, self.pending, self.prober, self.switch.running, registry, self.history, wall
        )
        self.scheduler = scheduler

    @property
    def readiness(self) -> BrokerReadiness | None:
        return self.prober.readiness

    # -- start-up ----------------------------------------------------------------------------------

    async def start(self, seed: tuple[NodeConfig, ...]) -> None:
        """Load nodes (the config file seeds the KV once), then resume an unfinished switch."""
        await self.nodes.load(seed)
        await self.works.load()
        await self.load_times.load()
        await self.stager.load()
        await self.pending.count()
        record = await self.ledger.load()
        if record is None:
            return
        self.pool.adopt_current(record.target)
        if not record.complete:
            log.info(
                "resuming switch after restart",
                extra=switch_fields(record, event="transition.resume", remaining=len(record.remaining)),
            )
            await self.switch.resume(record)
        elif record.needs_publish:
            await self.ledger.publish_refreshed()

    # -- triggers ----------------------------------------------------------------------------------

    async def on_version_changed(self, event: VersionChanged) -> None:
        """A `version.changed`: act on it, unless the registry already moved past it (a replay)."""
        change = change_from_event(event)
        state = await self.registry.state()
        if state is not None and state.current_transition not in (None, event.transition_id):
            followed = change_from_registry(state, self.ledger.record)
            log.info(
                "version.changed is not the registry's current switch; following the registry",
                extra={
                    "event": "version.changed",
                    "transition": event.transition_id,
                    "version": event.current.raw,
                    "height": event.height,
                    "registry_transition": state.current_transition,
                },
            )
            if followed is None:
                return
            change = followed
        await self.switch.apply(change)

    async def sync(self) -> None:
        """Follow the registry: start-up and every reconcile (current != last_used → hand over)."""
        state = await self.registry.state()
        if state is None:
            return
        change = change_from_registry(state, self.ledger.record)
        if change is not None:
            await self.switch.apply(change)
        elif state.current_version is not None and self.pool.current is None:
            self.pool.adopt_current(state.current_version)

    # -- the rounds --------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """The safety net: follow the registry, finish publishing, bring up nodes that do not serve.

        Pending stops have their own, shorter, round (`retry_pending_stops`).
        """
        await self.sync()
        await self.switch.resume_unfinished()
        await self.ledger.publish_refreshed()
        await self.heal()

    async def heal(self) -> None:
        """Bring the current version up on every idle node that does not serve it."""
        await self.upkeep.bring_up_all()

    async def retry_pending_stops(self) -> None:
        await self.upkeep.retry_pending_stops()

    async def probe_readiness(self) -> BrokerReadiness | None:
        """Probe the next plan's version on every node, then stage the switch when it is due."""
        return await self.prober.probe(staging=self.stager.round)

    # -- nodes -------------------------------------------------------------------------------------

    async def add_node(self, node: NodeConfig) -> None:
        await self.nodes.add(node)

    async def update_node(self, node: NodeConfig) -> None:
        await self.nodes.update(node)

    async def remove_node(self, node_id: str) -> None:
        await self.nodes.remove(node_id)
        await self.works.forget(node_id)
        await self.load_times.forget(node_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """For tests and shutdown: until the running switch (if any) is over."""
        await self.switch.wait_idle()

    async def shutdown(self) -> None:
        """Cancel running work; a restart resumes it from the KV record."""
        await asyncio.gather(self.switch.shutdown(), self.scheduler.cancel_upkeep())
