"""mock_chain over real sockets: CometBFT JSON-RPC and websocket, Cosmos gRPC, governance, faults."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devtools.embedded_nats import free_port
from integration_tests.chain_support import ChainControl, partial_upgrade_proposal, running_chain
from integration_tests.conftest import REPO_ROOT
from integration_tests.support import eventually
from mock_chain.server import MockChainServer
from mock_chain.settings import MockChainSettings
from proto.cosmos.base.query.v1beta1 import pagination_pb2
from proto.inference.inference import query_pb2, query_pb2_grpc

HEIGHT_HEADER = "x-cosmos-block-height"


@pytest.fixture
async def chain() -> AsyncIterator[MockChainServer]:
    async with running_chain(voting_period_blocks=2) as server:
        yield server


async def _recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        return dict(json.loads(await ws.recv()))


def _raw_unary(channel: grpc.aio.Channel, method: str, request: bytes, height: int | None = None) -> Any:
    """Call with bytes in and bytes out, so the test decodes the answer itself."""
    call = channel.unary_unary(
        f"/inference.inference.Query/{method}", request_serializer=None, response_deserializer=None
    )
    metadata = ((HEIGHT_HEADER, str(height)),) if height else None
    return call(request, metadata=metadata, timeout=5)


# -- CometBFT RPC ---------------------------------------------------------------------------


@pytest.mark.parametrize("params", [["tm.event='NewBlock'"], {"query": "tm.event = 'NewBlock'"}])
async def test_websocket_new_block_events(chain: MockChainServer, control: ChainControl, params: Any) -> None:
    async with connect(chain.websocket_url) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": "sub-7", "params": params}))
        assert await _recv_json(ws) == {"jsonrpc": "2.0", "id": "sub-7", "result": {}}
        await control.advance(3)
        events = [await _recv_json(ws) for _ in range(3)]
    for height, event in enumerate(events, start=1):
        assert event["id"] == "sub-7"
        data = event["result"]["data"]
        assert data["type"] == "tendermint/event/NewBlock"
        assert data["value"]["block"]["header"]["height"] == str(height)
        assert data["value"]["block_id"]["hash"] == await control.block_hash(height)
        assert event["result"]["events"]["tm.event"] == ["NewBlock"]


async def test_malformed_websocket_request_gets_a_json_rpc_error_and_the_socket_survives(
    chain: MockChainServer, control: ChainControl
) -> None:
    async with connect(chain.websocket_url) as ws:
        await ws.send("{this is not json")
        error = await _recv_json(ws)
        assert error["error"]["code"] == -32700 and "id" not in error  # RPCParseError has no id
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "block", "id": 1, "params": {"height": 3}}))
        bad_params = await _recv_json(ws)  # over the websocket a conversion error is -32603
        assert bad_params["id"] == 1 and bad_params["error"]["code"] == -32603
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "status"}))  # a notification: no reply
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "nope", "id": 2}))
        assert (await _recv_json(ws))["error"]["code"] == -32601
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "status", "id": 3}))
        status = await _recv_json(ws)
        assert status["id"] == 3 and status["result"]["sync_info"]["latest_block_height"] == "0"


async def test_status_block_and_post_json_rpc(control: ChainControl) -> None:
    await control.advance(4)
    status = (await control.http.get("/status")).json()["result"]["sync_info"]
    assert status["latest_block_height"] == "4" and status["catching_up"] is False
    assert status["latest_block_hash"] == await control.block_hash(4)

    posted = await control.http.post(
        "/", json={"jsonrpc": "2.0", "id": 9, "method": "block", "params": {"height": "2"}}
    )
    assert posted.json()["id"] == 9
    assert posted.json()["result"]["block"]["header"]["height"] == "2"

    missing = await control.http.get("/block", params={"height": 99})
    assert missing.status_code == 500
    assert missing.json()["error"]["data"] == (
        "height 99 must be less than or equal to the current blockchain height 4"
    )
    bad = await control.http.get("/block", params={"height": "abc"})
    assert bad.json()["error"]["code"] == -32602


async def test_a_lagging_query_node_answers_as_cometbft_and_cosmos_do(
    chain: MockChainServer, control: ChainControl
) -> None:
    await control.advance(10)
    await control.lag(4)  # queries answer as a node at 6; the websocket stays at the chain's head
    assert (await control.fault("lag", {"blocks": 4}))["query_lag_blocks"] == 4
    status = (await control.http.get("/status")).json()["result"]["sync_info"]
    assert status["latest_block_height"] == "6" and status["earliest_block_height"] == "1"
    assert status["latest_block_hash"] == await control.block_hash(6)

    future = await control.http.get("/block", params={"height": 7})
    assert future.status_code == 500
    assert future.json() == {
        "jsonrpc": "2.0",
        "id": -1,
        "error": {
            "code": -32603,
            "message": "Internal error",
            "data": "height 7 must be less than or equal to the current blockchain height 6",
        },
    }
    latest = (await control.http.get("/block")).json()["result"]
    assert latest["block"]["header"]["height"] == "6"
    posted = await control.http.post(
        "/", json={"jsonrpc": "2.0", "id": 3, "method": "block", "params": {"height": "9"}}
    )
    # Over `POST /` CometBFT answers errors with HTTP 200; only URI routes use 500.
    assert posted.status_code == 200 and posted.json()["error"]["code"] == -32603

    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        stub = query_pb2_grpc.QueryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as above:
            await stub.MLNodeVersion(
                query_pb2.QueryGetMLNodeVersionRequest(), metadata=((HEIGHT_HEADER, "8"),)
            )
        assert above.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot query with height in the future" in (above.value.details() or "")
        call = stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
        await call
        assert dict(await call.initial_metadata())[HEIGHT_HEADER] == "6"

    async with connect(chain.websocket_url) as ws:
        await ws.send(
            json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": 1, "params": ["tm.event='NewBlock'"]})
        )
        await _recv_json(ws)
        await control.advance(1)
        event = await _recv_json(ws)
        assert event["result"]["data"]["value"]["block"]["header"]["height"] == "11"  # the head, not the view

    await control.http.delete("/mock/faults")
    assert (await control.http.get("/block", params={"height": 11})).status_code == 200


async def test_a_pruning_node_refuses_blocks_below_its_earliest_height() -> None:
    settings = MockChainSettings(rpc_port=0, grpc_port=0, block_time_s=0, block_retention_blocks=5)
    async with MockChainServer(settings) as server:
        control = ChainControl(server)
        await control.advance(12)
        status = (await control.http.get("/status")).json()["result"]["sync_info"]
        assert status["earliest_block_height"] == "8" and status["latest_block_height"] == "12"
        pruned = await control.http.get("/block", params={"height": 7})
        assert pruned.status_code == 500
        assert pruned.json()["error"] == {
            "code": -32603,
            "message": "Internal error",
            "data": "height 7 is not available, lowest height is 8",
        }
        assert (await control.http.get("/block", params={"height": 8})).status_code == 200
        await control.aclose()


async def test_blocks_come_on_a_timer_when_configured() -> None:
    async with running_chain(block_time_s=0.05) as server:
        control = ChainControl(server)
        try:
            await eventually(lambda: _at_least(control, 3), timeout=5, message="three timed blocks")
            await control.fault("pause")
            paused_at = await control.height()
            assert (await control.http.post("/advance")).status_code == 409
            await asyncio.sleep(0.2)  # a window in which the timer would have made blocks
            assert await control.height() == paused_at
            await control.fault("resume")
            await eventually(lambda: _at_least(control, paused_at + 2), timeout=5, message="blocks resumed")
        finally:
            await control.aclose()


async def _at_least(control: ChainControl, height: int) -> bool:
    return await control.height() >= height


# -- gRPC -----------------------------------------------------------------------------------


async def test_grpc_answers_decode_with_the_chain_proto_definitions(
    chain: MockChainServer, control: ChainControl
) -> None:
    await control.propose((20, "v3.0.9"), (30, "v3.0.10"))
    await control.advance(3)
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        call = await _raw_unary(
            channel, "MLNodeVersion", query_pb2.QueryGetMLNodeVersionRequest().SerializeToString()
        )
        version = query_pb2.QueryGetMLNodeVersionResponse.FromString(call)
        assert version.mlnode_version.current_version == "v3.0.8"  # genesis

        request = query_pb2.QueryAllPartialUpgradeRequest(
            pagination=pagination_pb2.PageRequest(count_total=True)
        )
        pending = _raw_unary(channel, "PartialUpgradeAll", request.SerializeToString())
        raw = await pending
        assert (HEIGHT_HEADER, "3") in tuple(await pending.initial_metadata())
        plans = query_pb2.QueryAllPartialUpgradeResponse.FromString(raw)
        assert [(p.height, p.node_version, p.name) for p in plans.partialUpgrade] == [
            (20, "v3.0.9", "PartialUpgrade at height 20 for node version v3.0.9"),
            (30, "v3.0.10", "PartialUpgrade at height 30 for node version v3.0.10"),
        ]
        assert plans.pagination.total == 2 and plans.pagination.next_key == b""

        one = query_pb2.QueryGetPartialUpgradeRequest(height=30).SerializeToString()
        got = query_pb2.QueryGetPartialUpgradeResponse.FromString(
            await _raw_unary(channel, "PartialUpgrade", one)
        )
        assert got.partialUpgrade.node_version == "v3.0.10"

        # Pinned to height 1, before the vote ended: no plans yet.
        early = await _raw_unary(channel, "PartialUpgradeAll", request.SerializeToString(), height=1)
        assert list(query_pb2.QueryAllPartialUpgradeResponse.FromString(early).partialUpgrade) == []


async def test_plans_apply_at_their_height_over_grpc(chain: MockChainServer, control: ChainControl) -> None:
    await control.propose((6, "v3.0.9"))
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        stub = query_pb2_grpc.QueryStub(channel)
        await control.advance(5)
        assert (
            await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
        ).mlnode_version.current_version == ("v3.0.8")
        await control.advance(1)
        now = await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
        assert now.mlnode_version.current_version == "v3.0.9"
        listed = await stub.PartialUpgradeAll(query_pb2.QueryAllPartialUpgradeRequest())
        assert [p.height for p in listed.partialUpgrade] == [6]  # still listed at its own height
        await control.advance(1)
        assert (
            list((await stub.PartialUpgradeAll(query_pb2.QueryAllPartialUpgradeRequest())).partialUpgrade)
            == []
        )


async def test_pagination_over_250_plans(chain: MockChainServer, control: ChainControl) -> None:
    await control.propose(*[(100 + i, f"v3.1.{i}") for i in range(250)])
    await control.advance(2)
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        stub = query_pb2_grpc.QueryStub(channel)
        first = await stub.PartialUpgradeAll(query_pb2.QueryAllPartialUpgradeRequest())
        assert len(first.partialUpgrade) == 100  # the default limit truncates: clients must page
        assert first.pagination.total == 250  # no pagination: limit 0 implies count_total
        heights: list[int] = []
        key = b""
        while True:
            page = await stub.PartialUpgradeAll(
                query_pb2.QueryAllPartialUpgradeRequest(
                    pagination=pagination_pb2.PageRequest(key=key, limit=100)
                )
            )
            heights += [p.height for p in page.partialUpgrade]
            key = page.pagination.next_key
            if not key:
                break
        assert heights == list(range(100, 350))
        by_offset = await stub.PartialUpgradeAll(
            query_pb2.QueryAllPartialUpgradeRequest(
                pagination=pagination_pb2.PageRequest(offset=240, limit=100, count_total=True)
            )
        )
        assert [p.height for p in by_offset.partialUpgrade] == list(range(340, 350))
        assert by_offset.pagination.total == 250
        with pytest.raises(grpc.aio.AioRpcError, match="either offset or key"):
            await stub.PartialUpgradeAll(
                query_pb2.QueryAllPartialUpgradeRequest(
                    pagination=pagination_pb2.PageRequest(key=first.pagination.next_key, offset=5)
                )
            )


def _reflect(target: str) -> tuple[list[str], dict[str, str], bytes]:
    """What grpcurl does: list the services, resolve a method, build its request from the result.

    grpc_reflection's client is synchronous, so it runs in a thread of its own while the server
    keeps serving on the event loop.
    """
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        # As grpcurl resolves `inference.inference.Query/PartialUpgradeAll`: the service, then its method.
        method = pool.FindServiceByName("inference.inference.Query").methods_by_name["PartialUpgradeAll"]
        request_class = message_factory.GetMessageClass(method.input_type)
        request = request_class(pagination={"limit": 2, "count_total": True})
        page_request = method.input_type.fields_by_name["pagination"].message_type
        assert page_request is not None
        shape = {
            "input": method.input_type.full_name,
            "output": method.output_type.full_name,
            "page_key": page_request.fields_by_name["key"].full_name,
            "file": method.containing_service.file.name,
        }
        return services, shape, request.SerializeToString()


async def test_grpc_reflection_as_grpcurl_uses_it(chain: MockChainServer, control: ChainControl) -> None:
    """Cosmos nodes serve v1alpha server reflection; a reflection client resolves our methods."""
    await control.propose((20, "v3.0.9"), (30, "v3.0.10"), (40, "v3.1.0"))
    await control.advance(3)
    services, shape, request = await asyncio.to_thread(_reflect, chain.grpc_target)
    assert services == ["grpc.reflection.v1alpha.ServerReflection", "inference.inference.Query"]
    assert shape == {
        "input": "inference.inference.QueryAllPartialUpgradeRequest",
        "output": "inference.inference.QueryAllPartialUpgradeResponse",
        "page_key": "cosmos.base.query.v1beta1.PageRequest.key",
        "file": "proto/inference/inference/query.proto",
    }
    # The request built from reflected descriptors is the one the generated code would send.
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        answer = query_pb2.QueryAllPartialUpgradeResponse.FromString(
            await _raw_unary(channel, "PartialUpgradeAll", request)
        )
    assert [p.height for p in answer.partialUpgrade] == [20, 30] and answer.pagination.total == 3


async def test_grpc_errors(chain: MockChainServer, control: ChainControl) -> None:
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        stub = query_pb2_grpc.QueryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.PartialUpgrade(query_pb2.QueryGetPartialUpgradeRequest(height=77))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as future:
            await stub.MLNodeVersion(
                query_pb2.QueryGetMLNodeVersionRequest(), metadata=((HEIGHT_HEADER, "50"),)
            )
        assert future.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        await control.fault("grpc", {"code": "UNAVAILABLE", "times": 2, "method": "MLNodeVersion"})
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as injected:
                await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
            assert injected.value.code() == grpc.StatusCode.UNAVAILABLE
        await stub.PartialUpgradeAll(query_pb2.QueryAllPartialUpgradeRequest())  # other methods unaffected
        assert (
            await stub.MLNodeVersion(query_pb2.QueryGetMLNodeVersionRequest())
        ).mlnode_version.current_version


# -- governance and faults ------------------------------------------------------------------


async def test_bad_proposals_get_400_with_a_reason_and_change_nothing(
    chain: MockChainServer, control: ChainControl
) -> None:
    await control.advance(5)
    cases = [
        (b"{not json", "not valid JSON"),
        (json.dumps({**partial_upgrade_proposal((50, "v3.0.9")), "deposit": "lots"}).encode(), "deposit"),
        (json.dumps(partial_upgrade_proposal((6, "v3.0.9"))).encode(), "not in the future"),
        (json.dumps(partial_upgrade_proposal((50, "v3.0.9 "))).encode(), "whitespace"),
    ]
    for body, reason in cases:
        response = await control.http.post("/gov/proposals", content=body)
        assert response.status_code == 400
        assert reason in response.json()["error"]
    assert (await control.http.get("/gov/proposals")).json() == {"proposals": []}
    await control.advance(5)
    async with grpc.aio.insecure_channel(chain.grpc_target) as channel:
        listed = await query_pb2_grpc.QueryStub(channel).PartialUpgradeAll(
            query_pb2.QueryAllPartialUpgradeRequest()
        )
    assert list(listed.partialUpgrade) == []


async def test_a_rejected_vote_never_stores_the_plan(control: ChainControl) -> None:
    response = await control.http.post(
        "/gov/proposals", params={"vote": "no"}, json=partial_upgrade_proposal((20, "v3.0.9"))
    )
    proposal_id = response.json()["proposal_id"]
    await control.advance(3)
    assert (await control.http.get(f"/gov/proposals/{proposal_id}")).json()[
        "status"
    ] == "PROPOSAL_STATUS_REJECTED"


async def test_close_websockets_fault_and_skipped_events(
    chain: MockChainServer, control: ChainControl
) -> None:
    async with connect(chain.websocket_url) as ws:
        await ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "method": "subscribe", "id": "1", "params": ["tm.event='NewBlock'"]}
            )
        )
        await _recv_json(ws)
        await control.fault("skip-events", {"count": 2})
        await control.advance(3)
        only = await _recv_json(ws)
        assert only["result"]["data"]["value"]["block"]["header"]["height"] == "3"  # 1 and 2 were not sent
        assert (await control.fault("close-websockets"))["closed"] == 1
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await ws.recv()
    await eventually(lambda: _no_connections(control), message="the server forgot the closed socket")


async def _no_connections(control: ChainControl) -> bool:
    return (await control.websockets())["connections"] == 0


def test_mock_chain_runs_as_a_process(tmp_path: Path) -> None:
    rpc_port, grpc_port = free_port(), free_port()
    with (tmp_path / "mock-chain.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mock_chain",
                "--rpc-port",
                str(rpc_port),
                "--grpc-port",
                str(grpc_port),
                "--block-time-s",
                "0.05",
                "--voting-period-blocks",
                "4",
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{rpc_port}"
            height = 0
            for _ in range(200):
                try:
                    doc = httpx.get(f"{url}/status", timeout=1).json()
                    height = int(doc["result"]["sync_info"]["latest_block_height"])
                except httpx.TransportError:
                    height = 0
                if height >= 2:
                    break
                time.sleep(0.05)  # polling a condition with a deadline
            assert height >= 2, (tmp_path / "mock-chain.log").read_text()
            assert httpx.get(f"{url}/gov/params").json()["voting_period_blocks"] == 4
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
    assert '"mock chain serving"' in (tmp_path / "mock-chain.log").read_text()
