"""The embedded local stack: everything an upgrade needs, as real processes on this machine.

NATS (JetStream, per-service users), mock_chain, every node's old and new mock MLNode behind one
nginx per node, and the three services, all supervised. Ports are picked free at start and
written to `stack.json` in the run directory, so `mlnode-upgrade status` and tests can find them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cli.supervisor import ChildExit, ProcessSpec, Supervisor
from shared.embedded_nats import find_nats_server, free_port
from shared.nats_config import PROVISIONER_USER, ClusterConfig, NatsUser, render_server_config, user_names
from shared.nginx_config import HEALTH_PATH, ProxyServer, VersionUpstream, render_nginx_conf
from shared.nginx_process import find_nginx
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

    def nats_password(self, user: str) -> Path:
        return Path(self.secrets_dir) / f"{user}.password"

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

    # -- layout ------------------------------------------------------------------------------

    def _secrets(self) -> Path:
        directory = self.run_dir / "secrets"
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        for user in user_names():
            path = directory / f"{user}.password"
            if not path.exists():
                path.write_text(secrets.token_urlsafe(24))
                path.chmod(0o600)
        token = directory / "admin.token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(24))
            token.chmod(0o600)
        return directory

    def _nats_env(self, prefix: str, user: str, url: str, secrets_dir: Path) -> dict[str, str]:
        env = {
            f"{prefix}NATS__URL": url,
            f"{prefix}NATS__USER": user,
            f"{prefix}NATS__PASSWORD_FILE": str(secrets_dir / f"{user}.password"),
            f"{prefix}NATS__REPLICAS": str(min(self.config.nats_servers, 3)),
            f"{prefix}LOG_LEVEL": self.config.log_level,
        }
        env.update(self._extra(prefix))
        return env

    def _extra(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.config.extra_env if k.startswith(prefix)}

    # -- start / stop ------------------------------------------------------------------------

    def start(self) -> StackInfo:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        secrets_dir = self._secrets()
        py = sys.executable
        sup = self.supervisor

        # NATS with a user per service (one server, or a routed cluster).
        users = [
            NatsUser(user, (secrets_dir / f"{user}.password").read_text().strip()) for user in user_names()
        ]
        nats_urls, nats_monitors = self._start_nats(users)
        nats_url = ",".join(nats_urls)
        nats_monitor = nats_monitors[0]
        self._provision(nats_url, secrets_dir)
        # The chain.
        rpc_port, grpc_port = free_port(), free_port()
        sup.start(
            ProcessSpec(
                "mock-chain",
                [py, "-m", "mock_chain"],
                env={
                    "MOCK_CHAIN_RPC_PORT": str(rpc_port),
                    "MOCK_CHAIN_GRPC_PORT": str(grpc_port),
                    "MOCK_CHAIN_BLOCK_TIME_S": str(cfg.block_time_s),
                    "MOCK_CHAIN_VOTING_PERIOD_BLOCKS": str(cfg.voting_period_blocks),
                    "MOCK_CHAIN_GENESIS_VERSION": cfg.old_version,
                    "MOCK_CHAIN_LOG_LEVEL": cfg.log_level,
                    **self._extra("MOCK_CHAIN_"),
                },
                ready_url=f"http://127.0.0.1:{rpc_port}/status",
            )
        )

        # The MLNodes: per node, one process per version, sharing the node's GPU lock.
        mlnodes: dict[str, dict[str, str]] = {}
        gpu_lock = str(self.run_dir / "gpu" / "{node}.lock")
        for node in cfg.nodes:
            mlnodes[node] = {}
            for version in (cfg.old_version, cfg.new_version):
                port = free_port()
                sup.start(
                    ProcessSpec(
                        f"mlnode-{node}-{version}",
                        [py, "-m", "mock_mlnode"],
                        env={
                            "MOCK_MLNODE_VERSIONS": version,
                            "MOCK_MLNODE_NODES": node,
                            "MOCK_MLNODE_PORT": str(port),
                            "MOCK_MLNODE_GPU_LOCK_PATH": gpu_lock,
                            "MOCK_MLNODE_MODEL_LOAD_S": str(cfg.model_load_s),
                            "MOCK_MLNODE_STREAM_CHUNK_DELAY_S": str(cfg.stream_chunk_delay_s),
                            "MOCK_MLNODE_LOG_LEVEL": cfg.log_level,
                            **self._extra("MOCK_MLNODE_"),
                        },
                        ready_url=f"http://127.0.0.1:{port}/livez",
                    )
                )
                mlnodes[node][version] = f"http://127.0.0.1:{port}"

        # One nginx for all nodes: a server block (port) per node, as each node's `inference` host.
        proxies: dict[str, str] = {}
        servers = []
        for node in cfg.nodes:
            port = free_port()
            upstreams = [
                VersionUpstream.parse(v, mlnodes[node][v].removeprefix("http://"))
                for v in (cfg.old_version, cfg.new_version)
            ]
            servers.append(ProxyServer(listen=port, listen_host="127.0.0.1", upstreams=upstreams))
            proxies[node] = f"http://127.0.0.1:{port}"
        nginx_dir = self.run_dir / "nginx"
        for sub in ("tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (nginx_dir / sub).mkdir(parents=True, exist_ok=True)
        (nginx_dir / "nginx.conf").write_text(render_nginx_conf(servers, runtime_dir=nginx_dir))
        first_proxy = next(iter(proxies.values()))
        sup.start(
            ProcessSpec(
                "nginx",
                [
                    find_nginx(),
                    *("-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")),
                    *("-c", str(nginx_dir / "nginx.conf"), "-g", "daemon off;"),
                ],
                ready_url=f"{first_proxy}{HEALTH_PATH}",
            )
        )

        # The services.
        registry_port, registry_grpc = free_port(), free_port()
        admin_token_file = str(secrets_dir / "admin.token")
        sup.start(
            ProcessSpec(
                "version-registry",
                [py, "-m", "services.version_registry"],
                env={
                    **self._nats_env("VERSION_REGISTRY_", "registry", nats_url, secrets_dir),
                    "VERSION_REGISTRY_HTTP_PORT": str(registry_port),
                    "VERSION_REGISTRY_GRPC_PORT": str(registry_grpc),
                    "VERSION_REGISTRY_ADMIN_TOKEN_FILE": admin_token_file,
                },
                ready_url=f"http://127.0.0.1:{registry_port}/healthz",
            )
        )
        watcher_port = free_port()
        sup.start(
            ProcessSpec(
                "chain-watcher",
                [py, "-m", "services.chain_watcher"],
                env={
                    **self._nats_env("CHAIN_WATCHER_", "chain-watcher", nats_url, secrets_dir),
                    "CHAIN_WATCHER_RPC_URL": f"http://127.0.0.1:{rpc_port}",
                    "CHAIN_WATCHER_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
                    "CHAIN_WATCHER_HTTP_PORT": str(watcher_port),
                },
                ready_url=f"http://127.0.0.1:{watcher_port}/healthz",
            )
        )
        nodes_file = self.run_dir / "nodes.json"
        nodes_file.write_text(json.dumps(self._node_config(proxies), indent=2))
        broker_port = free_port()
        sup.start(
            ProcessSpec(
                "broker",
                [py, "-m", "services.broker"],
                env={
                    **self._nats_env("BROKER_", "broker", nats_url, secrets_dir),
                    "BROKER_HTTP_PORT": str(broker_port),
                    "BROKER_NODES_FILE": str(nodes_file),
                    "BROKER_ADMIN_TOKEN_FILE": admin_token_file,
                    "BROKER_RECONCILE_INTERVAL_S": str(self.config.reconcile_interval_s),
                },
                ready_url=f"http://127.0.0.1:{broker_port}/healthz",
            )
        )

        self.info = StackInfo(
            run_dir=str(self.run_dir),
            nats_url=nats_url,
            nats_monitor_url=nats_monitor,
            chain_rpc_url=f"http://127.0.0.1:{rpc_port}",
            chain_grpc_address=f"127.0.0.1:{grpc_port}",
            registry_url=f"http://127.0.0.1:{registry_port}",
            registry_grpc_address=f"127.0.0.1:{registry_grpc}",
            chain_watcher_url=f"http://127.0.0.1:{watcher_port}",
            broker_url=f"http://127.0.0.1:{broker_port}",
            proxies=proxies,
            mlnodes=mlnodes,
            old_version=cfg.old_version,
            new_version=cfg.new_version,
            voting_period_blocks=cfg.voting_period_blocks,
            block_time_s=cfg.block_time_s,
            secrets_dir=str(secrets_dir),
        )
        (self.run_dir / STACK_FILE).write_text(json.dumps(asdict(self.info), indent=2))
        return self.info

    def _node_config(self, proxies: dict[str, str]) -> list[dict[str, object]]:
        nodes = []
        for node, url in proxies.items():
            port = int(url.rsplit(":", 1)[1])
            nodes.append(
                {
                    "id": node,
                    "host": "127.0.0.1",
                    "inference_port": port,
                    "poc_port": port,
                    "models": {self.config.model: {"args": ["--tensor-parallel-size", "1"]}},
                    "max_concurrent": 100,
                }
            )
        return nodes

    def _provision(self, nats_url: str, secrets_dir: Path) -> None:
        """Streams, buckets and consumers, with the provisioner's credentials, before any service."""
        env = {
            **os.environ,
            **self._nats_env("PROVISION_", PROVISIONER_USER, nats_url, secrets_dir),
            **dict(self.config.extra_env),  # the services' own names, as they will read them
        }
        log_path = self.run_dir / "logs" / "provision.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            done = subprocess.run(
                [sys.executable, "-m", "cli", "nats", "provision"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"provisioning failed (exit {done.returncode}); see {log_path}")

    def _start_nats(self, users: list[NatsUser]) -> tuple[list[str], list[str]]:
        count = self.config.nats_servers
        ports = [(free_port(), free_port(), free_port()) for _ in range(count)]  # client, monitor, route
        urls, monitors = [], []
        for i, (port, monitor, route) in enumerate(ports):
            directory = self.run_dir / "nats" / f"n{i}"
            directory.mkdir(parents=True, exist_ok=True)
            cluster = None
            if count > 1:
                routes = [f"nats-route://127.0.0.1:{r}" for j, (_, _, r) in enumerate(ports) if j != i]
                cluster = ClusterConfig("local", "127.0.0.1", route, routes)
            conf = directory / "nats-server.conf"
            conf.write_text(
                render_server_config(
                    server_name=f"n{i}",
                    host="127.0.0.1",
                    port=port,
                    http_port=monitor,
                    store_dir=directory / "jetstream",
                    cluster=cluster,
                    users=users,
                )
            )
            conf.chmod(0o600)
            urls.append(f"nats://127.0.0.1:{port}")
            monitors.append(f"http://127.0.0.1:{monitor}")
            # In a cluster a server is ready once it answers; JetStream needs its peers first.
            ready = "/healthz?js-enabled-only=true" if count == 1 else "/varz"
            self.supervisor.start(
                ProcessSpec(
                    "nats" if count == 1 else f"nats-{i}",
                    [find_nats_server(), "-c", str(conf)],
                    ready_url=f"http://127.0.0.1:{monitor}{ready}",
                )
            )
        if count > 1:
            for monitor_url in monitors:
                self.supervisor.wait_for_url(f"{monitor_url}/healthz?js-enabled-only=true", 60.0)
        return urls, monitors

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
