"""`inference.inference.Query` over gRPC, served from the mock chain's state.

Answers with the generated messages (the chain's own proto definitions), honours the Cosmos
`x-cosmos-block-height` request header (the state after that block; echoed in the response
headers) and real pagination, and can be told to fail (`Faults.grpc`).
"""

from __future__ import annotations

from typing import Any

import grpc

from mock_chain.chain import PartialUpgrade, StateSnapshot, StateUnavailable
from mock_chain.node import ChainNode
from mock_chain.pagination import PaginationError, paginate, uint64_key
from proto.cosmos.base.query.v1beta1 import pagination_pb2
from proto.inference.inference import mlnode_version_pb2, partial_upgrade_pb2, query_pb2, query_pb2_grpc

__all__ = ["HEIGHT_HEADER", "QueryService", "create_grpc_server"]

HEIGHT_HEADER = "x-cosmos-block-height"

Context = grpc.aio.ServicerContext[Any, Any]


def _to_pb(plan: PartialUpgrade) -> partial_upgrade_pb2.PartialUpgrade:
    return partial_upgrade_pb2.PartialUpgrade(
        height=plan.height,
        node_version=plan.node_version,
        api_binaries_json=plan.api_binaries_json,
        name=plan.name,
    )


class QueryService(query_pb2_grpc.QueryServicer):
    def __init__(self, node: ChainNode) -> None:
        self.node = node

    async def _state(self, method: str, context: Context) -> StateSnapshot:
        fault = self.node.faults.take_grpc(method)
        if fault is not None:
            await context.abort(fault.code, fault.message)
        height: int | None = None
        for key, value in context.invocation_metadata() or ():
            if key == HEIGHT_HEADER:
                text = value.decode() if isinstance(value, bytes) else value
                if not (text.isascii() and text.isdigit()):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid height header {text!r}")
                height = int(text)
        try:
            state = self.node.chain.state_at(height, head=self.node.served_height)
        except StateUnavailable as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await context.send_initial_metadata(((HEIGHT_HEADER, str(state.height)),))
        return state

    async def PartialUpgrade(
        self, request: query_pb2.QueryGetPartialUpgradeRequest, context: Context
    ) -> query_pb2.QueryGetPartialUpgradeResponse:
        state = await self._state("PartialUpgrade", context)
        for plan in state.partial_upgrades:
            if plan.height == request.height:
                return query_pb2.QueryGetPartialUpgradeResponse(partialUpgrade=_to_pb(plan))
        await context.abort(grpc.StatusCode.NOT_FOUND, "not found")

    async def PartialUpgradeAll(
        self, request: query_pb2.QueryAllPartialUpgradeRequest, context: Context
    ) -> query_pb2.QueryAllPartialUpgradeResponse:
        state = await self._state("PartialUpgradeAll", context)
        page_request = request.pagination
        try:
            page = paginate(
                [(uint64_key(p.height), p) for p in state.partial_upgrades],
                key=page_request.key,
                offset=page_request.offset,
                limit=page_request.limit,
                count_total=page_request.count_total,
                reverse=page_request.reverse,
            )
        except PaginationError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return query_pb2.QueryAllPartialUpgradeResponse(
            partialUpgrade=[_to_pb(p) for p in page.items],
            pagination=pagination_pb2.PageResponse(next_key=page.next_key, total=page.total),
        )

    async def MLNodeVersion(
        self, request: query_pb2.QueryGetMLNodeVersionRequest, context: Context
    ) -> query_pb2.QueryGetMLNodeVersionResponse:
        state = await self._state("MLNodeVersion", context)
        return query_pb2.QueryGetMLNodeVersionResponse(
            mlnode_version=mlnode_version_pb2.MLNodeVersion(current_version=state.mlnode_version)
        )


def create_grpc_server(node: ChainNode, address: str) -> tuple[grpc.aio.Server, int]:
    """A not-yet-started server bound to `address` (`host:0` picks a port); returns it and its port."""
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServicer_to_server(QueryService(node), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return server, port
