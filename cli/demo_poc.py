"""The demo's proof-of-compute round: one node in PoC through the broker's node endpoint, across the switch.

The demo plays the API node for that node, as the real one drives a PoC phase: `stop`, then
`pow/init/generate` with the round's parameters, then `pow/status` and `pow/validate` calls all
through the phase, all sent to the node's one stable address `/nodes/{node}` with the version the
client believes in, as the Go client builds its URLs. The switch lands in the middle of the phase;
every call must be answered, and the new version must end in the same phase with the same round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from devtools.api_node_poc import init_body, proof_batch
from services.broker.endpoint_paths import node_segment

__all__ = ["PocRound"]

POC_CALL_INTERVAL_S = 0.25


@dataclass
class PocRound:
    """One node's PoC phase, driven through the broker; what it was answered is kept for the summary."""

    broker_url: str
    node: str
    version: str  # the version the client puts in its URLs (the old one: it does not know better)
    sent: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    block_height: int = 0

    @property
    def base(self) -> str:
        return f"{self.broker_url}/{self.version}{node_segment(self.node)}/api/v1"

    async def start(self, client: httpx.AsyncClient, block_height: int) -> None:
        """Stop, then init generate, as the real API node starts a PoC phase; refused answers raise."""
        self.block_height = block_height
        for route, body in (("stop", None), ("pow/init/generate", init_body(block_height))):
            r = await client.post(f"{self.base}/{route}", json=body, timeout=60.0)
            if r.status_code != 200:
                raise RuntimeError(f"{self.node}: {route} answered {r.status_code}: {r.text[:200]}")

    async def _call(self, client: httpx.AsyncClient, n: int) -> None:
        self.sent += 1
        try:
            if n % 2:
                batch = proof_batch(self.block_height, [n, n + 1])
                r = await client.post(f"{self.base}/pow/validate", json=batch, timeout=120.0)
                if r.status_code != 200:
                    raise RuntimeError(f"pow/validate answered {r.status_code}: {r.text[:200]}")
            else:
                r = await client.get(f"{self.base}/pow/status", timeout=120.0)
                status = r.json().get("status") if r.status_code == 200 else None
                if status != "GENERATING":
                    raise RuntimeError(f"pow/status answered {r.status_code} {r.text[:200]}")
            self.by_version[r.headers.get("x-broker-version", "?")] += 1
        except (httpx.HTTPError, ValueError, RuntimeError) as exc:
            self.failures.append(f"{self.node} PoC: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def calls(self, client: httpx.AsyncClient) -> AsyncIterator[None]:
        """PoC calls through the phase, on schedule; on leaving, those in flight finish."""
        stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def loop() -> None:
            n = 0
            next_at = time.monotonic()
            while not stop.is_set():
                task = asyncio.create_task(self._call(client, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                next_at += POC_CALL_INTERVAL_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing the calls

        runner = asyncio.create_task(loop())
        try:
            yield
        finally:
            stop.set()
            await runner
            if tasks:
                await asyncio.wait(tasks)

    async def carried(self, client: httpx.AsyncClient, mlnode_url: str) -> str | None:
        """None when the new version (its own URL, not the broker's) runs the PoC generate phase."""
        try:
            state = (await client.get(f"{mlnode_url}/api/v1/state", timeout=5.0)).json()
            pow_status = (await client.get(f"{mlnode_url}/api/v1/pow/status", timeout=5.0)).json()
        except (httpx.HTTPError, ValueError) as exc:
            return f"{self.node}: the new version's state could not be read: {exc}"
        if state.get("state") != "POW" or pow_status.get("status") != "GENERATING":
            return f"{self.node}: the new version is {state}, PoC {pow_status}, not in the generate phase"
        return None
