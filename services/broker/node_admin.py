"""The node list: seeded once from the config file, then changed over the admin API."""

from __future__ import annotations

from services.broker.models import NodeConfig, NodeSet
from services.broker.outcomes import SwitchLedger
from services.broker.pending_stops import PendingStopBook
from services.broker.pool import NodePool, SlotPhase
from services.broker.ports import Gateway
from services.broker.scheduler import NodeScheduler
from services.broker.switch import SwitchRunner
from services.broker.upkeep import Upkeep
from shared.events import NodeOutcome
from shared.kv_document import Document
from shared.logging import get_logger

__all__ = ["NodeAdmin", "NodeExists", "NodeMissing"]

log = get_logger(__name__)


class NodeExists(ValueError):
    pass


class NodeMissing(KeyError):
    pass


class NodeAdmin:
    def __init__(
        self,
        doc: Document[NodeSet],
        pool: NodePool,
        gateway: Gateway,
        scheduler: NodeScheduler,
        pending: PendingStopBook,
        ledger: SwitchLedger,
        switch: SwitchRunner,
        upkeep: Upkeep,
    ) -> None:
        self.doc = doc
        self.pool = pool
        self.gateway = gateway
        self.scheduler = scheduler
        self.pending = pending
        self.ledger = ledger
        self.switch = switch
        self.upkeep = upkeep

    async def load(self, seed: tuple[NodeConfig, ...]) -> None:
        """The config file seeds the KV once; after that the KV is the node list."""
        nodes = await self.doc.mutate(lambda s: s if s.seeded else NodeSet(seeded=True, nodes=seed))
        for node in nodes.nodes:
            self.pool.upsert(node)

    async def add(self, node: NodeConfig) -> None:
        def add(nodes: NodeSet) -> NodeSet:
            if nodes.get(node.id) is not None:
                raise NodeExists(f"node {node.id!r} exists; use PUT to change it")
            return nodes.with_node(node)

        await self.doc.mutate(add)
        self.pool.upsert(node)
        if self.pool.current is not None:
            self.pool.mark(node.id, ready=False, phase=SlotPhase.STARTING, version=self.pool.current)
            self.upkeep.spawn_bring_up(node.id)
        log.info("node added", extra={"event": "node.add", "node": node.id})

    async def update(self, node: NodeConfig) -> None:
        def update(nodes: NodeSet) -> NodeSet:
            if nodes.get(node.id) is None:
                raise NodeMissing(node.id)
            return nodes.with_node(node)

        await self.doc.mutate(update)
        self.pool.upsert(node)  # calls from now on use the new address
        log.info("node updated", extra={"event": "node.update", "node": node.id})

    async def remove(self, node_id: str) -> None:
        def remove(nodes: NodeSet) -> NodeSet:
            if nodes.get(node_id) is None:
                raise NodeMissing(node_id)
            return nodes.without(node_id)

        await self.doc.mutate(remove)
        self.scheduler.forget(node_id)
        self.pool.remove(node_id)
        self.gateway.forget(node_id)
        await self.pending.forget_node(node_id)
        record = self.ledger.record
        if record is not None and node_id in record.remaining:
            await self.ledger.record_outcome(record, NodeOutcome(node_id=node_id, outcome="removed"))
            current = self.ledger.record
            if current is not None and current.complete and not self.switch.running():
                await self.ledger.publish_refreshed()
        log.info("node removed", extra={"event": "node.remove", "node": node_id})
