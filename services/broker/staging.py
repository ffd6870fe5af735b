"""The staged switch, decided without I/O: which nodes go to the new version before the height, and when.

At the height every node used to switch at once, so every request arriving during the model load
waited for it. With two nodes or more, a planned share of them can be handed over early enough
to be loaded at the height: from the start of staging they take no old-version work (before the
height the chain requires the old version) and serve nothing until the height; at the height the
new version's work goes to them at once while the others hand over.

`plan` picks those nodes and the height to start at:

- only nodes that serve the current version, have the target ready (the readiness probe) and
  serve a model for the API node (PoC, training or a stopped node keep their work) are candidates;
- at most `share` of the fleet goes early, and the old version keeps at least `old_floor` of its
  capacity (sum of `max_concurrent`) through the window; one node alone is never staged;
- the fastest loaders go first (each (node, version)'s last measured load, or `default_load_s`);
- the lead time is the slowest early node's load plus `margin_s`, turned into blocks with the
  chain's recent block time, plus `margin_blocks`.

`share = 0` keeps the all-at-once switch. `next_step` says, each round, what to do about it:
stage the early nodes once the plan is due, hand them back when the plan is cancelled,
retargeted or moved later, and stop once the switch has happened (or a switch to another
version, a rollback, took the nodes). A rollback, which has no height, stages the other way at
once: `first_wave`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from shared.versions import MLNodeVersion

__all__ = [
    "Candidate",
    "Done",
    "Hold",
    "Stage",
    "Staged",
    "StagedDocument",
    "StagingPlan",
    "StagingPolicy",
    "Step",
    "Unstage",
    "first_wave",
    "next_step",
    "plan",
]


@dataclass(frozen=True, slots=True)
class StagingPolicy:
    share: float = 0.5  # of the nodes, at most, handed over before the height (0: all at once)
    old_floor: float = 0.25  # of the old version's capacity kept until the height
    default_load_s: float = 120.0  # before a (node, version) load was ever measured
    margin_s: float = 10.0
    margin_blocks: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or not 0.0 <= self.old_floor <= 1.0:
            raise ValueError("share and old_floor are fractions between 0 and 1")
        if self.default_load_s <= 0 or self.margin_s < 0 or self.margin_blocks < 0:
            raise ValueError("default_load_s must be positive, the margins not negative")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One node as the staging sees it."""

    node_id: str
    max_concurrent: int
    serving_current: bool  # ready on the current version
    target_ready: bool  # the readiness probe found the target version usable
    serving_work: bool = True  # its work is serving a model (not PoC, training, stopped)


@dataclass(frozen=True, slots=True)
class StagingPlan:
    target: MLNodeVersion
    height: int  # the plan's height: the switch
    early: tuple[str, ...]  # handed over before the height, fastest first
    start_height: int  # staging starts once this height is seen
    lead_s: float  # the slowest early node's expected load, with the margin
    old_capacity: int  # what the old version keeps through the window
    new_capacity: int  # what the new version has ready at the height
    why_not: str = ""  # when nothing is staged: why

    @property
    def staged(self) -> bool:
        return bool(self.early)

    def due(self, height: int) -> bool:
        """Staging should be under way at `height` (and before the switch itself)."""
        return self.staged and self.start_height <= height < self.height

    def late(self, height: int) -> bool:
        """Seen first too close to the height: the early nodes will not be loaded in time."""
        return self.staged and height > self.start_height


def _none(target: MLNodeVersion, height: int, capacity: int, why: str) -> StagingPlan:
    return StagingPlan(target, height, (), height, 0.0, capacity, 0, why_not=why)


def plan(
    candidates: Iterable[Candidate],
    target: MLNodeVersion,
    height: int,
    load_times: Mapping[tuple[str, MLNodeVersion], float],
    block_time_s: float,
    policy: StagingPolicy,
) -> StagingPlan:
    """The staging for a switch to `target` at `height` (see the module's docstring)."""
    nodes = sorted(candidates, key=lambda c: c.node_id)
    total = sum(c.max_concurrent for c in nodes if c.serving_current)
    if policy.share == 0:
        return _none(target, height, total, "staging is off (share 0): every node switches at the height")
    if len(nodes) < 2:
        return _none(target, height, total, "one node alone cannot be staged: it switches at the height")

    def load_s(c: Candidate) -> float:
        return load_times.get((c.node_id, target), policy.default_load_s)

    early, old, why = _pick_early(nodes, total, load_s, policy)
    if not early:
        return _none(target, height, total, why)
    lead_s = max(load_s(c) for c in early) + policy.margin_s
    blocks = math.ceil(lead_s / max(block_time_s, 1e-3)) + policy.margin_blocks
    return StagingPlan(
        target=target,
        height=height,
        early=tuple(c.node_id for c in early),
        start_height=max(height - blocks, 1),
        lead_s=round(lead_s, 3),
        old_capacity=old,
        new_capacity=sum(c.max_concurrent for c in early),
    )


def _pick_early(
    nodes: list[Candidate], total: int, load_s: Callable[[Candidate], float], policy: StagingPolicy
) -> tuple[list[Candidate], int, str]:
    """The fastest eligible nodes within the share and the old version's floor; what the old
    version keeps; why none, when none."""
    eligible = sorted(
        (c for c in nodes if c.serving_current and c.target_ready and c.serving_work),
        key=lambda c: (load_s(c), c.node_id),
    )
    most = math.floor(policy.share * len(nodes))
    floor = math.ceil(policy.old_floor * total)
    early: list[Candidate] = []
    old = total
    for c in eligible:
        if len(early) >= most:
            break
        if old - c.max_concurrent < max(floor, 1):
            continue  # the old version must keep its floor (and some capacity) until the height
        early.append(c)
        old -= c.max_concurrent
    why = (
        ""
        if early
        else "no node can go early: "
        f"{len(eligible)} of {len(nodes)} are serving with the target ready, "
        f"at most {most} may go, and the old version keeps {floor} of {total} capacity"
    )
    return early, old, why


def first_wave(
    candidates: Iterable[Candidate],
    target: MLNodeVersion,
    load_times: Mapping[tuple[str, MLNodeVersion], float],
    policy: StagingPolicy,
) -> tuple[str, ...]:
    """A rollback has no height to stage ahead of, so it stages at once, the other way: these nodes
    (chosen as `plan` chooses the early ones) move first while the rest keep serving the version
    rolled back from, and the rest follow once the first wave serves. Empty: all at once."""
    nodes = sorted(candidates, key=lambda c: c.node_id)
    if policy.share == 0 or len(nodes) < 2:
        return ()
    total = sum(c.max_concurrent for c in nodes if c.serving_current)

    def load_s(c: Candidate) -> float:
        return load_times.get((c.node_id, target), policy.default_load_s)

    early, _, _ = _pick_early(nodes, total, load_s, policy)
    return tuple(c.node_id for c in early)


# --- what to do each round -------------------------------------------------------------------------


class Staged(BaseModel):
    """The nodes handed to `target` ahead of the switch at `height` (persisted, so a restart knows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: MLNodeVersion
    height: int
    nodes: tuple[str, ...]
    source: MLNodeVersion | None = None  # the current version when staging began

    def without(self, node_id: str) -> Staged:
        return self.model_copy(update={"nodes": tuple(n for n in self.nodes if n != node_id)})


class StagedDocument(BaseModel):
    """The persisted form: no staging, or one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    staged: Staged | None = None


@dataclass(frozen=True, slots=True)
class Stage:
    """Hand these nodes to `target` now: they take no more old-version work."""

    target: MLNodeVersion
    height: int
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unstage:
    """Hand these staged nodes back to the current version, before the height, and say why."""

    nodes: tuple[str, ...]
    back_to: MLNodeVersion
    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """The switch happened (or its target is current anyway): the staging is over."""


@dataclass(frozen=True, slots=True)
class Hold:
    pass


Step = Stage | Unstage | Done | Hold


def next_step(
    staged: Staged | None, planned: StagingPlan | None, current: MLNodeVersion | None, height: int
) -> Step:
    """One round's decision, from what is staged, the plan for the next switch, the current version
    and the newest height. The caller plans with the staged nodes counted as they were before
    staging (serving the current version), so a plan keeps meaning the same share."""
    if staged is not None:
        if current == staged.target:
            return Done()
        if current is None:
            return Hold()
        if staged.source is not None and current != staged.source:
            return Done()  # a switch to another version (a rollback) took the staged nodes
        if planned is None or not planned.staged:
            return Unstage(staged.nodes, current, "the plan was cancelled (or can no longer be staged)")
        if planned.target != staged.target:
            return Unstage(staged.nodes, current, f"the next plan is for {planned.target} now")
        if planned.height != staged.height and not planned.due(height):
            why = f"the plan moved to height {planned.height}; staging starts again at {planned.start_height}"
            return Unstage(staged.nodes, current, why)
        return Hold()  # staged once per plan: a recomputed plan would only add to the share
    if planned is not None and current is not None and planned.due(height) and planned.target != current:
        return Stage(planned.target, planned.height, planned.early)
    return Hold()
