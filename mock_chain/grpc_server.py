"""`inference.inference.Query` over gRPC, served from the mock chain's state.

Answers with the generated messages (the chain's own proto definitions), honours the Cosmos
`x-cosmos-block-height` request header (the state after that block; echoed in the response
headers) and real pagination, and can be told to fail (`Faults.grpc`).

Serves gRPC server reflection as a Cosmos node does, so `grpcurl -plaintext HOST:9090 list` and
`describe` work: cosmos-sdk server/grpc registers only `grpc.reflection.v1alpha`
(server/grpc/gogoreflection, "we want to keep using v1alpha"), and grpcurl falls back to it
(jhump/protoreflect grpcreflect.NewClientAuto tries v1, then v1alpha on Unimplemented).
The Cosmos services `cosmos.base.reflection.v2alpha1` / `cosmos.reflection.v1.ReflectionService`
are not served: their protos are not part of this repository.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection

from mock_chain import inference_query
from mock_chain.chain import StateSnapshot, StateUnavailable
from mock_chain.node import ChainNode
from proto.inference.inference import query_pb2, query_pb2_grpc

__all__ = ["HEIGHT_HEADER", "REFLECTED_SERVICES", "QueryService", "create_grpc_server"]

HEIGHT_HEADER = "x-cosmos-block-height"
QUERY_SERVICE: str = query_pb2.DESCRIPTOR.services_by_name["Query"].full_name
# What `list` shows: every service registered on the server, reflection included.
REFLECTED_SERVICES: tuple[str, ...] = (QUERY_SERVICE, str(reflection.SERVICE_NAME))

Context = grpc.aio.ServicerContext[Any, Any]


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

    async def _answer(self, method: str, request: Any, context: Context) -> Any:
        state = await self._state(method, context)
        try:
            return inference_query.METHODS[method].answer(state, request)
        except inference_query.QueryError as exc:
            await context.abort(exc.code, exc.message)

    async def PartialUpgrade(
        self, request: query_pb2.QueryGetPartialUpgradeRequest, context: Context
    ) -> query_pb2.QueryGetPartialUpgradeResponse:
        return await self._answer("PartialUpgrade", request, context)  # type: ignore[no-any-return]

    async def PartialUpgradeAll(
        self, request: query_pb2.QueryAllPartialUpgradeRequest, context: Context
    ) -> query_pb2.QueryAllPartialUpgradeResponse:
        return await self._answer("PartialUpgradeAll", request, context)  # type: ignore[no-any-return]

    async def MLNodeVersion(
        self, request: query_pb2.QueryGetMLNodeVersionRequest, context: Context
    ) -> query_pb2.QueryGetMLNodeVersionResponse:
        return await self._answer("MLNodeVersion", request, context)  # type: ignore[no-any-return]


def create_grpc_server(node: ChainNode, address: str) -> tuple[grpc.aio.Server, int]:
    """A not-yet-started server bound to `address` (`host:0` picks a port); returns it and its port."""
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServicer_to_server(QueryService(node), server)
    reflection.enable_server_reflection(REFLECTED_SERVICES, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return server, port
