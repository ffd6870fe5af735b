"""An upgrade on the whole local stack, with a hand on every process: the chaos suite's harness.

Blocks come only when the test advances the chain, so each fault lands in a known phase. A load
generator sends inference through the broker the whole time and keeps account of which failures
are allowed (requests in flight on a broker at the moment it is killed, broken off at the
connection) and which are not.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.propose import build_proposal
from cli.stack import LocalStack, StackConfig, StackInfo
from integration_tests.support import eventually
from shared.chain_status import parse_status_reply

__all__ = ["ChaosStack", "Load", "Outcome"]

OLD, NEW = "v3.0.6", "v3.0.8"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}

# Short client timeouts and retry intervals, so a frozen or dead peer costs seconds, not minutes.
CHAOS_ENV = (
    ("BROKER_CLIENT__STOP_S", "3"),
    ("BROKER_CLIENT__MANAGEMENT_S", "3"),
    ("BROKER_HANDOFF__STOP_BACKOFF_MAX_S", "1"),
    ("BROKER_PENDING_STOP_INTERVAL_S", "1"),
    ("BROKER_ACK_WAIT_S", "3"),
    ("VERSION_REGISTRY_ACK_WAIT_S", "3"),
)


@dataclass
class Load:
    """Open-loop requests through the broker; failures are judged against the kill windows.

    A request is in flight from the moment the load issues it (creates its task) until its answer
    is in: a task created just before a kill may only start running after it, and then sends on a
    pooled keep-alive connection to the dying broker. Only a failure at the connection
    (`httpx.TransportError`) of a request in flight at a kill is allowed: a dead broker sends no
    status code, so a 5xx is the broker's own answer and always counts.
    """

    broker_url: str
    rps: float = 20.0
    ok: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)
    in_flight: set[int] = field(default_factory=set)
    broken_off: set[int] = field(default_factory=set)  # failed at the connection, not with a status
    _paused: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._paused.set()  # set = running
        self._task = asyncio.create_task(self._run())

    def broker_going_down(self) -> None:
        """Requests in flight now may fail; no new ones are sent until `broker_back`."""
        self._paused.clear()
        self.allowed |= self.in_flight

    def broker_back(self) -> None:
        self._paused.set()

    async def stop(self) -> None:
        self._stop.set()
        self._paused.set()
        if self._task is not None:
            await self._task

    def _is_allowed(self, rid: int) -> bool:
        return rid in self.allowed and rid in self.broken_off

    @property
    def allowed_failures(self) -> list[str]:
        return [f"#{rid}: {why}" for rid, why in self.failures if self._is_allowed(rid)]

    @property
    def unexpected_failures(self) -> list[str]:
        return [f"#{rid}: {why}" for rid, why in self.failures if not self._is_allowed(rid)]

    async def _one(self, client: httpx.AsyncClient, rid: int) -> None:
        """Send request `rid`, which `_run` has already put in flight."""
        try:
            r = await client.post(f"{self.broker_url}/v1/chat/completions", json=CHAT)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            version = r.headers.get("x-mlnode-version", "?")
            self.ok[version] = self.ok.get(version, 0) + 1
        except Exception as exc:  # any failure is recorded and judged later
            if isinstance(exc, httpx.TransportError):
                self.broken_off.add(rid)
            self.failures.append((rid, f"{type(exc).__name__}: {exc}"))
        finally:
            self.in_flight.discard(rid)

    async def _run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=60.0) as client:
            for rid in itertools.count():
                if self._stop.is_set():
                    break
                await self._paused.wait()
                # In flight as of now, not as of the task's first step: `broker_going_down` may
                # run between the two, and the request still goes to the broker being killed.
                self.in_flight.add(rid)
                task = asyncio.create_task(self._one(client, rid))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1.0 / self.rps)  # pacing the load
            if tasks:
                await asyncio.wait(tasks)


@dataclass
class Outcome:
    scenario: str
    converged: bool
    details: dict[str, Any]


class ChaosStack:
    def __init__(self, run_dir: Path, *, nats_servers: int = 1, model_load_s: float = 1.0) -> None:
        self.stack = LocalStack(
            StackConfig(
                run_dir=run_dir,
                block_time_s=0,  # blocks only when the test advances the chain
                voting_period_blocks=1,
                model_load_s=model_load_s,
                reconcile_interval_s=2.0,
                nats_servers=nats_servers,
                extra_env=CHAOS_ENV,
            )
        )
        self.client = httpx.AsyncClient(timeout=10.0)

    @property
    def info(self) -> StackInfo:
        assert self.stack.info is not None
        return self.stack.info

    async def start(self) -> None:
        await asyncio.to_thread(self.stack.start)
        await self.advance(1)  # the chain-watcher's first snapshot syncs the registry
        await self.wait_serving(OLD)

    async def close(self) -> None:
        await self.client.aclose()
        await asyncio.to_thread(self.stack.stop)

    # -- the chain -----------------------------------------------------------------------------

    async def height(self) -> int:
        status = (await self.client.get(f"{self.info.chain_rpc_url}/status")).json()
        return parse_status_reply(status).height

    async def advance(self, n: int = 1) -> int:
        r = await self.client.post(f"{self.info.chain_rpc_url}/advance", params={"n": n})
        r.raise_for_status()
        return await self.height()

    async def propose(self, blocks_ahead: int = 3) -> int:
        target = await self.height() + 1 + blocks_ahead  # voting period 1 block
        proposal = build_proposal(
            height=target, node_version=NEW, title="chaos", summary="chaos", deposit="1ngonka"
        )
        r = await self.client.post(f"{self.info.chain_rpc_url}/gov/proposals", json=proposal)
        r.raise_for_status()
        return target

    async def advance_to(self, height: int) -> None:
        while await self.height() < height:
            await self.advance(1)

    # -- observing -----------------------------------------------------------------------------

    async def _json(self, url: str) -> Any:
        try:
            return (await self.client.get(url, timeout=2.0)).json()
        except (httpx.HTTPError, ValueError):
            return None

    async def registry_state(self) -> dict[str, Any]:
        return await self._json(f"{self.info.registry_url}/state") or {}

    async def wait_serving(self, version: str, within_s: float = 60.0) -> None:
        async def serving() -> bool:
            status = await self._json(f"{self.info.broker_url}/upgrade/status")
            nodes = (status or {}).get("nodes", [])
            return len(nodes) == len(self.info.proxies) and all(
                n.get("ready") and n.get("version") == version for n in nodes
            )

        await eventually(serving, timeout=within_s, interval=0.1, message=f"every node serving {version}")

    async def wait_registry(self, current: str, last_used: str | None = None, within_s: float = 60.0) -> None:
        async def there() -> bool:
            state = await self.registry_state()
            return state.get("current_version") == current and (
                last_used is None or state.get("last_used_version") == last_used
            )

        await eventually(there, timeout=within_s, interval=0.1, message=f"registry current={current}")

    async def new_version_loading(self) -> bool:
        for versions in self.info.mlnodes.values():
            data = await self._json(f"{versions[NEW]}/mock/instances")
            if any(i.get("inference") == "in_progress" for i in (data or {}).get("instances", [])):
                return True
        return False

    # -- faults --------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        os.kill(self.stack.pid(name), signal.SIGKILL)

    def hold(self, name: str) -> None:
        """Keep a killed process down (no supervisor restart) until `release`."""
        self.stack.supervisor.set_restart(name, False)

    def release(self, name: str) -> None:
        self.stack.supervisor.set_restart(name, True)

    def freeze(self, name: str) -> None:
        os.kill(self.stack.pid(name), signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        os.kill(self.stack.pid(name), signal.SIGCONT)

    async def wait_back(self, name: str, health_url: str, within_s: float = 30.0) -> None:
        """Let the supervisor restart `name` and wait until it answers."""

        async def back() -> bool:
            await asyncio.to_thread(self.stack.check)
            try:
                return (await self.client.get(health_url, timeout=1.0)).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(back, timeout=within_s, interval=0.1, message=f"{name} back")

    async def slow_stops(self, seconds: float) -> None:
        """The old version's stop takes `seconds`, so 'after version.changed, before the stop' is a window."""
        for versions in self.info.mlnodes.values():
            rule = {"route": "/api/v1/stop", "action": "delay", "latency_s": seconds, "times": 1}
            (await self.client.post(f"{versions[OLD]}/mock/faults", json=rule)).raise_for_status()

    # -- the verdict ---------------------------------------------------------------------------

    async def verdict(self, scenario: str, load: Load) -> Outcome:
        """Versions right, the old version stopped on every node, the new never stopped."""
        await self.wait_registry(NEW, NEW)
        await self.wait_serving(NEW)
        # The load keeps going until the new version has served a good number of requests.
        await eventually(lambda: load.ok.get(NEW, 0) >= 20, timeout=30, message=f"requests served by {NEW}")
        await load.stop()
        details: dict[str, Any] = {"nodes": {}}
        converged = True
        for node, versions in self.info.mlnodes.items():
            old_state = (await self._json(f"{versions[OLD]}/api/v1/state") or {}).get("state")
            new_state = (await self._json(f"{versions[NEW]}/api/v1/state") or {}).get("state")
            stops = await self._json(f"{versions[NEW]}/mock/requests?route=/api/v1/stop&method=POST")
            new_stops = len((stops or {}).get("requests", []))
            details["nodes"][node] = {"old": old_state, "new": new_state, "stops_sent_to_new": new_stops}
            converged &= old_state == "STOPPED" and new_state == "INFERENCE" and new_stops == 0
        details["served"] = dict(load.ok)
        details["allowed_failures"] = len(load.allowed_failures)
        details["unexpected_failures"] = load.unexpected_failures
        converged &= not load.unexpected_failures and load.ok.get(NEW, 0) > 0
        return Outcome(scenario, converged, details)


def health_url(info: StackInfo, name: str) -> str:
    return {
        "version-registry": f"{info.registry_url}/healthz",
        "chain-watcher": f"{info.chain_watcher_url}/healthz",
        "broker": f"{info.broker_url}/healthz",
    }.get(name, f"{info.nats_monitor_url}/healthz")


async def until(condition: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)  # polling a condition with a deadline
