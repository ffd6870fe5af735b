"""The registry over gRPC (`mlnode_upgrade.v1.Registry`), for consumers in other languages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from proto.mlnode_upgrade.v1 import registry_pb2, registry_pb2_grpc
from services.version_registry.registry import RegistryService
from services.version_registry.store import Stored

__all__ = ["RegistryServicer", "to_proto"]

RECENT_TRANSITIONS = 20


def to_proto(stored: Stored) -> registry_pb2.VersionState:
    core = stored.state.core
    msg = registry_pb2.VersionState(
        current_version=core.current.raw if core.current else "",
        last_used_version=core.last_used.raw if core.last_used else "",
        last_height=core.last_height,
        revision=stored.revision or 0,
    )
    for plan in core.pending:
        msg.pending.add(height=plan.height, node_version=plan.node_version.raw, name=plan.name)
    for t in core.history[-RECENT_TRANSITIONS:]:
        msg.recent_transitions.add(
            transition_id=t.transition_id,
            previous_version=t.previous.raw if t.previous else "",
            current_version=t.current.raw,
            height=t.height,
            reason=t.reason,
            at=t.at.isoformat(),
        )
    return msg


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, service: RegistryService, watch_poll_s: float = 5.0) -> None:
        self.service = service
        self.watch_poll_s = watch_poll_s

    async def GetState(
        self, request: registry_pb2.GetStateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> registry_pb2.VersionState:
        await self.service.state()
        return to_proto(self.service.latest)

    async def WatchState(
        self, request: registry_pb2.WatchStateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[registry_pb2.VersionState]:
        await self.service.state()
        current = self.service.latest
        yield to_proto(current)
        while True:
            latest = await self.service.wait_for_change(current.revision or 0, self.watch_poll_s)
            if (latest.revision or 0) != (current.revision or 0):
                current = latest
                yield to_proto(current)
