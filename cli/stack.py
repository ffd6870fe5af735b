"""The embedded local stack: everything an upgrade needs, as real processes on this machine.

NATS (JetStream, per-service users), mock_chain, every node's old and new mock MLNode behind one
nginx per node, and the three services, all supervised. Ports are picked free at start and
written to `stack.json` in the run directory, so `mlnode-upgrade status` and tests can find them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cli.nats_contexts import write_contexts
from cli.stack_nats import start_nats, write_secrets
from cli.supervisor import ChildExit, ProcessSpec, Supervisor
from devtools.embedded_nats import free_port
from devtools.nginx_config import HEALTH_PATH, render_nginx_conf
from devtools.nginx_process import foreground_argv, local_proxy, prepare_runtime_dir
from devtools.processes import python_module
from devtools.stack_env import (
    BROKER,
    CHAIN_WATCHER,
    PROVISION,
    VERSION_REGISTRY,
    NatsAccess,
    broker_env,
    mock_chain_env,
    mock_mlnode_env,
    proxy_node_configs,
    registry_env,
    watcher_env,
)
from shared.nats_config import PROVISIONER_USER
from shared.versions import parse_version

__all__ = ["LocalStack", "StackConfig", "StackInfo"]

STACK_FILE = "stack.json"


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    old_version: str = "v3.0.6"
    new_version: str = "v3.0.8"
    nodes: tuple[str, ...] = ("node-1", "node-2")
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    block_time_s: float = 1.0
    voting_period_blocks: int = 5
    model_load_s: float = 2.0
    stream_chunk_delay_s: float = 0.02
    reconcile_interval_s: float = 5.0
    log_level: str = "INFO"
    nats_servers: int = 1  # 3: a routed JetStream cluster, streams and buckets with 3 replicas
    extra_env: tuple[tuple[str, str], ...] = ()  # more settings for the services, e.g. shorter timeouts

    def __post_init__(self) -> None:
        parse_version(self.old_version)
        parse_version(self.new_version)
        if self.old_version == self.new_version:
            raise ValueError("the old and the new version must differ")


@dataclass
class StackInfo:
    """Where everything listens; written to `stack.json`."""

    run_dir: str
    nats_url: str
    nats_monitor_url: str
    chain_rpc_url: str
    chain_grpc_address: str
    registry_url: str
    registry_grpc_address: str
    chain_watcher_url: str
    broker_url: str
    proxies: dict[str, str] = field(default_factory=dict)  # node -> nginx base URL
    mlnodes: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> version -> mock URL
    old_version: str = ""
    new_version: str = ""
    voting_period_blocks: int = 0
    block_time_s: float = 1.0
    secrets_dir: str = ""

    def admin_token(self) -> str:
        return (Path(self.secrets_dir) / "admin.token").read_text().strip()

    @classmethod
    def load(cls, run_dir: Path) -> StackInfo:
        path = run_dir / STACK_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no local stack at {run_dir} (start one: mlnode-upgrade dev up)"
            ) from None


class LocalStack:
    def __init__(self, config: StackConfig, on_exit: Callable[[ChildExit], None] | None = None) -> None:
        self.config = config
        self.run_dir = config.run_dir.resolve()
        self.supervisor = Supervisor(self.run_dir / "logs", on_exit=on_exit)
        self.info: StackInfo | None = None
        self._secrets_dir = self.run_dir / "secrets"
        self._nats_url: str | None = None

    # -- layout ------------------------------------------------------------------------------

    def _nats(self, user: str) -> NatsAccess:
        """`user`'s access to the stack's NATS (its own password file, the stack's replicas)."""
        assert self._nats_url is not None
        return NatsAccess(
            self._nats_url,
            user=user,
            password_file=self._secrets_dir / f"{user}.password",
            replicas=min(self.config.nats_servers, 3),
        )

    def _nats_env(self, prefix: str, user: str) -> dict[str, str]:
        return {**self._nats(user).env(prefix, self.config.log_level), **self._extra(prefix)}

    def _extra(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.config.extra_env if k.startswith(prefix)}

    # -- start / stop ------------------------------------------------------------------------

    def start(self) -> StackInfo:
        """Bring the stack up in dependency order; each step starts what needs nothing of the others
        side by side and waits until they are ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._secrets_dir = write_secrets(self.run_dir)
        nats_url, nats_monitor = self._start_nats()
        self._provision()
        chain, (rpc_url, grpc_address) = self._chain()
        mlnode_specs, mlnodes = self._mlnodes()
        registry, (registry_url, registry_grpc_address) = self._registry()
        self.supervisor.start_all((chain, *mlnode_specs, registry))  # none needs another
        proxies = self._start_nginx(mlnodes)
        watcher, watcher_url = self._watcher(rpc_url, grpc_address)
        broker, broker_url = self._broker(proxies)
        self.supervisor.start_all((watcher, broker))
        cfg = self.config
        self.info = StackInfo(
            run_dir=str(self.run_dir),
            nats_url=nats_url,
            nats_monitor_url=nats_monitor,
            chain_rpc_url=rpc_url,
            chain_grpc_address=grpc_address,
            registry_url=registry_url,
            registry_grpc_address=registry_grpc_address,
            chain_watcher_url=watcher_url,
            broker_url=broker_url,
            proxies=proxies,
            mlnodes=mlnodes,
            old_version=cfg.old_version,
            new_version=cfg.new_version,
            voting_period_blocks=cfg.voting_period_blocks,
            block_time_s=cfg.block_time_s,
            secrets_dir=str(self._secrets_dir),
        )
        write_contexts(self.run_dir, nats_url, self._secrets_dir)  # `XDG_CONFIG_HOME=<run dir> nats ...`
        (self.run_dir / STACK_FILE).write_text(json.dumps(asdict(self.info), indent=2))
        return self.info

    def _chain(self) -> tuple[ProcessSpec, tuple[str, str]]:
        """mock_chain, producing blocks on its own clock; with its RPC URL and gRPC address."""
        cfg = self.config
        rpc_port, grpc_port = free_port(), free_port()
        env = mock_chain_env(
            rpc_port=rpc_port,
            grpc_port=grpc_port,
            block_time_s=cfg.block_time_s,
            voting_period_blocks=cfg.voting_period_blocks,
            genesis_version=cfg.old_version,
            log_level=cfg.log_level,
        )
        env.update(self._extra("MOCK_CHAIN_"))
        spec, rpc_url = self._python("mock-chain", "mock_chain", env, rpc_port, "/status")
        return spec, (rpc_url, f"127.0.0.1:{grpc_port}")

    def _mlnodes(self) -> tuple[list[ProcessSpec], dict[str, dict[str, str]]]:
        """Per node, one process per version, sharing the node's GPU lock; node -> version -> URL."""
        cfg = self.config
        mlnodes: dict[str, dict[str, str]] = {}
        specs: list[ProcessSpec] = []
        gpu_lock = str(self.run_dir / "gpu" / "{node}.lock")
        for node in cfg.nodes:
            mlnodes[node] = {}
            for version in (cfg.old_version, cfg.new_version):
                port = free_port()
                env = mock_mlnode_env(
                    version=version,
                    node=node,
                    port=port,
                    gpu_lock_path=gpu_lock,
                    model_load_s=cfg.model_load_s,
                    stream_chunk_delay_s=cfg.stream_chunk_delay_s,
                    log_level=cfg.log_level,
                )
                env.update(self._extra("MOCK_MLNODE_"))
                name = f"mlnode-{node}-{version}"
                spec, mlnodes[node][version] = self._python(name, "mock_mlnode", env, port, "/livez")
                specs.append(spec)
        return specs, mlnodes

    def _start_nginx(self, mlnodes: dict[str, dict[str, str]]) -> dict[str, str]:
        """One nginx for all nodes: a server block (port) per node, as each node's `inference` host."""
        cfg = self.config
        proxies: dict[str, str] = {}
        servers = []
        for node in cfg.nodes:
            port = free_port()
            versions = (cfg.old_version, cfg.new_version)
            servers.append(local_proxy(port, {v: mlnodes[node][v].removeprefix("http://") for v in versions}))
            proxies[node] = f"http://127.0.0.1:{port}"
        nginx_dir = self.run_dir / "nginx"
        prepare_runtime_dir(nginx_dir, render_nginx_conf(servers, runtime_dir=nginx_dir))
        first_proxy = next(iter(proxies.values()))
        self.supervisor.start(
            ProcessSpec("nginx", foreground_argv(nginx_dir), ready_url=f"{first_proxy}{HEALTH_PATH}")
        )
        return proxies

    def _registry(self) -> tuple[ProcessSpec, tuple[str, str]]:
        registry_port, registry_grpc = free_port(), free_port()
        env = registry_env(
            self._nats("registry"),
            http_port=registry_port,
            grpc_port=registry_grpc,
            admin_token_file=self._admin_token_file,
            log_level=self.config.log_level,
            settings=self._extra(VERSION_REGISTRY),
        )
        spec, url = self._python("version-registry", "services.version_registry", env, registry_port)
        return spec, (url, f"127.0.0.1:{registry_grpc}")

    def _watcher(self, rpc_url: str, grpc_address: str) -> tuple[ProcessSpec, str]:
        watcher_port = free_port()
        env = watcher_env(
            self._nats("chain-watcher"),
            rpc_url=rpc_url,
            grpc_address=grpc_address,
            http_port=watcher_port,
            log_level=self.config.log_level,
            settings=self._extra(CHAIN_WATCHER),
        )
        return self._python("chain-watcher", "services.chain_watcher", env, watcher_port)

    def _broker(self, proxies: dict[str, str]) -> tuple[ProcessSpec, str]:
        nodes_file = self.run_dir / "nodes.json"
        nodes_file.write_text(json.dumps(proxy_node_configs(proxies, self.config.model), indent=2))
        broker_port = free_port()
        env = broker_env(
            self._nats("broker"),
            http_port=broker_port,
            nodes_file=nodes_file,
            admin_token_file=self._admin_token_file,
            reconcile_interval_s=self.config.reconcile_interval_s,
            log_level=self.config.log_level,
            settings=self._extra(BROKER),
        )
        return self._python("broker", "services.broker", env, broker_port)

    def _python(
        self, name: str, module: str, env: dict[str, str], port: int, ready_path: str = "/healthz"
    ) -> tuple[ProcessSpec, str]:
        """`python -m module` for the supervisor, ready when `ready_path` answers; its base URL."""
        url = f"http://127.0.0.1:{port}"
        return ProcessSpec(name, python_module(module), env=env, ready_url=f"{url}{ready_path}"), url

    @property
    def _admin_token_file(self) -> Path:
        return self._secrets_dir / "admin.token"

    def _provision(self) -> None:
        """Streams, buckets and consumers, with the provisioner's credentials, before any service."""
        env = {
            **os.environ,
            **self._nats_env(PROVISION, PROVISIONER_USER),
            **dict(self.config.extra_env),  # the services' own names, as they will read them
        }
        log_path = self.run_dir / "logs" / "provision.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            done = subprocess.run(
                python_module("cli", "nats", "provision"),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"provisioning failed (exit {done.returncode}); see {log_path}")

    def _start_nats(self) -> tuple[str, str]:
        """NATS with a user per service (one server, or a routed cluster); its URL(s), first monitor."""
        urls, monitors = start_nats(
            self.supervisor, self.run_dir, self._secrets_dir, self.config.nats_servers
        )
        self._nats_url = ",".join(urls)
        return self._nats_url, monitors[0]

    def pid(self, name: str) -> int:
        """The pid of one supervised process (e.g. `broker`, `nats-1`, `mlnode-node-1-v3.0.6`)."""
        pids = self.supervisor.pids()
        if name not in pids:
            raise KeyError(f"{name} is not running; running: {sorted(pids)}")
        return pids[name]

    def check(self) -> list[ChildExit]:
        return self.supervisor.check()

    def stop(self) -> None:
        self.supervisor.stop_all()
        stack_file = self.run_dir / STACK_FILE
        stack_file.unlink(missing_ok=True)

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
