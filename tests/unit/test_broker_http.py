"""The broker's HTTP app in-process: forwarding, admin API, upgrade status. No sockets."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from services.broker.forwarder import NODE_HEADER, Forwarder
from services.broker.http_app import create_app
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import ClientBook, ClientTimeouts
from shared.ops_app import ReadinessCheck
from shared.registry_api import PendingPlan, RegistryState
from tests.unit.broker_fakes import V6, V8, Harness, harness, node

Upstream = Callable[[httpx.Request], httpx.Response]
TOKEN = "s3cret"


class App:
    def __init__(
        self, h: Harness, upstream: Upstream, wait_s: float = 1.0, token: str | None = TOKEN
    ) -> None:
        self.h = h
        self.seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.seen.append(request)
            return upstream(request)

        book = ClientBook(ClientTimeouts(), transport=httpx.MockTransport(record))
        metrics = h.coordinator.metrics
        self.forwarder = Forwarder(h.pool, book, metrics, wait_s=wait_s, attempts=3)
        app = create_app(
            h.coordinator, self.forwarder, metrics, [ReadinessCheck("ok", lambda: True)], admin_token=token
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://broker",
            headers={"authorization": f"Bearer {TOKEN}"},
        )


def completion(request: httpx.Request) -> httpx.Response:
    version = request.url.path.split("/")[1]
    return httpx.Response(
        200,
        json={"choices": [{"message": {"content": f"[{version}] hi"}}]},
        headers={"x-mlnode-version": version},
    )


@pytest.fixture
async def serving() -> Harness:
    h = harness(node("a"), node("b"))
    h.registry.current = RegistryState(current_version=V8, last_used_version=V8)
    h.mlnodes.running("a", V8)
    h.mlnodes.running("b", V8)
    await h.coordinator.start(())
    await h.coordinator.reconcile()
    return h


async def test_completion_goes_to_the_current_version_with_the_answer_passed_through(
    serving: Harness,
) -> None:
    app = App(serving, completion)
    resp = await app.client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "[v3.0.8] hi"
    assert resp.headers["x-mlnode-version"] == "v3.0.8" and resp.headers[NODE_HEADER] == "a"
    (sent,) = app.seen
    assert str(sent.url) == "http://mlnode.local:5000/v3.0.8/v1/chat/completions"
    assert json.loads(sent.content) == {"messages": [{"role": "user", "content": "x"}]}
    assert serving.pool.in_flight_by_version() == {}  # the lease was given back
    assert (
        serving.metrics.sample(
            "mlnode_upgrade_broker_forwarded_total", route="/v1/chat/completions", result="ok"
        )
        == 1
    )


async def test_tokenize_is_forwarded_too(serving: Harness) -> None:
    def tokens(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"count": 2, "max_model_len": 4096, "tokens": [1, 2]})

    app = App(serving, tokens)
    resp = await app.client.post("/tokenize", json={"prompt": "a b"})
    assert resp.json()["count"] == 2 and app.seen[0].url.path == "/v3.0.8/tokenize"


async def test_stream_passes_through_and_ends_the_lease(serving: Harness) -> None:
    events = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]

    def sse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(events))

    app = App(serving, sse)
    async with app.client.stream("POST", "/v1/chat/completions", json={"stream": True, "messages": []}) as r:
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert body == b"".join(events) and r.headers["content-type"].startswith("text/event-stream")
    assert serving.pool.in_flight_by_version() == {}


async def test_no_ready_node_is_a_503_that_says_why_after_the_bounded_wait(serving: Harness) -> None:
    for n in ("a", "b"):
        serving.pool.mark(n, ready=False, phase="bring_up")
    app = App(serving, completion, wait_s=0.05)
    resp = await app.client.post("/v1/chat/completions", json={"messages": []})
    assert resp.status_code == 503
    message = resp.json()["error"]["message"]
    assert "no MLNode could take the request after 0.1s" in message
    assert "not ready: a (bring_up), b (bring_up)" in message
    assert app.seen == []


async def test_a_node_that_refuses_is_retried_on_another(serving: Harness) -> None:
    def a_is_down(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        return completion(request)

    await serving.coordinator.update_node(node("a", host="down"))
    app = App(serving, a_is_down)
    resp = await app.client.post("/v1/chat/completions", json={"messages": []})
    assert resp.status_code == 200 and resp.headers[NODE_HEADER] == "b"
    assert [r.url.host for r in app.seen] == ["down", "mlnode.local"]


async def test_upstream_errors_other_than_unavailable_pass_through(serving: Harness) -> None:
    def bad_model(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "The model `x` does not exist."})

    app = App(serving, bad_model)
    resp = await app.client.post("/v1/chat/completions", json={"model": "x", "messages": []})
    assert resp.status_code == 404 and len(app.seen) == 1


async def test_admin_api_lists_adds_updates_and_removes_nodes(serving: Harness) -> None:
    app = App(serving, completion)
    listed = (await app.client.get("/admin/v1/nodes")).json()
    assert [n["id"] for n in listed] == ["a", "b"]
    assert listed[0]["status"] == {"version": "v3.0.8", "ready": True, "phase": "ready", "in_flight": 0}

    new = node("c").model_dump(mode="json")
    assert (await app.client.post("/admin/v1/nodes", json=new)).status_code == 201
    assert (await app.client.post("/admin/v1/nodes", json=new)).status_code == 409
    assert (await app.client.post("/admin/v1/nodes", json={**new, "id": "../x"})).status_code == 422
    assert (
        await app.client.post("/admin/v1/nodes", json={**new, "id": "d", "host": "a b"})
    ).status_code == 422

    moved = {**new, "host": "elsewhere"}
    assert (await app.client.put("/admin/v1/nodes/c", json=moved)).json()["host"] == "elsewhere"
    assert (await app.client.put("/admin/v1/nodes/b", json=moved)).status_code == 400
    assert (await app.client.put("/admin/v1/nodes/zz", json={**moved, "id": "zz"})).status_code == 404
    stored = await serving.store.nodes.load()
    assert [n.host for n in stored.nodes] == ["mlnode.local", "mlnode.local", "elsewhere"]

    assert (await app.client.delete("/admin/v1/nodes/c")).status_code == 200
    assert (await app.client.delete("/admin/v1/nodes/c")).status_code == 404
    assert (await app.client.get("/admin/v1/nodes/c")).status_code == 404
    assert [n.id for n in (await serving.store.nodes.load()).nodes] == ["a", "b"]


async def test_changing_nodes_needs_the_admin_token(serving: Harness) -> None:
    new = node("c").model_dump(mode="json")
    locked = App(serving, completion)
    wrong = await locked.client.post("/admin/v1/nodes", json=new, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (await locked.client.delete("/admin/v1/nodes/a", headers={"authorization": ""})).status_code == 401
    disabled = App(serving, completion, token=None)
    refused = await disabled.client.post("/admin/v1/nodes", json=new)
    assert refused.status_code == 403 and "BROKER_ADMIN_TOKEN_FILE" in refused.json()["detail"]
    assert (await disabled.client.get("/admin/v1/nodes")).status_code == 200  # reading needs no token
    assert [n.id for n in (await serving.store.nodes.load()).nodes] == ["a", "b"]


async def test_upgrade_status_and_readiness(serving: Harness) -> None:
    app = App(serving, completion)
    assert (await app.client.get("/upgrade/readiness")).json()["target_version"] is None
    serving.registry.current = RegistryState(
        current_version=V8, last_used_version=V8, pending=(PendingPlan(height=50, node_version=V6),)
    )
    serving.mlnodes.missing_route.add(("b", V6))
    await serving.coordinator.probe_readiness()
    readiness = (await app.client.get("/upgrade/readiness")).json()
    assert readiness["target_version"] == "v3.0.6" and readiness["height"] == 50
    assert readiness["all_ready"] is False
    assert [(n["node_id"], n["ready"]) for n in readiness["nodes"]] == [("a", True), ("b", False)]

    status = (await app.client.get("/upgrade/status")).json()
    assert status["current_version"] == "v3.0.8" and status["transition"] is None
    assert [n["id"] for n in status["nodes"]] == ["a", "b"] and status["pending_stops"] == []


async def test_ops_routes(serving: Harness) -> None:
    app = App(serving, completion)
    assert (await app.client.get("/healthz")).json()["status"] == "ok"
    assert (await app.client.get("/readyz")).status_code == 200
    text = (await app.client.get("/metrics")).text
    assert "mlnode_upgrade_broker_nodes_ready 2.0" in text
    assert "mlnode_upgrade_broker_transition_seconds_bucket" in text


def test_metrics_can_be_built_twice_on_separate_registries() -> None:
    from shared.metrics import ServiceMetrics

    BrokerMetrics(ServiceMetrics("broker"))
    BrokerMetrics(ServiceMetrics("broker"))
