"""What a node is doing for its API node, and what the new version must do to carry it: no I/O.

The API node drives each MLNode through five kinds of work: serving a model (INFERENCE), proof of
compute in the generate or validate phase (POW, with the init parameters of the round), training
(TRAIN), or nothing (STOPPED). The broker learns the work from the management calls that pass
through the node endpoint (`work_after_call`, applied only to a 2xx answer) and, at a switch,
from the old version's own `state` and `pow/status` (`refine`). At the switch the new version is
brought into the same work (`carry_for`):

- INFERENCE: the same model, arguments and dtype;
- POW: the same phase, initialised again with the same parameters (the callback `url` in them
  is the API node's own and is passed on unchanged);
- TRAIN: started again with the same body;
- STOPPED: stays stopped, no `inference/up` the API node did not ask for.

A node the API node never gave work through the broker serves the node config's first model,
as the broker has always done (`work` is None).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import NodeId

__all__ = [
    "CannotCarry",
    "Carry",
    "NodeWork",
    "NodeWorks",
    "Reinit",
    "Serve",
    "StayStopped",
    "WorkKind",
    "carry_for",
    "refine",
    "work_after_call",
]

API = "/api/v1"
MAX_BODY_BYTES = 256 * 1024  # a PoC init body carries the model dimensions: a few KB


class WorkKind(enum.StrEnum):
    INFERENCE = "inference"
    POW = "pow"  # initialised (`pow/init`), no phase started
    POW_GENERATE = "pow_generate"
    POW_VALIDATE = "pow_validate"
    TRAIN = "train"
    STOPPED = "stopped"

    @property
    def is_pow(self) -> bool:
        return self in (WorkKind.POW, WorkKind.POW_GENERATE, WorkKind.POW_VALIDATE)


class NodeWork(BaseModel):
    """The work the API node last gave a node, as it asked for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: WorkKind
    model: Annotated[str, Field(max_length=1024)] | None = None  # INFERENCE
    args: tuple[str, ...] = ()  # INFERENCE: `additional_args`
    dtype: Annotated[str, Field(max_length=64)] | None = None  # INFERENCE
    params: dict[str, Any] | None = None  # POW: the init body; TRAIN: the start body
    route: str = ""  # the call that set it, for the logs

    def label(self) -> str:
        return self.kind.value


class NodeWorks(BaseModel):
    """Every node's work, persisted as one document so a restarted broker still carries it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: dict[NodeId, NodeWork] = Field(default_factory=dict)

    def get(self, node_id: str) -> NodeWork | None:
        return self.nodes.get(node_id)

    def with_work(self, node_id: str, work: NodeWork) -> NodeWorks:
        return NodeWorks(nodes={**self.nodes, node_id: work})

    def without(self, node_id: str) -> NodeWorks:
        return NodeWorks(nodes={k: v for k, v in self.nodes.items() if k != node_id})


# --- learning the work from the API node's calls -----------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any] | None:
    if len(body) > MAX_BODY_BYTES:
        return None
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _inference(body: bytes, route: str) -> NodeWork | None:
    found = _json_object(body)
    if found is None or not isinstance(found.get("model"), str):
        return None
    args = found.get("additional_args") or []
    dtype = found.get("dtype")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return None
    return NodeWork(
        kind=WorkKind.INFERENCE,
        model=found["model"],
        args=tuple(args),
        dtype=dtype if isinstance(dtype, str) else None,
        route=route,
    )


_POW_INIT = {
    f"{API}/pow/init": WorkKind.POW,
    f"{API}/pow/init/generate": WorkKind.POW_GENERATE,
    f"{API}/pow/init/validate": WorkKind.POW_VALIDATE,
}
_POW_PHASE = {
    f"{API}/pow/phase/generate": WorkKind.POW_GENERATE,
    f"{API}/pow/phase/validate": WorkKind.POW_VALIDATE,
}
_REINIT_ROUTE = {kind: route for route, kind in _POW_INIT.items()} | {WorkKind.TRAIN: f"{API}/train/start"}


def work_after_call(before: NodeWork | None, method: str, route: str, body: bytes) -> NodeWork | None:
    """The node's work after the MLNode answered 2xx to this call; None when the call does not change it
    (or its body is not one the broker can carry: then the next switch falls back to the node config)."""
    try:
        return _work_after_call(before, method, route, body)
    except ValidationError:
        return None


def _work_after_call(before: NodeWork | None, method: str, route: str, body: bytes) -> NodeWork | None:
    if method.upper() != "POST":
        return None
    stopped = NodeWork(kind=WorkKind.STOPPED, route=route)
    if route == f"{API}/stop":
        return stopped
    if route in (f"{API}/inference/up", f"{API}/inference/up/async"):
        return _inference(body, route)
    if route in _POW_INIT:
        params = _json_object(body)
        return None if params is None else NodeWork(kind=_POW_INIT[route], params=params, route=route)
    if route in _POW_PHASE:
        if before is None or not before.kind.is_pow:
            return None  # the MLNode refuses a phase change when PoW is not running
        return before.model_copy(update={"kind": _POW_PHASE[route], "route": route})
    if route == f"{API}/train/start":
        params = _json_object(body)
        return None if params is None else NodeWork(kind=WorkKind.TRAIN, params=params, route=route)
    # The service-specific stops end only their own service (the real MLNode answers OK either way).
    ended = {
        f"{API}/inference/down": before is None or before.kind is WorkKind.INFERENCE,
        f"{API}/pow/stop": before is not None and before.kind.is_pow,
        f"{API}/train/stop": before is not None and before.kind is WorkKind.TRAIN,
    }
    return stopped if ended.get(route) else None


# --- what the old version says it is doing --------------------------------------------------------------

_POW_STATUS_PHASE = {"GENERATING": WorkKind.POW_GENERATE, "VALIDATING": WorkKind.POW_VALIDATE}


def refine(work: NodeWork | None, state: str, pow_status: str | None) -> NodeWork | None:
    """The recorded work corrected by what the old version reports.

    Only the PoC phase is taken from the node (a phase the API node changed without the broker,
    or the validate phase a round moved on to); what the API node asked for otherwise stands.
    """
    if work is not None and work.kind.is_pow and state == "POW" and pow_status in _POW_STATUS_PHASE:
        return work.model_copy(update={"kind": _POW_STATUS_PHASE[pow_status]})
    return work


def unseen_work(work: NodeWork | None, state: str) -> str | None:
    """Why the old version's work cannot be carried: it runs something the broker never saw started."""
    if work is None and state in ("POW", "TRAIN"):
        return f"the old version is in {state}, started before the broker saw it; its parameters are unknown"
    return None


# --- what the new version must do -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Serve:
    """`inference/up` with this model (the broker's default dtype when `dtype` is None)."""

    model: str
    args: tuple[str, ...]
    dtype: str | None = None


@dataclass(frozen=True, slots=True)
class Reinit:
    """POST this route with the body the API node sent: PoC init in its phase, or train/start."""

    kind: WorkKind
    route: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StayStopped:
    pass


@dataclass(frozen=True, slots=True)
class CannotCarry:
    reason: str


Carry = Serve | Reinit | StayStopped | CannotCarry


def carry_for(work: NodeWork | None, configured: tuple[str, tuple[str, ...]] | None) -> Carry | None:
    """What the new version is brought into; None: nothing to bring up (no work, no model configured)."""
    if work is None:
        return None if configured is None else Serve(configured[0], configured[1])
    match work.kind:
        case WorkKind.INFERENCE:
            assert work.model is not None
            return Serve(work.model, work.args, work.dtype)
        case WorkKind.STOPPED:
            return StayStopped()
        case _:
            return Reinit(work.kind, _REINIT_ROUTE[work.kind], dict(work.params or {}))


def work_label(carry: Carry | None) -> str | None:
    match carry:
        case Serve():
            return WorkKind.INFERENCE.value
        case Reinit(kind=kind):
            return kind.value
        case StayStopped():
            return WorkKind.STOPPED.value
    return None
