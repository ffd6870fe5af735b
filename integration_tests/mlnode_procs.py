"""Mock MLNode processes and an nginx in front of them, as the side-by-side deployment runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from integration_tests.conftest import REPO_ROOT
from shared.embedded_nats import free_port

__all__ = ["MockMLNodeProcess"]


class MockMLNodeProcess:
    """`python -m mock_mlnode` on a free port; waits until it answers."""

    def __init__(
        self, log_dir: Path, *args: str, startup_timeout_s: float = 15.0, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"mock-mlnode-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mock_mlnode", "--port", str(self.port), *args],
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mock_mlnode exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/mock/instances", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mock_mlnode not answering within {startup_timeout_s}s")
            time.sleep(0.05)  # polling a condition with a deadline

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
