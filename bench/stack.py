"""The benchmarks' test bed: the real stack as processes, started together, stopped together.

`BenchStack` starts nats-server (JetStream), mock_chain (blocks only on `POST /advance`), one
mock MLNode process per version serving every node in fleet mode, one nginx in front of them
(the node's path segment selects the virtual node), the version-registry, the chain-watcher and
a broker: ours, or the baseline that behaves like the original implementation. Each service's
environment comes from `devtools.stack_env`, as for `dev up` and the integration tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import httpx

from bench.events import EventLog
from bench.ports import NEW, OLD
from bench.procfs import cpu_seconds, rss_mib
from bench.procs import Procs
from bench.stack_calls import StackCalls
from bench.stack_config import MODEL, StackConfig
from bench.waiting import BenchError
from devtools.embedded_nats import find_nats_server
from devtools.nginx_config import HEALTH_PATH, render_nginx_conf
from devtools.nginx_process import foreground_argv, local_proxy, prepare_runtime_dir
from devtools.processes import python_module
from devtools.stack_env import (
    NatsAccess,
    broker_env,
    fleet_node_configs,
    mock_chain_env,
    registry_env,
    watcher_env,
)

__all__ = ["NEW", "OLD", "BenchStack"]

# Every benchmark but staged_switch measures the switch at the height itself (every node at
# once); staged_switch sets the share it measures.
ALL_AT_ONCE = {"BROKER_STAGING__SHARE": "0"}


class BenchStack(StackCalls):
    """The whole stack for one benchmark run; `async with BenchStack(cfg) as stack:`."""

    def __init__(self, config: StackConfig) -> None:
        super().__init__()
        self.cfg = config
        self.run_dir = config.run_dir.resolve()
        self.procs = Procs(self.run_dir / "logs")
        self.events = EventLog()
        self.http = httpx.AsyncClient(timeout=30.0)

    # -- start / stop -----------------------------------------------------------------------

    async def __aenter__(self) -> BenchStack:
        try:
            try:
                await asyncio.to_thread(self._start_processes)
            except BenchError as exc:
                if "Address already in use" not in str(exc):
                    raise
                # Another program took a port between our pick and the bind: once more, new ports.
                await asyncio.to_thread(self.procs.stop_all)
                self.procs = Procs(self.run_dir / "logs")
                self.allocate_ports()
                await asyncio.to_thread(self._start_processes)
            await self.events.start(self.nats_url)
            if self.cfg.chain:
                await self.advance(1)  # a first block, so the chain-watcher has a height to report
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.events.close()
        await self.http.aclose()
        await asyncio.to_thread(self.procs.stop_all, 5.0, self.cfg.profile)

    def _start_processes(self) -> None:
        """Spawn everything the config asks for, then wait for all of it together."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        self._start_nats()
        self._provision()
        if self.cfg.mlnodes:
            self._start_mlnodes()
            self._start_nginx()
        if self.cfg.chain:
            self._start_chain()
        if self.cfg.registry:
            self._start_registry()
        self._start_broker()
        self.procs.wait_ready()

    def _start_nats(self) -> None:
        self.procs.spawn(
            "nats",
            [
                find_nats_server(),
                *("--jetstream", "--store_dir", str(self.run_dir / "nats")),
                *("--addr", "127.0.0.1", "--port", str(self.nats_port)),
                *("--http_port", str(self.nats_monitor), "--server_name", "bench"),
            ],
            ready_url=f"http://127.0.0.1:{self.nats_monitor}/healthz?js-enabled-only=true",
        )

    def _provision(self) -> None:
        """Streams, buckets and consumers before the services, as in production."""
        subprocess.run(
            python_module("cli", "nats", "provision", "--url", self.nats_url),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _start_mlnodes(self) -> None:
        cfg = self.cfg
        gpu_lock = str(self.run_dir / "gpu" / "{node}.lock")
        for version, port in self.mock_ports.items():
            self.procs.spawn(
                f"mlnode-{version}",
                [
                    *self._python(f"mlnode-{version}", "mock_mlnode"),
                    *("--port", str(port), "--version", version),
                    *("--fleet", str(cfg.nodes), "--gpu-lock-path", gpu_lock),
                    *("--model-load-s", str(cfg.model_load_s)),
                    *("--completion-delay-s", str(cfg.completion_delay_s), "--log-level", "WARNING"),
                ],
                env={"MOCK_MLNODE_REQUEST_LOG_LIMIT": "200000"},
                ready_url=f"http://127.0.0.1:{port}/mock/instances",
            )

    def _start_nginx(self) -> None:
        nginx_dir = self.run_dir / "nginx"
        server = local_proxy(self.nginx_port, {v: f"127.0.0.1:{port}" for v, port in self.mock_ports.items()})
        conf = render_nginx_conf(
            [server],
            runtime_dir=nginx_dir,
            worker_processes=self.cfg.nginx_workers,
            # The broker keeps a connection or more per node and nginx one more per request
            # upstream: a 5,000-node fleet behind this one nginx overran 4,096.
            worker_connections=max(4096, 3 * self.cfg.nodes),
        )
        prepare_runtime_dir(nginx_dir, conf)
        self.procs.spawn("nginx", foreground_argv(nginx_dir), ready_url=f"{self.nginx_url}{HEALTH_PATH}")

    @property
    def _nats(self) -> NatsAccess:
        return NatsAccess(self.nats_url)

    def _start_chain(self) -> None:
        """mock_chain (blocks on demand only) and the chain-watcher that reads it."""
        self.procs.spawn(
            "mock-chain",
            self._python("mock-chain", "mock_chain"),
            env=mock_chain_env(
                rpc_port=self.rpc_port,
                grpc_port=self.grpc_port,
                block_time_s="0",
                voting_period_blocks=1,
                genesis_version=OLD,
                log_level="WARNING",
                state_retention_blocks=100000,
            ),
            ready_url=f"{self.chain_url}/status",
        )
        self.procs.spawn(
            "chain-watcher",
            self._python("chain-watcher", "services.chain_watcher"),
            env=watcher_env(
                self._nats,
                rpc_url=self.chain_url,
                grpc_address=f"127.0.0.1:{self.grpc_port}",
                http_port=self.watcher_port,
                log_level="INFO",
            ),
            ready_url=f"{self.watcher_url}/healthz",
        )

    def _start_registry(self) -> None:
        self.procs.spawn(
            "version-registry",
            self._python("version-registry", "services.version_registry"),
            env=registry_env(
                self._nats, http_port=self.registry_port, grpc_port=self.registry_grpc, log_level="INFO"
            ),
            ready_url=f"{self.registry_url}/healthz",
        )

    def _start_broker(self) -> None:
        """Ours, the baseline that behaves like the original implementation, or none."""
        cfg = self.cfg
        nodes_file = self.run_dir / "node-config.json"
        nodes_file.write_text(json.dumps(self.node_configs()))
        if cfg.broker == "ours":
            self.procs.spawn(
                "broker",
                self._python("broker", "services.broker"),
                env={
                    **broker_env(
                        self._nats, http_port=self.broker_port, nodes_file=nodes_file, log_level="INFO"
                    ),
                    **ALL_AT_ONCE,
                    **cfg.broker_env,
                },
                ready_url=f"{self.broker_url}/healthz",
            )
        elif cfg.broker == "baseline":
            self.procs.spawn(
                "baseline-broker",
                self._python("baseline-broker", "bench.baselines.original_broker"),
                env={
                    "BASELINE_PORT": str(self.broker_port),
                    "BASELINE_NODES_FILE": str(nodes_file),
                    "BASELINE_NATS_URL": self.nats_url,
                    "BASELINE_REGISTRY_URL": self.registry_url,
                    "BASELINE_REFRESH_TICK_S": str(cfg.baseline_refresh_s),
                    "BASELINE_STATUS_TICK_S": str(cfg.baseline_status_s),
                },
                ready_url=f"{self.broker_url}/healthz",
            )

    def _python(self, name: str, module: str) -> list[str]:
        if name in self.cfg.profile:
            return [sys.executable, "-m", "bench.cpu_profile", str(self.run_dir / f"{name}.prof"), module]
        return python_module(module)

    def node_configs(self) -> list[dict[str, object]]:
        """The broker's node file (real node-config format); one fleet node per path segment."""
        return fleet_node_configs(self.cfg.nodes, self.nginx_port, MODEL, self.cfg.max_concurrent)

    def check_alive(self) -> None:
        dead = self.procs.dead()
        if dead:
            raise BenchError(f"processes died: {dead}\n" + "\n".join(self.procs.tail(n) for n in dead))

    # -- what the processes use -------------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by every running process of the stack (nginx with its workers)."""
        used = {
            name: cpu_seconds(proc.pid, tree=name == "nginx")
            for name, proc in self.procs.procs.items()
            if proc.alive()
        }
        return {name: value for name, value in used.items() if value is not None}

    def rss(self) -> dict[str, float | None]:
        """Resident MiB of every process of the stack (nginx with its workers)."""
        return {
            name: rss_mib(proc.pid, tree=name == "nginx")
            for name, proc in self.procs.procs.items()
            if proc.alive()
        }
