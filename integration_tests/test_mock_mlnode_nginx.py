"""Two versions of one MLNode as separate processes behind a real nginx, as operators run them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.embedded_nats import free_port
from devtools.nginx_config import HEALTH_PATH, ProxyServer, VersionUpstream, render_nginx_conf
from devtools.nginx_process import NginxProcess
from integration_tests.mlnode_procs import MockMLNodeProcess
from mock_mlnode.app import VERSION_HEADER

UP = {"model": "Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
CHUNK_DELAY_S = 0.15
CHUNKS = 8


@dataclass
class SideBySide:
    old: MockMLNodeProcess
    new: MockMLNodeProcess
    proxy: str


@pytest.fixture(params=["upstreams", "resolver"])
def side_by_side(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SideBySide]:
    """Both config modes: upstream blocks (local stack) and run-time resolution (containers)."""
    common = [
        "--gpu-lock-path",
        str(tmp_path / "gpu" / "{node}.lock"),
        "--model-load-s",
        "0.3",
        "--stream-chunk-delay-s",
        str(CHUNK_DELAY_S),
    ]
    old = MockMLNodeProcess(tmp_path / "logs", "--version", "v3.0.6", *common)
    new = MockMLNodeProcess(tmp_path / "logs", "--version", "v3.0.8", *common)
    port = free_port()
    conf = render_nginx_conf(
        [
            ProxyServer(
                listen=port,
                listen_host="127.0.0.1",
                upstreams=[
                    VersionUpstream.parse("v3.0.6", f"127.0.0.1:{old.port}"),
                    VersionUpstream.parse("v3.0.8", f"127.0.0.1:{new.port}"),
                ],
            )
        ],
        runtime_dir=tmp_path / "nginx",
        resolver="127.0.0.1" if request.param == "resolver" else None,
    )
    nginx = NginxProcess(tmp_path / "nginx", conf, [port])
    nginx.start()
    try:
        yield SideBySide(old, new, f"http://127.0.0.1:{port}")
    finally:
        nginx.stop()
        old.stop()
        new.stop()


def calls(proc: MockMLNodeProcess) -> list[tuple[str, str, str]]:
    records = httpx.get(f"{proc.url}/mock/requests").json()["requests"]
    return [(r["method"], r["path"], r["version"]) for r in records]


def test_paths_route_to_the_right_process_with_the_prefix_stripped(side_by_side: SideBySide) -> None:
    with httpx.Client(base_url=side_by_side.proxy) as client:
        assert client.get(HEALTH_PATH).text == "ok\n"
        assert client.get("/v3.0.6/api/v1/state").headers[VERSION_HEADER] == "v3.0.6"
        assert client.get("/v3.0.8/api/v1/state").headers[VERSION_HEADER] == "v3.0.8"
        assert client.get("/api/v1/state").headers[VERSION_HEADER] == "v3.0.6"  # default location
        assert client.get("/v3.0.8/health").headers[VERSION_HEADER] == "v3.0.8"
    # Each process saw unprefixed paths: nginx stripped /{version}/.
    assert calls(side_by_side.old) == [("GET", "/api/v1/state", "v3.0.6")] * 2
    assert calls(side_by_side.new) == [("GET", "/api/v1/state", "v3.0.8"), ("GET", "/health", "v3.0.8")]


def test_one_gpu_across_versions_until_the_old_one_is_stopped(side_by_side: SideBySide) -> None:
    with httpx.Client(base_url=side_by_side.proxy, timeout=10) as client:
        assert client.post("/v3.0.6/api/v1/inference/up", json=UP).status_code == 200
        refused = client.post("/v3.0.8/api/v1/inference/up", json=UP)
        assert refused.status_code == 500  # as the real MLNode's load dies in CUDA
        assert client.get("/v3.0.8/api/v1/state").json() == {"state": "STOPPED"}

        assert client.post("/v3.0.6/api/v1/stop").json() == {"status": "OK"}
        assert client.post("/v3.0.8/api/v1/inference/up", json=UP).status_code == 200
        chat = client.post("/v3.0.8/v1/chat/completions", json=CHAT)
        assert chat.headers[VERSION_HEADER] == "v3.0.8"
        assert "[v3.0.8]" in chat.json()["choices"][0]["message"]["content"]
        assert client.post("/v3.0.6/v1/chat/completions", json=CHAT).status_code == 503

    assert [c for c in calls(side_by_side.old) if c[0] == "POST"] == [
        ("POST", "/api/v1/inference/up", "v3.0.6"),
        ("POST", "/api/v1/stop", "v3.0.6"),
        ("POST", "/v1/chat/completions", "v3.0.6"),
    ]
    assert [c for c in calls(side_by_side.new) if c[0] == "POST"] == [
        ("POST", "/api/v1/inference/up", "v3.0.8"),
        ("POST", "/api/v1/inference/up", "v3.0.8"),
        ("POST", "/v1/chat/completions", "v3.0.8"),
    ]


def test_streaming_arrives_through_nginx_chunk_by_chunk(side_by_side: SideBySide) -> None:
    with httpx.Client(base_url=side_by_side.proxy, timeout=10) as client:
        client.post("/v3.0.8/api/v1/inference/up", json=UP)
        arrivals: list[float] = []
        started = time.monotonic()
        with client.stream("POST", "/v3.0.8/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status_code == 200
            assert resp.headers[VERSION_HEADER] == "v3.0.8"
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == CHUNKS + 3
    total = arrivals[-1]
    assert total >= CHUNK_DELAY_S * (CHUNKS + 1)  # the mock really paced the stream
    # Buffered proxying would deliver everything at the end; here the first event is early and the
    # events are spread over the whole stream.
    assert arrivals[0] < total / 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(1 for g in gaps if g >= CHUNK_DELAY_S / 2) >= CHUNKS
