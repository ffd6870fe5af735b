"""What one benchmark run's stack consists of: which broker, how many nodes, which timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["MODEL", "BrokerKind", "StackConfig"]

MODEL = "Qwen/Qwen2.5-7B-Instruct"

BrokerKind = Literal["ours", "baseline", "none"]


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    nodes: int = 2
    model_load_s: float = 2.0
    completion_delay_s: float = 0.0
    broker: BrokerKind = "ours"
    chain: bool = True  # mock_chain + chain-watcher
    mlnodes: bool = True  # the mock MLNodes and nginx
    registry: bool = True
    max_concurrent: int = 100
    broker_env: dict[str, str] = field(default_factory=dict)
    baseline_refresh_s: float = 2.0
    baseline_status_s: float = 2.0
    nginx_workers: int = 1
    # Python processes to run under cProfile (their stats go to <run_dir>/<name>.prof at exit).
    profile: tuple[str, ...] = ()
