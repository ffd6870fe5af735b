"""The broker's live view of its nodes: which version each serves, whether it is ready, what is in flight.

Forwarded requests take a lease here and give it back when their answer is done; a handoff
closes a node's gate (not ready), waits here for the old version's leases to drain, and opens it
again on the new version. Waiting is bounded everywhere and woken by changes, not by polling.
No I/O: the choice of node is `routing.pick`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from services.broker.models import NodeConfig
from services.broker.routing import LeastBusyIndex, NodeLoad, pick, why_none
from shared.versions import MLNodeVersion

__all__ = ["Lease", "NoNodeReady", "NodePool", "NodeSlot", "SlotPhase"]


class SlotPhase(enum.StrEnum):
    """What a node is doing, as the status pages and the 503 message show it.

    The middle values are the handoff machine's `handoff.Phase`, with the same spelling.
    """

    STARTING = "starting"  # added, not yet brought up
    QUEUED = "queued"  # in a switch, waiting for its turn
    OBSERVE = "observe_work"
    DRAIN = "drain"
    STOP = "stop"
    CONFIRM = "confirm_stopped"
    CLAIMS = "check_waiting"
    PROBE = "probe_target"
    BRING_UP = "bring_up"
    WAIT_HEALTHY = "wait_healthy"
    START_WORK = "start_work"
    DONE = "done"
    READY = "ready"
    FAILED = "failed"
    # Settled in work other than serving, as the API node asked: not ready for inference.
    POW = "pow"
    TRAIN = "train"
    STOPPED = "stopped"
    # Staged switch: moving to the target before the height, then loaded and waiting for it.
    STAGING = "staging"
    STAGED = "staged"


# A node handed to the next version ahead of its height (`stager`): not the current version's.
STAGING_PHASES = frozenset({SlotPhase.STAGING, SlotPhase.STAGED})


class NoNodeReady(Exception):
    """No node could take the request within the wait; the message says why, for the 503."""


@dataclass
class NodeSlot:
    config: NodeConfig
    version: MLNodeVersion | None = None
    ready: bool = False
    phase: SlotPhase = SlotPhase.STARTING
    in_flight: Counter[MLNodeVersion] = field(default_factory=Counter)
    phase_since: float = field(default_factory=time.time)  # wall clock: when `phase` was entered
    judged: bool = False  # marked (ready or not) since this process took the node in

    def enter(self, phase: SlotPhase) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phase_since = time.time()

    def load(self) -> NodeLoad:
        return NodeLoad(
            node_id=self.config.id,
            version=self.version,
            ready=self.ready,
            in_flight=sum(self.in_flight.values()),
            max_concurrent=self.config.max_concurrent,
            phase=self.phase,
        )


@dataclass(frozen=True, slots=True)
class Lease:
    node: NodeConfig
    version: MLNodeVersion


class NodePool:
    def __init__(self) -> None:
        self.current: MLNodeVersion | None = None
        self.slots: dict[str, NodeSlot] = {}
        self._changed = asyncio.Event()
        # Requests waiting for a lease, oldest first. Capacity is handed to them directly, so a
        # release wakes one request, not all of them (with a thousand waiting at a switch,
        # waking all on every release cost more CPU than the forwarding itself).
        self._waiters: deque[tuple[asyncio.Future[Lease], frozenset[str], frozenset[str] | None]] = deque()
        # A rollback's first wave: versions whose ready nodes serve while the current one cannot.
        self.bridge: frozenset[MLNodeVersion] = frozenset()
        self._least_busy = LeastBusyIndex()  # kept in step with every change of a slot
        self.served: Counter[MLNodeVersion] = Counter()  # leases given back, per version, since start

    def _signal(self) -> None:
        """Hand free capacity to waiting requests, then wake the drain waiters to re-check."""
        self._grant()
        self._changed.set()
        self._changed = asyncio.Event()

    def _changed_slot(self, slot: NodeSlot) -> None:
        self._least_busy.update(slot.load())

    def _try_lease(self, avoid: frozenset[str], among: frozenset[str] | None = None) -> Lease | None:
        if not avoid and among is None and not self.bridge:
            node_id = self._least_busy.best(self.current)
        else:
            node_id = pick(self.loads(), self.current, avoid, self.bridge, among)
        if node_id is None or self.current is None:
            return None
        slot = self.slots[node_id]
        version = slot.version or self.current  # the current one, or a bridge version
        slot.in_flight[version] += 1
        self._changed_slot(slot)
        return Lease(slot.config, version)

    def _grant(self) -> None:
        """Serve waiters in order while there is capacity; one that avoids nodes may be skipped."""
        served: list[int] = []
        for index, (future, avoid, among) in enumerate(self._waiters):
            if future.done():
                served.append(index)
                continue
            lease = self._try_lease(avoid, among)
            if lease is None:
                if not avoid and among is None:
                    break  # nobody behind it can be served either
                continue
            future.set_result(lease)
            served.append(index)
        for index in reversed(served):
            del self._waiters[index]

    async def wait_change(self, timeout_s: float) -> None:
        """Return when any slot changes (or after `timeout_s`)."""
        await self._wait_change(timeout_s)

    async def _wait_change(self, timeout_s: float) -> None:
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)

    # -- membership and state ----------------------------------------------------------------------

    def set_current(self, version: MLNodeVersion | None) -> None:
        self.current = version
        self._least_busy.rebuild(self.loads())
        self._signal()

    def set_bridge(self, versions: frozenset[MLNodeVersion]) -> None:
        self.bridge = versions
        self._signal()

    def adopt_current(self, version: MLNodeVersion) -> None:
        """`version` serves from now on; a node that never had a version is taken to serve it."""
        if self.current != version:
            self.set_current(version)
        for slot in self.slots.values():
            if slot.version is None:
                slot.version = version
                self._changed_slot(slot)

    def upsert(self, config: NodeConfig) -> NodeSlot:
        slot = self.slots.get(config.id)
        if slot is None:
            slot = self.slots[config.id] = NodeSlot(config)
        else:
            slot.config = config
        self._changed_slot(slot)
        self._signal()
        return slot

    def remove(self, node_id: str) -> None:
        self.slots.pop(node_id, None)
        self._least_busy.discard(node_id)
        self._signal()

    def get(self, node_id: str) -> NodeSlot | None:
        return self.slots.get(node_id)

    def mark(
        self, node_id: str, *, ready: bool, phase: SlotPhase | str, version: MLNodeVersion | None = None
    ) -> None:
        """Set a node's readiness and phase; `version` (when given) is the version it serves now."""
        slot = self.slots.get(node_id)
        if slot is None:
            return
        slot.ready = ready
        slot.judged = True
        slot.enter(SlotPhase(phase))
        if version is not None:
            slot.version = version
        self._changed_slot(slot)
        self._signal()

    def note_phase(self, node_id: str, phase: SlotPhase) -> None:
        """Record a step of a handoff. It wakes nobody: the phase only informs (readiness is `mark`)."""
        slot = self.slots.get(node_id)
        if slot is not None:
            slot.enter(phase)

    def loads(self) -> list[NodeLoad]:
        return [slot.load() for slot in self.slots.values()]

    def held(self) -> int:
        """Requests waiting for a node now."""
        return sum(1 for future, _, _ in self._waiters if not future.done())

    def in_flight_by_version(self) -> Counter[MLNodeVersion]:
        total: Counter[MLNodeVersion] = Counter()
        for slot in self.slots.values():
            total.update(slot.in_flight)
        return total

    # -- leases ------------------------------------------------------------------------------------

    def try_acquire(
        self, avoid: frozenset[str] = frozenset(), among: frozenset[str] | None = None
    ) -> Lease | None:
        """A lease at once, or None when it would have to wait (nor does it jump the queue)."""
        return None if self._waiters else self._try_lease(avoid, among)

    async def acquire(
        self, timeout_s: float, avoid: frozenset[str] = frozenset(), among: frozenset[str] | None = None
    ) -> Lease:
        """A lease on the least-busy ready node of the current version, waiting up to `timeout_s`."""
        lease = self.try_acquire(avoid, among)
        if lease is not None:
            return lease
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, avoid, among))
        self._grant()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise NoNodeReady(why_none(self.loads(), self.current)) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # granted as the caller gave up: give it back
            raise

    def hold(self, node_id: str, version: MLNodeVersion) -> Lease | None:
        """A lease on this node and version, whatever its readiness: a call the API node addressed
        to the node itself (the node endpoint). None when the node is not in the pool."""
        slot = self.slots.get(node_id)
        if slot is None:
            return None
        slot.in_flight[version] += 1
        self._changed_slot(slot)
        return Lease(slot.config, version)

    def release(self, lease: Lease) -> None:
        slot = self.slots.get(lease.node.id)
        self.served[lease.version] += 1
        if slot is not None and slot.in_flight[lease.version] > 0:
            slot.in_flight[lease.version] -= 1
            if not slot.in_flight[lease.version]:
                del slot.in_flight[lease.version]
            self._changed_slot(slot)
        self._signal()

    async def wait_drained(self, node_id: str, versions: tuple[MLNodeVersion, ...], timeout_s: float) -> int:
        """Wait until no lease of these versions is out on the node; returns what is left at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            slot = self.slots.get(node_id)
            left = 0 if slot is None else sum(slot.in_flight[v] for v in versions)
            remaining = deadline - loop.time()
            if left == 0 or remaining <= 0:
                return left
            await self._wait_change(remaining)
