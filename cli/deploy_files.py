"""The generated part of `deploy/`: nginx and nats-server configs and the broker's node file.

They come from the same generators the tests and the local stack use, so the containers run the
configuration that was tested. `mlnode-upgrade deploy render` writes them; `--check` (and a unit
test) fails when the committed files are stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.generated_files import stale_files as stale_generated
from shared.generated_files import write_files
from shared.nats_config import SERVICE_ACCESS, NatsUser, render_server_config
from shared.nginx_config import ProxyServer, VersionUpstream, render_nginx_conf
from shared.versions import parse_version

__all__ = ["DEPLOY_NODES", "DeployTopology", "password_variable", "render_all", "stale_files", "write_all"]

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


def nats_conf() -> str:
    users = [NatsUser(user, f"${password_variable(user)}", access) for user, access in SERVICE_ACCESS.items()]
    return render_server_config(
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


def write_all(deploy_dir: Path) -> list[Path]:
    return write_files(deploy_dir, render_all())


def stale_files(deploy_dir: Path) -> list[str]:
    return stale_generated(deploy_dir, render_all())
