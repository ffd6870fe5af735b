"""What the coordinator needs from the outside world, as protocols.

The service wires the real adapters (httpx, NATS); unit tests pass in-memory ones, so the whole
handoff logic runs without a socket.
"""

from __future__ import annotations

from typing import Any, Protocol

from services.broker.models import NodeConfig
from shared.events import Event
from shared.registry_api import RegistryState
from shared.versions import MLNodeVersion

__all__ = ["Gateway", "Publisher", "RegistryReader"]


class Gateway(Protocol):
    """MLNode calls for one (node, version). Every failure raises `MLNodeCallError`."""

    async def state(self, node: NodeConfig, version: MLNodeVersion) -> str: ...

    async def stop(self, node: NodeConfig, version: MLNodeVersion) -> None: ...

    async def inference_up(
        self,
        node: NodeConfig,
        version: MLNodeVersion,
        model: str,
        args: tuple[str, ...],
        dtype: str | None = None,
    ) -> None:
        """Load `model`; `dtype` None means the broker's configured one."""

    async def pow_status(self, node: NodeConfig, version: MLNodeVersion) -> str:
        """`GET /api/v1/pow/status` → its `status` (GENERATING, VALIDATING, NOT_LOADED...)."""

    async def start_work(
        self, node: NodeConfig, version: MLNodeVersion, route: str, body: dict[str, Any]
    ) -> None:
        """POST `route` (under the management URL) with `body`: PoC init, train/start."""

    async def serving(self, node: NodeConfig, version: MLNodeVersion) -> None:
        """The version's model answers requests (not merely the container is healthy)."""

    async def management_health(self, node: NodeConfig, version: MLNodeVersion) -> str | None:
        """The container is up and sees its GPU; returns its state when the answer says it
        (the real `/health` carries `service_state`), so a probe needs no second call."""

    def forget(self, node_id: str) -> None:
        """The node was removed: release what is held for it (connections)."""


class Publisher(Protocol):
    """Publishes an event with its dedup id; raises when the stream did not acknowledge it."""

    async def publish(self, event: Event) -> None: ...


class RegistryReader(Protocol):
    """The version-registry's current state, or None when it does not answer."""

    async def state(self) -> RegistryState | None: ...
