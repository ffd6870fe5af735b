"""The chain as a pure state machine: blocks, governance, the partial-upgrade store, end-block.

No I/O and no clock: the caller passes the block time. The rules are the real chain's:

- partial upgrades are stored keyed by height, so a second plan at the same height overwrites the
  first; the stored name is "PartialUpgrade at height <H> for node version <V>";
- end-block of block B sets `MLNodeVersion` to a plan's `node_version` when `plan.height == B` and
  the version is not empty, and deletes every plan with `height < B` without applying it (so an
  applied plan is still listed at B and gone at B+1);
- a proposal's messages execute when its voting period ends (gov end-block runs before the
  inference module's end-block).

On top of that, this mock refuses a plan whose height would not be in the future when its vote
ends (the real chain accepts it and silently drops it a block later). Every committed block keeps a
snapshot of the queryable state so that queries can be pinned to a height, as Cosmos gRPC allows
with the `x-cosmos-block-height` header.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from mock_chain.gov import MsgCreatePartialUpgrade, ProposalDraft, ProposalRejected
from shared.versions import parse_version

__all__ = [
    "DEFAULT_CHAIN_ID",
    "GENESIS_MLNODE_VERSION",
    "Block",
    "Chain",
    "PartialUpgrade",
    "Proposal",
    "ProposalStatus",
    "StateSnapshot",
    "StateUnavailable",
    "partial_upgrade_name",
]

GENESIS_MLNODE_VERSION = "v3.0.8"
DEFAULT_CHAIN_ID = "gonka-mock-1"
_EMPTY_HASH = ""


def partial_upgrade_name(height: int, node_version: str) -> str:
    """The name the chain stores with a plan (empty before PR #364, which made the dapi skip it)."""
    return f"PartialUpgrade at height {height} for node version {node_version}"


def _sha256_hex(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest().upper()


@dataclass(frozen=True, slots=True)
class PartialUpgrade:
    height: int
    node_version: str
    api_binaries_json: str
    name: str


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the gRPC queries answer at one height."""

    height: int
    mlnode_version: str
    partial_upgrades: tuple[PartialUpgrade, ...]  # ascending by height, as the store iterates

    def app_hash(self) -> str:
        doc = {
            "mlnode_version": self.mlnode_version,
            "partial_upgrades": [
                [p.height, p.node_version, p.api_binaries_json, p.name] for p in self.partial_upgrades
            ],
        }
        return _sha256_hex(json.dumps(doc, sort_keys=True))


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    hash: str  # 64 upper-case hex characters, as CometBFT prints block ids
    time: datetime
    last_block_hash: str
    app_hash: str  # the state after the previous block, as in a CometBFT header
    chain_id: str


class ProposalStatus(StrEnum):
    VOTING_PERIOD = "PROPOSAL_STATUS_VOTING_PERIOD"
    PASSED = "PROPOSAL_STATUS_PASSED"
    REJECTED = "PROPOSAL_STATUS_REJECTED"
    FAILED = "PROPOSAL_STATUS_FAILED"


@dataclass
class Proposal:
    id: int
    draft: ProposalDraft
    submit_height: int
    voting_end_height: int
    passes: bool
    status: ProposalStatus = ProposalStatus.VOTING_PERIOD
    failed_reason: str = ""

    def describe(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "status": self.status.value,
            "title": self.draft.title,
            "summary": self.draft.summary,
            "submit_height": self.submit_height,
            "voting_end_height": self.voting_end_height,
            "messages": [m.to_json() for m in self.draft.messages],
            "failed_reason": self.failed_reason,
        }


class StateUnavailable(LookupError):
    """A query pinned to a height this node cannot answer (in the future, or pruned)."""


@dataclass
class Chain:
    """One chain. Mutated only through `submit_proposal` and `advance`."""

    voting_period_blocks: int = 10
    chain_id: str = DEFAULT_CHAIN_ID
    mlnode_version: str = GENESIS_MLNODE_VERSION
    state_retention_blocks: int = 1000
    block_retention_blocks: int = 0  # 0 keeps every block; N keeps the newest N (CometBFT pruning)
    height: int = 0
    blocks: dict[int, Block] = field(default_factory=dict)
    partial_upgrades: dict[int, PartialUpgrade] = field(default_factory=dict)
    proposals: dict[int, Proposal] = field(default_factory=dict)
    _states: OrderedDict[int, StateSnapshot] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.voting_period_blocks < 1:
            raise ValueError("voting_period_blocks must be at least 1")
        parse_version(self.mlnode_version)
        self._states[0] = self.snapshot()

    # -- queries ----------------------------------------------------------------------------

    @property
    def latest_block(self) -> Block | None:
        return self.blocks.get(self.height)

    def snapshot(self) -> StateSnapshot:
        plans = tuple(self.partial_upgrades[h] for h in sorted(self.partial_upgrades))
        return StateSnapshot(height=self.height, mlnode_version=self.mlnode_version, partial_upgrades=plans)

    @property
    def earliest_height(self) -> int:
        """The lowest block still stored (0 before the first block)."""
        if not self.blocks:
            return 0
        if not self.block_retention_blocks:
            return 1
        return max(1, self.height - self.block_retention_blocks + 1)

    def state_at(self, height: int | None, *, head: int | None = None) -> StateSnapshot:
        """The state after block `height` (None or 0: the latest), as a pinned query sees it.

        `head` is the newest height the answering node has (default: the chain's), for a node
        that lags behind the chain.
        """
        latest = self.height if head is None else min(head, self.height)
        if height is None or height == 0:
            height = latest
        if height > latest:
            raise StateUnavailable(
                f"cannot query with height in the future; please provide a valid height "
                f"(requested {height}, latest {latest})"
            )
        state = self._states.get(height)
        if state is None:
            raise StateUnavailable(f"failed to load state at height {height}; version does not exist")
        return state

    # -- governance -------------------------------------------------------------------------

    def submit_proposal(self, draft: ProposalDraft, *, passes: bool = True) -> Proposal:
        """Put a proposal into its voting period; refuse it (changing nothing) when it cannot work."""
        voting_end = self.height + self.voting_period_blocks
        for i, msg in enumerate(draft.messages):
            if msg.height <= voting_end:
                raise ProposalRejected(
                    f"messages[{i}]: height {msg.height} is not in the future when the vote ends: the "
                    f"chain is at {self.height} and the voting period is {self.voting_period_blocks} "
                    f"blocks, so the plan would be stored at {voting_end} and dropped without being "
                    f"applied; choose a height above {voting_end}"
                )
        proposal_id = max(self.proposals, default=0) + 1
        proposal = Proposal(
            id=proposal_id,
            draft=draft,
            submit_height=self.height,
            voting_end_height=voting_end,
            passes=passes,
        )
        self.proposals[proposal_id] = proposal
        return proposal

    def _execute(self, msg: MsgCreatePartialUpgrade) -> None:
        """The MsgCreatePartialUpgrade handler: store the plan keyed by height (overwriting)."""
        self.partial_upgrades[msg.height] = PartialUpgrade(
            height=msg.height,
            node_version=msg.node_version,
            api_binaries_json=msg.api_binaries_json,
            name=partial_upgrade_name(msg.height, msg.node_version),
        )

    def _gov_end_block(self, height: int) -> None:
        for proposal in self.proposals.values():
            if proposal.status is not ProposalStatus.VOTING_PERIOD or proposal.voting_end_height != height:
                continue
            if not proposal.passes:
                proposal.status = ProposalStatus.REJECTED
                continue
            for msg in proposal.draft.messages:
                self._execute(msg)
            proposal.status = ProposalStatus.PASSED

    def _inference_end_block(self, height: int) -> None:
        for plan_height in sorted(self.partial_upgrades):
            plan = self.partial_upgrades[plan_height]
            if plan.height == height and plan.node_version != "":
                self.mlnode_version = plan.node_version
            elif plan.height < height:
                del self.partial_upgrades[plan_height]

    # -- blocks -----------------------------------------------------------------------------

    def advance(self, time: datetime) -> Block:
        """Commit the next block: header from the previous state, then end-block, then snapshot."""
        height = self.height + 1
        previous = self.latest_block
        last_hash = previous.hash if previous else _EMPTY_HASH
        app_hash = self._states[self.height].app_hash()
        block = Block(
            height=height,
            hash=_sha256_hex(
                self.chain_id, str(height), time.isoformat(), last_hash, app_hash
            ),  # as a header
            time=time,
            last_block_hash=last_hash,
            app_hash=app_hash,
            chain_id=self.chain_id,
        )
        self._gov_end_block(height)
        self._inference_end_block(height)
        self.height = height
        self.blocks[height] = block
        if self.block_retention_blocks and height - self.block_retention_blocks in self.blocks:
            del self.blocks[height - self.block_retention_blocks]
        self._states[height] = self.snapshot()
        while len(self._states) > self.state_retention_blocks + 1:
            self._states.popitem(last=False)
        return block
