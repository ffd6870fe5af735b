"""Real processes for the broker's end-to-end tests: MLNode versions behind nginx, registry, broker.

`MLNodeStack` runs one mock process per version (each serving N nodes in fleet mode, addressed
by the node's path segment) behind one real nginx, exactly as operators run two containers side
by side. The broker and the version-registry run as subprocesses, so a test can SIGKILL them.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx

from devtools.embedded_nats import free_port
from devtools.nginx_config import render_nginx_conf
from devtools.nginx_process import NginxProcess, local_proxy
from devtools.stack_env import NatsAccess, broker_env, fleet_node_configs, registry_env
from integration_tests.mlnode_procs import MockMLNodeProcess
from integration_tests.service_procs import ServiceProcess
from integration_tests.support import eventually
from shared.bus import BROKER_STREAM, Bus
from shared.events import BlockCommitted, ChainVersionObserved, UpgradeScheduled
from shared.versions import MLNodeVersion

__all__ = ["BrokerProcess", "MLNodeStack", "RegistryProcess", "ServiceProcess", "chain_switch", "serving_on"]

OLD, NEW = "v3.0.6", "v3.0.8"
MODEL = "Qwen/Qwen2.5-7B-Instruct"


def mock_process(log_dir: Path, *args: str, port: int | None = None, wait: bool = True) -> MockMLNodeProcess:
    """A mock MLNode; `port` pins the port (to bring a dead version back where nginx expects it)."""
    return MockMLNodeProcess(log_dir, *args, port=port, wait=wait)


class MLNodeStack:
    """`versions` of `nodes` MLNodes, one process per version, behind one nginx."""

    def __init__(
        self,
        tmp: Path,
        nodes: int = 1,
        versions: tuple[str, ...] = (OLD, NEW),
        *,
        model_load_s: float = 0.3,
        extra: dict[str, tuple[str, ...]] | None = None,
        routed: tuple[str, ...] | None = None,
    ) -> None:
        self.tmp = tmp
        self.nodes = nodes
        self.versions = versions
        self.model_load_s = model_load_s
        self.extra = extra or {}
        self.procs: dict[str, MockMLNodeProcess] = {}
        for version in versions:  # started side by side
            self.procs[version] = mock_process(tmp / "logs", *self._args(version), wait=False)
        try:
            for proc in self.procs.values():
                proc.wait_ready()
        except RuntimeError:
            for proc in self.procs.values():
                proc.stop()
            raise
        self.port = free_port()
        self.routed = routed or versions
        self.nginx = NginxProcess(tmp / "nginx", self._config(), [self.port])
        self.nginx.start()

    def _args(self, version: str) -> tuple[str, ...]:
        return (
            *("--version", version, "--fleet", str(self.nodes)),
            *("--gpu-lock-path", str(self.tmp / "gpu" / "{node}.lock")),
            *("--model-load-s", str(self.model_load_s), "--log-level", "WARNING"),
            *self.extra.get(version, ()),
        )

    def _config(self) -> str:
        upstreams = {v: f"127.0.0.1:{self.procs[v].port}" for v in self.versions if v in self.routed}
        server = local_proxy(self.port, upstreams)
        return render_nginx_conf([server], runtime_dir=self.tmp / "nginx", worker_processes=2)

    def node_configs(self, max_concurrent: int = 100) -> list[dict[str, Any]]:
        return fleet_node_configs(self.nodes, self.port, MODEL, max_concurrent)

    def write_nodes_file(self, max_concurrent: int = 100) -> Path:
        path = self.tmp / "node-config.json"
        path.write_text(json.dumps(self.node_configs(max_concurrent)))
        return path

    # -- looking at the mocks ---------------------------------------------------------------------

    def requests(
        self, version: str, route: str = "", method: str = "", node: str = ""
    ) -> list[dict[str, Any]]:
        params = {"route": route, "method": method, "node": node}
        resp = httpx.get(f"{self.procs[version].url}/mock/requests", params=params, timeout=10)
        return list(resp.json()["requests"])

    def instances(self, version: str) -> dict[str, dict[str, Any]]:
        resp = httpx.get(f"{self.procs[version].url}/mock/instances", timeout=10)
        return {i["node"]: i for i in resp.json()["instances"]}

    def states(self, version: str) -> dict[str, str]:
        return {node: i["state"] for node, i in self.instances(version).items()}

    def fault(self, version: str, **rule: Any) -> None:
        httpx.post(f"{self.procs[version].url}/mock/faults", json=rule, timeout=10).raise_for_status()

    def kill(self, version: str) -> int:
        proc = self.procs[version]
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(timeout=10)
        proc.stop()
        return proc.port

    def revive(self, version: str, port: int) -> None:
        self.procs[version] = mock_process(self.tmp / "logs", *self._args(version), port=port)

    def stop(self) -> None:
        """Test doubles need no graceful shutdown: SIGKILL spares waiting for held requests."""
        self.nginx.kill()
        for proc in self.procs.values():
            if proc.proc.poll() is None:
                os.kill(proc.proc.pid, signal.SIGKILL)
            proc.stop()


class RegistryProcess(ServiceProcess):
    def __init__(self, nats_url: str, log_dir: Path) -> None:
        self.port = free_port()
        super().__init__(
            "services.version_registry",
            {
                **registry_env(NatsAccess(nats_url), http_port=self.port, grpc_port=None),
                "VERSION_REGISTRY_ACK_WAIT_S": "5",
            },
            f"http://127.0.0.1:{self.port}/healthz",
            log_dir / "registry.log",
        )

    def state(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/state", timeout=5).json())


# Fast bounds for tests; each stays well above what the mocks need.
FAST_BROKER_ENV = {
    "BROKER_HANDOFF__STOP_BACKOFF_S": "0.1",
    "BROKER_HANDOFF__STOP_BACKOFF_MAX_S": "0.2",
    "BROKER_HANDOFF__STOP_ATTEMPTS": "4",
    "BROKER_HANDOFF__HEALTH_INTERVAL_S": "0.05",
    "BROKER_HANDOFF__HEALTH_TIMEOUT_S": "20",
    "BROKER_HANDOFF__DRAIN_TIMEOUT_S": "10",
    "BROKER_REQUEST_WAIT_S": "30",
    "BROKER_RECONCILE_INTERVAL_S": "30",
    "BROKER_PENDING_STOP_INTERVAL_S": "0.5",
    "BROKER_READINESS_INTERVAL_S": "0.5",
    "BROKER_ACK_WAIT_S": "5",
}


class BrokerProcess(ServiceProcess):
    def __init__(self, nats_url: str, log_dir: Path, nodes_file: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            "services.broker",
            {
                **FAST_BROKER_ENV,
                **broker_env(NatsAccess(nats_url), http_port=self.port, nodes_file=nodes_file),
                **env,
            },
            f"{self.url}/healthz",
            log_dir / "broker.log",
        )

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/upgrade/status", timeout=5).json())

    def readiness(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/upgrade/readiness", timeout=5).json())

    def all_ready_on(self, version: str) -> bool:
        nodes = self.status()["nodes"]
        return bool(nodes) and all(n["ready"] and n["version"] == version for n in nodes)


async def chain_switch(bus: Bus, *, height: int, version: str) -> None:
    """What the chain-watcher publishes for a partial upgrade applied at `height`."""
    await bus.publish(UpgradeScheduled(height=height, node_version=MLNodeVersion(version)))
    await bus.publish(BlockCommitted(height=height))


async def chain_start(bus: Bus, version: str, height: int = 1) -> None:
    """The chain-watcher's start-up snapshot: the registry adopts `version`."""
    await bus.publish(ChainVersionObserved(current_version=MLNodeVersion(version), height=height))


async def broker_refreshed(bus: Bus) -> list[dict[str, Any]]:
    """Every `broker.refreshed` stored on the stream (duplicates by Nats-Msg-Id were dropped)."""
    info = await bus.js.stream_info(BROKER_STREAM.name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(BROKER_STREAM.name, seq)
        except Exception:
            continue
        if msg.subject == "broker.refreshed":
            found.append(json.loads(msg.data or b"{}"))
    return found


async def refreshed_for(bus: Bus, version: str, within: float = 10.0) -> dict[str, Any]:
    """The one `broker.refreshed` for `version`, waited for: it follows the last outcome's KV write
    (at most `RECORD_WRITE_INTERVAL_S` later), so it can come after the nodes show ready."""
    found: list[dict[str, Any]] = []

    async def published() -> bool:
        found[:] = [r for r in await broker_refreshed(bus) if r["version"] == version]
        return bool(found)

    await eventually(published, timeout=within, interval=0.05, message=f"broker.refreshed for {version}")
    assert len(found) == 1, found
    return found[0]


@contextmanager
def running(*procs: ServiceProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


@asynccontextmanager
async def serving_on(
    bus: Bus,
    nats_url: str,
    tmp: Path,
    version: str = OLD,
    *,
    height: int = 1,
    broker_env: Mapping[str, str] | None = None,
    **stack_args: Any,
) -> AsyncIterator[tuple[MLNodeStack, RegistryProcess, BrokerProcess]]:
    """The mocks behind nginx (`stack_args` as `MLNodeStack` takes them), the registry and the
    broker (with `broker_env`), every node serving `version` from `height`; all stopped on leaving."""
    stack = MLNodeStack(tmp, **stack_args)
    registry = RegistryProcess(nats_url, tmp / "logs")
    broker = BrokerProcess(nats_url, tmp / "logs", stack.write_nodes_file(), **(broker_env or {}))
    registry.start()
    broker.start()
    try:
        await chain_start(bus, version, height)
        await eventually(lambda: broker.all_ready_on(version), timeout=20, message=f"every node on {version}")
        yield stack, registry, broker
    finally:
        broker.stop()
        registry.stop()
        stack.stop()
