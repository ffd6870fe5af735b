"""Which node gets the next inference request: a pure choice over a snapshot of the nodes.

Only a node that serves the current version and is ready may take work; a node mid-handoff is
not ready, so its requests wait instead of hitting a version that is stopping or still loading.
Among the eligible nodes the least busy one wins (in-flight relative to `max_concurrent`), and a
node at its `max_concurrent` takes nothing more.

The one exception is a rollback's first wave (`staging.first_wave`): until the nodes moved first
serve the version rolled back to, the nodes still on the versions rolled back from (`bridge`)
take the requests the current version cannot.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from shared.versions import MLNodeVersion

__all__ = ["LeastBusyIndex", "NodeLoad", "pick", "why_none"]


@dataclass(frozen=True, slots=True)
class NodeLoad:
    node_id: str
    version: MLNodeVersion | None  # the version the node serves (or is being moved to)
    ready: bool
    in_flight: int
    max_concurrent: int
    phase: str = ""  # what the node is doing when not ready, for error messages


def _eligible(node: NodeLoad, version: MLNodeVersion) -> bool:
    return node.ready and node.version == version and node.in_flight < node.max_concurrent


def pick(
    nodes: Iterable[NodeLoad],
    version: MLNodeVersion | None,
    avoid: frozenset[str] = frozenset(),
    bridge: frozenset[MLNodeVersion] = frozenset(),
    among: frozenset[str] | None = None,
) -> str | None:
    """The least-busy eligible node's id, or None. Ties go to the lowest id, so the choice is stable.

    Nodes in `avoid` (they just failed this request) are taken only when no other node is eligible;
    nodes on a `bridge` version only when no node of `version` is; only nodes in `among`, if given.
    """
    if version is None:
        return None
    best: tuple[bool, bool, float, int, str] | None = None
    for node in nodes:
        if among is not None and node.node_id not in among:
            continue
        own = node.version
        bridging = own is not None and own != version and own in bridge
        if not _eligible(node, own if bridging and own is not None else version):
            continue
        key = (
            node.node_id in avoid,
            bridging,
            node.in_flight / node.max_concurrent,
            node.in_flight,
            node.node_id,
        )
        if best is None or key < best:
            best = key
    return None if best is None else best[4]


class LeastBusyIndex:
    """`pick` for the common case (nothing avoided, bridged or restricted) in O(log n).

    A heap of (load, in flight, node id) entries: a node's entry is pushed again whenever it
    changes, and entries older than the node's last change are dropped when they reach the top.
    With a thousand nodes, scanning all of them for every request cost about a millisecond
    each. The order is `pick`'s, ties to the lowest id.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, int, MLNodeVersion]] = []
        self._stamps: dict[str, int] = {}  # node -> the stamp of its newest entry
        self._clock = itertools.count(1)  # one clock for all: a node removed and added again
        # cannot match an entry it left behind

    def update(self, node: NodeLoad) -> None:
        """The node changed (readiness, version, in flight, capacity)."""
        stamp = next(self._clock)
        self._stamps[node.node_id] = stamp
        if node.version is not None and node.ready and node.in_flight < node.max_concurrent:
            entry = (node.in_flight / node.max_concurrent, node.in_flight, node.node_id, stamp, node.version)
            heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._stamps) + 64:
            self._compact()

    def discard(self, node_id: str) -> None:
        self._stamps.pop(node_id, None)

    def rebuild(self, nodes: Iterable[NodeLoad]) -> None:
        self._heap.clear()
        self._stamps.clear()
        for node in nodes:
            self.update(node)

    def best(self, version: MLNodeVersion | None) -> str | None:
        """The least-busy eligible node serving `version`, or None.

        Entries of other versions are dropped on the way, so one index answers for one version:
        the pool's current one, rebuilding when that changes.
        """
        if version is None:
            return None
        heap = self._heap
        while heap:
            _, _, node_id, stamp, own = heap[0]
            if self._stamps.get(node_id) == stamp and own == version:
                return node_id
            heapq.heappop(heap)  # outdated (or of another version: a new current rebuilds)
        return None

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._stamps.get(e[2]) == e[3]]
        heapq.heapify(self._heap)


def why_none(nodes: Iterable[NodeLoad], version: MLNodeVersion | None) -> str:
    """A sentence for the 503: why no node could take the request."""
    if version is None:
        return "the current MLNode version is not known yet (the version-registry has not answered)"
    nodes = list(nodes)
    if not nodes:
        return "no MLNode is configured"
    busy = [n.node_id for n in nodes if n.ready and n.version == version and not _eligible(n, version)]
    moving = [f"{n.node_id} ({n.phase or 'not ready'})" for n in nodes if not n.ready]
    parts = [f"no MLNode is ready on {version}"]
    if busy:
        parts.append(f"at max_concurrent: {', '.join(busy[:10])}")
    if moving:
        more = f" and {len(moving) - 10} more" if len(moving) > 10 else ""
        parts.append(f"not ready: {', '.join(moving[:10])}{more}")
    return "; ".join(parts)
