"""`mlnode-upgrade dev up`: the local stack in the foreground until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from rich.console import Console
from rich.table import Table

from cli.stack import LocalStack, StackConfig, StackInfo
from cli.supervisor import ChildExit, SupervisorError

__all__ = ["dev_up"]


def _table(info: StackInfo) -> Table:
    table = Table(title="local stack", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("NATS", info.nats_url)
    table.add_row("chain RPC / gRPC", f"{info.chain_rpc_url}  {info.chain_grpc_address}")
    table.add_row("version-registry", f"{info.registry_url}  (gRPC {info.registry_grpc_address})")
    table.add_row("chain-watcher", info.chain_watcher_url)
    table.add_row("broker", info.broker_url)
    for node, url in info.proxies.items():
        versions = ", ".join(f"{v} {u}" for v, u in info.mlnodes[node].items())
        table.add_row(f"{node} (nginx)", f"{url}  [{versions}]")
    table.add_row("secrets", info.secrets_dir)
    return table


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
        console.print(_table(info))
        console.print(
            f"propose an upgrade: mlnode-upgrade propose --submit {info.chain_rpc_url} "
            f"--height <H> --node-version {info.new_version} --deposit 1ngonka"
        )
        console.print("status: mlnode-upgrade status    stop: Ctrl-C")
        while not stop.wait(0.5):
            stack.check()
        console.print("stopping ...")
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
