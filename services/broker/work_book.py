"""The nodes' work as the API node set it (persisted), and its management calls waiting for a node.

The node endpoint records a node's work after each 2xx answer to a call that changes it; a
handoff reads it to carry the work to the new version and, just before bringing the new version
into it, asks whether one of the API node's calls is waiting for the node: that call sets the
node's work next, so the handoff leaves the work to it rather than start what is about to change.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

from services.broker.node_work import NodeWork, NodeWorks
from shared.kv_document import Document

__all__ = ["WorkBook"]


class WorkBook:
    def __init__(self, doc: Document[NodeWorks]) -> None:
        self._doc = doc
        self._works = NodeWorks()
        self._waiting: defaultdict[str, list[str]] = defaultdict(list)

    async def load(self) -> None:
        self._works = await self._doc.load()

    def get(self, node_id: str) -> NodeWork | None:
        return self._works.get(node_id)

    async def record(self, node_id: str, work: NodeWork) -> None:
        """Known at once to this process; persisted for the next one (which raises when the KV does)."""
        self._works = self._works.with_work(node_id, work)
        self._works = await self._doc.mutate(lambda works: works.with_work(node_id, work))

    async def forget(self, node_id: str) -> None:
        if self._works.get(node_id) is not None:
            self._works = await self._doc.mutate(lambda works: works.without(node_id))

    @contextlib.contextmanager
    def waiting(self, node_id: str, route: str) -> Iterator[None]:
        """While the API node's `route` call waits for (and holds) the node's turn."""
        routes = self._waiting[node_id]
        routes.append(route)
        try:
            yield
        finally:
            routes.remove(route)
            if not routes:
                del self._waiting[node_id]

    def waiting_route(self, node_id: str) -> str | None:
        routes = self._waiting.get(node_id)
        return routes[0] if routes else None
