"""The MLNode client over an in-process transport: URLs, bodies, and that non-2xx is always an error."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from services.broker.mlnode_client import (
    ClientBook,
    ClientTimeouts,
    HttpGateway,
    HttpxCalls,
    MLNodeCallError,
    WireCalls,
)
from tests.unit.broker_fakes import MODEL, V8, node

Handler = Callable[[httpx.Request], httpx.Response]


def book(handler: Handler) -> ClientBook:
    return ClientBook(ClientTimeouts(up_s=77), transport=httpx.MockTransport(handler))


def answering(status: int, body: object, seen: list[httpx.Request] | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)

    return handle


async def test_urls_follow_the_real_rule_version_after_the_port_segment_after_it() -> None:
    seen: list[httpx.Request] = []
    n = node("a", poc_segment="/node-a", inference_segment="/inf")
    client = book(answering(200, {"state": "INFERENCE", "data": [{"id": MODEL}]}, seen)).get(n, V8)
    assert await client.state() == "INFERENCE"
    await client.serving()
    assert [str(r.url) for r in seen] == [
        "http://mlnode.local:8080/v3.0.8/node-a/api/v1/state",
        "http://mlnode.local:5000/v3.0.8/inf/v1/models",
    ]


async def test_inference_up_sends_the_nodes_model_and_args_with_the_up_timeout() -> None:
    seen: list[httpx.Request] = []
    gateway = HttpGateway(book(answering(200, {"status": "OK"}, seen)), dtype="bfloat16")
    await gateway.inference_up(node("a"), V8, MODEL, ("--max-model-len", "4096"))
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/v3.0.8/api/v1/inference/up"
    assert json.loads(request.content) == {
        "model": MODEL,
        "dtype": "bfloat16",
        "additional_args": ["--max-model-len", "4096"],
    }
    assert request.extensions["timeout"]["read"] == 77


@pytest.mark.parametrize("status", [404, 409, 500, 502])
async def test_any_non_2xx_from_stop_is_an_error_with_status_and_body(status: int) -> None:
    client = book(answering(status, {"detail": "nope"})).get(node("a"), V8)
    with pytest.raises(MLNodeCallError) as info:
        await client.stop()
    assert info.value.status == status
    assert (
        str(info.value) == f'POST http://mlnode.local:8080/v3.0.8/api/v1/stop: {status} {{"detail":"nope"}}'
    )


async def test_no_answer_is_an_error_without_a_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(MLNodeCallError, match="no answer \\(ConnectError: connection refused\\)") as info:
        await book(refuse).get(node("a"), V8).state()
    assert info.value.status is None


async def test_state_must_be_a_json_object_with_a_state() -> None:
    with pytest.raises(MLNodeCallError, match="no state in"):
        await book(answering(200, {"status": "OK"})).get(node("a"), V8).state()

    def text(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>")

    with pytest.raises(MLNodeCallError, match="not JSON"):
        await book(text).get(node("a"), V8).state()


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (503, {"detail": "No vLLM backend available"}, "503"),  # the real proxy while loading
        (502, {"detail": "Bad gateway"}, "502"),  # nginx when nothing listens on port 5000
        (200, {"object": "list", "data": []}, "no model is loaded"),
    ],
)
async def test_not_serving_until_the_models_route_lists_a_model(
    status: int, body: object, problem: str
) -> None:
    with pytest.raises(MLNodeCallError, match=problem):
        await book(answering(status, body)).get(node("a"), V8).serving()


async def test_serving_and_management_health_answers() -> None:
    await book(answering(200, {"object": "list", "data": [{"id": MODEL}]})).get(node("a"), V8).serving()
    # Management health only cares that the container is alive: STOPPED is fine before the switch.
    await (
        book(answering(200, {"status": "healthy", "service_state": "STOPPED"}))
        .get(node("a"), V8)
        .management_health()
    )
    with pytest.raises(MLNodeCallError, match="unhealthy"):
        await book(answering(200, {"status": "unhealthy"})).get(node("a"), V8).management_health()


async def test_client_is_rebuilt_when_the_admin_changes_the_address() -> None:
    b = book(answering(200, {}))
    first = b.get(node("a"), V8)
    assert b.get(node("a"), V8) is first
    assert b.get(node("a"), None).calls is first.calls  # the versions of a node share its pool
    assert b.get(node("b"), V8).calls is not first.calls  # each node has its own
    moved = b.get(node("a", host="elsewhere"), V8)
    assert moved is not first and moved.poc_url == "http://elsewhere:8080/v3.0.8"
    await b.aclose()
    assert isinstance(first.calls, HttpxCalls) and isinstance(moved.calls, HttpxCalls)
    assert first.calls.http.is_closed and moved.calls.http.is_closed


def test_a_nodes_pool_is_sized_from_its_max_concurrent() -> None:
    client = ClientBook(ClientTimeouts()).get(node("a", max_concurrent=3), V8)  # connects nothing yet
    assert isinstance(client.calls, WireCalls)
    assert client.calls.size == 3 + ClientBook.MANAGEMENT_HEADROOM


async def test_management_health_returns_the_state_its_answer_carries() -> None:
    # The real HealthResponse has `service_state`: a readiness probe needs no second call.
    answer = {"status": "healthy", "service_state": "STOPPED", "gpu": {"available": True}}
    assert await book(answering(200, answer)).get(node("a"), V8).management_health() == "STOPPED"
    assert await book(answering(200, {"status": "healthy"})).get(node("a"), V8).management_health() is None
    plain: Handler = lambda request: httpx.Response(200, text="ok")  # noqa: E731
    assert await book(plain).get(node("a"), V8).management_health() is None
