"""The version-registry's query contract: what other services ask it over NATS request-reply.

The same models are served over HTTP (`/state`, `/history`) and mirrored by the gRPC API in
`proto/mlnode_upgrade/v1/registry.proto`. A request that cannot be answered gets
`{"error": "..."}` instead of the model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import Height, TransitionId
from shared.versions import MLNodeVersion

__all__ = [
    "HISTORY_SUBJECT",
    "ROLLBACK_SUBJECT",
    "STATE_SUBJECT",
    "ErrorReply",
    "HistoryReply",
    "HistoryRequest",
    "PendingPlan",
    "RegistryState",
    "RollbackRequest",
    "Transition",
]

STATE_SUBJECT = "registry.state"
HISTORY_SUBJECT = "registry.history"
ROLLBACK_SUBJECT = "registry.rollback"

Reason = Literal["plan", "sync", "rollback"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PendingPlan(_Model):
    height: Height
    node_version: MLNodeVersion
    name: str = ""


class Transition(_Model):
    """One switch of the current version, as the history keeps it."""

    transition_id: TransitionId
    previous: MLNodeVersion | None
    current: MLNodeVersion
    height: Height
    reason: Reason
    at: datetime
    actor: str = ""  # who asked, for rollbacks
    note: str = ""  # why, for rollbacks; the plan's name for plans


class RegistryState(_Model):
    """What every consumer needs: which version is current and which one the broker last finished."""

    current_version: MLNodeVersion | None = None
    last_used_version: MLNodeVersion | None = None
    current_transition: TransitionId | None = None
    last_height: int = 0
    pending: tuple[PendingPlan, ...] = ()
    rollback_active: bool = False
    revision: int = 0
    # The chain's last word (its `chain.version` snapshot with a height): where the chain is known
    # to be. `last_height` above it is provisional until the next snapshot confirms or corrects it.
    chain_height: int = 0
    chain_version: MLNodeVersion | None = None
    # Seconds per block over the chain's recent blocks (None until two blocks with a time were seen).
    block_time_s: float | None = None

    @property
    def handoff_needed(self) -> bool:
        """The broker has not finished moving every node to the current version."""
        return self.current_version is not None and self.current_version != self.last_used_version


class HistoryRequest(_Model):
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class HistoryReply(_Model):
    transitions: tuple[Transition, ...]


class RollbackRequest(_Model):
    """An operator's emergency override; it holds until the next plan applies."""

    version: MLNodeVersion
    actor: Annotated[str, Field(min_length=1, max_length=128)]
    reason: Annotated[str, Field(min_length=1, max_length=1024)]


class ErrorReply(_Model):
    error: str
