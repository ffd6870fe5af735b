"""The local stack's supervisor: readiness, death reports, restarts, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.supervisor import ChildExit, ProcessSpec, Supervisor, SupervisorError
from devtools.embedded_nats import free_port
from integration_tests.conftest import REPO_ROOT


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def http_server(port: int) -> ProcessSpec:
    return ProcessSpec(
        "web",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready_url=f"http://127.0.0.1:{port}/",
    )


def test_ready_report_restart_and_stop(tmp_path: Path) -> None:
    exits: list[ChildExit] = []
    sup = Supervisor(tmp_path / "logs", on_exit=exits.append)
    port = free_port()
    sup.start(http_server(port))
    sup.start(ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"]))
    pids = sup.pids()
    assert set(pids) == {"web", "sleeper"}

    os.kill(pids["sleeper"], signal.SIGKILL)
    assert wait_until(lambda: bool(sup.check()) or bool(exits))
    assert exits[0].name == "sleeper" and exits[0].returncode == -signal.SIGKILL
    assert wait_until(lambda: (sup.check() is not None) and "sleeper" in sup.pids())  # restarted
    assert sup.pids()["sleeper"] != pids["sleeper"]

    everything = list(sup.pids().values())
    sup.stop_all()
    assert not any(alive(pid) for pid in everything)


def test_a_child_that_fails_to_start_is_a_clear_error(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs")
    bad = ProcessSpec(
        "broken",
        [sys.executable, "-c", "import sys; print('no config'); sys.exit(3)"],
        ready_url="http://127.0.0.1:9/",
    )
    with pytest.raises(SupervisorError, match=r"broken exited with 3 while starting:\nno config"):
        sup.start(bad)
    sup.stop_all()


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    sup = subprocess.Popen(
        [sys.executable, "-m", "integration_tests.procs.supervised", str(tmp_path / "logs"), str(pid_file)],
        cwd=REPO_ROOT,
    )
    try:
        assert wait_until(pid_file.exists, timeout=20)
        child = int(pid_file.read_text())
        assert alive(child)
        sup.kill()
        sup.wait(timeout=10)
        assert wait_until(lambda: not alive(child)), "the child outlived its supervisor"
    finally:
        if sup.poll() is None:
            sup.kill()
