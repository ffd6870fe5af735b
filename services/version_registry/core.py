"""Which MLNode version is current, decided from chain facts with no I/O.

`apply(state, command, now, seq)` returns the new state and the `version.changed` events to
publish. `seq` is the command's stream sequence in the CHAIN stream (None for commands from
elsewhere: rollbacks, `broker.refreshed`); it survives redelivery, so it tells an old message from
a new one. The rules, each a failure mode of the original implementation turned around:

- Plans apply in height order on the block that reaches their height: a block at `b` after the
  highest block seen `L` applies every pending plan with `L < height <= b`, each recorded.
- Every command is idempotent: a replayed or redelivered block, plan, snapshot, refresh or rollback
  changes nothing.
- The chain is the source of truth: its `MLNodeVersion` snapshot is adopted (reason `sync`) when no
  pending plan explains the difference, so a plan missed while everyone was down still lands. A fresh
  registry waits for the first snapshot before it decides anything.
- An operator rollback holds until the next plan applies; snapshots do not undo it.
- `broker.refreshed` sets last_used only for the current transition.

The chain's word is final; blocks and plans are provisional. A block or plan is only as good as
whoever typed it, so the registry never lets one outlast the chain's next snapshot:

- A snapshot at `H` is the chain's word. Its height becomes `chain_height` and `last_height`: if
  the registry was ahead (`last_height > H`, a block the chain never produced), it steps back to `H`
  (reported in `Outcome.stepped_back` for the alarm). Switches made above `H` are undone: the version
  becomes the chain's (a new `sync` transition), unless the last switch still standing after the
  step back is an operator rollback, which then holds (it is re-announced if a block had ended it).
- When the snapshot lists the chain's plans, pending becomes exactly the listed plans above `H`
  (a plan the chain does not have is dropped, one a contradicted switch consumed is back). Without
  a list, plans that blocks above `H` consumed go back to pending.
- Pending plans at or below `H` are settled by the snapshot: the chain's version already includes
  them. The highest of them applies (as its plan) only if it names the chain's version; otherwise
  the version follows the chain by `sync`.
- A plan at or below `last_height` on arrival is late. It never applies on arrival: it waits for
  the next snapshot, which either passed its height (and settles it as above) or steps back below
  it (and it applies on its block). A plan at or below `chain_height` is already in the chain's
  version and does not apply.
- Order comes from the stream: a snapshot older than any chain event already applied is ignored
  (the next one brings the chain's word again); blocks and plans older than the last snapshot with
  a height or a plan list are settled by it and ignored; a plan older than the one held for its
  height does not replace it.
- Plans a block applied, or a snapshot settled, stay in `settled` until the next snapshot with a
  height, so a step back can restore them; every snapshot with a height empties it, so the
  persisted state stays bounded.
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
    "HISTORY_KEPT",
    "Command",
    "CoreState",
    "HeldPlan",
    "Outcome",
    "Rollback",
    "RollbackRefused",
    "StepBack",
    "apply",
    "forget_stream_positions",
]

SNAPSHOT_MEMORY = 64  # snapshots without a stream sequence remembered for replay detection
MAX_SETTLED = 1000  # bound on `settled` between two snapshots (plans are governance events: few)


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


class HeldPlan(PendingPlan):
    """A plan the registry holds, with the stream sequence of the message that brought it (0: unknown)."""

    seq: int = 0

    def public(self) -> PendingPlan:
        return PendingPlan(height=self.height, node_version=self.node_version, name=self.name)


class CoreState(BaseModel):
    """Everything the registry knows; persisted as JSON in the KV bucket (new fields have defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initialized: bool = False
    current: MLNodeVersion | None = None
    last_used: MLNodeVersion | None = None
    current_transition: str | None = None
    current_height: int = 0  # height of the switch that made `current` current
    last_height: int = 0
    pending: tuple[HeldPlan, ...] = ()  # sorted by height; one plan per height, as on the chain
    # The newest switches only (`HISTORY_KEPT`): the state is rewritten with every block, so a
    # registry that kept all of them here got slower with every switch. The full record is the
    # transition log, kept under its own key (`store.TRANSITION_LOG_KEY`).
    history: tuple[Transition, ...] = ()
    transitions_total: int = 0  # every switch ever made here; new transition ids count on it
    top_switch_height: int = 0  # the highest height a switch was made at: below it, ids may repeat
    rollback_active: bool = False
    seen_snapshots: tuple[str, ...] = ()  # only for snapshots applied without a stream sequence
    # The chain's last word: the height and version of the last snapshot with a height.
    chain_height: int = 0
    chain_version: MLNodeVersion | None = None
    settled: tuple[HeldPlan, ...] = ()  # plans consumed since the last snapshot (sorted by height)
    chain_seq: int = 0  # highest CHAIN stream sequence applied
    word_seq: int = 0  # stream sequence of the last snapshot with a height or a plan list
    ahead_of_chain_total: int = 0  # step backs so far
    # (height, unix time) of the newest blocks that carried a time: the chain's recent block time.
    block_times: tuple[tuple[int, float], ...] = ()

    def view(self, revision: int = 0) -> RegistryState:
        return RegistryState(
            current_version=self.current,
            last_used_version=self.last_used,
            current_transition=self.current_transition,
            last_height=self.last_height,
            pending=tuple(p.public() for p in self.pending),
            rollback_active=self.rollback_active,
            revision=revision,
            chain_height=self.chain_height,
            chain_version=self.chain_version,
            block_time_s=self.block_time_s,
        )

    @property
    def block_time_s(self) -> float | None:
        """Seconds per block over the recent blocks with a time; None before two of them."""
        if len(self.block_times) < 2:
            return None
        (h0, t0), (h1, t1) = self.block_times[0], self.block_times[-1]
        return round((t1 - t0) / (h1 - h0), 3) if h1 > h0 and t1 >= t0 else None

    def has_transition(self, transition_id: str) -> bool:
        return any(t.transition_id == transition_id for t in self.history)


@dataclass(frozen=True)
class StepBack:
    """The registry was ahead of the chain: `from_height` seen, the chain's snapshot says `to_height`."""

    from_height: int
    to_height: int
    chain_version: MLNodeVersion
    version_before: MLNodeVersion | None


@dataclass(frozen=True)
class Outcome:
    state: CoreState
    changes: tuple[VersionChanged, ...] = ()
    stepped_back: StepBack | None = None
    made: tuple[Transition, ...] = ()  # the switches of `changes`, in full (the state keeps the newest)


BLOCK_TIMES = 20  # blocks the recent block time is measured over
# Switches kept in the state. A step back deeper than this many switches finds no rollback to
# keep standing and follows the chain; ids stay unique through `transitions_total`.
HISTORY_KEPT = 64


def plan_transition_id(height: int, version: MLNodeVersion) -> str:
    return f"{height}-{version.raw}"


def apply(state: CoreState, command: Command, now: datetime, seq: int | None = None) -> Outcome:
    """The new state and the switches it made; `now` stamps new history entries only.

    `seq` is the CHAIN stream sequence of a chain command (None: unknown, taken as the newest).
    The state keeps the newest `HISTORY_KEPT` switches; `made` has every switch of this command.
    """
    outcome = _apply(state, command, now, seq)
    if not outcome.changes:
        return outcome
    history = outcome.state.history
    made = history[-len(outcome.changes) :]  # one history entry per change, in order
    kept = outcome.state
    if len(history) > HISTORY_KEPT:
        kept = kept.model_copy(update={"history": history[-HISTORY_KEPT:]})
    return Outcome(kept, outcome.changes, outcome.stepped_back, made)


def _apply(state: CoreState, command: Command, now: datetime, seq: int | None) -> Outcome:
    if isinstance(command, BlockCommitted):
        stamp = None if command.time is None else command.time.timestamp()
        return _on_block(state, command.height, now, seq, stamp)
    if isinstance(command, UpgradeScheduled):
        return _on_plan(state, command, seq)
    if isinstance(command, ChainVersionObserved):
        return _on_snapshot(state, command, now, seq)
    if isinstance(command, BrokerRefreshed):
        return _on_refreshed(state, command)
    return _on_rollback(state, command, now)


def forget_stream_positions(state: CoreState) -> CoreState:
    """For a CHAIN stream that was re-created (its sequences start again): drop the order guards."""
    return state.model_copy(
        update={
            "chain_seq": 0,
            "word_seq": 0,
            "pending": _reseq(state.pending),
            "settled": _reseq(state.settled),
        }
    )


def _reseq(plans: tuple[HeldPlan, ...]) -> tuple[HeldPlan, ...]:
    return tuple(p.model_copy(update={"seq": 0}) for p in plans)


# --- the rules ---------------------------------------------------------------------------------


def _unique_id(state: CoreState, base: str, height: int) -> str:
    """`base`, or `base:<n>` when a switch undone by a step back already used it.

    While the history holds every switch, it says; once older ones were trimmed, any switch at
    or below the highest height switched at (after a step back deeper than the history) is.
    """
    trimmed = state.transitions_total > len(state.history)
    if not state.has_transition(base) and not (trimmed and height <= _top_height(state)):
        return base
    return f"{base}:{max(state.transitions_total, len(state.history))}"


def _top_height(state: CoreState) -> int:
    """The highest height switched at; a switch below it follows a step back, and its plain id
    may belong to a switch the trimmed history no longer holds."""
    return max(state.top_switch_height, max((t.height for t in state.history), default=0))


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
    transition_id = _unique_id(state, transition_id, height)
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
            "history": (*state.history, transition),  # trimmed by `apply`, once per command
            "transitions_total": max(state.transitions_total, len(state.history)) + 1,
            "top_switch_height": max(_top_height(state), height),
            "rollback_active": reason == "rollback",
        }
    )
    return new, event


def _by_height(plans: list[HeldPlan] | tuple[HeldPlan, ...]) -> tuple[HeldPlan, ...]:
    """One plan per height (the last given wins), sorted by height."""
    return tuple(sorted({p.height: p for p in plans}.values(), key=lambda p: p.height))


def _switch_to_plan(state: CoreState, plan: PendingPlan, now: datetime) -> tuple[CoreState, VersionChanged]:
    return _switch(
        state,
        transition_id=plan_transition_id(plan.height, plan.node_version),
        version=plan.node_version,
        height=plan.height,
        reason="plan",
        now=now,
        note=plan.name,
    )


def _settle(settled: tuple[HeldPlan, ...], *plans: HeldPlan) -> tuple[HeldPlan, ...]:
    return _by_height([*settled, *plans])[-MAX_SETTLED:]


def _seen(state: CoreState, seq: int | None) -> CoreState:
    if seq is None or seq <= state.chain_seq:
        return state
    return state.model_copy(update={"chain_seq": seq})


def _older_than_the_word(state: CoreState, seq: int | None) -> bool:
    """Published before the chain's last word (a snapshot with a height or plan list): settled by it."""
    return seq is not None and seq < state.word_seq


def _on_block(
    state: CoreState, height: int, now: datetime, seq: int | None, stamp: float | None = None
) -> Outcome:
    if _older_than_the_word(state, seq):
        return Outcome(state)
    state = _seen(state, seq)
    if height <= state.last_height:
        return Outcome(state)
    reached = state.last_height
    times = state.block_times if stamp is None else (*state.block_times, (height, stamp))[-BLOCK_TIMES:]
    state = state.model_copy(update={"last_height": height, "block_times": times})
    if not state.initialized:
        return Outcome(state)
    due = [p for p in state.pending if reached < p.height <= height]  # late plans wait for the chain
    if not due:
        return Outcome(state)
    state = state.model_copy(
        update={
            "pending": tuple(p for p in state.pending if p not in due),
            "settled": _settle(state.settled, *due),
        }
    )
    changes: list[VersionChanged] = []
    for plan in due:  # pending is kept sorted by height
        state, event = _switch_to_plan(state, plan, now)
        changes.append(event)
    return Outcome(state, tuple(changes))


def _on_plan(state: CoreState, plan: UpgradeScheduled, seq: int | None) -> Outcome:
    if _older_than_the_word(state, seq):
        return Outcome(state)
    state = _seen(state, seq)
    entry = HeldPlan(height=plan.height, node_version=plan.node_version, name=plan.name, seq=seq or 0)
    held = [p for p in (*state.pending, *state.settled) if p.height == plan.height]
    if any(p.node_version == plan.node_version for p in held):
        return Outcome(state)  # known already: waiting, or consumed and waiting for the chain's word
    if seq is not None and any(p.seq > seq for p in held):
        return Outcome(state)  # an older plan for a height the chain has since given another one
    if state.initialized and plan.height <= state.chain_height:
        # Already in the chain's version; kept until the next snapshot in case that steps back.
        return Outcome(state.model_copy(update={"settled": _settle(state.settled, entry)}))
    pending = _by_height([*state.pending, entry])
    return Outcome(state.model_copy(update={"pending": pending}))


def _snapshot_key(snapshot: ChainVersionObserved) -> str:
    return f"{snapshot.height or 0}:{snapshot.current_version.raw}"


def _last_standing(state: CoreState, height: int) -> Transition | None:
    """The newest switch a step back to `height` leaves standing: a rollback, or one at or below it."""
    for transition in reversed(state.history):
        if transition.reason == "rollback" or transition.height <= height:
            return transition
    return None


def _on_snapshot(state: CoreState, snapshot: ChainVersionObserved, now: datetime, seq: int | None) -> Outcome:
    if seq is not None:
        if state.initialized and seq <= state.chain_seq:
            return Outcome(state)  # replayed, or overtaken by newer chain events: the next one counts
        state = _seen(state, seq).model_copy(update={"seen_snapshots": ()})
        if snapshot.height is not None or snapshot.plans is not None:
            state = state.model_copy(update={"word_seq": seq})
    else:
        key = _snapshot_key(snapshot)
        if key in state.seen_snapshots:
            return Outcome(state)
        state = state.model_copy(update={"seen_snapshots": (*state.seen_snapshots, key)[-SNAPSHOT_MEMORY:]})

    version, height = snapshot.current_version, snapshot.height
    pending, settled = state.pending, state.settled
    stepped: StepBack | None = None
    if height is not None:
        if state.last_height > height:
            stepped = StepBack(state.last_height, height, version, state.current)
            if snapshot.plans is None:  # no list to go by: what contradicted blocks consumed is back
                pending = _by_height([*(p for p in settled if p.height > height), *pending])
        settled = ()
        state = state.model_copy(
            update={
                "last_height": height,
                "chain_height": height,
                "chain_version": version,
                "block_times": tuple(b for b in state.block_times if b[0] <= height),
                "current_height": min(state.current_height, height),
                "ahead_of_chain_total": state.ahead_of_chain_total + (1 if stepped else 0),
            }
        )
    if snapshot.plans is not None:
        floor = height or 0
        listed = [
            HeldPlan(height=p.height, node_version=p.node_version, name=p.name, seq=seq or 0)
            for p in snapshot.plans
            if p.height > floor
        ]
        pending = _by_height([*(p for p in pending if p.height <= floor), *listed])
    due = tuple(p for p in pending if height is not None and p.height <= height)
    pending = tuple(p for p in pending if p not in due)
    state = state.model_copy(update={"pending": pending, "settled": _settle(settled, *due)})
    changes: list[VersionChanged] = []

    if not state.initialized:
        # Start from the chain's word; plans at or below its height are already in it.
        state = state.model_copy(update={"initialized": True})
        at = height or state.last_height
        state, event = _switch(
            state,
            transition_id=f"sync-{at}-{version.raw}",
            version=version,
            height=at,
            reason="sync",
            now=now,
        )
        return Outcome(state, (event,), stepped)

    if stepped is not None:
        state, changes = _step_back(state, height or 0, now)

    if due and state.current != version:
        top = due[-1]
        if top.node_version == version and (not state.rollback_active or top.height > state.current_height):
            state, event = _switch_to_plan(state, top, now)
            changes.append(event)
    if version == state.current or state.rollback_active:
        return Outcome(state, tuple(changes), stepped)
    if height is None and any(p.node_version == version for p in state.pending):
        return Outcome(state, tuple(changes), stepped)  # a pending plan explains it; its block will come
    at = height or state.last_height
    state, event = _switch(
        state, transition_id=f"sync-{at}-{version.raw}", version=version, height=at, reason="sync", now=now
    )
    return Outcome(state, (*changes, event), stepped)


def _step_back(state: CoreState, height: int, now: datetime) -> tuple[CoreState, list[VersionChanged]]:
    """Undo the switches above `height`: only an operator rollback outlives them."""
    standing = _last_standing(state, height)
    if standing is None or standing.reason != "rollback":
        return state.model_copy(update={"rollback_active": False}), []
    if state.current == standing.current:
        return state.model_copy(update={"rollback_active": True}), []
    state, event = _switch(
        state,
        transition_id=standing.transition_id.split(":")[0],
        version=standing.current,
        height=min(standing.height, height),
        reason="rollback",
        now=now,
        actor=standing.actor,
        note=standing.note,
    )
    return state, [event]


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
