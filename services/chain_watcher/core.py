"""What the chain-watcher publishes, decided without I/O.

Given the persisted `WatcherState` (cursor, last chain version, known plans) and what was just
observed on the chain (blocks, the full plan listing and `MLNodeVersion` at one height), `decide`
returns the events to publish, in order, with their deduplication ids, and the state to persist
once they are acknowledged. The service publishes first and then advances the cursor, so a crash
in between republishes the same events with the same ids, which JetStream drops.

Order within a step: plans, then blocks, then the chain version. A plan is therefore on the bus
before the block at its height (the registry applies it exactly there), and the chain's version
after the block that changed it (so the registry sees the plan apply before the sync snapshot).

Which height comes next, and what a refusal of `/block` means, is decided here too
(`plan_next`, `classify_block_refusal`): websocket frames are only hints that a height may exist;
a height is published once the query node serves its block, with that block's hash and time. A
`chain.version` snapshot always carries the height of the newest published block and the state
read at exactly that height (`decide` refuses anything else), so the registry never receives a
snapshot older than a block it has already seen.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from shared.events import (
    MAX_HEIGHT,
    MAX_SNAPSHOT_PLANS,
    BlockCommitted,
    ChainPlan,
    ChainVersionObserved,
    Event,
    UpgradeScheduled,
)
from shared.versions import InvalidVersionError, parse_version

__all__ = [
    "BlockRefusal",
    "CorruptState",
    "KnownPlan",
    "NextHeight",
    "ObservedBlock",
    "ObservedPlan",
    "Outgoing",
    "Refusal",
    "Step",
    "WatcherState",
    "backoff_delay",
    "classify_block_refusal",
    "decide",
    "frame_disagrees",
    "is_future_state_error",
    "lag_blocks",
    "next_height",
    "plan_next",
    "snapshot_plans",
]

STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ObservedBlock:
    """A block as seen on the websocket or fetched with /block; hash and time when known."""

    height: int
    hash: str | None = None
    time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObservedPlan:
    """One `PartialUpgrade` entry as the chain lists it."""

    height: int
    node_version: str
    name: str = ""
    api_binaries_json: str = ""

    def content(self) -> tuple[str, str, str]:
        return (self.node_version, self.name, self.api_binaries_json)


@dataclass(frozen=True, slots=True)
class KnownPlan:
    """A plan the watcher has decided about; `announcements` counts what it published for it."""

    node_version: str
    name: str
    api_binaries_json: str
    announcements: int

    def content(self) -> tuple[str, str, str]:
        return (self.node_version, self.name, self.api_binaries_json)


class CorruptState(ValueError):
    """The persisted state cannot be read; the message says why."""


@dataclass(frozen=True)
class WatcherState:
    """Everything the watcher must remember across restarts; stored as one KV value."""

    last_height: int | None = None
    chain_version: str | None = None  # as last observed, valid or not
    plans: Mapping[int, KnownPlan] = field(default_factory=dict)
    # The first block published with its hash: which chain the cursor belongs to. A chain that
    # serves a different block at that height is another chain (a reset local chain), not a lag.
    anchor: tuple[int, str] | None = None

    def to_json(self) -> bytes:
        doc = {
            "format": STATE_FORMAT,
            "last_height": self.last_height,
            "chain_version": self.chain_version,
            "anchor": list(self.anchor) if self.anchor else None,
            "plans": {
                str(h): {
                    "node_version": p.node_version,
                    "name": p.name,
                    "api_binaries_json": p.api_binaries_json,
                    "announcements": p.announcements,
                }
                for h, p in sorted(self.plans.items())
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WatcherState:
        try:
            doc = json.loads(data)
            if doc.get("format") != STATE_FORMAT:
                raise CorruptState(f"unknown state format {doc.get('format')!r}")
            last = doc["last_height"]
            version = doc["chain_version"]
            anchor_doc = doc.get("anchor")  # absent in cursors written before it existed
            anchor = (int(anchor_doc[0]), str(anchor_doc[1])) if anchor_doc else None
            plans = {
                int(h): KnownPlan(
                    node_version=str(p["node_version"]),
                    name=str(p["name"]),
                    api_binaries_json=str(p["api_binaries_json"]),
                    announcements=int(p["announcements"]),
                )
                for h, p in doc["plans"].items()
            }
        except CorruptState:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptState(f"unreadable chain-watcher state: {exc!r}") from None
        if last is not None and (not isinstance(last, int) or last < 1):
            raise CorruptState(f"invalid last_height {last!r}")
        if version is not None and not isinstance(version, str):
            raise CorruptState(f"invalid chain_version {version!r}")
        return cls(last_height=last, chain_version=version, plans=plans, anchor=anchor)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One publish: the event and the `Nats-Msg-Id` to send it with."""

    event: Event
    msg_id: str


@dataclass(frozen=True)
class Step:
    publishes: tuple[Outgoing, ...]
    state: WatcherState
    # Newly seen plans that cannot be announced, with the reason (logged once each).
    refused_plans: tuple[tuple[ObservedPlan, str], ...] = ()
    # The chain's version when it changed to something that cannot be announced.
    refused_version: tuple[str, str] | None = None

    @property
    def plans(self) -> tuple[UpgradeScheduled, ...]:
        return tuple(o.event for o in self.publishes if isinstance(o.event, UpgradeScheduled))

    @property
    def blocks(self) -> tuple[BlockCommitted, ...]:
        return tuple(o.event for o in self.publishes if isinstance(o.event, BlockCommitted))

    @property
    def version(self) -> ChainVersionObserved | None:
        found = [o.event for o in self.publishes if isinstance(o.event, ChainVersionObserved)]
        return found[0] if found else None


def next_height(last_height: int | None, target: int, max_backfill: int) -> tuple[int | None, int]:
    """The one height to publish next toward `target`, and how many heights are skipped to reach it.

    One height per step, because plans and the chain's version must be read at every height: a
    plan can be stored and applied (then deleted by the chain) between two heights that a coarser
    step would read. The first run starts at the chain's current height (no history); after that
    every height follows the cursor, unless the watcher is more than `max_backfill` blocks behind:
    then it jumps to the last `max_backfill` heights and reports how many it skipped.
    """
    if target < 1:
        return None, 0
    if last_height is None:
        return target, 0
    if target <= last_height:
        return None, 0
    if target - last_height > max_backfill:
        return target - max_backfill + 1, target - last_height - max_backfill
    return last_height + 1, 0


@dataclass(frozen=True, slots=True)
class NextHeight:
    """The height the watcher works on next.

    `confirmed` is False when only a websocket frame claims the height exists: `/block` decides.
    `skipped` counts the heights jumped over (more than `max_backfill` behind the query node).
    """

    height: int
    skipped: int = 0
    confirmed: bool = True


def plan_next(
    last_height: int | None, served: int | None, claimed: int | None, max_backfill: int
) -> NextHeight | None:
    """The next height to publish, from what the query node serves and what frames claim.

    `served` is the newest height the query node answered for (`/status`, `/block`); `claimed` the
    newest height a websocket frame announced. Frames are hints: they never decide where the first
    run starts nor how far a lagging watcher jumps (a forged frame for height 10^9 must not make
    it skip real blocks), they only make the watcher ask `/block` for the height after its cursor.
    """
    if served is not None:
        height, skipped = next_height(last_height, served, max_backfill)
        if height is not None:
            return NextHeight(height, skipped)
    if last_height is not None and claimed is not None and claimed > last_height:
        return NextHeight(last_height + 1, 0, confirmed=False)
    return None


class Refusal(StrEnum):
    FUTURE = "future"  # the node does not have the block yet: wait and ask again
    PRUNED = "pruned"  # below the node's earliest retained block: publish the height only
    OTHER = "other"  # anything else: a failure, retried with backoff


@dataclass(frozen=True, slots=True)
class BlockRefusal:
    kind: Refusal
    node_height: int | None = None  # FUTURE: the node's current height, when it said so


# CometBFT v0.38 rpc/core `getHeight`: the two ways `/block?height=` refuses a height.
_FUTURE_BLOCK = re.compile(r"height (\d+) must be less than or equal to the current blockchain height (\d+)")
_PRUNED_BLOCK = re.compile(r"height (\d+) is not available, lowest height is (\d+)")


def classify_block_refusal(height: int, message: str, earliest: int | None) -> BlockRefusal:
    """What an error answer to `/block?height=height` means.

    Only a height below the node's earliest retained block (its own error, or `/status`
    `earliest_block_height`) counts as pruned; "in the future" is never pruned; anything else is a
    failure to retry, not a reason to publish a height without its hash.
    """
    future = _FUTURE_BLOCK.search(message)
    if future is not None:
        return BlockRefusal(Refusal.FUTURE, node_height=int(future.group(2)))
    if _PRUNED_BLOCK.search(message) is not None:
        return BlockRefusal(Refusal.PRUNED)
    if earliest is not None and height < earliest:
        return BlockRefusal(Refusal.PRUNED)
    return BlockRefusal(Refusal.OTHER)


def is_future_state_error(message: str) -> bool:
    """A Cosmos SDK query pinned above the node's height ("cannot query with height in the future")."""
    return "height in the future" in message


def frame_disagrees(frame: ObservedBlock | None, served: ObservedBlock) -> bool:
    """A websocket frame whose hash is not the hash the query node serves for that height."""
    return (
        frame is not None
        and frame.hash is not None
        and served.hash is not None
        and frame.hash.upper() != served.hash.upper()
    )


def lag_blocks(last_height: int | None, chain_height: int | None) -> int:
    if chain_height is None:
        return 0
    return max(0, chain_height - (last_height or 0))


def backoff_delay(attempt: int, initial_s: float, max_s: float, rand: float) -> float:
    """Exponential backoff with jitter: attempt 0 waits between half and all of `initial_s`."""
    base: float = min(max_s, initial_s * float(2 ** min(attempt, 32)))
    return base * (0.5 + rand / 2)


def _block_event(block: ObservedBlock) -> BlockCommitted:
    try:
        return BlockCommitted(height=block.height, hash=block.hash, time=block.time)
    except ValidationError:
        # A hash or time we cannot vouch for is dropped; the height is what the bus needs.
        return BlockCommitted(height=block.height)


def _plan_refusal(plan: ObservedPlan) -> str | None:
    if not plan.node_version:
        return "no node_version: an API-binaries-only upgrade, not an MLNode version switch"
    try:
        parse_version(plan.node_version)
    except InvalidVersionError as exc:
        return str(exc)
    if not 0 < plan.height <= MAX_HEIGHT:
        return f"height {plan.height} is not a valid block height"
    return None


def _content_digest(plan: ObservedPlan) -> str:
    return hashlib.sha256(json.dumps(plan.content()).encode()).hexdigest()[:12]


def diff_plans(
    known: Mapping[int, KnownPlan], observed: Sequence[ObservedPlan]
) -> tuple[list[Outgoing], dict[int, KnownPlan], list[tuple[ObservedPlan, str]]]:
    """Announce each new or changed plan once; forget plans the chain no longer lists.

    The first announcement at a height uses the event's own id (`plan-H-V`); a later change at the
    same height adds the announcement count and a content digest, so JetStream does not drop a
    real change as a duplicate while a crash-and-retry of the same change still is one.
    """
    outgoing: list[Outgoing] = []
    refused: list[tuple[ObservedPlan, str]] = []
    after: dict[int, KnownPlan] = {}
    for plan in sorted(observed, key=lambda p: p.height):
        previous = known.get(plan.height)
        count = previous.announcements if previous else 0
        if previous is not None and previous.content() == plan.content():
            after[plan.height] = previous
            continue
        reason = _plan_refusal(plan)
        if reason is not None:
            refused.append((plan, reason))
            after[plan.height] = KnownPlan(plan.node_version, plan.name, plan.api_binaries_json, count)
            continue
        event = UpgradeScheduled(
            height=plan.height,
            node_version=parse_version(plan.node_version),
            name=plan.name[:512],
            api_binaries_json=plan.api_binaries_json[:65_536],
        )
        msg_id = event.msg_id() if count == 0 else f"{event.msg_id()}-r{count}-{_content_digest(plan)}"
        outgoing.append(Outgoing(event, msg_id))
        after[plan.height] = KnownPlan(plan.node_version, plan.name, plan.api_binaries_json, count + 1)
    return outgoing, after, refused


def snapshot_plans(plans: Sequence[ObservedPlan], above: int) -> tuple[ChainPlan, ...] | None:
    """The plans a `chain.version` snapshot at height `above` lists: every MLNode plan stored above it.

    Plans that cannot be announced (API-binaries-only, invalid version) are left out, as they are
    from `chain.upgrade.scheduled`. None (not listed) when there are more than a snapshot can carry:
    a truncated list would tell the registry that real plans are gone.
    """
    listed: list[ChainPlan] = []
    for plan in sorted(plans, key=lambda p: p.height):
        if plan.height <= above or _plan_refusal(plan) is not None:
            continue
        listed.append(
            ChainPlan(height=plan.height, node_version=parse_version(plan.node_version), name=plan.name[:512])
        )
    if len(listed) > MAX_SNAPSHOT_PLANS:
        return None
    return tuple(listed)


def is_another_chain(anchor: tuple[int, str] | None, served_block: ObservedBlock | None) -> bool:
    """The node serves a different block at the anchor's height: the cursor is from another chain."""
    if anchor is None or served_block is None or served_block.hash is None:
        return False
    return served_block.height == anchor[0] and served_block.hash.upper() != anchor[1].upper()


def decide(
    state: WatcherState,
    blocks: Sequence[ObservedBlock],
    plans: Sequence[ObservedPlan] | None,
    version: str | None,
    *,
    observed_at: int,
    announce_version: bool = False,
) -> Step:
    """One step: the blocks after the cursor, plus plans and version observed at `observed_at`.

    `plans`/`version` are None when they were not read in this step (known plans and the last
    version are then kept). `announce_version` publishes the version even if unchanged (start-up
    and periodic snapshots). A version is only published, and only remembered, when it was read
    at the newest height published so far (the cursor after this step): a snapshot is the chain's
    word at exactly that height, after its block and before the next.
    """
    outgoing: list[Outgoing] = []
    known: Mapping[int, KnownPlan] = state.plans
    refused_plans: list[tuple[ObservedPlan, str]] = []
    if plans is not None:
        plan_out, known, refused_plans = diff_plans(state.plans, plans)
        outgoing += plan_out

    last = state.last_height
    for block in sorted(blocks, key=lambda b: b.height):
        if last is not None and block.height <= last:
            continue  # already published: an old or repeated event
        event = _block_event(block)
        outgoing.append(Outgoing(event, event.msg_id()))
        last = block.height

    chain_version = state.chain_version
    refused_version: tuple[str, str] | None = None
    if version is not None:
        changed = version != state.chain_version
        try:
            parsed = parse_version(version)
        except InvalidVersionError as exc:
            if changed:
                refused_version = (version, "the chain has no MLNodeVersion" if not version else str(exc))
            chain_version = version
        else:
            # At the cursor; or, on a chain with no block yet, without a height (there is none).
            if (last is not None and observed_at == last) or (last is None and observed_at == 0):
                if changed or announce_version:
                    observed = ChainVersionObserved(
                        current_version=parsed,
                        height=last,
                        plans=snapshot_plans(plans, last or 0) if plans is not None else None,
                    )
                    outgoing.append(Outgoing(observed, observed.msg_id()))
                chain_version = version

    anchor = state.anchor
    if anchor is None:
        anchor = next(((b.height, b.hash) for b in sorted(blocks, key=lambda b: b.height) if b.hash), None)
    new_state = WatcherState(last_height=last, chain_version=chain_version, plans=dict(known), anchor=anchor)
    return Step(
        publishes=tuple(outgoing),
        state=new_state,
        refused_plans=tuple(refused_plans),
        refused_version=refused_version,
    )


def describe_plan(plan: ObservedPlan | UpgradeScheduled) -> dict[str, Any]:
    """Log fields for a plan: every line about a plan carries its height and version."""
    return {"height": plan.height, "version": str(plan.node_version), "plan_name": plan.name}
