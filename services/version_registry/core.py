"""Which MLNode version is current, decided from chain facts with no I/O.

`apply(state, command)` returns the new state and the `version.changed` events to publish. The
rules, each a failure mode of the original implementation turned around:

- Plans apply in height order on the first block at or above their height; several due plans all
  apply, each recorded. A plan that arrives for a height already passed applies at once, unless a
  newer switch already superseded it.
- Every command is idempotent: a replayed block, plan, snapshot, refresh or rollback changes nothing.
- The chain is the source of truth: its `MLNodeVersion` snapshot is adopted (reason `sync`) when no
  pending plan explains the difference, so a plan missed while everyone was down still lands. A fresh
  registry waits for the first snapshot before it decides anything.
- An operator rollback holds until the next plan applies; snapshots do not undo it.
- `broker.refreshed` sets last_used only for the current transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.events import (
    BlockCommitted,
    BrokerRefreshed,
    ChainVersionObserved,
    UpgradeScheduled,
    VersionChanged,
)
from shared.registry_api import PendingPlan, Reason, RegistryState, Transition
from shared.versions import MLNodeVersion

__all__ = [
    "Command",
    "CoreState",
    "Rollback",
    "RollbackRefused",
    "apply",
]

SNAPSHOT_MEMORY = 64  # snapshots remembered for replay detection


class RollbackRefused(ValueError):
    pass


class Rollback(BaseModel):
    """An operator's override, with an id the service assigns once so a replay is recognised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollback_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    version: MLNodeVersion
    actor: str
    reason: str


Command = BlockCommitted | UpgradeScheduled | ChainVersionObserved | BrokerRefreshed | Rollback


class CoreState(BaseModel):
    """Everything the registry knows; persisted as JSON in the KV bucket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initialized: bool = False
    current: MLNodeVersion | None = None
    last_used: MLNodeVersion | None = None
    current_transition: str | None = None
    current_height: int = 0  # height of the switch that made `current` current
    last_height: int = 0
    pending: tuple[PendingPlan, ...] = ()  # sorted by height; one plan per height, as on the chain
    history: tuple[Transition, ...] = ()
    rollback_active: bool = False
    seen_snapshots: tuple[str, ...] = ()

    def view(self, revision: int = 0) -> RegistryState:
        return RegistryState(
            current_version=self.current,
            last_used_version=self.last_used,
            current_transition=self.current_transition,
            last_height=self.last_height,
            pending=self.pending,
            rollback_active=self.rollback_active,
            revision=revision,
        )

    def has_transition(self, transition_id: str) -> bool:
        return any(t.transition_id == transition_id for t in self.history)


@dataclass(frozen=True)
class Outcome:
    state: CoreState
    changes: tuple[VersionChanged, ...] = ()


def plan_transition_id(height: int, version: MLNodeVersion) -> str:
    return f"{height}-{version.raw}"


def apply(state: CoreState, command: Command, now: datetime) -> Outcome:
    """The new state and the switches it made; `now` stamps new history entries only."""
    if isinstance(command, BlockCommitted):
        return _on_block(state, command.height, now)
    if isinstance(command, UpgradeScheduled):
        return _on_plan(state, command, now)
    if isinstance(command, ChainVersionObserved):
        return _on_snapshot(state, command, now)
    if isinstance(command, BrokerRefreshed):
        return _on_refreshed(state, command)
    return _on_rollback(state, command, now)


# --- the rules ---------------------------------------------------------------------------------


def _switch(
    state: CoreState,
    *,
    transition_id: str,
    version: MLNodeVersion,
    height: int,
    reason: Reason,
    now: datetime,
    actor: str = "",
    note: str = "",
) -> tuple[CoreState, VersionChanged]:
    covered, height = height, max(height, 1)  # events need a positive height; coverage keeps the real one
    transition = Transition(
        transition_id=transition_id,
        previous=state.current,
        current=version,
        height=height,
        reason=reason,
        at=now,
        actor=actor,
        note=note,
    )
    event = VersionChanged(
        transition_id=transition_id,
        previous=state.current,
        current=version,
        height=height,
        reason=reason,
    )
    new = state.model_copy(
        update={
            "current": version,
            "current_transition": transition_id,
            "current_height": covered,
            "history": (*state.history, transition),
            "rollback_active": reason == "rollback",
        }
    )
    return new, event


def _apply_due(state: CoreState, now: datetime) -> Outcome:
    """Apply every pending plan at or below `last_height`, lowest height first."""
    if not state.initialized:
        return Outcome(state)
    due = [p for p in state.pending if p.height <= state.last_height]
    if not due:
        return Outcome(state)
    state = state.model_copy(
        update={"pending": tuple(p for p in state.pending if p.height > state.last_height)}
    )
    changes: list[VersionChanged] = []
    for plan in due:  # pending is kept sorted by height
        tid = plan_transition_id(plan.height, plan.node_version)
        if state.has_transition(tid) or _superseded(state, plan.height):
            continue  # applied already, or a newer switch already accounts for it
        state, event = _switch(
            state,
            transition_id=tid,
            version=plan.node_version,
            height=plan.height,
            reason="plan",
            now=now,
            note=plan.name,
        )
        changes.append(event)
    return Outcome(state, tuple(changes))


def _superseded(state: CoreState, height: int) -> bool:
    """A switch at or above `height` already happened, so this plan is not news.

    At the same height the first switch wins: the chain applied one plan there, and if it was
    not the one we applied, its snapshot corrects us.
    """
    return state.initialized and bool(state.history) and height <= state.current_height


def _on_block(state: CoreState, height: int, now: datetime) -> Outcome:
    if height <= state.last_height:
        return Outcome(state)
    return _apply_due(state.model_copy(update={"last_height": height}), now)


def _on_plan(state: CoreState, plan: UpgradeScheduled, now: datetime) -> Outcome:
    tid = plan_transition_id(plan.height, plan.node_version)
    if state.has_transition(tid):
        return Outcome(state)
    entry = PendingPlan(height=plan.height, node_version=plan.node_version, name=plan.name)
    others = tuple(p for p in state.pending if p.height != plan.height)
    if entry in state.pending:
        return Outcome(state)
    pending = tuple(sorted((*others, entry), key=lambda p: p.height))
    return _apply_due(state.model_copy(update={"pending": pending}), now)


def _snapshot_key(snapshot: ChainVersionObserved) -> str:
    return f"{snapshot.height or 0}:{snapshot.current_version.raw}"


def _on_snapshot(state: CoreState, snapshot: ChainVersionObserved, now: datetime) -> Outcome:
    key = _snapshot_key(snapshot)
    if key in state.seen_snapshots:
        return Outcome(state)
    seen = (*state.seen_snapshots, key)[-SNAPSHOT_MEMORY:]
    state = state.model_copy(update={"seen_snapshots": seen})
    version = snapshot.current_version
    changes: list[VersionChanged] = []

    if not state.initialized:
        # Start from the chain's word; plans at or below its height are already in it.
        at = snapshot.height or state.last_height
        last_height = max(state.last_height, snapshot.height or 0)
        pending = tuple(p for p in state.pending if snapshot.height is None or p.height > snapshot.height)
        state = state.model_copy(update={"initialized": True, "last_height": last_height, "pending": pending})
        state, event = _switch(
            state,
            transition_id=f"sync-{at}-{version.raw}",
            version=version,
            height=at,
            reason="sync",
            now=now,
        )
        outcome = _apply_due(state, now)
        return Outcome(outcome.state, (event, *outcome.changes))

    # The snapshot says the chain reached its height: due plans apply first.
    if snapshot.height is not None and snapshot.height > state.last_height:
        outcome = _on_block(state, snapshot.height, now)
        state, changes = outcome.state, list(outcome.changes)
    if version == state.current or state.rollback_active:
        return Outcome(state, tuple(changes))
    if snapshot.height is not None and snapshot.height < state.current_height:
        return Outcome(state, tuple(changes))  # older than our newest switch: stale
    if snapshot.height is None and any(p.node_version == version for p in state.pending):
        return Outcome(state, tuple(changes))  # a pending plan explains it; its block will come
    at = snapshot.height or state.last_height
    state, event = _switch(
        state, transition_id=f"sync-{at}-{version.raw}", version=version, height=at, reason="sync", now=now
    )
    return Outcome(state, (*changes, event))


def _on_refreshed(state: CoreState, refreshed: BrokerRefreshed) -> Outcome:
    if refreshed.transition_id != state.current_transition or refreshed.version != state.current:
        return Outcome(state)
    if state.last_used == refreshed.version:
        return Outcome(state)
    return Outcome(state.model_copy(update={"last_used": refreshed.version}))


def _on_rollback(state: CoreState, rollback: Rollback, now: datetime) -> Outcome:
    tid = f"rollback-{rollback.rollback_id}"
    if state.has_transition(tid):
        return Outcome(state)
    if not state.initialized:
        raise RollbackRefused("the registry has not synced with the chain yet; nothing to roll back")
    if rollback.version == state.current:
        raise RollbackRefused(f"{rollback.version} is already the current version")
    new, event = _switch(
        state,
        transition_id=tid,
        version=rollback.version,
        height=state.last_height,
        reason="rollback",
        now=now,
        actor=rollback.actor,
        note=rollback.reason,
    )
    return Outcome(new, (event,))
