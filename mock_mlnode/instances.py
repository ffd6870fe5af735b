"""The mock MLNode's instances: one state machine per (version, node), and what HTTP tracks around it.

The versions of a node share its GPU lock file and its model cache, as they share the real
machine; everything else (state, loaded model, in-flight count) is per version.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mock_mlnode.faults import FaultBook
from mock_mlnode.gpu_lock import FileGpuLock, lock_path_for
from mock_mlnode.model_cache import ModelCache
from mock_mlnode.request_log import RequestLog
from mock_mlnode.routing import Target, resolve
from mock_mlnode.settings import MockMLNodeSettings
from mock_mlnode.state import NodeMachine

__all__ = ["Instance", "MockNode"]


@dataclass
class Instance:
    """One (version, node): the state machine plus what the HTTP layer tracks around it."""

    machine: NodeMachine
    in_flight: int = 0
    load_task: asyncio.Task[None] | None = None

    def begin_inference(self, model: str, now: float, load_s: float) -> asyncio.Task[None]:
        """Start loading `model`; the task finishes the load after `load_s` unless stopped first."""
        generation = self.machine.begin_inference(model, now)
        task = asyncio.create_task(self._load(generation, load_s))
        self.load_task = task
        return task

    async def _load(self, generation: int, load_s: float) -> None:
        if load_s:
            await asyncio.sleep(load_s)
        self.machine.finish_inference(generation)

    def stop(self) -> None:
        """Stop the machine and abandon a load in progress (so it cannot finish after the stop)."""
        self.machine.stop()
        if self.load_task is not None:
            self.load_task.cancel()
            self.load_task = None

    def describe(self) -> dict[str, Any]:
        m = self.machine
        return {
            "version": m.version,
            "node": m.node,
            "state": m.state.value,
            "model": m.model,
            "inference": m.inference.value,
            "pow": m.pow.value,
            "pow_params": m.pow_params,  # the init body as received: a test can see what a switch carried
            "train_running": m.train_running,
            "in_flight": self.in_flight,
            "generation": m.generation,
            "gpu_held": m.gpu.held,
        }


@dataclass
class MockNode:
    """Everything one mock process serves: its instances, faults, request log and model caches."""

    settings: MockMLNodeSettings
    clock: Callable[[], float] = time.monotonic
    faults: FaultBook = field(default_factory=FaultBook)
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    model_caches: dict[str, ModelCache] = field(default_factory=dict)  # per node, shared by versions

    def __post_init__(self) -> None:
        self.log = RequestLog(self.settings.request_log_limit)
        self._versions = frozenset(self.settings.versions)
        self._nodes = frozenset(self.settings.nodes)
        for node in self.settings.nodes:
            self.model_caches[node] = ModelCache(download_s=self.settings.model_download_s)
            path = lock_path_for(self.settings.gpu_lock_path, node)
            for version in self.settings.versions:
                gpu = FileGpuLock(path, f"{node}@{version}")
                self.instances[(version, node)] = Instance(NodeMachine(node=node, version=version, gpu=gpu))

    def resolve(self, path: str) -> Target | None:
        return resolve(
            path, self._versions, self._nodes, self.settings.default_version, self.settings.default_node
        )

    def get(self, target: Target) -> Instance:
        return self.instances[(target.version, target.node)]
