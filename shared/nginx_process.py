"""A local nginx (Debian's package) run in the foreground from a directory of its own.

Used by the integration tests and the embedded stack: the config is checked with `nginx -t`
first, so a bad config is a clear error rather than a proxy that never answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from shared.logging import get_logger

__all__ = ["NginxError", "NginxProcess", "find_nginx"]

log = get_logger(__name__)


class NginxError(RuntimeError):
    pass


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NginxError("nginx not found: run `make setup` (installs Debian's nginx package)")


class NginxProcess:
    def __init__(
        self, runtime_dir: Path, config: str, ports: list[int], startup_timeout_s: float = 10.0
    ) -> None:
        self.runtime_dir = runtime_dir
        self.config = config
        self.ports = ports
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.runtime_dir / "nginx.conf"

    def _write_config(self) -> None:
        for sub in ("tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.runtime_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config)

    def _base_args(self) -> list[str]:
        return [find_nginx(), "-p", str(self.runtime_dir), "-e", str(self.runtime_dir / "error.log")]

    def check(self) -> None:
        self._write_config()
        result = subprocess.run(
            [*self._base_args(), "-t", "-q", "-c", str(self.conf_path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise NginxError(f"nginx rejected {self.conf_path}:\n{result.stderr.strip()}")

    def start(self) -> None:
        self.check()
        args = [*self._base_args(), "-c", str(self.conf_path), "-g", "daemon off;"]
        # Its own process group, so stopping it takes the workers too (a killed master orphans them).
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while not all(_listening(port) for port in self.ports):
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited with {self._proc.returncode}:\n{self._error_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise NginxError(f"nginx not listening on {self.ports} within {self.startup_timeout_s}s")
            time.sleep(0.02)  # polling a condition with a deadline
        log.info("nginx started", extra={"ports": self.ports, "dir": str(self.runtime_dir)})

    def reload(self, config: str) -> None:
        """Swap the config without dropping connections (SIGHUP); refused configs change nothing."""
        previous = self.config
        self.config = config
        try:
            self.check()
        except NginxError:
            self.config = previous
            self._write_config()
            raise
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)

    def stop(self, grace_s: float = 5.0) -> None:
        """Graceful (SIGQUIT lets in-flight requests finish), then fast, then the whole group killed."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGQUIT)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the master and its workers."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=10)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _error_tail(self) -> str:
        try:
            return "\n".join((self.runtime_dir / "error.log").read_text().splitlines()[-20:])
        except OSError:
            return "(no error log)"

    def __enter__(self) -> NginxProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
