"""The one way the tooling starts a child process: env, log file, readiness, stop, kill, restart.

The CLI's supervisor, the benchmarks' test bed and the integration tests' process helpers all
start Python modules and binaries the same way; the differences between them (a process group
of its own, dying with the parent, how long a stop may take) are options here, not copies.

Readiness is a condition polled against a deadline; a child that exits while starting is an
error at once, with the tail of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

import httpx

__all__ = [
    "REPO_ROOT",
    "ChildProcess",
    "ExitedWhileStarting",
    "LaunchError",
    "NotReadyInTime",
    "ReadyCheck",
    "http_ok",
    "port_listening",
    "python_module",
    "stop_together",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05

ReadyCheck = Callable[[], bool]


class LaunchError(RuntimeError):
    """A child did not come up; the wrappers turn this into their own error and message."""


class ExitedWhileStarting(LaunchError):
    def __init__(self, name: str, returncode: int) -> None:
        super().__init__(f"{name} exited with {returncode}")
        self.returncode = returncode


class NotReadyInTime(LaunchError):
    def __init__(self, name: str, timeout_s: float) -> None:
        super().__init__(f"{name} not ready within {timeout_s}s")
        self.timeout_s = timeout_s


def python_module(module: str, *args: str) -> list[str]:
    """`python -m module args…` with this interpreter, so children run in the same virtualenv."""
    return [sys.executable, "-m", module, *args]


def http_ok(url: str, timeout_s: float = 1.0, client: httpx.Client | None = None) -> ReadyCheck:
    """Ready once GET `url` answers 200; a refused or failing connection is "not yet"."""

    def check() -> bool:
        try:
            resp = client.get(url) if client is not None else httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    return check


def port_listening(*ports: int, host: str = "127.0.0.1") -> ReadyCheck:
    """Ready once every port accepts a TCP connection (nginx has no health URL of its own)."""

    def listening(port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((host, port)) == 0

    return lambda: all(listening(port) for port in ports)


def wait_until(check: ReadyCheck, timeout_s: float, what: str) -> None:
    """Poll `check` until it holds; `LaunchError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise LaunchError(f"{what} did not hold within {timeout_s}s")
        time.sleep(_POLL_S)  # polling a condition with a deadline


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the parent dies, so nothing is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """One child: `argv` with `env` over ours, output to `log_path`, ready when `ready` holds.

    `own_group` puts it in a process group of its own, so a stop reaches its workers too (nginx,
    uvicorn) and a Ctrl-C at the terminal does not; `own_session` does the same and also leaves
    our terminal; `die_with_parent` has the kernel SIGTERM it when we die. `log_path` None
    discards its output.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = REPO_ROOT,
        ready: ReadyCheck | None = None,
        own_group: bool = False,
        own_session: bool = False,
        die_with_parent: bool = False,
        log_mode: Literal["ab", "wb"] = "ab",
        stdin_devnull: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.ready = ready
        self.own_group = own_group or own_session
        self.own_session = own_session
        self.die_with_parent = die_with_parent
        self.log_mode = log_mode
        self.stdin_devnull = stdin_devnull
        self.popen: subprocess.Popen[bytes] | None = None

    # -- starting ------------------------------------------------------------------------------

    def spawn(self) -> ChildProcess:
        """Start it (again, after an exit) without waiting for readiness."""
        with contextlib.ExitStack() as stack:
            out: IO[bytes] | int = subprocess.DEVNULL
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(self.log_path.open(self.log_mode))  # the child keeps its own fd
            self.popen = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL if self.stdin_devnull else None,
                process_group=0 if self.own_group and not self.own_session else None,
                start_new_session=self.own_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # only prctl(2)
            )
        return self

    def is_ready(self) -> bool:
        """One look: True when ready, False when not yet, `ExitedWhileStarting` when it died."""
        popen = self._running()
        if popen.poll() is not None:
            raise ExitedWhileStarting(self.name, popen.returncode)
        return self.ready is None or self.ready()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise NotReadyInTime(self.name, timeout_s)
            time.sleep(_POLL_S)  # polling a condition with a deadline

    def start(self, timeout_s: float) -> ChildProcess:
        """Spawn and wait until ready; a child that does not come up is killed before the error."""
        self.spawn()
        try:
            self.wait_ready(timeout_s)
        except NotReadyInTime:
            self.kill()
            raise
        return self

    def restart(self, timeout_s: float, grace_s: float = 10.0) -> ChildProcess:
        self.stop(grace_s)
        return self.start(timeout_s)

    # -- looking -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._running().pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def poll(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- stopping ------------------------------------------------------------------------------

    def send(self, sig: signal.Signals, *, resume_first: bool = False, group: bool | None = None) -> None:
        """Signal it (its whole group when it has one, unless `group` is False).

        `resume_first` wakes a paused one first: a stopped process cannot handle SIGTERM.
        """
        if not self.alive():
            return
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_group if group is None else group:
                if resume_first:
                    os.killpg(self.popen.pid, signal.SIGCONT)  # a paused one cannot handle SIGTERM
                os.killpg(self.popen.pid, sig)
            else:
                if resume_first:
                    os.kill(self.popen.pid, signal.SIGCONT)
                os.kill(self.popen.pid, sig)

    def reap(
        self, grace_s: float, kill_timeout_s: float = 5.0, on_overdue: Callable[[], None] | None = None
    ) -> int | None:
        """Wait up to `grace_s` for it to exit, then SIGKILL what is left (its group's stragglers)."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(timeout=max(0.1, grace_s))
        except subprocess.TimeoutExpired:
            if on_overdue is not None:
                on_overdue()
        self.kill(kill_timeout_s)
        return self.popen.returncode

    def stop(
        self, grace_s: float = 10.0, sig: signal.Signals = signal.SIGTERM, kill_timeout_s: float = 5.0
    ) -> int | None:
        """`sig` (SIGTERM: let it flush and exit), SIGKILL after `grace_s`; returns its exit code."""
        self.send(sig)
        return self.reap(grace_s, kill_timeout_s)

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL now (the whole group when it has one: a killed master orphans its workers)."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_group:
                os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers in the group (workers)
            elif self.popen.poll() is None:
                os.kill(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)

    def _running(self) -> subprocess.Popen[bytes]:
        if self.popen is None:
            raise LaunchError(f"{self.name} was never started")
        return self.popen


def stop_together(
    children: Iterable[ChildProcess],
    grace_s: float,
    sig: signal.Signals = signal.SIGTERM,
    signals: Mapping[str, signal.Signals] | None = None,
) -> None:
    """Signal all first, then reap all against one deadline: N children stop in one grace period.

    `signals` names children that get another signal than `sig` (by their name).
    """
    group = list(children)
    for child in group:
        child.send((signals or {}).get(child.name, sig), resume_first=True)
    deadline = time.monotonic() + grace_s
    for child in group:
        child.reap(deadline - time.monotonic())
