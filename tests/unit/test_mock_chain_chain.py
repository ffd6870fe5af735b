"""The mock chain's state machine: blocks, governance, and the real end-block rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mock_chain.chain import (
    GENESIS_MLNODE_VERSION,
    Chain,
    PartialUpgrade,
    ProposalStatus,
    StateUnavailable,
    partial_upgrade_name,
)
from mock_chain.gov import GOV_MODULE_ADDRESS, ProposalRejected, parse_proposal

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def proposal(*plans: tuple[int, str], **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "messages": [
            {
                "@type": "/inference.inference.MsgCreatePartialUpgrade",
                "authority": GOV_MODULE_ADDRESS,
                "height": str(height),
                "nodeVersion": version,
                "apiBinariesJson": "",
            }
            for height, version in plans
        ],
        "metadata": "",
        "deposit": "10000000ngonka",
        "title": "MLNode upgrade",
        "summary": "switch the MLNodes",
    }
    doc.update(overrides)
    return doc


def advance(chain: Chain, n: int) -> None:
    for _ in range(n):
        chain.advance(T0 + timedelta(seconds=chain.height + 1))


def test_blocks_have_deterministic_distinct_chained_hashes() -> None:
    a, b = Chain(), Chain()
    advance(a, 5)
    advance(b, 5)
    assert [a.blocks[h].hash for h in range(1, 6)] == [b.blocks[h].hash for h in range(1, 6)]
    assert len({a.blocks[h].hash for h in range(1, 6)}) == 5
    assert all(len(a.blocks[h].hash) == 64 and a.blocks[h].hash.isupper() for h in range(1, 6))
    assert a.blocks[3].last_block_hash == a.blocks[2].hash
    assert a.height == 5 and a.latest_block is a.blocks[5]


def test_genesis_version_is_v3_0_8() -> None:
    assert Chain().mlnode_version == GENESIS_MLNODE_VERSION == "v3.0.8"


def test_a_passed_proposal_stores_the_plan_when_its_vote_ends() -> None:
    chain = Chain(voting_period_blocks=3)
    advance(chain, 2)
    submitted = chain.submit_proposal(parse_proposal(proposal((10, "v3.0.9"))))
    assert submitted.voting_end_height == 5 and submitted.status is ProposalStatus.VOTING_PERIOD
    advance(chain, 2)
    assert chain.partial_upgrades == {}  # still voting at height 4
    advance(chain, 1)
    assert submitted.status is ProposalStatus.PASSED
    assert chain.partial_upgrades == {
        10: PartialUpgrade(10, "v3.0.9", "", "PartialUpgrade at height 10 for node version v3.0.9")
    }


def test_a_rejected_vote_stores_nothing() -> None:
    chain = Chain(voting_period_blocks=2)
    submitted = chain.submit_proposal(parse_proposal(proposal((10, "v3.0.9"))), passes=False)
    advance(chain, 3)
    assert submitted.status is ProposalStatus.REJECTED and chain.partial_upgrades == {}


def test_end_block_applies_exactly_at_the_height_and_deletes_the_entry_one_block_later() -> None:
    chain = Chain(voting_period_blocks=1)
    chain.submit_proposal(parse_proposal(proposal((5, "v3.0.9"))))
    advance(chain, 4)
    assert chain.mlnode_version == "v3.0.8" and 5 in chain.partial_upgrades
    advance(chain, 1)
    assert chain.mlnode_version == "v3.0.9"
    assert 5 in chain.partial_upgrades  # still listed at its own height, as on the real chain
    advance(chain, 1)
    assert chain.partial_upgrades == {}
    assert chain.mlnode_version == "v3.0.9"


def test_past_entries_are_deleted_without_being_applied() -> None:
    chain = Chain(voting_period_blocks=1)
    advance(chain, 3)
    # Put a plan in the store below the height, as the real chain does for a late proposal.
    chain.partial_upgrades[2] = PartialUpgrade(2, "v9.9.9", "", partial_upgrade_name(2, "v9.9.9"))
    advance(chain, 1)
    assert chain.partial_upgrades == {} and chain.mlnode_version == "v3.0.8"


def test_an_api_binaries_only_plan_changes_no_version() -> None:
    chain = Chain(voting_period_blocks=1)
    doc = proposal((4, ""))
    doc["messages"][0]["apiBinariesJson"] = '{"api_binaries": {"linux/amd64": "https://x"}}'
    chain.submit_proposal(parse_proposal(doc))
    advance(chain, 4)
    assert chain.mlnode_version == "v3.0.8" and 4 in chain.partial_upgrades


def test_a_second_plan_at_the_same_height_overwrites_the_first() -> None:
    chain = Chain(voting_period_blocks=1)
    chain.submit_proposal(parse_proposal(proposal((10, "v3.0.9"))))
    advance(chain, 1)
    chain.submit_proposal(parse_proposal(proposal((10, "v3.0.10"))))
    advance(chain, 1)
    assert list(chain.partial_upgrades.values()) == [
        PartialUpgrade(10, "v3.0.10", "", partial_upgrade_name(10, "v3.0.10"))
    ]
    advance(chain, 8)
    assert chain.mlnode_version == "v3.0.10"


def test_two_pending_plans_apply_in_turn() -> None:
    chain = Chain(voting_period_blocks=1)
    chain.submit_proposal(parse_proposal(proposal((5, "v3.0.9"), (7, "v3.0.10"))))
    advance(chain, 5)
    assert chain.mlnode_version == "v3.0.9" and sorted(chain.partial_upgrades) == [5, 7]
    advance(chain, 2)
    assert chain.mlnode_version == "v3.0.10" and sorted(chain.partial_upgrades) == [7]


@pytest.mark.parametrize("height", [1, 3, 4])
def test_a_height_not_after_the_vote_is_refused_and_changes_nothing(height: int) -> None:
    chain = Chain(voting_period_blocks=3)
    advance(chain, 1)
    before = (chain.height, dict(chain.proposals), dict(chain.partial_upgrades))
    with pytest.raises(ProposalRejected, match=f"height {height} is not in the future"):
        chain.submit_proposal(parse_proposal(proposal((height, "v3.0.9"))))
    assert (chain.height, dict(chain.proposals), dict(chain.partial_upgrades)) == before


def test_queries_can_be_pinned_to_a_past_height() -> None:
    chain = Chain(voting_period_blocks=1, state_retention_blocks=3)
    chain.submit_proposal(parse_proposal(proposal((3, "v3.0.9"))))
    advance(chain, 5)
    assert chain.state_at(2).mlnode_version == "v3.0.8"
    assert chain.state_at(3).mlnode_version == "v3.0.9"
    assert [p.height for p in chain.state_at(3).partial_upgrades] == [3]
    assert chain.state_at(None).height == chain.state_at(0).height == 5
    with pytest.raises(StateUnavailable, match="in the future"):
        chain.state_at(6)
    with pytest.raises(StateUnavailable, match="version does not exist"):
        chain.state_at(1)  # pruned: only the last 3 (+1) states are kept


def test_a_lagging_node_answers_from_its_own_head() -> None:
    chain = Chain(voting_period_blocks=1)
    chain.submit_proposal(parse_proposal(proposal((3, "v3.0.9"))))
    advance(chain, 5)
    assert chain.state_at(None, head=2).height == 2
    assert chain.state_at(None, head=2).mlnode_version == "v3.0.8"
    assert chain.state_at(2, head=2).height == 2
    with pytest.raises(StateUnavailable, match=r"in the future.*requested 3, latest 2"):
        chain.state_at(3, head=2)
    assert chain.state_at(None, head=99).height == 5  # never ahead of the chain


def test_block_retention_keeps_the_newest_blocks_and_moves_the_earliest_height() -> None:
    chain = Chain(block_retention_blocks=3)
    assert chain.earliest_height == 0
    advance(chain, 2)
    assert chain.earliest_height == 1 and sorted(chain.blocks) == [1, 2]
    advance(chain, 5)
    assert chain.earliest_height == 5 and sorted(chain.blocks) == [5, 6, 7]
    assert Chain().earliest_height == 0
    kept = Chain()
    advance(kept, 4)
    assert kept.earliest_height == 1 and len(kept.blocks) == 4
