"""The per-service environment of a local stack, written once for `dev up`, the benchmarks and tests.

Each service reads its settings from `<PREFIX>…` variables (`shared/settings.py`); which ones a
local stack sets (the NATS address and credentials, ports, the nodes file, the admin token) is
decided here, so the CLI's stack, the benchmarks' test bed and the integration tests wire the
services the same way. `settings` are a caller's extras for one service (shorter timeouts):
they win over the NATS access and the log level, never over the wiring (ports, files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BROKER",
    "CHAIN_WATCHER",
    "PROVISION",
    "VERSION_REGISTRY",
    "NatsAccess",
    "broker_env",
    "fleet_node_configs",
    "mock_chain_env",
    "mock_mlnode_env",
    "proxy_node_configs",
    "registry_env",
    "watcher_env",
]

# The settings prefix of each program (its `env_prefix`).
VERSION_REGISTRY = "VERSION_REGISTRY_"
CHAIN_WATCHER = "CHAIN_WATCHER_"
BROKER = "BROKER_"
PROVISION = "PROVISION_"


@dataclass(frozen=True)
class NatsAccess:
    """How one program reaches NATS: the URL, and its own user when the server has users."""

    url: str
    user: str | None = None
    password_file: Path | None = None
    replicas: int | None = None  # streams and buckets it creates; None: the setting's default

    def env(self, prefix: str, log_level: str | None = None) -> dict[str, str]:
        env = {f"{prefix}NATS__URL": self.url}
        if self.user is not None:
            env[f"{prefix}NATS__USER"] = self.user
        if self.password_file is not None:
            env[f"{prefix}NATS__PASSWORD_FILE"] = str(self.password_file)
        if self.replicas is not None:
            env[f"{prefix}NATS__REPLICAS"] = str(self.replicas)
        if log_level is not None:
            env[f"{prefix}LOG_LEVEL"] = log_level
        return env


def _optional(prefix: str, values: Mapping[str, object | None]) -> dict[str, str]:
    return {f"{prefix}{key}": str(value) for key, value in values.items() if value is not None}


def registry_env(
    nats: NatsAccess,
    *,
    http_port: int,
    grpc_port: int | None,
    admin_token_file: Path | None = None,
    log_level: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The version-registry; `grpc_port` None turns its gRPC server off."""
    p = VERSION_REGISTRY
    grpc = {"GRPC_PORT": grpc_port} if grpc_port is not None else {"GRPC_ENABLED": "false"}
    values = {"HTTP_PORT": http_port, **grpc, "ADMIN_TOKEN_FILE": admin_token_file}
    return {**nats.env(p, log_level), **(settings or {}), **_optional(p, values)}


def watcher_env(
    nats: NatsAccess,
    *,
    rpc_url: str,
    grpc_address: str,
    http_port: int,
    log_level: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The chain-watcher: the chain's CometBFT RPC and Cosmos gRPC addresses."""
    p = CHAIN_WATCHER
    values = {"RPC_URL": rpc_url, "GRPC_ADDRESS": grpc_address, "HTTP_PORT": http_port}
    return {**nats.env(p, log_level), **(settings or {}), **_optional(p, values)}


def broker_env(
    nats: NatsAccess,
    *,
    http_port: int,
    nodes_file: Path,
    admin_token_file: Path | None = None,
    reconcile_interval_s: float | None = None,
    log_level: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The broker: its port, the nodes file it starts from."""
    p = BROKER
    values = {
        "HTTP_PORT": http_port,
        "NODES_FILE": nodes_file,
        "ADMIN_TOKEN_FILE": admin_token_file,
        "RECONCILE_INTERVAL_S": reconcile_interval_s,
    }
    return {**nats.env(p, log_level), **(settings or {}), **_optional(p, values)}


def mock_chain_env(
    *,
    rpc_port: int,
    grpc_port: int,
    block_time_s: float | str,
    voting_period_blocks: int,
    genesis_version: str,
    log_level: str,
    state_retention_blocks: int | None = None,
) -> dict[str, str]:
    """mock_chain: `block_time_s` 0 makes blocks only on `POST /advance`."""
    values = {
        "RPC_PORT": rpc_port,
        "GRPC_PORT": grpc_port,
        "BLOCK_TIME_S": block_time_s,
        "VOTING_PERIOD_BLOCKS": voting_period_blocks,
        "GENESIS_VERSION": genesis_version,
        "LOG_LEVEL": log_level,
        "STATE_RETENTION_BLOCKS": state_retention_blocks,
    }
    return _optional("MOCK_CHAIN_", values)


def mock_mlnode_env(
    *,
    version: str,
    node: str,
    port: int,
    gpu_lock_path: str,
    model_load_s: float,
    stream_chunk_delay_s: float,
    log_level: str,
) -> dict[str, str]:
    """One mock MLNode process serving one version of one node."""
    values = {
        "VERSIONS": version,
        "NODES": node,
        "PORT": port,
        "GPU_LOCK_PATH": gpu_lock_path,
        "MODEL_LOAD_S": model_load_s,
        "STREAM_CHUNK_DELAY_S": stream_chunk_delay_s,
        "LOG_LEVEL": log_level,
    }
    return _optional("MOCK_MLNODE_", values)


def fleet_node_configs(nodes: int, proxy_port: int, model: str, max_concurrent: int) -> list[dict[str, Any]]:
    """The broker's node file (real node-config format) for a fleet behind one nginx port.

    One mock process per version serves every node; the node's path segment selects it.
    """
    return [
        {
            "id": f"node-{i}",
            "host": "127.0.0.1",
            "inference_port": proxy_port,
            "inference_segment": f"/node-{i}",
            "poc_port": proxy_port,
            "poc_segment": f"/node-{i}",
            "models": {model: {"args": ["--max-model-len", "4096"]}},
            "max_concurrent": max_concurrent,
            "hardware": [{"type": "mock GPU", "count": 1}],
        }
        for i in range(nodes)
    ]


def proxy_node_configs(proxies: Mapping[str, str], model: str) -> list[dict[str, Any]]:
    """The broker's node file for nodes with an nginx each (`node -> http://127.0.0.1:PORT`)."""
    nodes = []
    for node, url in proxies.items():
        port = int(url.rsplit(":", 1)[1])
        nodes.append(
            {
                "id": node,
                "host": "127.0.0.1",
                "inference_port": port,
                "poc_port": port,
                "models": {model: {"args": ["--tensor-parallel-size", "1"]}},
                "max_concurrent": 100,
            }
        )
    return nodes
