"""The real API node's requests, byte for byte as its Go client sends them, against our MLNode side.

`real_clients/mlnode_requests.json` holds the requests (paths, bodies with their real field
names, the headers Go sends and does not send) in the order of one node's life, and the fields
the Go structs decode from each answer. They are written over a raw socket, so no client library
adds a Content-Type the Go code never sends, and replayed against the mock MLNode under the
versioned prefix the real client builds, and against the broker, the API node's one endpoint.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bench.loadgen import Reply, read_reply
from devtools.embedded_nats import EmbeddedNats
from integration_tests.broker_stack import (
    MODEL,
    NEW,
    OLD,
    serving_on,
)
from integration_tests.support import eventually, serve_asgi
from mock_mlnode.app import VERSION_HEADER, create_app
from mock_mlnode.settings import MockMLNodeSettings
from shared.bus import Bus

FIXTURE = json.loads((Path(__file__).parent / "real_clients" / "mlnode_requests.json").read_text())
GO_HEADERS: dict[str, str] = FIXTURE["go_headers"]["sent"]
TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "list": list,
    "dict": dict,
    "number": (int, float),
}


async def go_request(base_url: str, method: str, path: str, body: Any = None, **headers: str) -> Reply:
    """One request as Go's net/http writes it: its headers, a JSON body, no Content-Type unless given."""
    url = urlsplit(base_url)
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    lines = [f"{method} {url.path.rstrip('/')}{path} HTTP/1.1", f"Host: {url.netloc}"]
    lines += [f"{k}: {v}" for k, v in {**GO_HEADERS, **headers}.items()]
    if body is not None or method == "POST":
        lines.append(f"Content-Length: {len(payload)}")
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        reply, _ = await asyncio.wait_for(read_reply(reader), timeout=30)
        return reply
    finally:
        writer.close()


def check_reads(name: str, answer: Any, reads: dict[str, str]) -> None:
    """Every field the Go struct decodes is there with a type `encoding/json` accepts."""
    assert isinstance(answer, dict), f"{name}: not an object: {answer!r}"
    for field, kind in reads.items():
        assert field in answer, f"{name}: no {field!r} in {answer}"
        assert isinstance(answer[field], TYPES[kind]), f"{name}: {field} is {answer[field]!r}, not {kind}"


def check_logprobs(name: str, logprobs: Any, top: int) -> int:
    """The completionapi.Logprob shape: token, logprob, bytes, top_logprobs (as many as asked)."""
    assert isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list), f"{name}: {logprobs}"
    for entry in logprobs["content"]:
        check_reads(
            name, entry, {"token": "str", "logprob": "number", "bytes": "list", "top_logprobs": "list"}
        )
        assert len(entry["top_logprobs"]) == top, f"{name}: {len(entry['top_logprobs'])} alternatives"
        for alt in entry["top_logprobs"]:
            check_reads(name, alt, {"token": "str", "logprob": "number", "bytes": "list"})
    return len(logprobs["content"])


def check_stream(name: str, body: bytes, top: int) -> None:
    """Server-sent events the API node can bill: per-token logprobs, then a usage chunk, then [DONE]."""
    events = [line[len(b"data: ") :] for line in body.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", f"{name}: the stream does not end with [DONE]"
    docs = [json.loads(e) for e in events[:-1]]
    tokens = sum(
        check_logprobs(name, c["logprobs"], top)
        for d in docs
        for c in d["choices"]
        if c.get("delta", {}).get("content")
    )
    usage = docs[-1].get("usage")
    assert docs[-1]["choices"] == [] and isinstance(usage, dict), f"{name}: no final usage chunk"
    assert usage["completion_tokens"] == tokens > 0 and usage["prompt_tokens"] > 0


async def replay(poc: str, inference: str, calls: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for call in calls:
        name = call["name"]
        base = poc if call["base"] == "poc" else inference
        reply = await go_request(
            base, call["method"], call["path"], call.get("body"), **call.get("headers", {})
        )
        assert reply.status in call["status"], f"{name}: {reply.status} {reply.body[:300]!r}"
        if call.get("stream"):
            check_stream(name, reply.body, call["logprobs"]["top"])
        elif "reads" in call:
            answer = json.loads(reply.body)
            check_reads(name, answer, call["reads"])
            for field, shape in call.get("each", {}).items():
                for item in answer[field]:
                    check_reads(f"{name} {field}[]", item, shape)
            for field, value in call.get("expect", {}).items():
                assert answer[field] == value, f"{name}: {field} is {answer[field]!r}, expected {value!r}"
            if "logprobs" in call:
                for choice in answer["choices"]:
                    assert check_logprobs(name, choice["logprobs"], call["logprobs"]["top"]) > 0
        seen.append(name)
    return seen


@pytest.fixture
async def mock_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = MockMLNodeSettings(
        versions=["v3.0.6", "v3.0.8"],
        gpu_lock_path=str(tmp_path / "gpu" / "{node}.lock"),
        model_load_s=0.1,
        model_download_s=30,
        stream_chunk_delay_s=0,
    )
    async with serve_asgi(create_app(settings)) as url:
        yield url


async def test_a_nodes_life_as_the_real_api_node_drives_it(mock_url: str) -> None:
    """Every call under the prefix the real client builds: http://host:port/{version}{segment}."""
    calls = FIXTURE["calls"]
    base = f"{mock_url}/v3.0.8"
    seen = await replay(base, base, calls)
    assert seen == [c["name"] for c in calls]


async def test_posts_without_content_type_are_read_not_refused(mock_url: str) -> None:
    """The bug this guards: FastAPI >= 0.120 answers 422 to a JSON body with no Content-Type."""
    up = {"model": "m", "dtype": "float16", "additional_args": []}
    reply = await go_request(f"{mock_url}/v3.0.8", "POST", "/api/v1/inference/up", up)
    assert reply.status == 200 and json.loads(reply.body) == {"status": "OK"}
    assert reply.headers[VERSION_HEADER] == "v3.0.8"
    # A body the real InferenceInitRequest refuses is refused here too (dtype has no default).
    missing = await go_request(f"{mock_url}/v3.0.6", "POST", "/api/v1/inference/up", {"model": "m"})
    assert missing.status == 422


async def test_the_real_health_semantics_while_a_model_loads(tmp_path: Path) -> None:
    """200 from /health and /readyz during the load; only vLLM's routes say not yet."""
    settings = MockMLNodeSettings(gpu_lock_path=str(tmp_path / "{node}.lock"), model_load_s=30)
    async with serve_asgi(create_app(settings)) as url:
        up = {"model": "m", "dtype": "float16", "additional_args": []}
        started = await go_request(url, "POST", "/api/v1/inference/up/async", up)
        assert started.status == 200
        status = json.loads((await go_request(url, "GET", "/api/v1/inference/up/status")).body)
        assert status["status"] == "in_progress"
        for path in ("/health", "/readyz"):
            assert (await go_request(url, "GET", path)).status == 200, path
        assert json.loads((await go_request(url, "GET", "/api/v1/state")).body) == {"state": "INFERENCE"}
        models = await go_request(url, "GET", "/v1/models")
        assert models.status == 503 and b"No vLLM backend available" in models.body
        await go_request(url, "POST", "/api/v1/stop")
        status = json.loads((await go_request(url, "GET", "/api/v1/inference/up/status")).body)
        assert status["status"] == "cancelled"


async def test_an_old_mlnode_without_gpu_and_model_routes_is_told_apart_by_404(mock_url: str) -> None:
    """The Go client maps 404/405 on these routes to ErrAPINotImplemented; ours must not 404."""
    for path in ("/api/v1/gpu/devices", "/api/v1/gpu/driver", "/api/v1/models/list", "/api/v1/models/space"):
        assert (await go_request(f"{mock_url}/v3.0.6", "GET", path)).status == 200, path


async def test_the_model_cache_is_shared_by_the_versions_of_a_node(tmp_path: Path) -> None:
    settings = MockMLNodeSettings(
        versions=["v3.0.6", "v3.0.8"], gpu_lock_path=str(tmp_path / "{node}.lock"), model_download_s=0.1
    )
    model = {"hf_repo": "org/m", "hf_commit": None}
    async with serve_asgi(create_app(settings)) as url:
        assert (await go_request(f"{url}/v3.0.6", "POST", "/api/v1/models/download", model)).status == 202

        async def downloaded() -> bool:
            reply = await go_request(f"{url}/v3.0.8", "POST", "/api/v1/models/status", model)
            return bool(json.loads(reply.body)["status"] == "DOWNLOADED")

        await eventually(downloaded, message="the download finished")
        listing = json.loads((await go_request(f"{url}/v3.0.8", "GET", "/api/v1/models/list")).body)
        assert listing["models"] == [{"model": model, "status": "DOWNLOADED"}]
        deleted = await go_request(
            f"{url}/v3.0.8", "DELETE", "/api/v1/models", model, **{"Content-Type": "application/json"}
        )
        assert json.loads(deleted.body)["status"] == "deleted"
        gone = await go_request(
            f"{url}/v3.0.6", "DELETE", "/api/v1/models", model, **{"Content-Type": "application/json"}
        )
        assert gone.status == 404


async def test_the_broker_passes_the_api_nodes_inference_calls_through_intact(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Through the broker (mock MLNodes behind real nginx): logprobs and the usage chunk survive."""
    inference = [c for c in FIXTURE["calls"] if c["base"] == "inference" and c["path"] != "/health"]
    async with serving_on(bus, nats_server.url, tmp_path, nodes=1) as (_stack, _registry, broker):
        calls = [{**c, "body": {**c["body"], "model": MODEL}} for c in inference]
        assert await replay(broker.url, broker.url, calls) == [c["name"] for c in inference]


async def test_a_nodes_whole_life_passes_through_the_brokers_node_endpoint(
    bus: Bus, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Every fixture call, as the Go client sends it, through `/nodes/{id}` (both URLs of the node).

    Once under the bare segment the API node's node config names, once under the versioned
    prefix its client builds (`http://host:port/{version}{segment}`); each answer decodes as the
    Go structs read it. The broker brought the node up, so the API node's life starts with a stop.
    """
    calls = FIXTURE["calls"]
    async with serving_on(bus, nats_server.url, tmp_path, nodes=1, model_load_s=0.1) as (
        stack,
        _registry,
        broker,
    ):
        for base in (f"{broker.url}/nodes/node-0", f"{broker.url}/{OLD}/nodes/node-0"):
            stopped = await go_request(base, "POST", "/api/v1/stop")
            assert stopped.status == 200, f"{base}: stop answered {stopped.status} {stopped.body[:300]!r}"
            assert await replay(base, base, calls) == [c["name"] for c in calls], base
        # Every call reached the node's current version, and through nginx the node's own instance.
        seen = stack.requests(OLD, node="node-0")
        for call in calls:
            assert any(r["route"] == call["path"] and r["method"] == call["method"] for r in seen), call
        own = {"/api/v1/state", "/health", "/v1/models"}  # what the broker itself may read on NEW
        assert not [r for r in stack.requests(NEW) if r["route"] in {c["path"] for c in calls} - own]
