"""`mlnode-upgrade dev up`: the whole local stack, its status, a dying child, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cli.stack import STACK_FILE, StackInfo
from integration_tests.conftest import REPO_ROOT


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_dev_up_status_child_death_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "dev"
    out = (tmp_path / "dev-up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "up", "--run-dir", str(run_dir), "--model-load-s", "0.5"],
        cwd=REPO_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_for(lambda: (run_dir / STACK_FILE).exists() or proc.poll() is not None, 90, "the stack to start")
        assert proc.poll() is None, (tmp_path / "dev-up.log").read_text()
        info = StackInfo.load(run_dir)
        pids = descendants(proc.pid)
        assert len(pids) >= 10  # nats, chain, 4 mlnodes, nginx (+workers), 3 services

        # Every node comes up on the chain's version (genesis v3.0.6).
        def serving() -> bool:
            try:
                nodes = httpx.get(f"{info.broker_url}/upgrade/status", timeout=2).json()["nodes"]
            except httpx.HTTPError:
                return False
            return len(nodes) == 2 and all(n["ready"] and n["version"] == "v3.0.6" for n in nodes)

        wait_for(serving, 60, "both nodes serving v3.0.6")
        status = cli("status", "--run-dir", str(run_dir), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["current_version"] == "v3.0.6" and report["height"] >= 1
        assert {n["id"] for n in report["nodes"]} == {"node-1", "node-2"}

        # The thin clients: nodes and rollback, with the stack's admin token.
        listed = cli("nodes", "list", "--run-dir", str(run_dir))
        assert listed.returncode == 0 and {n["id"] for n in json.loads(listed.stdout)} == {"node-1", "node-2"}
        removed = cli("nodes", "remove", "node-2", "--run-dir", str(run_dir))
        assert removed.returncode == 0, removed.stderr
        listed = cli("nodes", "list", "--run-dir", str(run_dir))
        assert [n["id"] for n in json.loads(listed.stdout)] == ["node-1"]
        refused = cli("rollback", "--version", "v3.0.6", "--reason", "drill", "--run-dir", str(run_dir))
        assert refused.returncode == 1 and "already the current version" in refused.stderr
        rolled = cli("rollback", "--version", "v3.0.8", "--reason", "drill", "--run-dir", str(run_dir))
        assert rolled.returncode == 0, rolled.stderr
        assert json.loads(rolled.stdout)["rollback_active"] is True

        # A child that dies is reported, and restarted.
        watcher_pid = next(
            p for p in pids if b"services.chain_watcher" in Path(f"/proc/{p}/cmdline").read_bytes()
        )
        os.kill(watcher_pid, signal.SIGKILL)
        wait_for(
            lambda: "chain-watcher exited with -9" in (tmp_path / "dev-up.log").read_text(), 20, "a report"
        )
        wait_for(lambda: healthy(f"{info.chain_watcher_url}/healthz"), 30, "its restart")

        # Ctrl-C: everything goes, nothing is left.
        pids = descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        wait_for(lambda: not any(alive(p) for p in pids), 20, "every child to exit")
        assert not (run_dir / STACK_FILE).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()


def test_ctrl_c_while_starting_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "dev"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "up", "--run-dir", str(run_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Interrupt once the first children are up but before the stack is complete.
        wait_for(lambda: len(descendants(proc.pid)) >= 3, 60, "the first children")
        pids = descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) in (0, 130)
        later = pids | descendants(proc.pid)
        wait_for(lambda: not any(alive(p) for p in later), 20, "every child to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
