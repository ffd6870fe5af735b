"""Contract tests: every mock MLNode route and state transition, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration_tests.support import eventually, serve_asgi
from mock_mlnode.app import NODE_HEADER, VERSION_HEADER, create_app
from mock_mlnode.settings import MockMLNodeSettings

UP = {"model": "Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
POW = {
    "node_id": 0,
    "node_count": 1,
    "block_hash": "ab",
    "block_height": 10,
    "public_key": "pk",
    "url": "http://x",
}
BATCH = {
    "public_key": "pk",
    "block_hash": "ab",
    "block_height": 10,
    "nonces": [1, 2],
    "dist": [0.1, 0.2],
    "node_id": 0,
}

ClientFactory = Callable[..., Any]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[ClientFactory]:
    stack: list[Any] = []

    async def factory(**overrides: Any) -> httpx.AsyncClient:
        settings = MockMLNodeSettings(
            gpu_lock_path=str(tmp_path / "gpu" / "{node}.lock"),
            model_load_s=0.2,
            stream_chunk_delay_s=0.01,
            **overrides,
        )
        server = serve_asgi(create_app(settings))
        url = await server.__aenter__()
        client = httpx.AsyncClient(base_url=url, timeout=10)
        stack.append((server, client))
        return client

    yield factory
    for server, client in reversed(stack):
        await client.aclose()
        await server.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client: ClientFactory) -> httpx.AsyncClient:
    c: httpx.AsyncClient = await make_client()
    return c


async def state(client: httpx.AsyncClient, prefix: str = "") -> str:
    resp = await client.get(f"{prefix}/api/v1/state")
    assert resp.status_code == 200
    return str(resp.json()["state"])


async def test_starts_stopped_and_stop_is_always_ok(client: httpx.AsyncClient) -> None:
    assert await state(client) == "STOPPED"
    resp = await client.post("/api/v1/stop")
    assert resp.status_code == 200 and resp.json() == {"status": "OK"}
    assert await state(client) == "STOPPED"


async def test_inference_up_blocks_until_loaded_then_serves(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 503
    resp = await client.post("/api/v1/inference/up", json=UP)
    assert resp.status_code == 200 and resp.json() == {"status": "OK"}
    assert await state(client) == "INFERENCE"
    status = (await client.get("/api/v1/inference/up/status")).json()
    assert status["status"] == "completed" and status["is_running"] and not status["is_starting"]
    assert status["elapsed_seconds"] >= 0.2

    chat = await client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200
    assert chat.headers[VERSION_HEADER] == "v3.0.8" and chat.headers[NODE_HEADER] == "node-0"
    body = chat.json()
    assert body["object"] == "chat.completion" and body["model"] == UP["model"]
    assert "[v3.0.8]" in body["choices"][0]["message"]["content"]

    models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [UP["model"]]
    tok = (await client.post("/tokenize", json={"prompt": "a b c"})).json()
    assert tok["count"] == 3 and tok["max_model_len"] == 4096 and len(tok["tokens"]) == 3


async def test_inference_up_twice_is_a_conflict(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/inference/up", json=UP)).status_code == 200
    again = await client.post("/api/v1/inference/up", json=UP)
    assert again.status_code == 409 and "already running" in again.json()["detail"]


async def test_async_up_reports_starting_then_running(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/inference/up/async", json=UP)
    assert resp.json()["status"] == "starting"
    status = (await client.get("/api/v1/inference/up/status")).json()
    assert status["status"] == "in_progress" and status["is_starting"] and not status["is_running"]
    # The real MLNode says ready and healthy while the model loads; only vLLM's routes say not yet.
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    health = await client.get("/health")
    assert health.status_code == 200 and health.json()["managers"]["inference"]["running"]
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 503
    assert (await client.get("/v1/models")).status_code == 503

    async def running() -> bool:
        return bool((await client.get("/api/v1/inference/up/status")).json()["is_running"])

    await eventually(running, message="model loaded")
    assert (await client.get("/readyz")).json() == {"ready": True}


async def test_stop_during_load_cancels_it(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/inference/up/async", json=UP)
    await client.post("/api/v1/stop")
    status = (await client.get("/api/v1/inference/up/status")).json()
    assert status == {"status": "cancelled", "is_starting": False, "is_running": False}
    assert await state(client) == "STOPPED"


async def test_inference_down(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/inference/up", json=UP)
    assert (await client.post("/api/v1/inference/down")).json() == {"status": "OK"}
    assert await state(client) == "STOPPED"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 503


async def test_wrong_model_is_404(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/inference/up", json=UP)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "other"})
    assert resp.status_code == 404


async def test_pow_routes_and_phases(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/pow/status")).json() == {"status": "NOT_LOADED"}
    assert (await client.post("/api/v1/pow/phase/generate")).status_code == 400
    assert (await client.post("/api/v1/pow/validate", json=BATCH)).status_code == 400
    no_ids = await client.post("/api/v1/pow/init/generate", json={**POW, "node_id": -1})
    assert no_ids.status_code == 400

    init = await client.post("/api/v1/pow/init", json=POW)
    assert init.json() == {"status": "OK", "pow_status": {"status": "IDLE", "is_model_initialized": True}}
    assert await state(client) == "POW"
    gen = await client.post("/api/v1/pow/init/generate", json=POW)
    assert gen.json()["pow_status"]["status"] == "GENERATING"
    assert (await client.post("/api/v1/pow/phase/validate")).json()["pow_status"]["status"] == "VALIDATING"
    assert (await client.post("/api/v1/pow/phase/generate")).json()["pow_status"]["status"] == "GENERATING"
    validated = await client.post("/api/v1/pow/validate", json=BATCH)
    assert validated.status_code == 200 and validated.json() is None  # the real route returns nothing
    val = await client.post("/api/v1/pow/init/validate", json=POW)
    assert val.json()["pow_status"]["status"] == "VALIDATING"
    stop = await client.post("/api/v1/pow/stop")
    assert stop.json() == {"status": "OK", "pow_status": {"status": "NOT_LOADED"}}
    assert await state(client) == "STOPPED"
    idle = await client.post("/api/v1/pow/stop")  # OK when not running, with a message
    assert idle.status_code == 200 and idle.json() == {"status": "OK", "pow_status": "PoW is not running"}


async def test_another_service_running_is_409_until_stopped(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/pow/init", json=POW)
    for method, path, body in [
        ("POST", "/api/v1/inference/up", UP),
        ("GET", "/api/v1/inference/up/status", None),
        ("POST", "/api/v1/train/start", {}),
    ]:
        resp = await client.request(method, path, json=body)
        assert resp.status_code == 409, path
        assert "Please stop POW first" in resp.json()["detail"]
    await client.post("/api/v1/stop")
    assert (await client.post("/api/v1/inference/up", json=UP)).status_code == 200
    blocked = await client.post("/api/v1/pow/init", json=POW)
    assert blocked.status_code == 409 and "Please stop INFERENCE first" in blocked.json()["detail"]


async def test_train_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/train/status")).json() == {"status": False}
    assert (await client.post("/api/v1/train/stop")).status_code == 400
    assert (await client.post("/api/v1/train/start", json={"anything": 1})).json() == {
        "status": "Training started"
    }
    assert await state(client) == "TRAIN"
    assert (await client.post("/api/v1/train/start", json={})).status_code == 400
    assert (await client.get("/api/v1/train/status")).json() == {"status": True}
    assert (await client.post("/api/v1/train/stop")).json() == {"status": "Training stopped"}
    assert await state(client) == "STOPPED"


async def test_health_livez_readyz(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/livez"):
        body = (await client.get(path)).json()
        assert body["status"] == "healthy" and body["service_state"] == "STOPPED"
        assert set(body["managers"]) == {"pow", "inference", "train"}
        assert body["gpu"]["count"] == 1
    assert (await client.get("/readyz")).json() == {"ready": True}


async def test_bad_bodies_are_422_and_change_nothing(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/inference/up", json={"dtype": "x"})).status_code == 422
    assert (await client.post("/api/v1/inference/up", content=b"{nope")).status_code == 422
    assert await state(client) == "STOPPED"


async def test_every_route_answers_under_the_version_prefix(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v3.0.8/api/v1/inference/up", json=UP)).status_code == 200
    assert await state(client, "/v3.0.8") == "INFERENCE"
    for method, path, body in [
        ("GET", "/v3.0.8/health", None),
        ("GET", "/v3.0.8/livez", None),
        ("GET", "/v3.0.8/readyz", None),
        ("GET", "/v3.0.8/v1/models", None),
        ("POST", "/v3.0.8/tokenize", {"prompt": "x"}),
        ("POST", "/v3.0.8/v1/chat/completions", CHAT),
        ("GET", "/v3.0.8/api/v1/inference/up/status", None),
    ]:
        resp = await client.request(method, path, json=body)
        assert resp.status_code == 200, path
        assert resp.headers[VERSION_HEADER] == "v3.0.8"
    unknown = await client.get("/v9.9.9/api/v1/state")
    assert unknown.status_code == 404 and "v9.9.9" in unknown.json()["detail"]


async def test_streaming_completion_is_sse(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/inference/up", json=UP)
    events: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    assert len(events) == 8 + 3  # role, 8 words, stop, [DONE]


async def test_stop_mid_stream_cuts_the_stream(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/inference/up", json=UP)
    received = 0

    async def read_and_stop_midway() -> None:
        nonlocal received
        async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            async for _ in resp.aiter_bytes():
                received += 1
                if received == 2:
                    async with httpx.AsyncClient(base_url=str(client.base_url)) as other:
                        await other.post("/api/v1/stop")

    with pytest.raises(httpx.RemoteProtocolError):
        await read_and_stop_midway()
    assert received >= 2


async def test_multi_version_mode_keeps_state_apart(make_client: ClientFactory) -> None:
    client: httpx.AsyncClient = await make_client(versions=["v3.0.6", "v3.0.8"], gpu_busy_status=409)
    assert (await client.post("/v3.0.6/api/v1/inference/up", json=UP)).status_code == 200
    assert await state(client, "/v3.0.6") == "INFERENCE"
    assert await state(client, "/v3.0.8") == "STOPPED"
    assert await state(client) == "INFERENCE"  # unprefixed: the first version

    busy = await client.post("/v3.0.8/api/v1/inference/up", json=UP)
    assert busy.status_code == 409 and "node-0@v3.0.6" in busy.json()["detail"]

    assert (await client.post("/v3.0.8/api/v1/stop")).status_code == 200  # the wrong version: nothing freed
    assert await state(client, "/v3.0.6") == "INFERENCE"
    assert (await client.post("/v3.0.8/api/v1/inference/up", json=UP)).status_code == 409

    await client.post("/v3.0.6/api/v1/stop")
    assert (await client.post("/v3.0.8/api/v1/inference/up", json=UP)).status_code == 200
    chat = await client.post("/v3.0.8/v1/chat/completions", json=CHAT)
    assert chat.headers[VERSION_HEADER] == "v3.0.8"


async def test_pow_needs_the_gpu_too(make_client: ClientFactory) -> None:
    client: httpx.AsyncClient = await make_client(versions=["v3.0.6", "v3.0.8"], gpu_busy_status=409)
    await client.post("/v3.0.6/api/v1/pow/init", json=POW)
    resp = await client.post("/v3.0.8/api/v1/pow/init", json=POW)
    assert resp.status_code == 409 and "GPU is held by node-0@v3.0.6" in resp.json()["detail"]


async def test_busy_gpu_is_a_bare_500_by_default(make_client: ClientFactory) -> None:
    """The real MLNode has no GPU lock: the second version's load dies in CUDA, FastAPI answers 500."""
    client: httpx.AsyncClient = await make_client(versions=["v3.0.6", "v3.0.8"])
    assert (await client.post("/v3.0.6/api/v1/inference/up", json=UP)).status_code == 200
    busy = await client.post("/v3.0.8/api/v1/inference/up", json=UP)
    assert busy.status_code == 500 and busy.text == "Internal Server Error"
    assert await state(client, "/v3.0.8") == "STOPPED"  # the refusal changed nothing


async def test_fault_injection(client: httpx.AsyncClient) -> None:
    rule = {"route": "/api/v1/stop", "action": "fail", "status": 503, "times": 2}
    assert (await client.post("/mock/faults", json=rule)).status_code == 200
    assert (await client.post("/api/v1/stop")).status_code == 503
    assert (await client.post("/api/v1/stop")).status_code == 503
    assert (await client.post("/api/v1/stop")).status_code == 200  # spent
    assert (await client.get("/mock/faults")).json() == {"faults": []}

    await client.post("/mock/faults", json={"route": "/api/v1/state", "action": "drop"})
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/api/v1/state")
    assert (await client.get("/api/v1/state")).status_code == 200

    await client.post("/mock/faults", json={"route": "/api/v1/state", "action": "delay", "latency_s": 0.3})
    resp = await client.get("/api/v1/state")
    assert resp.elapsed.total_seconds() >= 0.3

    await client.post("/mock/faults", json={"version": "v3.0.8", "times": 0, "status": 500})
    assert (await client.get("/health")).status_code == 500
    assert (await client.get("/health")).status_code == 500
    await client.delete("/mock/faults")
    assert (await client.get("/health")).status_code == 200

    bad = await client.post("/mock/faults", json={"action": "explode"})
    assert bad.status_code == 422


async def test_request_log_per_route_and_version(make_client: ClientFactory) -> None:
    client: httpx.AsyncClient = await make_client(versions=["v3.0.6", "v3.0.8"])
    await client.post("/v3.0.6/api/v1/stop")
    await client.get("/v3.0.8/api/v1/state")
    await client.get("/api/v1/state")
    log = (await client.get("/mock/requests")).json()["requests"]
    assert [(r["method"], r["route"], r["version"], r["status"]) for r in log] == [
        ("POST", "/api/v1/stop", "v3.0.6", 200),
        ("GET", "/api/v1/state", "v3.0.8", 200),
        ("GET", "/api/v1/state", "v3.0.6", 200),
    ]
    stops = (await client.get("/mock/requests", params={"route": "/api/v1/stop", "version": "v3.0.8"})).json()
    assert stops["requests"] == []
    await client.delete("/mock/requests")
    assert (await client.get("/mock/requests")).json()["requests"] == []


async def test_instances_view(make_client: ClientFactory) -> None:
    client: httpx.AsyncClient = await make_client(versions=["v3.0.6", "v3.0.8"], nodes=["a", "b"])
    await client.post("/v3.0.8/b/api/v1/inference/up", json=UP)
    found = {(i["version"], i["node"]): i for i in (await client.get("/mock/instances")).json()["instances"]}
    assert len(found) == 4
    assert found[("v3.0.8", "b")]["state"] == "INFERENCE" and found[("v3.0.8", "b")]["gpu_held"]
    assert found[("v3.0.6", "a")]["state"] == "STOPPED"
