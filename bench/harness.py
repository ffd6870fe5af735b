"""The benchmarks' test bed, by the names the benchmarks import; each part lives in its own module.

`bench.stack` (the processes), `bench.stack_calls` (what a benchmark asks of them over HTTP),
`bench.stack_config`, `bench.procs` (starting and stopping them together), `bench.ports`,
`bench.procfs` (CPU, memory, the machine), `bench.logtail`, `bench.events` (NATS arrival
times) and `bench.waiting`.

Timestamps come from the processes' own clocks (block header time, log lines, the mock's request
log), all on this one machine, so they compare directly.
"""

from __future__ import annotations

from bench.events import EventLog
from bench.logtail import LogTail
from bench.ports import NEW, OLD, listen_port
from bench.procfs import cpu_seconds, machine_info, process_tree, rss_mib
from bench.procs import Procs
from bench.stack import BenchStack
from bench.stack_config import MODEL, BrokerKind, StackConfig
from bench.waiting import BenchError, wait_for
from devtools.processes import REPO_ROOT

__all__ = [
    "MODEL",
    "NEW",
    "OLD",
    "REPO_ROOT",
    "BenchError",
    "BenchStack",
    "BrokerKind",
    "EventLog",
    "LogTail",
    "Procs",
    "StackConfig",
    "cpu_seconds",
    "listen_port",
    "machine_info",
    "process_tree",
    "rss_mib",
    "wait_for",
]
