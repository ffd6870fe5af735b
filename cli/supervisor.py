"""Runs the local stack's processes: start in order, wait until each is ready, report deaths, stop all.

Each child gets its own process group (so nginx workers and uvicorn children go with it) and is
told by the kernel to exit if the supervisor dies (`PR_SET_PDEATHSIG`), so neither Ctrl-C nor a
killed supervisor leaves a process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.logging import get_logger

__all__ = ["ChildExit", "ProcessSpec", "Supervisor", "SupervisorError"]

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1


class SupervisorError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None  # GET must answer 200; None: ready once started
    ready_timeout_s: float = 30.0
    cwd: Path | None = None
    restart: bool = True  # restart after an unexpected exit (with backoff)


@dataclass(frozen=True)
class ChildExit:
    name: str
    returncode: int
    restarts: int
    log_tail: str


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Child:
    spec: ProcessSpec
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_restart_at: float = 0.0


class Supervisor:
    def __init__(self, log_dir: Path, on_exit: Callable[[ChildExit], None] | None = None) -> None:
        self.log_dir = log_dir
        self.on_exit = on_exit
        self._children: list[_Child] = []
        self.max_restarts = 5

    # -- starting ----------------------------------------------------------------------------

    def start(self, spec: ProcessSpec) -> None:
        """Start one child and wait until it is ready; raises with its log tail when it is not."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = _Child(spec, self.log_dir / f"{spec.name}.log")
        self._children.append(child)
        self._spawn(child)
        self._wait_ready(child)
        log.info("started", extra={"child": spec.name, "pid": child.proc.pid if child.proc else None})

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        with child.log_path.open("ab") as out:
            child.proc = subprocess.Popen(
                list(spec.argv),
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=_die_with_parent,  # only prctl(2); spawned from the main thread
            )

    def _wait_ready(self, child: _Child) -> None:
        spec = child.spec
        deadline = time.monotonic() + spec.ready_timeout_s
        assert child.proc is not None
        while True:
            if child.proc.poll() is not None:
                code, tail = child.proc.returncode, self.log_tail(spec.name)
                raise SupervisorError(f"{spec.name} exited with {code} while starting:\n{tail}")
            if spec.ready_url is None or _answers(spec.ready_url):
                return
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"{spec.name} not ready at {spec.ready_url} within {spec.ready_timeout_s}s:\n"
                    f"{self.log_tail(spec.name)}"
                )
            time.sleep(0.05)  # polling a condition with a deadline

    def wait_for_url(self, url: str, timeout_s: float) -> None:
        """Wait until `url` answers 200 (e.g. a cluster that needs all its members first)."""
        deadline = time.monotonic() + timeout_s
        while not _answers(url):
            if time.monotonic() > deadline:
                raise SupervisorError(f"{url} did not answer 200 within {timeout_s}s")
            time.sleep(0.05)  # polling a condition with a deadline

    # -- watching ----------------------------------------------------------------------------

    def check(self) -> list[ChildExit]:
        """Report children that exited since the last check, and restart those that may be."""
        exits: list[ChildExit] = []
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is None:
                if child.spec.restart and now >= child.next_restart_at:
                    self._restart(child)
                continue
            code = proc.poll()
            if code is None:
                continue
            child.proc = None
            event = ChildExit(child.spec.name, code, child.restarts, self.log_tail(child.spec.name))
            exits.append(event)
            log.error(
                "process exited",
                extra={"child": child.spec.name, "returncode": code, "restarts": child.restarts},
            )
            if self.on_exit is not None:
                self.on_exit(event)
            if child.spec.restart and child.restarts < self.max_restarts:
                child.next_restart_at = now + min(2.0**child.restarts, 30.0)
            else:
                child.spec = ProcessSpec(**{**child.spec.__dict__, "restart": False})
        return exits

    def _restart(self, child: _Child) -> None:
        child.restarts += 1
        log.warning("restarting", extra={"child": child.spec.name, "restart": child.restarts})
        self._spawn(child)

    def set_restart(self, name: str, restart: bool) -> None:
        """Turn automatic restarts of one child off (keep it down) or back on."""
        for child in self._children:
            if child.spec.name == name:
                child.spec = ProcessSpec(**{**child.spec.__dict__, "restart": restart})
                child.restarts = 0 if restart else child.restarts
                return
        raise KeyError(name)

    def pids(self) -> dict[str, int]:
        return {
            c.spec.name: c.proc.pid for c in self._children if c.proc is not None and c.proc.poll() is None
        }

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- stopping ----------------------------------------------------------------------------

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Reverse start order: SIGTERM each process group, then SIGKILL what is left."""
        for child in reversed(self._children):
            child.spec = ProcessSpec(**{**child.spec.__dict__, "restart": False})
            proc, child.proc = child.proc, None
            if proc is None:
                continue
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("did not stop in time, killing", extra={"child": child.spec.name})
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers in the group (workers)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
