"""What /proc tells about the stack's processes (CPU, memory) and about the machine that ran them."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import parse_vmrss_kib
from devtools.embedded_nats import find_nats_server
from devtools.nginx_process import find_nginx

__all__ = ["cpu_seconds", "machine_info", "process_tree", "rss_mib"]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx's workers), from /proc/<pid>/task/*/children."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def rss_mib(pid: int, *, tree: bool = False) -> float | None:
    """Resident memory of a process (and its descendants when `tree`), in MiB; None when it is gone."""
    total_kib = 0
    seen = False
    for p in process_tree(pid) if tree else [pid]:
        try:
            kib = parse_vmrss_kib(Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        if kib is not None:
            total_kib += kib
            seen = True
    return round(total_kib / 1024, 1) if seen else None


def cpu_seconds(pid: int, *, tree: bool = False) -> float | None:
    """User + system CPU time a process (and its descendants when `tree`) has used, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    for p in process_tree(pid) if tree else [pid]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces; fields after it are fixed
        total += (int(fields[11]) + int(fields[12])) / ticks
        seen = True
    return round(total, 3) if seen else None


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_info() -> dict[str, Any]:
    """What ran the benchmarks: results from different machines are not comparable."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib: float | None = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    affinity: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        affinity = len(os.sched_getaffinity(0))
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nginx": _first_line([find_nginx(), "-v"]),
        "nats_server": _first_line([find_nats_server(), "--version"]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
