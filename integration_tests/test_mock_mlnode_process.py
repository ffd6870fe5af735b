"""The mock as a process: the command line, and faults that end the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from integration_tests.conftest import REPO_ROOT
from integration_tests.mlnode_procs import MockMLNodeProcess


def test_injected_exit_kills_the_process_mid_call(tmp_path: Path) -> None:
    proc = MockMLNodeProcess(
        tmp_path, "--version", "v3.0.6", "--gpu-lock-path", str(tmp_path / "{node}.lock")
    )
    try:
        rule = {"route": "/api/v1/stop", "action": "exit", "exit_code": 3}
        assert httpx.post(f"{proc.url}/mock/faults", json=rule).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{proc.url}/api/v1/stop")
        assert proc.proc.wait(timeout=10) == 3
    finally:
        proc.stop()


def test_exit_on_request(tmp_path: Path) -> None:
    proc = MockMLNodeProcess(
        tmp_path, "--version", "v3.0.8", "--gpu-lock-path", str(tmp_path / "{node}.lock")
    )
    try:
        assert httpx.post(f"{proc.url}/mock/exit", json={"code": 4}).json() == {
            "status": "exiting",
            "code": 4,
        }
        assert proc.proc.wait(timeout=10) == 4
    finally:
        proc.stop()


def test_a_killed_holder_frees_the_gpu(tmp_path: Path) -> None:
    lock = str(tmp_path / "{node}.lock")
    old = MockMLNodeProcess(tmp_path, "--version", "v3.0.6", "--gpu-lock-path", lock, "--model-load-s", "0")
    new = MockMLNodeProcess(tmp_path, "--version", "v3.0.8", "--gpu-lock-path", lock, "--model-load-s", "0")
    try:
        up = {"model": "m", "dtype": "float16"}
        assert httpx.post(f"{old.url}/api/v1/inference/up", json=up).status_code == 200
        assert httpx.post(f"{new.url}/api/v1/inference/up", json=up).status_code == 500
        old.proc.kill()  # a crashed container releases its GPU
        old.proc.wait(timeout=10)
        assert httpx.post(f"{new.url}/api/v1/inference/up", json=up).status_code == 200
    finally:
        old.stop()
        new.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "v1.0"], "versions"),
        (["--version", "v3.0.8", "--node", "api"], "route segment"),
        (["--version", "v3.0.8", "--model-load-s", "-1"], "model_load_s"),
    ],
)
def test_bad_settings_are_a_clear_error(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mock_mlnode", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
