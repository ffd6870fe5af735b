"""A local nginx (Debian's package) run in the foreground from a directory of its own.

Used by the integration tests and the embedded stack: the config is checked with `nginx -t`
first, so a bad config is a clear error rather than a proxy that never answers. The runtime
directory, the argv and the local side-by-side server block are built here for every user (the
CLI's stack and the benchmarks run nginx under their own launchers).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from devtools.nginx_config import ProxyServer, VersionUpstream
from devtools.processes import ChildProcess, ExitedWhileStarting, NotReadyInTime, port_listening
from shared.logging import get_logger

__all__ = [
    "NginxError",
    "NginxProcess",
    "find_nginx",
    "foreground_argv",
    "local_proxy",
    "nginx_argv",
    "prepare_runtime_dir",
]

_TEMP_DIRS = ("tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi")

log = get_logger(__name__)


class NginxError(RuntimeError):
    pass


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NginxError("nginx not found: run `make setup` (installs Debian's nginx package)")


def local_proxy(listen: int, upstreams: Mapping[str, str]) -> ProxyServer:
    """One server block on 127.0.0.1:`listen`, routing `/{version}/` to each `host:port`."""
    versions = [VersionUpstream.parse(version, address) for version, address in upstreams.items()]
    return ProxyServer(listen=listen, listen_host="127.0.0.1", upstreams=versions)


def prepare_runtime_dir(runtime_dir: Path, config: str) -> Path:
    """nginx's temp directories and its config under `runtime_dir`; returns the config's path."""
    for sub in _TEMP_DIRS:
        (runtime_dir / sub).mkdir(parents=True, exist_ok=True)
    conf = runtime_dir / "nginx.conf"
    conf.write_text(config)
    return conf


def nginx_argv(runtime_dir: Path, *args: str) -> list[str]:
    """nginx run from `runtime_dir` (its prefix and error log there), then `args`."""
    return [find_nginx(), "-p", str(runtime_dir), "-e", str(runtime_dir / "error.log"), *args]


def foreground_argv(runtime_dir: Path) -> list[str]:
    """nginx in the foreground on `runtime_dir/nginx.conf`, for a launcher that supervises it."""
    return nginx_argv(runtime_dir, "-c", str(runtime_dir / "nginx.conf"), "-g", "daemon off;")


class NginxProcess:
    def __init__(
        self, runtime_dir: Path, config: str, ports: list[int], startup_timeout_s: float = 10.0
    ) -> None:
        self.runtime_dir = runtime_dir
        self.config = config
        self.ports = ports
        self.startup_timeout_s = startup_timeout_s
        self._proc: ChildProcess | None = None

    @property
    def conf_path(self) -> Path:
        return self.runtime_dir / "nginx.conf"

    def _write_config(self) -> None:
        prepare_runtime_dir(self.runtime_dir, self.config)

    def _base_args(self) -> list[str]:
        return nginx_argv(self.runtime_dir)

    def check(self) -> None:
        self._write_config()
        result = subprocess.run(
            [*self._base_args(), "-t", "-q", "-c", str(self.conf_path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise NginxError(f"nginx rejected {self.conf_path}:\n{result.stderr.strip()}")

    def start(self) -> None:
        self.check()
        # Its own session, so stopping it takes the workers too (a killed master orphans them).
        self._proc = ChildProcess(
            "nginx",
            [*self._base_args(), "-c", str(self.conf_path), "-g", "daemon off;"],
            log_path=None,
            cwd=None,
            ready=port_listening(*self.ports),
            own_session=True,
        )
        self._proc.spawn()
        try:
            self._proc.wait_ready(self.startup_timeout_s)
        except ExitedWhileStarting as exc:
            raise NginxError(f"nginx exited with {exc.returncode}:\n{self._error_tail()}") from None
        except NotReadyInTime:
            self.kill()
            raise NginxError(
                f"nginx not listening on {self.ports} within {self.startup_timeout_s}s"
            ) from None
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
        self._proc.send(signal.SIGHUP, group=False)

    def stop(self, grace_s: float = 5.0) -> None:
        """Graceful (SIGQUIT lets in-flight requests finish), then fast, then the whole group killed."""
        if self._proc is None:
            return
        if self._proc.alive():
            self._proc.send(signal.SIGQUIT, group=False)
            self._proc.reap(grace_s, on_overdue=self._terminate)
        self.kill()

    def _terminate(self) -> None:
        """Fast shutdown of the whole group (SIGTERM), when a graceful one took too long."""
        if self._proc is not None:
            self._proc.stop(5.0)

    def kill(self) -> None:
        """SIGKILL to the master and its workers."""
        if self._proc is not None:
            self._proc.kill()

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
