"""Services as real processes (`python -m services.X`), so tests can SIGKILL and restart them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from devtools.processes import ChildProcess, ExitedWhileStarting, NotReadyInTime, http_ok, python_module
from integration_tests.conftest import REPO_ROOT

__all__ = ["ServiceProcess"]


class ServiceProcess:
    """Starts `python -m module` with `env`, waits until `health_url` answers 200."""

    def __init__(self, module: str, env: dict[str, str], health_url: str, log_path: Path) -> None:
        self.module = module
        self.env = env
        self.health_url = health_url
        self.log_path = log_path
        self.process = ChildProcess(
            module,
            python_module(module),
            log_path=log_path,
            env=env,
            cwd=REPO_ROOT,
            ready=http_ok(health_url, timeout_s=0.5),
        )

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.popen

    def start(self, timeout_s: float = 20.0) -> ServiceProcess:
        try:
            self.process.start(timeout_s)
        except ExitedWhileStarting as exc:
            raise RuntimeError(f"{self.module} exited with {exc.returncode}:\n{self.log_tail()}") from None
        except NotReadyInTime:
            raise RuntimeError(f"{self.module} not healthy within {timeout_s}s:\n{self.log_tail()}") from None
        return self

    def kill(self) -> None:
        self.process.kill()

    def terminate(self) -> int | None:
        return self.process.stop(grace_s=15, kill_timeout_s=10)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not go in time."""
        self.terminate()

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else as `{"raw": line}`)."""
        lines: list[dict[str, Any]] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                lines.append({"raw": raw})
        return lines

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)
