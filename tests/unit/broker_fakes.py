"""In-memory stand-ins for the broker's ports: MLNodes with one GPU per node, a registry, a bus."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from services.broker.coordinator import Coordinator, Policies
from services.broker.handoff import HandoffPolicy
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import MLNodeCallError
from services.broker.models import ModelConfig, NodeConfig, NodeSet
from services.broker.node_store import BrokerStore, memory_store
from services.broker.pool import NodePool
from shared.events import Event, VersionChanged
from shared.metrics import ServiceMetrics
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

V6 = MLNodeVersion("v3.0.6")
V8 = MLNodeVersion("v3.0.8")
V9 = MLNodeVersion("v3.0.9")
MODEL = "Qwen/Qwen2.5-7B-Instruct"


def node(node_id: str = "node-1", **overrides: object) -> NodeConfig:
    fields: dict[str, object] = {
        "id": node_id,
        "host": "mlnode.local",
        "inference_port": 5000,
        "poc_port": 8080,
        "models": {MODEL: ModelConfig(args=("--max-model-len", "4096"))},
        "max_concurrent": 4,
    }
    fields.update(overrides)
    return NodeConfig.model_validate(fields)


@dataclass
class FakeMLNodes:
    """Per-(node, version) state and a GPU per node, like mock_mlnode, without sockets."""

    states: dict[tuple[str, MLNodeVersion], str] = field(
        default_factory=lambda: defaultdict(lambda: "STOPPED")
    )
    gpu: dict[str, MLNodeVersion] = field(default_factory=dict)
    calls: list[tuple[str, str, MLNodeVersion]] = field(default_factory=list)
    # (node, version, call) -> statuses to answer before behaving normally (None: no answer at all)
    faults: dict[tuple[str, MLNodeVersion, str], list[int | None]] = field(default_factory=dict)
    unreachable: set[tuple[str, MLNodeVersion]] = field(default_factory=set)
    missing_route: set[tuple[str, MLNodeVersion]] = field(default_factory=set)
    stop_ignored: set[tuple[str, MLNodeVersion]] = field(default_factory=set)  # answers OK, stays up
    forgotten: list[str] = field(default_factory=list)
    gpu_busy_status: int = 409  # mock_mlnode's setting: the real MLNode answers a bare 500
    pow_phase: dict[tuple[str, MLNodeVersion], str] = field(default_factory=dict)
    ups: list[tuple[str, MLNodeVersion, str, str | None]] = field(default_factory=list)
    started: list[tuple[str, MLNodeVersion, str, dict[str, object]]] = field(default_factory=list)
    health_carries_state: bool = False  # the real /health has `service_state`; older fakes did not

    def running(self, node_id: str, version: MLNodeVersion) -> None:
        self.states[(node_id, version)] = "INFERENCE"
        self.gpu[node_id] = version

    def _enter(self, node: NodeConfig, version: MLNodeVersion, call: str) -> None:
        self.calls.append((node.id, call, version))
        url = f"http://{node.host}/{version}/{call}"
        if (node.id, version) in self.unreachable:
            raise MLNodeCallError("POST", url, None, cause="ConnectError: refused")
        if (node.id, version) in self.missing_route:
            raise MLNodeCallError("POST", url, 404, '{"detail": "Not Found"}')
        queued = self.faults.get((node.id, version, call))
        if queued:
            status = queued.pop(0)
            raise MLNodeCallError("POST", url, status, '{"detail": "injected fault"}')

    def of(self, call: str, version: MLNodeVersion | None = None, node_id: str | None = None) -> int:
        return sum(
            1
            for n, c, v in self.calls
            if c == call and (version is None or v == version) and (node_id is None or n == node_id)
        )

    # -- the Gateway protocol ------------------------------------------------------------------

    async def state(self, node: NodeConfig, version: MLNodeVersion) -> str:
        self._enter(node, version, "state")
        return self.states[(node.id, version)]

    async def stop(self, node: NodeConfig, version: MLNodeVersion) -> None:
        self._enter(node, version, "stop")
        if (node.id, version) in self.stop_ignored:
            return
        self.states[(node.id, version)] = "STOPPED"
        if self.gpu.get(node.id) == version:
            del self.gpu[node.id]

    async def inference_up(
        self,
        node: NodeConfig,
        version: MLNodeVersion,
        model: str,
        args: tuple[str, ...],
        dtype: str | None = None,
    ) -> None:
        self._enter(node, version, "up")
        if self.states[(node.id, version)] == "INFERENCE":  # as the real MLNode: no second load
            url = f"http://{node.host}/{version}/up"
            raise MLNodeCallError("POST", url, 409, '{"detail": "inference is already running"}')
        self._take_gpu(node, version, "up")
        self.states[(node.id, version)] = "INFERENCE"
        self.ups.append((node.id, version, model, dtype))

    def _take_gpu(self, node: NodeConfig, version: MLNodeVersion, call: str) -> None:
        holder = self.gpu.get(node.id)
        if holder is not None and holder != version:
            raise MLNodeCallError("POST", call, self.gpu_busy_status, f"GPU is held by {node.id}@{holder}")
        self.gpu[node.id] = version

    async def pow_status(self, node: NodeConfig, version: MLNodeVersion) -> str:
        self._enter(node, version, "pow_status")
        if self.states[(node.id, version)] != "POW":
            return "NOT_LOADED"
        return self.pow_phase.get((node.id, version), "IDLE")

    async def start_work(
        self, node: NodeConfig, version: MLNodeVersion, route: str, body: dict[str, object]
    ) -> None:
        self._enter(node, version, "start_work")
        self._take_gpu(node, version, route)
        if route.startswith("/api/v1/pow/"):
            self.states[(node.id, version)] = "POW"
            phase = {"generate": "GENERATING", "validate": "VALIDATING"}.get(route.rsplit("/", 1)[-1], "IDLE")
            self.pow_phase[(node.id, version)] = phase
        else:
            self.states[(node.id, version)] = "TRAIN"
        self.started.append((node.id, version, route, body))

    async def serving(self, node: NodeConfig, version: MLNodeVersion) -> None:
        self._enter(node, version, "health")
        if self.states[(node.id, version)] != "INFERENCE":
            raise MLNodeCallError("GET", "v1/models", 503, "No vLLM backend available")

    async def management_health(self, node: NodeConfig, version: MLNodeVersion) -> str | None:
        self._enter(node, version, "mgmt_health")
        # Without `service_state` in the answer the prober asks for the state separately.
        return self.states[(node.id, version)] if self.health_carries_state else None

    def forget(self, node_id: str) -> None:
        self.forgotten.append(node_id)


@dataclass
class FakeRegistry:
    current: RegistryState | None = None
    asked: int = 0

    async def state(self) -> RegistryState | None:
        self.asked += 1
        return self.current


@dataclass
class FakePublisher:
    events: list[Event] = field(default_factory=list)
    fail: bool = False

    async def publish(self, event: Event) -> None:
        if self.fail:
            raise ConnectionError("nats down")
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


FAST = HandoffPolicy(
    drain_timeout_s=0.5,
    stop_attempts=3,
    stop_backoff_s=0.01,
    stop_backoff_max_s=0.02,
    up_attempts=2,
    up_backoff_s=0.01,
    health_timeout_s=0.2,
    health_interval_s=0.01,
)


@dataclass
class Harness:
    coordinator: Coordinator
    mlnodes: FakeMLNodes
    registry: FakeRegistry
    publisher: FakePublisher
    store: BrokerStore
    pool: NodePool
    metrics: ServiceMetrics


def harness(
    *nodes: NodeConfig, registry: RegistryState | None = None, policy: HandoffPolicy = FAST
) -> Harness:
    mlnodes = FakeMLNodes()
    reg = FakeRegistry(registry)
    publisher = FakePublisher()
    store = memory_store(nodes=NodeSet(seeded=True, nodes=nodes))
    pool = NodePool()
    metrics = ServiceMetrics("broker")
    coordinator = Coordinator(
        store,
        mlnodes,
        pool,
        publisher,
        reg,
        BrokerMetrics(metrics, pool),
        Policies(handoff=policy, pending=HandoffPolicy(stop_attempts=1), heal=policy),
    )
    return Harness(coordinator, mlnodes, reg, publisher, store, pool, metrics)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Yield to the event loop until `condition` holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


def changed(previous: object = V6, current: object = V8, tid: str = "100-v3.0.8") -> VersionChanged:
    return VersionChanged.model_validate(
        {"transition_id": tid, "previous": previous, "current": current, "height": 100}
    )


async def running_on_v6(*node_ids: str) -> Harness:
    """Nodes serving v3.0.6, the registry in step: the state before a scheduled switch."""
    h = harness(*(node(n) for n in node_ids))
    h.registry.current = RegistryState(current_version=V6, last_used_version=V6, current_transition="sync-1")
    for n in node_ids:
        h.mlnodes.running(n, V6)
    await h.coordinator.start(())
    await h.coordinator.reconcile()
    assert all(h.pool.slots[n].ready for n in node_ids)
    h.mlnodes.calls.clear()  # count only what happens from here on
    return h


async def switch_on(
    coordinator: Coordinator, registry: FakeRegistry, event: VersionChanged | None = None
) -> None:
    """The registry moves to `event`'s version and the coordinator carries the switch out."""
    event = event or changed()
    registry.current = RegistryState(
        current_version=event.current,
        last_used_version=event.previous,
        current_transition=event.transition_id,
    )
    await coordinator.on_version_changed(event)
    await coordinator.wait_idle()


async def switch(h: Harness, event: VersionChanged | None = None) -> None:
    await switch_on(h.coordinator, h.registry, event)
