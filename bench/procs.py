"""The test bed's processes, started together and waited for together (`devtools.processes` each).

A benchmark run starts a dozen stacks, and every service reconnects to NATS and the chain on its
own, so the children are spawned at once and their readiness is awaited against one deadline.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from bench.waiting import BenchError
from devtools.processes import REPO_ROOT, ChildProcess, ExitedWhileStarting, http_ok, stop_together

__all__ = ["Procs"]


class Procs:
    """Child processes started together, each in its own group, each killed with us."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, ChildProcess] = {}
        self._ready_urls: dict[str, str] = {}

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, ready_url: str | None = None
    ) -> None:
        child = ChildProcess(
            name,
            argv,
            log_path=self.log_path(name),
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=REPO_ROOT,
            own_group=True,
            die_with_parent=True,
            stdin_devnull=True,
        )
        self.procs[name] = child.spawn()
        if ready_url is not None:
            self._ready_urls[name] = ready_url

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Every process answers 200 on its ready URL; a death while starting is an error with its log."""
        waiting = set(self._ready_urls)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while waiting:
                for name in sorted(waiting):
                    try:
                        alive = self.procs[name].is_ready()
                    except ExitedWhileStarting as exc:
                        raise BenchError(f"{name} exited with {exc.returncode}:\n{self.tail(name)}") from None
                    if alive and http_ok(self._ready_urls[name], client=client)():
                        waiting.discard(name)
                if time.monotonic() > deadline:
                    raise BenchError(f"not ready within {timeout_s}s: {sorted(waiting)}")
                time.sleep(0.05)  # polling a condition with a deadline

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.pid(name), sig)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def tail(self, name: str, lines: int = 25) -> str:
        return self.procs[name].log_tail(lines)

    def stop_all(self, grace_s: float = 5.0, interrupt: tuple[str, ...] = (), last: str = "nats") -> None:
        """SIGTERM every group (the services flush and exit), SIGKILL what is left after `grace_s`.

        `last` (NATS) goes after the others, so services do not spend their grace period on a
        bus that is already gone. Those named in `interrupt` get SIGINT and more time: uvicorn
        re-raises the signal it stopped on, and only SIGINT (a KeyboardInterrupt) lets cProfile
        write its stats.
        """
        first = [p for p in self.procs.values() if p.name != last]
        then = [p for p in self.procs.values() if p.name == last]
        signals = dict.fromkeys(interrupt, signal.SIGINT)
        for group in (first, then):
            stop_together(group, grace_s + (20.0 if interrupt else 0.0), signal.SIGTERM, signals)
