"""Fleet mode: hundreds of virtual nodes in one process, each with its own state and GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration_tests.mlnode_procs import MockMLNodeProcess
from mock_mlnode.app import NODE_HEADER, VERSION_HEADER

NODES = 500
UP = {"model": "m", "dtype": "auto"}
POW = {"node_id": 0, "node_count": 1}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[MockMLNodeProcess]:
    proc = MockMLNodeProcess(
        tmp_path / "logs",
        *("--version", "v3.0.6", "--version", "v3.0.8", "--fleet", str(NODES)),
        *("--gpu-lock-path", str(tmp_path / "gpu" / "{node}.lock"), "--model-load-s", "0"),
    )
    yield proc
    proc.stop()


async def test_500_nodes_each_with_its_own_state(fleet: MockMLNodeProcess) -> None:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=fleet.url, limits=limits, timeout=30) as client:
        sem = asyncio.Semaphore(50)

        async def call(method: str, path: str, body: dict[str, object] | None = None) -> httpx.Response:
            async with sem:
                return await client.request(method, path, json=body)

        # Every third node runs inference on v3.0.6, every third PoW, the rest stay stopped.
        def plan(i: int) -> str:
            return ("INFERENCE", "POW", "STOPPED")[i % 3]

        setups = []
        for i in range(NODES):
            if plan(i) == "INFERENCE":
                setups.append(call("POST", f"/v3.0.6/node-{i}/api/v1/inference/up", UP))
            elif plan(i) == "POW":
                setups.append(call("POST", f"/v3.0.6/node-{i}/api/v1/pow/init", POW))
        assert {r.status_code for r in await asyncio.gather(*setups)} == {200}

        # Unprefixed version (as behind nginx, which strips it): the node segment still selects the node.
        states = await asyncio.gather(*(call("GET", f"/node-{i}/api/v1/state") for i in range(NODES)))
        assert [r.json()["state"] for r in states] == [plan(i) for i in range(NODES)]
        assert [r.headers[NODE_HEADER] for r in states] == [f"node-{i}" for i in range(NODES)]
        assert {r.headers[VERSION_HEADER] for r in states} == {"v3.0.6"}

        # v3.0.8 of each node has its own, stopped, state and cannot take a busy node's GPU.
        new_states = await asyncio.gather(
            *(call("GET", f"/v3.0.8/node-{i}/api/v1/state") for i in range(NODES))
        )
        assert {r.json()["state"] for r in new_states} == {"STOPPED"}
        ups = await asyncio.gather(
            *(call("POST", f"/v3.0.8/node-{i}/api/v1/inference/up", UP) for i in range(NODES))
        )
        assert [r.status_code for r in ups] == [200 if plan(i) == "STOPPED" else 500 for i in range(NODES)]

        unknown = await client.get("/v3.0.8/node-500/api/v1/state")
        assert unknown.status_code == 404
