"""The MLNode state machine, without sockets: a fake GPU is enough for the pure core."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mock_mlnode.gpu_devices import device
from mock_mlnode.state import (
    BadRequest,
    Conflict,
    GpuBusy,
    InferenceStatus,
    NodeMachine,
    NotReady,
    PowStatus,
    ServiceState,
)


@dataclass
class Gpu:
    """One physical GPU shared by handles, like the file lock."""

    owner: str | None = None


@dataclass
class Handle:
    gpu: Gpu
    name: str

    def acquire(self) -> bool:
        if self.gpu.owner in (None, self.name):
            self.gpu.owner = self.name
            return True
        return False

    def release(self) -> None:
        if self.gpu.owner == self.name:
            self.gpu.owner = None

    def holder(self) -> str | None:
        return self.gpu.owner

    @property
    def held(self) -> bool:
        return self.gpu.owner == self.name


def pair() -> tuple[NodeMachine, NodeMachine]:
    gpu = Gpu()
    old = NodeMachine("n", "v3.0.6", Handle(gpu, "n@v3.0.6"))
    new = NodeMachine("n", "v3.0.8", Handle(gpu, "n@v3.0.8"))
    return old, new


def test_inference_loads_then_serves() -> None:
    old, _ = pair()
    gen = old.begin_inference("m", now=10.0)
    assert old.state is ServiceState.INFERENCE and old.inference is InferenceStatus.STARTING
    assert old.healthy  # the real /health says healthy while a model loads
    assert old.startup_status(now=11.0)["status"] == "in_progress"
    with pytest.raises(NotReady):
        old.require_model()
    assert old.finish_inference(gen)
    assert old.require_model() == "m" and old.healthy
    assert old.startup_status(now=12.5) == {
        "status": "completed",
        "is_starting": False,
        "is_running": True,
        "elapsed_seconds": 2.5,
    }


def test_stop_overtakes_a_load_in_progress() -> None:
    old, _ = pair()
    gen = old.begin_inference("m", now=0)
    old.stop()
    assert not old.finish_inference(gen)
    assert old.state is ServiceState.STOPPED and old.loaded_model is None
    assert not old.gpu.held
    assert old.startup_status(now=1)["status"] == "cancelled"
    old.finish_inference(old.begin_inference("m", now=2))
    old.stop()
    assert old.startup_status(now=3)["status"] == "not_started"


def test_stop_bumps_the_generation_so_in_flight_work_notices() -> None:
    old, _ = pair()
    old.finish_inference(old.begin_inference("m", now=0))
    before = old.generation
    old.stop()
    assert old.generation > before
    stopped = old.generation
    old.stop()  # stopping a stopped node changes nothing
    assert old.generation == stopped


def test_versions_share_one_gpu() -> None:
    old, new = pair()
    old.begin_inference("m", now=0)
    with pytest.raises(GpuBusy, match=r"n@v3\.0\.6") as err:
        new.begin_inference("m", now=0)
    assert err.value.status == 409
    assert new.state is ServiceState.STOPPED  # the refusal changed nothing
    new.stop()  # the wrong version's stop frees nothing
    with pytest.raises(GpuBusy):
        new.pow_init({})
    old.stop()
    new.begin_inference("m", now=0)
    assert new.gpu.held


def test_conflicts_follow_the_real_router_check() -> None:
    old, _ = pair()
    old.pow_init({"node_id": 1, "node_count": 2})
    with pytest.raises(Conflict, match=r"POW is running\. Please stop POW first"):
        old.begin_inference("m", now=0)
    with pytest.raises(Conflict):
        old.train_start()
    old.check_conflict("pow")  # the running service's own routes pass


def test_second_up_is_a_conflict() -> None:
    old, _ = pair()
    old.begin_inference("m", now=0)
    with pytest.raises(Conflict, match="already starting"):
        old.begin_inference("m", now=0)


def test_pow_phases() -> None:
    old, _ = pair()
    assert old.pow_status() == {"status": "NOT_LOADED"}
    with pytest.raises(BadRequest):
        old.pow_phase(PowStatus.GENERATING)
    with pytest.raises(BadRequest, match="node_id and node_count"):
        old.pow_init({"node_id": -1}, PowStatus.GENERATING)
    assert old.state is ServiceState.STOPPED and not old.gpu.held
    old.pow_init({"node_id": 0, "node_count": 1}, PowStatus.GENERATING)
    old.pow_phase(PowStatus.VALIDATING)
    old.pow_validate()
    assert old.pow_status() == {"status": "VALIDATING", "is_model_initialized": True} and old.pow_batches == 1
    assert old.pow_stop()
    assert old.pow_status() == {"status": "NOT_LOADED"}  # the controller is gone, as on the real node
    assert old.state is ServiceState.STOPPED
    assert not old.pow_stop()  # not running: the route answers OK with a message


def test_train_start_stop() -> None:
    old, _ = pair()
    with pytest.raises(BadRequest):
        old.train_stop()
    old.train_start()
    with pytest.raises(BadRequest):
        old.train_start()
    assert old.state is ServiceState.TRAIN and old.gpu.held
    old.train_stop()
    assert old.state is ServiceState.STOPPED and not old.gpu.held


def test_health_names_the_gpu_holder() -> None:
    old, new = pair()
    old.begin_inference("m", now=0)
    health = new.health(device(new.gpu, "GPU", 1000))
    assert health["gpu"]["devices"][0]["holder"] == "n@v3.0.6"
    assert health["gpu"]["devices"][0]["used_memory_mb"] > 0  # the other version holds it
    assert set(health["gpu"]["devices"][0]) >= {"index", "name", "is_available", "total_memory_mb"}
    loading = old.health(device(old.gpu, "GPU", 1000))
    assert loading["status"] == "healthy"
    assert loading["managers"]["inference"] == {"running": True, "healthy": True}
