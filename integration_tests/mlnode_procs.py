"""Mock MLNode processes and an nginx in front of them, as the side-by-side deployment runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.embedded_nats import free_port
from devtools.processes import ChildProcess, ExitedWhileStarting, NotReadyInTime, http_ok, python_module
from integration_tests.conftest import REPO_ROOT

__all__ = ["MockMLNodeProcess"]


class MockMLNodeProcess:
    """`python -m mock_mlnode` on a free port; waits until it answers."""

    def __init__(
        self,
        log_dir: Path,
        *args: str,
        startup_timeout_s: float = 15.0,
        port: int | None = None,
        wait: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"mock-mlnode-{self.port}.log"
        self.process = ChildProcess(
            "mock_mlnode",
            python_module("mock_mlnode", "--port", str(self.port), *args),
            log_path=self.log_path,
            cwd=REPO_ROOT,
            ready=http_ok(f"{self.url}/mock/instances", timeout_s=0.5),
            log_mode="wb",
        )
        self.startup_timeout_s = startup_timeout_s
        self.process.spawn()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until it answers (at once when `wait`; later, to start several side by side)."""
        startup_timeout_s = self.startup_timeout_s
        try:
            self.process.wait_ready(startup_timeout_s)
        except ExitedWhileStarting as exc:
            raise RuntimeError(
                f"mock_mlnode exited with {exc.returncode}:\n{self.log_path.read_text()}"
            ) from None
        except NotReadyInTime:
            self.stop()
            raise RuntimeError(f"mock_mlnode not answering within {startup_timeout_s}s") from None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.popen is not None
        return self.process.popen

    def stop(self) -> None:
        self.process.stop(grace_s=10)
