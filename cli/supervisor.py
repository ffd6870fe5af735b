"""Runs the local stack's processes: start in order, wait until each is ready, report deaths, stop all.

Each child gets its own process group (so nginx workers and uvicorn children go with it) and is
told by the kernel to exit if the supervisor dies (`PR_SET_PDEATHSIG`), so neither Ctrl-C nor a
killed supervisor leaves a process behind.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from devtools.processes import (
    ChildProcess,
    ExitedWhileStarting,
    LaunchError,
    NotReadyInTime,
    http_ok,
    wait_until,
)
from shared.logging import get_logger

__all__ = ["ChildExit", "ProcessSpec", "Supervisor", "SupervisorError"]

log = get_logger(__name__)


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


@dataclass
class _Child:
    spec: ProcessSpec
    process: ChildProcess
    batch: int = 0  # children started together (`start_all`) are stopped together
    running: bool = False
    restarts: int = 0
    next_restart_at: float = 0.0


class Supervisor:
    def __init__(self, log_dir: Path, on_exit: Callable[[ChildExit], None] | None = None) -> None:
        self.log_dir = log_dir
        self.on_exit = on_exit
        self._children: list[_Child] = []
        self._batches = 0
        self.max_restarts = 5

    # -- starting ----------------------------------------------------------------------------

    def start(self, spec: ProcessSpec) -> None:
        """Start one child and wait until it is ready; raises with its log tail when it is not."""
        self.start_all((spec,))

    def start_all(self, specs: Sequence[ProcessSpec]) -> None:
        """Start children that do not need each other side by side, then wait until each is ready."""
        started = []
        self._batches += 1
        for spec in specs:
            process = ChildProcess(
                spec.name,
                spec.argv,
                log_path=self.log_dir / f"{spec.name}.log",
                env=spec.env,
                cwd=spec.cwd,
                ready=http_ok(spec.ready_url) if spec.ready_url is not None else None,
                own_group=True,
                die_with_parent=True,
                stdin_devnull=True,
            )
            child = _Child(spec, process, batch=self._batches)
            self._children.append(child)
            self._spawn(child)
            started.append(child)
        for child in started:
            self._wait_ready(child)

    def _wait_ready(self, child: _Child) -> None:
        spec, process = child.spec, child.process
        try:
            process.wait_ready(spec.ready_timeout_s)
        except ExitedWhileStarting as exc:
            tail = self.log_tail(spec.name)
            raise SupervisorError(
                f"{spec.name} exited with {exc.returncode} while starting:\n{tail}"
            ) from None
        except NotReadyInTime:
            raise SupervisorError(
                f"{spec.name} not ready at {spec.ready_url} within {spec.ready_timeout_s}s:\n"
                f"{self.log_tail(spec.name)}"
            ) from None
        log.info("started", extra={"child": spec.name, "pid": process.pid})

    def _spawn(self, child: _Child) -> None:
        child.process.spawn()
        child.running = True

    def wait_for_url(self, url: str, timeout_s: float) -> None:
        """Wait until `url` answers 200 (e.g. a cluster that needs all its members first)."""
        try:
            wait_until(http_ok(url), timeout_s, url)
        except LaunchError:
            raise SupervisorError(f"{url} did not answer 200 within {timeout_s}s") from None

    # -- watching ----------------------------------------------------------------------------

    def check(self) -> list[ChildExit]:
        """Report children that exited since the last check, and restart those that may be."""
        exits: list[ChildExit] = []
        now = time.monotonic()
        for child in self._children:
            if not child.running:
                if child.spec.restart and now >= child.next_restart_at:
                    self._restart(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            child.running = False
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
                child.spec = replace(child.spec, restart=False)
        return exits

    def _restart(self, child: _Child) -> None:
        child.restarts += 1
        log.warning("restarting", extra={"child": child.spec.name, "restart": child.restarts})
        self._spawn(child)

    def set_restart(self, name: str, restart: bool) -> None:
        """Turn automatic restarts of one child off (keep it down) or back on."""
        for child in self._children:
            if child.spec.name == name:
                child.spec = replace(child.spec, restart=restart)
                child.restarts = 0 if restart else child.restarts
                return
        raise KeyError(name)

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.process.pid for c in self._children if c.running and c.process.alive()}

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- stopping ----------------------------------------------------------------------------

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Reverse start order, the children started together at once: SIGTERM each process
        group of the batch, then wait for them (SIGKILL what is left) before the batch before."""
        for batch in sorted({c.batch for c in self._children}, reverse=True):
            stopping = []
            for child in reversed(self._children):
                if child.batch != batch:
                    continue
                child.spec = replace(child.spec, restart=False)
                if not child.running:
                    continue
                child.running = False
                child.process.send(signal.SIGTERM)
                stopping.append(child)
            for child in stopping:
                child.process.reap(timeout_s, on_overdue=partial(_overdue, child.spec.name))


def _overdue(name: str) -> None:
    log.warning("did not stop in time, killing", extra={"child": name})
