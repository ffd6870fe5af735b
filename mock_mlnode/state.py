"""The MLNode service state machine, one per (node, version), with no I/O.

It mirrors the real MLNode: one service at a time (STOPPED / INFERENCE / POW / TRAIN), 409 when
another service is running, the model answering only once it is loaded. Unlike the reference mock,
each version of a node has its own machine; what the versions share is the node's GPU, behind the
`GpuLock` the machine is given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "BadRequest",
    "Conflict",
    "GpuBusy",
    "GpuLock",
    "InferenceStatus",
    "MLNodeError",
    "NodeMachine",
    "NotReady",
    "PowStatus",
    "ServiceState",
]


class ServiceState(enum.StrEnum):
    STOPPED = "STOPPED"
    INFERENCE = "INFERENCE"
    POW = "POW"
    TRAIN = "TRAIN"


class PowStatus(enum.StrEnum):
    NOT_LOADED = "NOT_LOADED"
    IDLE = "IDLE"
    GENERATING = "GENERATING"
    VALIDATING = "VALIDATING"
    STOPPED = "STOPPED"


class InferenceStatus(enum.StrEnum):
    """`inference/up/status`'s `status`, with the real MLNode's values."""

    IDLE = "not_started"
    STARTING = "in_progress"
    RUNNING = "completed"
    CANCELLED = "cancelled"  # stopped while loading
    FAILED = "failed"


class MLNodeError(Exception):
    """An error the HTTP layer answers with `status` and `{"detail": str(self)}`."""

    status = 500


class Conflict(MLNodeError):
    status = 409


class GpuBusy(Conflict):
    def __init__(self, holder: str | None) -> None:
        self.holder = holder
        super().__init__(f"GPU is held by {holder or 'another process'}; stop it first")


class BadRequest(MLNodeError):
    status = 400


class NotReady(MLNodeError):
    status = 503


class GpuLock(Protocol):
    """The node's one GPU. `acquire` is non-blocking: False means someone else holds it."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...

    def holder(self) -> str | None: ...

    @property
    def held(self) -> bool: ...


# The service a route belongs to, as the real conflict check derives it from the path.
_SERVICE_OF_ROUTE = {
    "inference": ServiceState.INFERENCE,
    "pow": ServiceState.POW,
    "train": ServiceState.TRAIN,
}


@dataclass
class NodeMachine:
    """One MLNode container: its service state and what is loaded."""

    node: str
    version: str
    gpu: GpuLock
    state: ServiceState = ServiceState.STOPPED
    model: str | None = None
    inference: InferenceStatus = InferenceStatus.IDLE
    inference_started_at: float | None = None
    inference_error: str | None = None
    pow: PowStatus = PowStatus.NOT_LOADED
    pow_params: dict[str, Any] = field(default_factory=dict)
    pow_batches: int = 0
    train_running: bool = False
    generation: int = 0  # bumps whenever the loaded model goes away, so in-flight work can notice

    @property
    def name(self) -> str:
        return f"{self.node}@{self.version}"

    # -- the real router-level conflict check ----------------------------------------------

    def check_conflict(self, service: str) -> None:
        """409 unless the state is STOPPED or already this service (`service` is inference/pow/train)."""
        wanted = _SERVICE_OF_ROUTE[service]
        if self.state not in (ServiceState.STOPPED, wanted):
            raise Conflict(f"{self.state.value} is running. Please stop {self.state.value} first")

    # -- the GPU -----------------------------------------------------------------------------

    def _take_gpu(self) -> None:
        if not self.gpu.held and not self.gpu.acquire():
            raise GpuBusy(self.gpu.holder())

    def _free_gpu(self) -> None:
        if self.gpu.held:
            self.gpu.release()

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop whatever runs and free the GPU; always succeeds, like the real `/api/v1/stop`.

        The PoW controller is dropped, so `pow/status` says NOT_LOADED again, as the real one does;
        a load that was under way reports `cancelled` until the next `inference/up`.
        """
        if self.model is not None or self.inference not in (InferenceStatus.IDLE, InferenceStatus.CANCELLED):
            self.generation += 1
        loading = self.inference is InferenceStatus.STARTING
        self.state = ServiceState.STOPPED
        self.model = None
        self.inference = InferenceStatus.CANCELLED if loading else InferenceStatus.IDLE
        self.inference_started_at = None
        self.inference_error = None
        self.pow = PowStatus.NOT_LOADED
        self.pow_params = {}
        self.train_running = False
        self._free_gpu()

    # -- inference ---------------------------------------------------------------------------

    def begin_inference(self, model: str, now: float) -> int:
        """Start loading `model`; returns the generation the load belongs to."""
        self.check_conflict("inference")
        if self.inference in (InferenceStatus.STARTING, InferenceStatus.RUNNING):
            doing = "starting" if self.inference is InferenceStatus.STARTING else "running"
            raise Conflict(f"inference is already {doing} (model {self.model})")
        self._take_gpu()
        self.generation += 1
        self.state = ServiceState.INFERENCE
        self.model = model
        self.inference = InferenceStatus.STARTING
        self.inference_started_at = now
        self.inference_error = None
        return self.generation

    def finish_inference(self, generation: int) -> bool:
        """The load finished; False when a stop (or a newer load) overtook it."""
        if generation != self.generation or self.inference is not InferenceStatus.STARTING:
            return False
        self.inference = InferenceStatus.RUNNING
        return True

    def inference_down(self) -> None:
        if self.state is ServiceState.INFERENCE:
            self.stop()

    @property
    def loaded_model(self) -> str | None:
        """The model that answers requests now; None while stopped or still loading."""
        if self.state is not ServiceState.INFERENCE or self.inference is not InferenceStatus.RUNNING:
            return None
        return self.model

    def require_model(self) -> str:
        """The loaded model, or 503 as the real proxy answers with no healthy backend."""
        model = self.loaded_model
        if model is None:
            raise NotReady("No vLLM backend available")
        return model

    @property
    def healthy(self) -> bool:
        """What the real `/health` and `/readyz` report: healthy unless a manager has failed.

        A loading model does not make the real MLNode unhealthy: its manager only counts as
        active once the load has finished, and an inactive manager is healthy. So readiness to
        serve is `/v1/models` answering, never these two.
        """
        return self.inference is not InferenceStatus.FAILED

    def startup_status(self, now: float) -> dict[str, Any]:
        status: dict[str, Any] = {
            "status": self.inference.value,
            "is_starting": self.inference is InferenceStatus.STARTING,
            "is_running": self.inference is InferenceStatus.RUNNING,
        }
        if self.inference_started_at is not None:
            status["elapsed_seconds"] = round(now - self.inference_started_at, 3)
        if self.inference_error:
            status["error"] = self.inference_error
        return status

    # -- proof of work -----------------------------------------------------------------------

    def pow_init(self, params: dict[str, Any], phase: PowStatus = PowStatus.IDLE) -> None:
        self.check_conflict("pow")
        if phase is PowStatus.GENERATING and (
            params.get("node_id", -1) == -1 or params.get("node_count", -1) == -1
        ):
            raise BadRequest("node_id and node_count are required to generate")
        self._take_gpu()
        self.state = ServiceState.POW
        self.pow_params = dict(params)
        self.pow = phase

    def pow_phase(self, phase: PowStatus) -> None:
        self.check_conflict("pow")
        if self.state is not ServiceState.POW:
            raise BadRequest("PoW is not running")
        self.pow = phase

    def pow_validate(self) -> None:
        self.check_conflict("pow")
        if self.state is not ServiceState.POW:
            raise BadRequest("PoW is not running")
        self.pow_batches += 1

    def pow_status(self) -> dict[str, Any]:
        if self.pow is PowStatus.NOT_LOADED:
            return {"status": PowStatus.NOT_LOADED.value}
        return {"status": self.pow.value, "is_model_initialized": self.state is ServiceState.POW}

    def pow_stop(self) -> bool:
        """Stop PoW; False when it was not running (the real route still answers OK)."""
        if self.state is not ServiceState.POW:
            return False
        self.stop()
        return True

    # -- training ----------------------------------------------------------------------------

    def train_start(self) -> None:
        self.check_conflict("train")
        if self.train_running:
            raise BadRequest("training is already running")
        self._take_gpu()
        self.state = ServiceState.TRAIN
        self.train_running = True

    def train_stop(self) -> None:
        self.check_conflict("train")
        if not self.train_running:
            raise BadRequest("training is not running")
        self.stop()

    # -- health ------------------------------------------------------------------------------

    def health(self, gpu: dict[str, Any]) -> dict[str, Any]:
        """The real `HealthResponse`; `gpu` is the device view (see `gpu_devices`)."""
        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "service_state": self.state.value,
            "gpu": {"available": True, "count": 1, "devices": [gpu]},
            "managers": {
                "pow": {"running": self.state is ServiceState.POW, "healthy": True},
                "inference": {"running": self.state is ServiceState.INFERENCE, "healthy": self.healthy},
                "train": {"running": self.train_running, "healthy": True},
            },
        }
