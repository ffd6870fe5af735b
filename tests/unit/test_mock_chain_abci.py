"""The mock's `abci_query`: the gov params a real node answers, and a Cosmos node's errors."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli.propose import BlockTime, GovParams, assess
from mock_chain import inference_query
from mock_chain.abci import GOV_PARAMS_PATH, abci_query
from mock_chain.gov import ProposalRejected
from mock_chain.node import ChainNode
from mock_chain.settings import MockChainSettings
from proto.cosmos.gov.v1 import gov_pb2, query_pb2
from proto.inference.inference import query_pb2 as iq
from tests.unit.test_mock_chain_chain import proposal

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
VOTING = query_pb2.QueryParamsRequest(params_type="voting").SerializeToString()


def _clock(step_s: float) -> Callable[[], datetime]:
    """Each call is one block `step_s` after the previous one."""
    ticks: Iterator[int] = iter(range(1_000_000))
    return lambda: T0 + timedelta(seconds=step_s * next(ticks))


def _node(step_s: float = 5.0, **settings: Any) -> ChainNode:
    values: dict[str, Any] = {"block_time_s": 0, "voting_period_blocks": 10, **settings}
    return ChainNode(MockChainSettings(**values), clock=_clock(step_s))


def _params(answer: dict[str, Any]) -> query_pb2.QueryParamsResponse:
    assert answer["code"] == 0, answer
    return query_pb2.QueryParamsResponse.FromString(base64.b64decode(answer["value"]))


def test_the_answer_has_cometbfts_response_query_shape() -> None:
    node = _node()
    node.advance(3)
    answer = abci_query(node, GOV_PARAMS_PATH, VOTING, None)
    assert list(answer) == [
        "code",
        "log",
        "info",
        "index",
        "key",
        "value",
        "proofOps",
        "height",
        "codespace",
    ]
    assert {k: v for k, v in answer.items() if k != "value"} == {
        "code": 0,
        "log": "",
        "info": "",
        "index": "0",
        "key": None,
        "proofOps": None,
        "height": "3",
        "codespace": "",
    }


def test_voting_period_is_the_block_count_times_the_mocks_block_interval() -> None:
    manual = _node(step_s=5.0)
    manual.advance(4)
    params = _params(abci_query(manual, GOV_PARAMS_PATH, VOTING, None)).params
    assert params.voting_period.ToTimedelta() == timedelta(seconds=50)  # 10 blocks x 5 s measured
    assert params.expedited_voting_period == params.voting_period  # the mock has one voting period

    timed = _node(step_s=0.001, block_time_s=2.0)  # the timer's interval, not the clock's
    timed.advance(4)
    assert _params(abci_query(timed, GOV_PARAMS_PATH, VOTING, None)).params.voting_period.seconds == 20

    single = _node()
    single.advance(1)  # nothing to measure yet: a nominal second per block
    assert _params(abci_query(single, GOV_PARAMS_PATH, VOTING, None)).params.voting_period.seconds == 10


def test_params_are_what_the_mock_enforces_and_the_networks_genesis_otherwise() -> None:
    node = _node()
    node.advance(2)
    answer = _params(abci_query(node, GOV_PARAMS_PATH, VOTING, None))
    params = answer.params
    assert [(c.denom, c.amount) for c in params.min_deposit] == [("ngonka", "1")]
    assert [(c.denom, c.amount) for c in params.expedited_min_deposit] == [("ngonka", "1")]
    assert params.max_deposit_period.seconds == 172_800
    assert (params.quorum, params.threshold, params.veto_threshold) == (
        "0.334000000000000000",
        "0.500000000000000000",
        "0.334000000000000000",
    )
    assert params.min_deposit_ratio == "0.010000000000000000" and params.burn_vote_veto
    # params_type "voting" also fills the deprecated voting_params, as x/gov does
    assert answer.voting_params.voting_period == params.voting_period
    assert not answer.HasField("deposit_params") and not answer.HasField("tally_params")


@pytest.mark.parametrize(
    ("params_type", "field"),
    [("deposit", "deposit_params"), ("tallying", "tally_params"), ("", None)],
)
def test_each_params_type_fills_its_deprecated_part_and_always_params(
    params_type: str, field: str | None
) -> None:
    node = _node()
    node.advance(2)
    data = query_pb2.QueryParamsRequest(params_type=params_type).SerializeToString()
    answer = _params(abci_query(node, GOV_PARAMS_PATH, data, None))
    assert answer.HasField("params")
    present = {
        "voting_params": answer.HasField("voting_params"),
        "deposit_params": answer.HasField("deposit_params"),
        "tally_params": answer.HasField("tally_params"),
    }
    filled = {name for name, there in present.items() if there}
    assert filled == ({field} if field else set())
    if field == "deposit_params":
        assert answer.deposit_params.min_deposit[0].amount == "1"
    if field == "tally_params":
        assert answer.tally_params.quorum == "0.334000000000000000"


def test_unknown_path_is_the_sdks_unknown_request() -> None:
    node = _node()
    node.advance(2)
    assert abci_query(node, "/cosmos.bank.v1beta1.Query/AllBalances", b"", None) == {
        "code": 6,
        "log": "unknown query path: unknown request",
        "info": "",
        "index": "0",
        "key": None,
        "value": None,
        "proofOps": None,
        "height": "0",
        "codespace": "sdk",
    }


@pytest.mark.parametrize(
    ("blocks", "height", "code", "log"),
    [
        (0, None, 26, "inference is not ready; please wait for first block: invalid height"),
        (3, 4, 26, "cannot query with height in the future; please provide a valid height: invalid height"),
        (3, -1, 18, "cannot query with height < 0; please provide a valid height: invalid request"),
        (
            6,
            1,
            18,
            "failed to load state at height 1; version does not exist (latest height: 6): invalid request",
        ),
    ],
)
def test_heights_the_node_cannot_answer(blocks: int, height: int | None, code: int, log: str) -> None:
    node = _node(state_retention_blocks=2)
    if blocks:
        node.advance(blocks)
    answer = abci_query(node, GOV_PARAMS_PATH, VOTING, height)
    assert (answer["code"], answer["codespace"], answer["log"], answer["height"]) == (code, "sdk", log, "0")
    assert answer["value"] is None


def test_a_pinned_height_is_answered_at_that_height() -> None:
    node = _node()
    node.advance(5)
    assert abci_query(node, GOV_PARAMS_PATH, VOTING, 4)["height"] == "4"
    assert abci_query(node, GOV_PARAMS_PATH, VOTING, 0)["height"] == "5"


def test_a_lagging_node_answers_from_its_own_height() -> None:
    node = _node()
    node.advance(5)
    node.faults.query_lag = 2
    assert abci_query(node, GOV_PARAMS_PATH, VOTING, None)["height"] == "3"
    assert abci_query(node, GOV_PARAMS_PATH, VOTING, 4)["code"] == 26


@pytest.mark.parametrize(
    ("data", "log"),
    [
        (
            query_pb2.QueryParamsRequest(params_type="everything").SerializeToString(),
            "rpc error: code = InvalidArgument desc = unknown params type: everything: invalid request",
        ),
        (b"\x0a\xff", "failed to decode QueryParamsRequest"),
    ],
)
def test_a_bad_request_is_the_handlers_invalid_request_at_the_height(data: bytes, log: str) -> None:
    node = _node()
    node.advance(2)
    answer = abci_query(node, GOV_PARAMS_PATH, data, None)
    assert (answer["code"], answer["codespace"], answer["height"]) == (18, "sdk", "2")
    assert answer["log"].startswith(log) and answer["log"].endswith(": invalid request")


def test_a_height_the_cli_accepts_from_these_params_the_mock_accepts_too() -> None:
    """The CLI's time-based check against the mock errs on the safe side of its block rule."""
    node = _node(step_s=5.0)
    node.advance(30)
    gov = GovParams.from_proto(_params(abci_query(node, GOV_PARAMS_PATH, VOTING, None)).params)
    verdict = assess(
        height=10_000,
        current_height=node.chain.height,
        deposit="1ngonka",
        gov=gov,
        block_time=BlockTime(5.0, 29),
    )
    assert verdict.lowest_safe_height is not None and verdict.refusals == ()
    node.submit_proposal(proposal((verdict.lowest_safe_height, "v3.0.9"), deposit="1ngonka"))
    with pytest.raises(ProposalRejected, match="not in the future when the vote ends"):
        node.submit_proposal(proposal((node.chain.height + 10, "v3.0.9"), deposit="1ngonka"))
    early = assess(
        height=node.chain.height + 10,
        current_height=node.chain.height,
        deposit="1ngonka",
        gov=gov,
        block_time=BlockTime(5.0, 29),
    )
    assert early.refusals  # the CLI refuses what the mock refuses


def test_the_gov_protos_have_the_sdks_names_and_field_numbers() -> None:
    """cosmos/gov/v1 gov.proto and query.proto of the Cosmos SDK v0.50, field by field."""
    params = {f.name: f.number for f in gov_pb2.Params.DESCRIPTOR.fields}
    assert params == {
        "min_deposit": 1,
        "max_deposit_period": 2,
        "voting_period": 3,
        "quorum": 4,
        "threshold": 5,
        "veto_threshold": 6,
        "min_initial_deposit_ratio": 7,
        "proposal_cancel_ratio": 8,
        "proposal_cancel_dest": 9,
        "expedited_voting_period": 10,
        "expedited_threshold": 11,
        "expedited_min_deposit": 12,
        "burn_vote_quorum": 13,
        "burn_proposal_deposit_prevote": 14,
        "burn_vote_veto": 15,
        "min_deposit_ratio": 16,
    }
    response = {f.name: f.number for f in query_pb2.QueryParamsResponse.DESCRIPTOR.fields}
    assert response == {"voting_params": 1, "deposit_params": 2, "tally_params": 3, "params": 4}
    assert gov_pb2.Params.DESCRIPTOR.fields_by_name["min_deposit"].message_type.full_name == (
        "cosmos.base.v1beta1.Coin"
    )
    assert VOTING == b"\x0a\x06voting"  # params_type = 1
    method = query_pb2.DESCRIPTOR.services_by_name["Query"].methods_by_name["Params"]
    assert f"/{method.containing_service.full_name}/{method.name}" == GOV_PARAMS_PATH


def _plans_node(*plans: tuple[int, str]) -> ChainNode:
    node = _node(voting_period_blocks=2)
    node.advance(1)
    node.submit_proposal(proposal(*plans))
    node.advance(3)  # the vote ends and the plans are stored
    return node


def test_the_inference_queries_answer_over_abci_as_over_grpc() -> None:
    """What the real API node's Cosmos client asks through the RPC endpoint alone."""
    node = _plans_node((100, "v3.0.9"), (200, "v3.1.0"))
    state = node.chain.state_at(None, head=node.served_height)
    request = iq.QueryAllPartialUpgradeRequest().SerializeToString()
    answer = abci_query(node, "/inference.inference.Query/PartialUpgradeAll", request, None)
    assert answer["code"] == 0 and answer["height"] == str(state.height)
    decoded = iq.QueryAllPartialUpgradeResponse.FromString(base64.b64decode(answer["value"]))
    assert [(p.height, p.node_version) for p in decoded.partialUpgrade] == [(100, "v3.0.9"), (200, "v3.1.0")]
    assert decoded.pagination.total == 2  # no pagination asked: count_total, as the SDK's defaults
    assert decoded == inference_query.partial_upgrade_all(state, iq.QueryAllPartialUpgradeRequest())

    version = abci_query(node, "/inference.inference.Query/MLNodeVersion", b"", 1)
    assert version["height"] == "1"
    mlnode = iq.QueryGetMLNodeVersionResponse.FromString(base64.b64decode(version["value"]))
    assert mlnode.mlnode_version.current_version == node.settings.genesis_version


def test_a_missing_plan_over_abci_is_the_sdks_key_not_found() -> None:
    node = _plans_node((100, "v3.0.9"))
    request = iq.QueryGetPartialUpgradeRequest(height=7).SerializeToString()
    answer = abci_query(node, "/inference.inference.Query/PartialUpgrade", request, None)
    assert (answer["code"], answer["codespace"], answer["value"]) == (38, "sdk", None)
    assert answer["log"] == "rpc error: code = NotFound desc = not found: key not found"
    assert answer["height"] == str(node.served_height)
    unknown = abci_query(node, "/inference.inference.Query/Nothing", b"", None)
    assert (unknown["code"], unknown["height"]) == (6, "0")
    garbage = abci_query(node, "/inference.inference.Query/PartialUpgrade", b"\x0a\xff", None)
    assert garbage["code"] == 18
