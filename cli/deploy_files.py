"""The generated part of `deploy/`: nginx and nats-server configs and the broker's node file.

They come from the same generators the tests and the local stack use, so the containers run the
configuration that was tested. `mlnode-upgrade deploy render` writes them; `--check` (and a unit
test) fails when the committed files are stale.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from devtools.generated_files import stale_files as stale_generated
from devtools.generated_files import write_files
from devtools.nginx_config import ProxyServer, VersionUpstream, render_nginx_conf
from shared.nats_config import NatsUser, render_password_include, render_server_config, user_names
from shared.versions import parse_version

__all__ = [
    "DEPLOY_NODES",
    "SECRET_VARIABLES",
    "DeployTopology",
    "password_variable",
    "render_all",
    "stale_files",
    "write_all",
    "write_secrets",
]

DEPLOY_NODES = ("node-1", "node-2")
NATS_USER_OF_SERVICE = {"chain-watcher": "chain-watcher", "version-registry": "registry", "broker": "broker"}


def password_variable(nats_user: str) -> str:
    """The environment variable that carries a NATS user's password (never the repository)."""
    return f"{nats_user.upper().replace('-', '_')}_NATS_PASSWORD"


@dataclass(frozen=True)
class DeployTopology:
    old_version: str = "v3.0.6"
    new_version: str = "v3.0.8"
    nodes: tuple[str, ...] = DEPLOY_NODES
    model: str = "Qwen/Qwen2.5-7B-Instruct"

    def mlnode_host(self, node: str, version: str) -> str:
        """Container name of one version of one node, e.g. `mlnode-1-v306`."""
        return f"mlnode-{node.removeprefix('node-')}-v{version.lstrip('v').replace('.', '')}"

    def proxy_host(self, node: str) -> str:
        """The node's nginx, named `inference` in the real deployment; one per node here."""
        return f"inference-{node.removeprefix('node-')}"


def nginx_conf(topology: DeployTopology, node: str) -> str:
    upstreams = [
        VersionUpstream.parse(v, f"{topology.mlnode_host(node, v)}:8080")
        for v in (topology.old_version, topology.new_version)
    ]
    # Port 8080 (management/PoC) and 5000 (inference) as in the real deployment; MLNode >= 3.0.7
    # serves both on 8080. Unprefixed paths go to the old version, as before any upgrade.
    servers = [ProxyServer(listen=port, upstreams=upstreams) for port in (8080, 5000)]
    return render_nginx_conf(servers, resolver="127.0.0.11")


PASSWORDS_INCLUDE = "passwords.conf"  # beside nats-server.conf; a secret, made by `deploy secrets`
TOKEN_VARIABLES = ("REGISTRY_ADMIN_TOKEN", "BROKER_ADMIN_TOKEN")
SECRET_VARIABLES = (*(password_variable(u) for u in user_names()), *TOKEN_VARIABLES)


def nats_conf() -> str:
    """The server config: passwords are variables that the included secrets file defines, quoted."""
    users = [NatsUser(user, f"${password_variable(user)}") for user in user_names()]
    return render_server_config(
        include=PASSWORDS_INCLUDE,
        server_name="nats-0",
        host="0.0.0.0",
        port=4222,
        http_port=8222,
        store_dir=Path("/data/jetstream"),
        users=users,
    )


def nodes_json(topology: DeployTopology) -> str:
    nodes = [
        {
            "id": node,
            "host": topology.proxy_host(node),
            "inference_port": 5000,
            "inference_segment": "",
            "poc_port": 8080,
            "poc_segment": "",
            "models": {topology.model: {"args": ["--tensor-parallel-size", "1"]}},
            "max_concurrent": 500,
            "hardware": [{"type": "NVIDIA H100 80GB", "count": 1}],
        }
        for node in topology.nodes
    ]
    return json.dumps(nodes, indent=2) + "\n"


# In Kubernetes both versions of a node run in one pod (they share its GPU), each on its own port,
# behind an nginx container in the same pod; the pod's Service is the node's `inference` host.
K8S_VERSION_PORTS = {"v3.0.6": 8086, "v3.0.8": 8088}


def k8s_pod_proxy_conf(topology: DeployTopology) -> str:
    upstreams = [
        VersionUpstream.parse(v, f"127.0.0.1:{K8S_VERSION_PORTS[v]}")
        for v in (topology.old_version, topology.new_version)
    ]
    return render_nginx_conf([ProxyServer(listen=port, upstreams=upstreams) for port in (8080, 5000)])


def k8s_nodes_json(topology: DeployTopology) -> str:
    nodes = json.loads(nodes_json(topology))
    for node in nodes:
        node["host"] = f"mlnode-{node['id'].removeprefix('node-')}"
    return json.dumps(nodes, indent=2) + "\n"


def render_all(topology: DeployTopology | None = None) -> dict[str, str]:
    """Relative path under deploy/ -> content."""
    topology = topology or DeployTopology()
    for version in (topology.old_version, topology.new_version):
        parse_version(version)
    files = {f"nginx/{node}.conf": nginx_conf(topology, node) for node in topology.nodes}
    files["nats/nats-server.conf"] = nats_conf()
    files["nodes.json"] = nodes_json(topology)
    files["k8s/config/nats-server.conf"] = nats_conf()
    files["k8s/config/mlnode-proxy.conf"] = k8s_pod_proxy_conf(topology)
    files["k8s/config/nodes.json"] = k8s_nodes_json(topology)
    return files


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def write_secrets(deploy_dir: Path) -> list[Path]:
    """`deploy/.env` with every secret (missing ones generated) and the NATS passwords include.

    Values already in `.env` are kept, so an operator may choose their own; the include quotes
    each password, so any characters work in the NATS config (in `.env`, write `$` as `$$` for
    docker compose).
    """
    env_path = deploy_dir / ".env"
    values = _read_env_file(env_path)
    for name in SECRET_VARIABLES:
        if not values.get(name):
            values[name] = secrets.token_hex(24)
    lines = ["# Secrets for docker compose, made by `mlnode-upgrade deploy secrets`. Never commit this file."]
    lines += [f"{k}={v}" for k, v in values.items()]
    include_path = deploy_dir / "nats" / PASSWORDS_INCLUDE
    passwords = {password_variable(u): values[password_variable(u)].replace("$$", "$") for u in user_names()}
    written = []
    for path, text in (
        (env_path, "\n".join(lines) + "\n"),
        (include_path, render_password_include(passwords)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(text)
        written.append(path)
    return written


def write_all(deploy_dir: Path) -> list[Path]:
    return write_files(deploy_dir, render_all())


def stale_files(deploy_dir: Path) -> list[str]:
    return stale_generated(deploy_dir, render_all())
