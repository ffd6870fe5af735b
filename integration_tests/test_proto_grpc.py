"""The generated gRPC code carries the chain's query over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from proto.cosmos.base.query.v1beta1 import pagination_pb2
from proto.inference.inference import mlnode_version_pb2, partial_upgrade_pb2, query_pb2, query_pb2_grpc

PLANS = [partial_upgrade_pb2.PartialUpgrade(height=h, node_version=f"v3.0.{h % 10}") for h in (100, 200, 300)]


class _Query(query_pb2_grpc.QueryServicer):
    async def PartialUpgradeAll(
        self, request: query_pb2.QueryAllPartialUpgradeRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.QueryAllPartialUpgradeResponse:
        start = int.from_bytes(request.pagination.key or b"\x00", "big")
        limit = request.pagination.limit or 100
        page = PLANS[start : start + limit]
        more = start + limit < len(PLANS)
        return query_pb2.QueryAllPartialUpgradeResponse(
            partialUpgrade=page,
            pagination=pagination_pb2.PageResponse(
                next_key=(start + limit).to_bytes(1, "big") if more else b""
            ),
        )

    async def MLNodeVersion(
        self, request: query_pb2.QueryGetMLNodeVersionRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.QueryGetMLNodeVersionResponse:
        return query_pb2.QueryGetMLNodeVersionResponse(
            mlnode_version=mlnode_version_pb2.MLNodeVersion(current_version="v3.0.8")
        )


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServicer_to_server(_Query(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


async def test_paginated_partial_upgrades_over_grpc(channel: grpc.aio.Channel) -> None:
    stub = query_pb2_grpc.QueryStub(channel)
    seen: list[int] = []
    key = b""
    while True:
        resp = await stub.PartialUpgradeAll(
            query_pb2.QueryAllPartialUpgradeRequest(pagination=pagination_pb2.PageRequest(key=key, limit=2))
        )
        seen += [p.height for p in resp.partialUpgrade]
        key = resp.pagination.next_key
        if not key:
            break
    assert seen == [100, 200, 300]
    version = await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
    assert version.mlnode_version.current_version == "v3.0.8"


async def test_unimplemented_method_is_a_clear_grpc_error(channel: grpc.aio.Channel) -> None:
    stub = query_pb2_grpc.QueryStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PartialUpgrade(query_pb2.QueryGetPartialUpgradeRequest(height=1))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
