"""What a benchmark asks of a running stack over HTTP: the chain, the registry, the mocks, the broker.

Kept apart from `bench.stack.BenchStack`, which owns the processes, so a benchmark's questions
read in one place.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench.ports import StackAddresses
from bench.stack_config import StackConfig
from bench.stats import parse_rfc3339
from bench.waiting import BenchError, wait_for
from cli.propose import build_proposal
from shared.chain_status import parse_status_reply

__all__ = ["StackCalls"]


class StackCalls(StackAddresses):
    """The calls; `http` and `cfg` come from the stack that runs the processes."""

    http: httpx.AsyncClient
    cfg: StackConfig

    # -- the chain --------------------------------------------------------------------------

    async def call_json(self, method: str, url: str, **kwargs: Any) -> Any:
        resp = await self.http.request(method, url, **kwargs)
        if resp.status_code >= 400:
            raise BenchError(f"{method} {url} answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    async def height(self) -> int:
        status = await self.call_json("GET", f"{self.chain_url}/status")
        return parse_status_reply(status).height

    async def advance(self, n: int = 1) -> None:
        await self.call_json("POST", f"{self.chain_url}/advance", params={"n": n})

    async def block_time(self, height: int) -> float:
        block = await self.call_json("GET", f"{self.chain_url}/block", params={"height": height})
        return parse_rfc3339(block["result"]["block"]["header"]["time"])

    async def registry_state(self) -> dict[str, Any]:
        return dict(await self.call_json("GET", f"{self.registry_url}/state"))

    async def schedule(self, version: str) -> int:
        """Propose `version`, pass the vote, and stop one block before its height; returns the height.

        Returns only when the registry holds the plan and has seen height-1, so the next block
        is the only thing left between the chain and the switch.
        """
        height = await self.height() + 3  # the vote ends at +1 (voting period 1 block)
        proposal = build_proposal(
            height=height,
            node_version=version,
            title=f"bench upgrade to {version} at {height}",
            summary="bench",
            deposit="10000000ngonka",
        )
        await self.call_json("POST", f"{self.chain_url}/gov/proposals", json=proposal)
        await self.advance(2)

        async def plan_pending() -> bool:
            state = await self.registry_state()
            return state["last_height"] >= height - 1 and any(
                p["height"] == height and p["node_version"] == version for p in state["pending"]
            )

        await wait_for(plan_pending, 30, f"the registry to hold the plan for {version} at {height}")
        return height

    # -- the mocks --------------------------------------------------------------------------

    async def mock_requests(self, version: str, route: str, method: str = "") -> list[dict[str, Any]]:
        body = await self.call_json(
            "GET", f"{self.mock_url(version)}/mock/requests", params={"route": route, "method": method}
        )
        return list(body["requests"])

    async def clear_mock_requests(self) -> None:
        for version in self.mock_ports:
            await self.call_json("DELETE", f"{self.mock_url(version)}/mock/requests")

    async def nodes_ready_at(self, version: str, since: float) -> dict[str, float]:
        """Per node: when it first answered healthy after its model finished loading (mock clock).

        Pairs each node's successful `inference/up` after `since` with its first 200 on
        `/v1/models` after that, which is the answer on which the broker marks the node ready.
        """
        ups: dict[str, float] = {}
        for r in await self.mock_requests(version, "/api/v1/inference/up", "POST"):
            if r["status"] == 200 and r["ts"] >= since:
                ups[r["node"]] = min(ups.get(r["node"], r["ts"]), r["ts"])
        ready: dict[str, float] = {}
        for r in await self.mock_requests(version, "/v1/models", "GET"):
            up = ups.get(r["node"])
            if up is not None and r["status"] == 200 and r["ts"] >= up:
                ready[r["node"]] = min(ready.get(r["node"], r["ts"]), r["ts"])
        return ready

    # -- the broker -------------------------------------------------------------------------

    async def broker_status(self) -> dict[str, Any]:
        path = "/upgrade/status" if self.cfg.broker == "ours" else "/status"
        return dict(await self.call_json("GET", f"{self.broker_url}{path}"))

    async def all_serving(self, version: str, in_pow: frozenset[str] = frozenset()) -> bool:
        """Every node serves `version`; those in `in_pow` are in PoC on it instead (not serving)."""
        try:
            status = await self.broker_status()
        except (httpx.HTTPError, BenchError):
            return False
        nodes = status.get("nodes", [])

        def settled(n: dict[str, Any]) -> bool:
            if n.get("version") != version:
                return False
            return n.get("phase") == "pow" if n.get("id") in in_pow else bool(n.get("ready"))

        return len(nodes) == self.cfg.nodes and all(settled(n) for n in nodes)

    async def settle(
        self, version: str, timeout_s: float = 120.0, in_pow: frozenset[str] = frozenset()
    ) -> None:
        """Every node serves `version` (or is in PoC on it, for `in_pow`) and (for our broker) the
        registry recorded it as last used."""
        await wait_for(
            lambda: self.all_serving(version, in_pow), timeout_s, f"every node serving {version}", 0.2
        )
        if self.cfg.broker == "ours":

            async def recorded() -> bool:
                return (await self.registry_state()).get("last_used_version") == version

            await wait_for(recorded, timeout_s, f"the registry recording {version} as last used", 0.1)
