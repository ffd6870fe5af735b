"""Helpers for the mock chain and chain-watcher tests: the chain's control API, the CHAIN stream
as a list, the mock chain and the watcher in-process or as processes that can be SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from devtools.embedded_nats import free_port
from devtools.processes import ChildProcess, python_module
from integration_tests.conftest import REPO_ROOT
from mock_chain.gov import GOV_MODULE_ADDRESS
from mock_chain.server import MockChainServer
from mock_chain.settings import MockChainSettings
from services.chain_watcher.service import ChainWatcher
from services.chain_watcher.settings import ChainWatcherSettings
from shared.bus import CHAIN_STREAM, Bus
from shared.chain_status import parse_status_reply
from shared.settings import NatsSettings

__all__ = [
    "ChainControl",
    "ChainEndpoint",
    "ChainProcess",
    "StreamMessage",
    "StreamReader",
    "WatcherProcess",
    "partial_upgrade_proposal",
    "running_chain",
    "running_watcher",
    "watcher_settings",
]


def partial_upgrade_proposal(*plans: tuple[int, str], title: str = "MLNode upgrade") -> dict[str, Any]:
    """A submit-proposal document with one MsgCreatePartialUpgrade per (height, version)."""
    return {
        "messages": [
            {
                "@type": "/inference.inference.MsgCreatePartialUpgrade",
                "authority": GOV_MODULE_ADDRESS,
                "height": str(height),
                "nodeVersion": version,
                "apiBinariesJson": "",
            }
            for height, version in plans
        ],
        "metadata": "",
        "deposit": "10000000ngonka",
        "title": title,
        "summary": "switch the MLNodes",
        "expedited": False,
    }


@asynccontextmanager
async def running_chain(
    *, voting_period_blocks: int = 3, block_time_s: float = 0.0
) -> AsyncIterator[MockChainServer]:
    settings = MockChainSettings(
        rpc_port=0, grpc_port=0, block_time_s=block_time_s, voting_period_blocks=voting_period_blocks
    )
    async with MockChainServer(settings) as server:
        yield server


class ChainEndpoint(Protocol):
    """Where a chain node answers: a `MockChainServer` in this process or a `ChainProcess`."""

    @property
    def rpc_url(self) -> str: ...

    @property
    def grpc_target(self) -> str: ...


class ChainProcess:
    """`python -m mock_chain` as a process of its own (blocks from `POST /advance` unless timed)."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        self.rpc_port, self.grpc_port = free_port(), free_port()
        self.log_path = log_dir / f"mock-chain-{self.rpc_port}.log"
        argv = python_module(
            "mock_chain",
            "--rpc-port",
            str(self.rpc_port),
            "--grpc-port",
            str(self.grpc_port),
            "--block-time-s",
            "0",
            *args,
        )
        self.process = ChildProcess(
            "mock-chain", argv, log_path=self.log_path, cwd=REPO_ROOT, log_mode="wb"
        ).spawn()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.popen is not None
        return self.process.popen

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def started(self) -> bool:
        assert self.proc.poll() is None, self.log()
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                return (await http.get(f"{self.rpc_url}/health")).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.process.stop(grace_s=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ChainControl:
    """The mock chain's HTTP API, for tests."""

    def __init__(self, server: ChainEndpoint) -> None:
        self.server = server
        self.http = httpx.AsyncClient(base_url=server.rpc_url, timeout=10.0)

    async def advance(self, n: int = 1) -> int:
        response = await self.http.post("/advance", params={"n": n})
        response.raise_for_status()
        return int(response.json()["height"])

    async def propose(self, *plans: tuple[int, str]) -> dict[str, Any]:
        response = await self.http.post("/gov/proposals", json=partial_upgrade_proposal(*plans))
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def height(self) -> int:
        doc = (await self.http.get("/status")).json()
        return parse_status_reply(doc).height

    async def block_hash(self, height: int) -> str:
        return str((await self.block(height))["block_id"]["hash"])

    async def block(self, height: int) -> dict[str, Any]:
        """The `result` of `/block?height=` (as the query node serves it: mind the lag fault)."""
        response = await self.http.get("/block", params={"height": height})
        assert response.status_code == 200, response.text
        return dict(response.json()["result"])

    async def lag(self, blocks: int) -> None:
        """Answer /status, /block and gRPC as a node `blocks` behind the websocket's."""
        response = await self.http.post("/mock/faults/lag", json={"blocks": blocks})
        response.raise_for_status()

    async def fault(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.http.post(f"/mock/faults/{path}", json=body)
        response.raise_for_status()
        return response.json()

    async def websockets(self) -> dict[str, int]:
        return dict((await self.http.get("/mock/websockets")).json())

    async def send_raw(self, text: str) -> int:
        response = await self.http.post(
            "/mock/websocket/send", content=text, headers={"content-type": "text/plain"}
        )
        response.raise_for_status()
        return int(response.json()["sent"])

    async def aclose(self) -> None:
        await self.http.aclose()


@dataclass(frozen=True)
class StreamMessage:
    seq: int
    subject: str
    payload: dict[str, Any]
    msg_id: str | None
    time: datetime | None = None  # when JetStream stored it


class StreamReader:
    """The CHAIN stream as a growing list; `refresh` reads only what is new."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.messages: list[StreamMessage] = []
        self._next = 1

    async def refresh(self) -> list[StreamMessage]:
        info = await self.bus.js.stream_info(CHAIN_STREAM.name)
        for seq in range(max(self._next, info.state.first_seq or 1), info.state.last_seq + 1):
            msg = await self.bus.js.get_msg(CHAIN_STREAM.name, seq)
            headers = msg.headers or {}
            self.messages.append(
                StreamMessage(seq, msg.subject, json.loads(msg.data), headers.get("Nats-Msg-Id"), msg.time)
            )
        self._next = info.state.last_seq + 1
        return self.messages

    def of(self, subject: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.messages if m.subject == subject]

    def block_heights(self) -> list[int]:
        return [int(p["height"]) for p in self.of("chain.block")]

    def seq_of(self, subject: str, **match: Any) -> int:
        for m in self.messages:
            if m.subject == subject and all(m.payload.get(k) == v for k, v in match.items()):
                return m.seq
        raise AssertionError(f"no {subject} message with {match}")


def watcher_settings(chain: ChainEndpoint, nats: NatsSettings, **overrides: Any) -> ChainWatcherSettings:
    """Fast timings for tests: short backoff and polling, small timeouts; periodic version
    snapshots only when a test asks for them (they would add `chain.version` messages at heights
    the tests do not expect)."""
    values: dict[str, Any] = {
        "rpc_url": chain.rpc_url,
        "grpc_address": chain.grpc_target,
        "nats": nats,
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 1.0,
        "poll_interval_s": 0.2,
        "status_check_interval_s": 0.5,
        "request_timeout_s": 2.0,
        "publish_retry_s": 5.0,
        "http_port": 0,
        "version_snapshot_interval_s": 3600.0,
    }
    values.update(overrides)
    return ChainWatcherSettings(**values)


@asynccontextmanager
async def running_watcher(settings: ChainWatcherSettings) -> AsyncIterator[ChainWatcher]:
    watcher = ChainWatcher(settings)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class WatcherProcess:
    """`python -m services.chain_watcher` configured through its environment, killable at any moment."""

    def __init__(self, chain: ChainEndpoint, nats_url: str, log_dir: Path, **env: str) -> None:
        self.ops_port = free_port()
        self.log_path = log_dir / f"chain-watcher-{self.ops_port}.log"
        environment = {
            "CHAIN_WATCHER_RPC_URL": chain.rpc_url,
            "CHAIN_WATCHER_GRPC_ADDRESS": chain.grpc_target,
            "CHAIN_WATCHER_NATS__URL": nats_url,
            "CHAIN_WATCHER_HTTP_PORT": str(self.ops_port),
            "CHAIN_WATCHER_RECONNECT_INITIAL_S": "0.2",
            "CHAIN_WATCHER_POLL_INTERVAL_S": "0.2",
            "CHAIN_WATCHER_STATUS_CHECK_INTERVAL_S": "0.5",
            "CHAIN_WATCHER_VERSION_SNAPSHOT_INTERVAL_S": "3600",  # periodic snapshots when asked for
            **env,
        }
        self.process = ChildProcess(
            "chain-watcher",
            python_module("services.chain_watcher"),
            log_path=self.log_path,
            env=environment,
            cwd=REPO_ROOT,
            log_mode="wb",
        ).spawn()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.popen is not None
        return self.process.popen

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(grace_s=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
