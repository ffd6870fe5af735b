"""The benchmarks' test bed: the real stack as processes, and the instruments to read it.

`BenchStack` starts nats-server (JetStream), mock_chain (blocks only on `POST /advance`), one
mock MLNode process per version serving every node in fleet mode, one nginx in front of them
(the node's path segment selects the virtual node), the version-registry, the chain-watcher and
a broker: ours, or the baseline that behaves like the original implementation. It follows the
approach of `cli.stack.LocalStack` (each child in its own process group, killed with its parent,
ready when a URL answers) but starts the processes together and waits for them together, since
every service reconnects to NATS and the chain on its own and a benchmark run starts a dozen
stacks.

Timestamps come from the processes' own clocks (block header time, log lines, the mock's request
log), all on this one machine, so they compare directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bench.stats import parse_log_ts, parse_rfc3339, parse_vmrss_kib
from cli.propose import build_proposal
from shared.embedded_nats import find_nats_server, free_port
from shared.nginx_config import HEALTH_PATH, ProxyServer, VersionUpstream, render_nginx_conf
from shared.nginx_process import find_nginx

__all__ = [
    "MODEL",
    "NEW",
    "OLD",
    "REPO_ROOT",
    "BenchError",
    "BenchStack",
    "EventLog",
    "LogTail",
    "Procs",
    "StackConfig",
    "cpu_seconds",
    "listen_port",
    "machine_info",
    "rss_mib",
    "wait_for",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
OLD, NEW = "v3.0.6", "v3.0.8"
MODEL = "Qwen/Qwen2.5-7B-Instruct"
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """The test bed could not be set up or did not reach the state a benchmark needs."""


# --- waiting -------------------------------------------------------------------------------------


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.05
) -> float:
    """Poll `check` until it is true; returns when (time.time()) it first was. Raises after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)  # polling a condition with a deadline


# --- ports ---------------------------------------------------------------------------------------

_TAKEN: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def listen_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, for a server that binds it a moment later.

    `free_port()` asks the kernel for port 0 and so returns an ephemeral port, which the
    thousands of outgoing connections a benchmark opens may take as their local port before the
    server binds it. Ports below the range are never handed out that way.
    """
    low, _ = _ephemeral_range()
    floor = 10_000 if low > 12_000 else 1024
    for _ in range(200):
        port = random.randint(floor, low - 1)
        if port in _TAKEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    return free_port(host)


# --- /proc ---------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx's workers), from /proc/<pid>/task/*/children."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def rss_mib(pid: int, *, tree: bool = False) -> float | None:
    """Resident memory of a process (and its descendants when `tree`), in MiB; None when it is gone."""
    total_kib = 0
    seen = False
    for p in process_tree(pid) if tree else [pid]:
        try:
            kib = parse_vmrss_kib(Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        if kib is not None:
            total_kib += kib
            seen = True
    return round(total_kib / 1024, 1) if seen else None


def cpu_seconds(pid: int, *, tree: bool = False) -> float | None:
    """User + system CPU time a process (and its descendants when `tree`) has used, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    for p in process_tree(pid) if tree else [pid]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces; fields after it are fixed
        total += (int(fields[11]) + int(fields[12])) / ticks
        seen = True
    return round(total, 3) if seen else None


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_info() -> dict[str, Any]:
    """What ran the benchmarks: results from different machines are not comparable."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib: float | None = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    affinity: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        affinity = len(os.sched_getaffinity(0))
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nginx": _first_line([find_nginx(), "-v"]),
        "nats_server": _first_line([find_nats_server(), "--version"]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- processes -----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the benchmark process dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ready_url: str | None


class Procs:
    """Child processes started together, each in its own group, each killed with us."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, _Proc] = {}

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, ready_url: str | None = None
    ) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=_die_with_parent,  # only prctl(2)
            )
        self.procs[name] = _Proc(name, popen, log_path, ready_url)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Every process answers 200 on its ready URL; a death while starting is an error with its log."""
        waiting = {n for n, p in self.procs.items() if p.ready_url}
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while waiting:
                for name in sorted(waiting):
                    proc = self.procs[name]
                    if proc.popen.poll() is not None:
                        raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{self.tail(name)}")
                    assert proc.ready_url is not None
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(proc.ready_url).status_code == 200:
                            waiting.discard(name)
                if time.monotonic() > deadline:
                    raise BenchError(f"not ready within {timeout_s}s: {sorted(waiting)}")
                time.sleep(0.05)  # polling a condition with a deadline

    def pid(self, name: str) -> int:
        return self.procs[name].popen.pid

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.popen.poll() is not None]

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.pid(name), sig)

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.procs[name].log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self, grace_s: float = 5.0, interrupt: tuple[str, ...] = (), last: str = "nats") -> None:
        """SIGTERM every group (the services flush and exit), SIGKILL what is left after `grace_s`.

        `last` (NATS) goes after the others, so services do not spend their grace period on a
        bus that is already gone. Those named in `interrupt` get SIGINT and more time: uvicorn
        re-raises the signal it stopped on, and only SIGINT (a KeyboardInterrupt) lets cProfile
        write its stats.
        """
        first = [p for p in self.procs.values() if p.name != last]
        then = [p for p in self.procs.values() if p.name == last]
        for group in (first, then):
            self._stop_group(group, grace_s + (20.0 if interrupt else 0.0), interrupt)

    @staticmethod
    def _stop_group(procs: list[_Proc], grace_s: float, interrupt: tuple[str, ...]) -> None:
        for proc in procs:
            if proc.popen.poll() is None:
                sig = signal.SIGINT if proc.name in interrupt else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGCONT)  # a paused one cannot handle SIGTERM
                    os.killpg(proc.popen.pid, sig)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)


# --- log files -----------------------------------------------------------------------------------


class LogTail:
    """Reads a JSON-lines service log incrementally, for the services' own timestamps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = []
        for raw in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    lines.append(line)
        return lines

    @staticmethod
    def ts(line: dict[str, Any]) -> float:
        return parse_log_ts(str(line["ts"]))


# --- NATS events ---------------------------------------------------------------------------------


@dataclass
class EventLog:
    """Arrival times (time.time()) of `version.changed` and `broker.refreshed`, keyed by transition id."""

    changed: dict[str, float] = field(default_factory=dict)
    refreshed: dict[str, float] = field(default_factory=dict)
    refreshed_body: dict[str, dict[str, Any]] = field(default_factory=dict)
    nc: NatsClient | None = None

    async def start(self, url: str) -> None:
        self.nc = await nats.connect(url, name="bench", max_reconnect_attempts=-1)
        await self.nc.subscribe("version.changed", cb=self._on_changed)
        await self.nc.subscribe("broker.refreshed", cb=self._on_refreshed)

    async def _on_changed(self, msg: Msg) -> None:
        now = time.time()
        body = json.loads(msg.data)
        self.changed.setdefault(str(body.get("transition_id")), now)

    async def _on_refreshed(self, msg: Msg) -> None:
        now = time.time()
        body = json.loads(msg.data)
        tid = str(body.get("transition_id"))
        self.refreshed.setdefault(tid, now)
        self.refreshed_body.setdefault(tid, body)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


# --- the stack -----------------------------------------------------------------------------------

BrokerKind = Literal["ours", "baseline", "none"]


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    nodes: int = 2
    model_load_s: float = 2.0
    completion_delay_s: float = 0.0
    broker: BrokerKind = "ours"
    chain: bool = True  # mock_chain + chain-watcher
    mlnodes: bool = True  # the mock MLNodes and nginx
    registry: bool = True
    max_concurrent: int = 100
    broker_env: dict[str, str] = field(default_factory=dict)
    baseline_refresh_s: float = 2.0
    baseline_status_s: float = 2.0
    nginx_workers: int = 1
    # Python processes to run under cProfile (their stats go to <run_dir>/<name>.prof at exit).
    profile: tuple[str, ...] = ()


class BenchStack:
    """The whole stack for one benchmark run; `async with BenchStack(cfg) as stack:`."""

    def __init__(self, config: StackConfig) -> None:
        self.cfg = config
        self.run_dir = config.run_dir.resolve()
        self.procs = Procs(self.run_dir / "logs")
        self.events = EventLog()
        self.http = httpx.AsyncClient(timeout=30.0)
        self._allocate_ports()

    def _allocate_ports(self) -> None:
        p = listen_port
        self.nats_port, self.nats_monitor = p(), p()
        self.rpc_port, self.grpc_port = p(), p()
        self.mock_ports = {OLD: p(), NEW: p()}
        self.nginx_port = p()
        self.registry_port, self.registry_grpc = p(), p()
        self.watcher_port = p()
        self.broker_port = p()

    # -- addresses --------------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def chain_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def watcher_url(self) -> str:
        return f"http://127.0.0.1:{self.watcher_port}"

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def mock_url(self, version: str) -> str:
        return f"http://127.0.0.1:{self.mock_ports[version]}"

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
                self._allocate_ports()
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
        cfg = self.cfg
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        procs = self.procs
        procs.spawn(
            "nats",
            [
                find_nats_server(),
                *("--jetstream", "--store_dir", str(self.run_dir / "nats")),
                *("--addr", "127.0.0.1", "--port", str(self.nats_port)),
                *("--http_port", str(self.nats_monitor), "--server_name", "bench"),
            ],
            ready_url=f"http://127.0.0.1:{self.nats_monitor}/healthz?js-enabled-only=true",
        )
        # Streams, buckets and consumers are provisioned before the services, as in production.
        subprocess.run(
            [sys.executable, "-m", "cli", "nats", "provision", "--url", self.nats_url],
            check=True,
            capture_output=True,
            timeout=120,
        )
        if cfg.mlnodes:
            for version, port in self.mock_ports.items():
                procs.spawn(
                    f"mlnode-{version}",
                    [
                        *self._python(f"mlnode-{version}", "mock_mlnode"),
                        *("--port", str(port), "--version", version),
                        *(
                            "--fleet",
                            str(cfg.nodes),
                            "--gpu-lock-path",
                            str(self.run_dir / "gpu" / "{node}.lock"),
                        ),
                        *("--model-load-s", str(cfg.model_load_s)),
                        *("--completion-delay-s", str(cfg.completion_delay_s), "--log-level", "WARNING"),
                    ],
                    env={"MOCK_MLNODE_REQUEST_LOG_LIMIT": "200000"},
                    ready_url=f"http://127.0.0.1:{port}/mock/instances",
                )
            self._spawn_nginx()
        nats_env = {"NATS__URL": self.nats_url, "LOG_LEVEL": "INFO"}
        if cfg.chain:
            procs.spawn(
                "mock-chain",
                self._python("mock-chain", "mock_chain"),
                env={
                    "MOCK_CHAIN_RPC_PORT": str(self.rpc_port),
                    "MOCK_CHAIN_GRPC_PORT": str(self.grpc_port),
                    "MOCK_CHAIN_BLOCK_TIME_S": "0",
                    "MOCK_CHAIN_VOTING_PERIOD_BLOCKS": "1",
                    "MOCK_CHAIN_GENESIS_VERSION": OLD,
                    "MOCK_CHAIN_LOG_LEVEL": "WARNING",
                    "MOCK_CHAIN_STATE_RETENTION_BLOCKS": "100000",
                },
                ready_url=f"{self.chain_url}/status",
            )
            procs.spawn(
                "chain-watcher",
                self._python("chain-watcher", "services.chain_watcher"),
                env={
                    **{f"CHAIN_WATCHER_{k}": v for k, v in nats_env.items()},
                    "CHAIN_WATCHER_RPC_URL": self.chain_url,
                    "CHAIN_WATCHER_GRPC_ADDRESS": f"127.0.0.1:{self.grpc_port}",
                    "CHAIN_WATCHER_HTTP_PORT": str(self.watcher_port),
                },
                ready_url=f"{self.watcher_url}/healthz",
            )
        if cfg.registry:
            procs.spawn(
                "version-registry",
                self._python("version-registry", "services.version_registry"),
                env={
                    **{f"VERSION_REGISTRY_{k}": v for k, v in nats_env.items()},
                    "VERSION_REGISTRY_HTTP_PORT": str(self.registry_port),
                    "VERSION_REGISTRY_GRPC_PORT": str(self.registry_grpc),
                },
                ready_url=f"{self.registry_url}/healthz",
            )
        nodes_file = self.run_dir / "node-config.json"
        nodes_file.write_text(json.dumps(self.node_configs()))
        if cfg.broker == "ours":
            procs.spawn(
                "broker",
                self._python("broker", "services.broker"),
                env={
                    **{f"BROKER_{k}": v for k, v in nats_env.items()},
                    "BROKER_HTTP_PORT": str(self.broker_port),
                    "BROKER_NODES_FILE": str(nodes_file),
                    **cfg.broker_env,
                },
                ready_url=f"{self.broker_url}/healthz",
            )
        elif cfg.broker == "baseline":
            procs.spawn(
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
        procs.wait_ready()

    def _spawn_nginx(self) -> None:
        nginx_dir = self.run_dir / "nginx"
        for sub in ("tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (nginx_dir / sub).mkdir(parents=True, exist_ok=True)
        upstreams = [VersionUpstream.parse(v, f"127.0.0.1:{port}") for v, port in self.mock_ports.items()]
        server = ProxyServer(listen=self.nginx_port, listen_host="127.0.0.1", upstreams=upstreams)
        conf = render_nginx_conf([server], runtime_dir=nginx_dir, worker_processes=self.cfg.nginx_workers)
        (nginx_dir / "nginx.conf").write_text(conf)
        self.procs.spawn(
            "nginx",
            [
                find_nginx(),
                *("-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")),
                *("-c", str(nginx_dir / "nginx.conf"), "-g", "daemon off;"),
            ],
            ready_url=f"{self.nginx_url}{HEALTH_PATH}",
        )

    def _python(self, name: str, module: str) -> list[str]:
        if name in self.cfg.profile:
            return [sys.executable, "-m", "cProfile", "-o", str(self.run_dir / f"{name}.prof"), "-m", module]
        return [sys.executable, "-m", module]

    def node_configs(self) -> list[dict[str, Any]]:
        """The broker's node file (real node-config format); one fleet node per path segment."""
        return [
            {
                "id": f"node-{i}",
                "host": "127.0.0.1",
                "inference_port": self.nginx_port,
                "inference_segment": f"/node-{i}",
                "poc_port": self.nginx_port,
                "poc_segment": f"/node-{i}",
                "models": {MODEL: {"args": ["--max-model-len", "4096"]}},
                "max_concurrent": self.cfg.max_concurrent,
                "hardware": [{"type": "mock GPU", "count": 1}],
            }
            for i in range(self.cfg.nodes)
        ]

    def check_alive(self) -> None:
        dead = self.procs.dead()
        if dead:
            raise BenchError(f"processes died: {dead}\n" + "\n".join(self.procs.tail(n) for n in dead))

    # -- the chain --------------------------------------------------------------------------

    async def call_json(self, method: str, url: str, **kwargs: Any) -> Any:
        resp = await self.http.request(method, url, **kwargs)
        if resp.status_code >= 400:
            raise BenchError(f"{method} {url} answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    async def height(self) -> int:
        status = await self.call_json("GET", f"{self.chain_url}/status")
        return int(status["result"]["sync_info"]["latest_block_height"])

    async def advance(self, n: int = 1) -> None:
        await self.call_json("POST", f"{self.chain_url}/advance", params={"n": n})

    async def block_time(self, height: int) -> float:
        block = await self.call_json("GET", f"{self.chain_url}/block", params={"height": height})
        return parse_rfc3339(block["result"]["block"]["header"]["time"])

    async def registry_state(self) -> dict[str, Any]:
        return dict(await self.call_json("GET", f"{self.registry_url}/state"))

    async def schedule(self, version: str) -> int:
        """Propose `version`, pass the vote, and stop one block before its height; returns the height.

        Returns only when the registry holds the plan and has seen height-1, so the next block
        is the only thing left between the chain and the switch.
        """
        height = await self.height() + 3  # the vote ends at +1 (voting period 1 block)
        proposal = build_proposal(
            height=height,
            node_version=version,
            title=f"bench upgrade to {version} at {height}",
            summary="bench",
            deposit="10000000ngonka",
        )
        await self.call_json("POST", f"{self.chain_url}/gov/proposals", json=proposal)
        await self.advance(2)

        async def plan_pending() -> bool:
            state = await self.registry_state()
            return state["last_height"] >= height - 1 and any(
                p["height"] == height and p["node_version"] == version for p in state["pending"]
            )

        await wait_for(plan_pending, 30, f"the registry to hold the plan for {version} at {height}")
        return height

    # -- the mocks --------------------------------------------------------------------------

    async def mock_requests(self, version: str, route: str, method: str = "") -> list[dict[str, Any]]:
        body = await self.call_json(
            "GET", f"{self.mock_url(version)}/mock/requests", params={"route": route, "method": method}
        )
        return list(body["requests"])

    async def clear_mock_requests(self) -> None:
        for version in self.mock_ports:
            await self.call_json("DELETE", f"{self.mock_url(version)}/mock/requests")

    async def nodes_ready_at(self, version: str, since: float) -> dict[str, float]:
        """Per node: when it first answered healthy after its model finished loading (mock clock).

        Pairs each node's successful `inference/up` after `since` with its first 200 on
        `/v1/models` after that, which is the answer on which the broker marks the node ready.
        """
        ups: dict[str, float] = {}
        for r in await self.mock_requests(version, "/api/v1/inference/up", "POST"):
            if r["status"] == 200 and r["ts"] >= since:
                ups[r["node"]] = min(ups.get(r["node"], r["ts"]), r["ts"])
        ready: dict[str, float] = {}
        for r in await self.mock_requests(version, "/v1/models", "GET"):
            up = ups.get(r["node"])
            if up is not None and r["status"] == 200 and r["ts"] >= up:
                ready[r["node"]] = min(ready.get(r["node"], r["ts"]), r["ts"])
        return ready

    # -- the broker -------------------------------------------------------------------------

    async def broker_status(self) -> dict[str, Any]:
        path = "/upgrade/status" if self.cfg.broker == "ours" else "/status"
        return dict(await self.call_json("GET", f"{self.broker_url}{path}"))

    async def all_serving(self, version: str) -> bool:
        try:
            status = await self.broker_status()
        except (httpx.HTTPError, BenchError):
            return False
        nodes = status.get("nodes", [])
        return len(nodes) == self.cfg.nodes and all(
            n.get("ready") and n.get("version") == version for n in nodes
        )

    async def settle(self, version: str, timeout_s: float = 120.0) -> None:
        """Every node serves `version` and (for our broker) the registry recorded it as last used."""
        await wait_for(lambda: self.all_serving(version), timeout_s, f"every node serving {version}", 0.2)
        if self.cfg.broker == "ours":

            async def recorded() -> bool:
                return (await self.registry_state()).get("last_used_version") == version

            await wait_for(recorded, timeout_s, f"the registry recording {version} as last used", 0.1)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by every running process of the stack (nginx with its workers)."""
        used = {
            name: cpu_seconds(proc.popen.pid, tree=name == "nginx")
            for name, proc in self.procs.procs.items()
            if proc.popen.poll() is None
        }
        return {name: value for name, value in used.items() if value is not None}

    def rss(self) -> dict[str, float | None]:
        """Resident MiB of every process of the stack (nginx with its workers)."""
        return {
            name: rss_mib(proc.popen.pid, tree=name == "nginx")
            for name, proc in self.procs.procs.items()
            if proc.popen.poll() is None
        }
