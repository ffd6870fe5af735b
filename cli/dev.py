"""`mlnode-upgrade dev up`: the local stack in the foreground until Ctrl-C.

Besides the table of addresses it writes `api-node-config.json` to the run directory: the node
config an API node uses to reach every node through the broker's node endpoint (both ports the
broker's, segment `/nodes/{id}`), so its calls always go to the node's current version.
"""

from __future__ import annotations

import json
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from cli.nats_contexts import context_dir, ready_lines
from cli.stack import LocalStack, StackConfig, StackInfo
from cli.supervisor import ChildExit, SupervisorError
from devtools.stack_env import proxy_node_configs
from services.broker.endpoint_paths import node_segment
from services.broker.models import NodeConfig

__all__ = ["API_NODE_CONFIG", "api_node_configs", "dev_up", "node_endpoint", "write_api_node_config"]

API_NODE_CONFIG = "api-node-config.json"


def node_endpoint(broker_url: str, node: str) -> str:
    """The broker's endpoint for one node: where an API node's calls to it go."""
    return f"{broker_url}{node_segment(node)}"


def api_node_configs(info: StackInfo, model: str) -> list[NodeConfig]:
    """The API node's node config for the stack's nodes, each reached through the broker."""
    broker = urlsplit(info.broker_url)
    if broker.hostname is None or broker.port is None:
        raise ValueError(f"the broker URL {info.broker_url!r} has no host and port")
    return [
        NodeConfig.model_validate(
            {
                **node,
                "host": broker.hostname,
                "inference_port": broker.port,
                "inference_segment": node_segment(node["id"]),
                "poc_port": broker.port,
                "poc_segment": node_segment(node["id"]),
            }
        )
        for node in proxy_node_configs(info.proxies, model)
    ]


def write_api_node_config(info: StackInfo, model: str) -> Path:
    path = Path(info.run_dir) / API_NODE_CONFIG
    nodes = [n.model_dump(mode="json", exclude_none=True) for n in api_node_configs(info, model)]
    path.write_text(json.dumps(nodes, indent=2) + "\n")
    return path


def _table(info: StackInfo, api_node_config: Path) -> Table:
    table = Table(title="local stack", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("NATS", info.nats_url)
    table.add_row("chain RPC / gRPC", f"{info.chain_rpc_url}  {info.chain_grpc_address}")
    table.add_row("version-registry", f"{info.registry_url}  (gRPC {info.registry_grpc_address})")
    table.add_row("chain-watcher", info.chain_watcher_url)
    table.add_row("broker", info.broker_url)
    table.add_row("status page (live view)", f"{info.broker_url}/  (or: mlnode-upgrade status --watch)")
    for node, url in info.proxies.items():
        versions = ", ".join(f"{v} {u}" for v, u in info.mlnodes[node].items())
        table.add_row(f"{node} (nginx)", f"{url}  [{versions}]")
        table.add_row(f"{node} (API node's endpoint)", node_endpoint(info.broker_url, node))
    table.add_row("API node's node config", str(api_node_config))
    table.add_row("secrets", info.secrets_dir)
    return table


def _print_bus_lines(console: Console, run_dir: Path) -> None:
    """How to reach the bus: the NATS CLI with the contexts the stack wrote, or `events pub|sub`."""
    option = "" if run_dir == Path("var/dev") else f"--run-dir {shlex.quote(str(run_dir))}"  # app's default
    console.print(f"the bus (NATS CLI contexts in {context_dir(run_dir)}, one per user):")
    for line in ready_lines(str(run_dir), option):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def dev_up(config: StackConfig) -> int:
    console = Console()
    stop = threading.Event()
    started = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if not started.is_set():
            raise KeyboardInterrupt  # abort a start in progress; `finally` stops what is up

    def on_exit(event: ChildExit) -> None:
        console.print(
            f"[red]{event.name} exited with {event.returncode}[/] (restart {event.restarts + 1}); log tail:"
        )
        console.print(event.log_tail, markup=False, highlight=False)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = LocalStack(config, on_exit=on_exit)
    try:
        console.print(f"starting the local stack in {config.run_dir} ...")
        try:
            info = stack.start()
        except KeyboardInterrupt:
            console.print("interrupted while starting; stopping ...")
            return 130
        except SupervisorError as exc:
            console.print(f"[red]the stack did not start:[/] {exc}", markup=False)
            return 1
        started.set()
        console.print(_table(info, write_api_node_config(info, config.model)))
        console.print(
            f"propose an upgrade: mlnode-upgrade propose --submit {info.chain_rpc_url} "
            f"--height <H> --node-version {info.new_version} --deposit 1ngonka"
        )
        _print_bus_lines(console, config.run_dir)
        console.print("status: mlnode-upgrade status    stop: Ctrl-C")
        while not stop.wait(0.5):
            stack.check()
        console.print("stopping ...")
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
