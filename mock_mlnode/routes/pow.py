"""Proof of work: init in a phase, switch phases, validate batches, status and stop."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from mock_mlnode.instances import Instance
from mock_mlnode.routes.deps import InstanceDep, conflicts_with
from mock_mlnode.state import PowStatus

__all__ = ["PowInitRequest", "ProofBatch", "router"]

router = APIRouter(dependencies=conflicts_with("pow"))


class PowInitRequest(BaseModel):
    """`PowInitRequestUrl`: the fields the mock checks; the model dimensions pass through."""

    model_config = ConfigDict(extra="allow")

    node_id: int = -1
    node_count: int = -1
    block_hash: str = ""
    block_height: int = 0
    public_key: str = ""
    batch_size: int = 0
    r_target: float = 0.0
    fraud_threshold: float = 0.0
    params: dict[str, Any] = Field(default_factory=dict)
    url: str = ""


class ProofBatch(BaseModel):
    """The real `ProofBatch` dataclass, `node_id` included (the API node sends it)."""

    model_config = ConfigDict(extra="allow")

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int


def _answer(inst: Instance) -> dict[str, Any]:
    return {"status": "OK", "pow_status": inst.machine.pow_status()}


@router.post("/api/v1/pow/init")
async def pow_init(inst: InstanceDep, body: PowInitRequest) -> dict[str, Any]:
    inst.machine.pow_init(body.model_dump())
    return _answer(inst)


@router.post("/api/v1/pow/init/generate")
async def pow_init_generate(inst: InstanceDep, body: PowInitRequest) -> dict[str, Any]:
    inst.machine.pow_init(body.model_dump(), PowStatus.GENERATING)
    return _answer(inst)


@router.post("/api/v1/pow/init/validate")
async def pow_init_validate(inst: InstanceDep, body: PowInitRequest) -> dict[str, Any]:
    inst.machine.pow_init(body.model_dump(), PowStatus.VALIDATING)
    return _answer(inst)


@router.post("/api/v1/pow/phase/generate")
async def pow_phase_generate(inst: InstanceDep) -> dict[str, Any]:
    inst.machine.pow_phase(PowStatus.GENERATING)
    return _answer(inst)


@router.post("/api/v1/pow/phase/validate")
async def pow_phase_validate(inst: InstanceDep) -> dict[str, Any]:
    inst.machine.pow_phase(PowStatus.VALIDATING)
    return _answer(inst)


@router.post("/api/v1/pow/validate")
async def pow_validate(inst: InstanceDep, body: ProofBatch) -> None:
    inst.machine.pow_validate()  # the real route returns nothing: `null`


@router.get("/api/v1/pow/status")
async def pow_status(inst: InstanceDep) -> dict[str, Any]:
    return inst.machine.pow_status()


@router.post("/api/v1/pow/stop")
async def pow_stop(inst: InstanceDep) -> dict[str, Any]:
    if not inst.machine.pow_stop():
        return {"status": "OK", "pow_status": "PoW is not running"}
    return _answer(inst)
