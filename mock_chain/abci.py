"""ABCI `Query` as a Cosmos SDK v0.50 app answers it through CometBFT's `abci_query`.

The mock routes the gRPC query paths a client of this chain asks through the RPC endpoint:
`/cosmos.gov.v1.Query/Params` (the governance parameters `propose` reads) and
`/inference.inference.Query/{PartialUpgrade,PartialUpgradeAll,MLNodeVersion}` (what the real
API node's Cosmos client asks; the same answers as over gRPC, from `inference_query`). The
answers follow BaseApp.Query and handleQueryGRPC:

- an unrouted path: `QueryResult(ErrUnknownRequest wrapped "unknown query path")`, codespace
  "sdk", code 6, height 0;
- height 0 means the latest block; a negative height is code 18, a height in the future (or a
  node with no block yet) code 26, a pruned one code 18, all without a height, as
  `CreateQueryContext` fails before the handler runs;
- a request that does not decode, or an unknown `params_type`, is the handler's error mapped by
  `gRPCErrorToSDKError` (InvalidArgument -> ErrInvalidRequest, code 18; NotFound ->
  ErrKeyNotFound, code 38; anything else -> ErrUnknownRequest, code 6) with the query's height;
- success: the protobuf answer in `value` (base64) and the height it was answered at.

The mock's votes last a number of blocks, the real chain's a duration, so `voting_period` is
reported as that many block intervals: `block_time_s` when blocks come from the timer, else the
average interval of the newest blocks (what a client measures through `/block`), else 1 s.
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from mock_chain import inference_query
from mock_chain.chain import StateSnapshot, StateUnavailable
from mock_chain.gov import MIN_DEPOSIT
from mock_chain.node import ChainNode
from proto.cosmos.base.v1beta1 import coin_pb2
from proto.cosmos.gov.v1 import gov_pb2, query_pb2
from shared.coins import Coin

__all__ = ["GOV_PARAMS_PATH", "abci_query", "gov_params", "mock_block_interval_s"]

GOV_PARAMS_PATH = "/cosmos.gov.v1.Query/Params"
APP_NAME = "inference"  # BaseApp.Name() of the gonka chain, quoted in "not ready" errors
BLOCK_SAMPLE = 100  # how many of the newest intervals the manual-blocks interval averages
NOMINAL_INTERVAL_S = 1.0  # with fewer than two blocks there is nothing to measure

# Codes registered in the SDK's root codespace (types/errors/errors.go).
CODESPACE = "sdk"
ERR_UNKNOWN_REQUEST = 6
ERR_INVALID_REQUEST = 18
ERR_INVALID_HEIGHT = 26
ERR_KEY_NOT_FOUND = 38
_DESCRIPTIONS = {
    ERR_UNKNOWN_REQUEST: "unknown request",
    ERR_INVALID_REQUEST: "invalid request",
    ERR_INVALID_HEIGHT: "invalid height",
    ERR_KEY_NOT_FOUND: "key not found",
}
INFERENCE_QUERY_PREFIX = "/inference.inference.Query/"
_SDK_CODE_OF = {
    grpc.StatusCode.NOT_FOUND: ERR_KEY_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: ERR_INVALID_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: ERR_INVALID_REQUEST,
}
_PARAMS_TYPES = ("", "voting", "deposit", "tallying")

# The gonka network's values at genesis for what the mock does not model (tally, cancel, burn).
GENESIS_MAX_DEPOSIT_PERIOD_S = 172_800  # "172800s"
_GENESIS = {
    "quorum": "0.334000000000000000",
    "threshold": "0.500000000000000000",
    "veto_threshold": "0.334000000000000000",
    "min_initial_deposit_ratio": "0.000000000000000000",
    "proposal_cancel_ratio": "0.500000000000000000",
    "expedited_threshold": "0.667000000000000000",
    "min_deposit_ratio": "0.010000000000000000",
}


def _response(*, code: int = 0, log: str = "", value: bytes | None = None, height: int = 0) -> dict[str, Any]:
    """`ResponseQuery` as CometBFT writes it (jsonpb, defaults emitted, int64 as strings)."""
    return {
        "code": code,
        "log": log,
        "info": "",
        "index": "0",
        "key": None,
        "value": base64.b64encode(value).decode() if value else None,
        "proofOps": None,
        "height": str(height),
        "codespace": CODESPACE if code else "",
    }


def _error(code: int, message: str, height: int = 0) -> dict[str, Any]:
    """`sdkerrors.QueryResult(errorsmod.Wrap(err, message))`: the log is "<message>: <description>"."""
    return _response(code=code, log=f"{message}: {_DESCRIPTIONS[code]}", height=height)


def mock_block_interval_s(node: ChainNode) -> float:
    """Seconds per block: the timer's interval, else the recent average, else a nominal second."""
    if node.settings.block_time_s > 0:
        return node.settings.block_time_s
    chain = node.chain
    newest = node.served_height
    oldest = max(chain.earliest_height, newest - BLOCK_SAMPLE)
    if newest - oldest >= 1 and newest in chain.blocks and oldest in chain.blocks:
        span = (chain.blocks[newest].time - chain.blocks[oldest].time).total_seconds()
        if span > 0:
            return span / (newest - oldest)
    return NOMINAL_INTERVAL_S


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _coins(coins: tuple[Coin, ...]) -> list[coin_pb2.Coin]:
    return [coin_pb2.Coin(denom=c.denom, amount=str(c.amount)) for c in coins]


def gov_params(node: ChainNode) -> gov_pb2.Params:
    """The x/gov parameters that describe what this mock does (see the module doc)."""
    voting = _duration(node.chain.voting_period_blocks * mock_block_interval_s(node))
    return gov_pb2.Params(
        min_deposit=_coins(MIN_DEPOSIT),
        max_deposit_period=_duration(GENESIS_MAX_DEPOSIT_PERIOD_S),
        voting_period=voting,
        quorum=_GENESIS["quorum"],
        threshold=_GENESIS["threshold"],
        veto_threshold=_GENESIS["veto_threshold"],
        min_initial_deposit_ratio=_GENESIS["min_initial_deposit_ratio"],
        proposal_cancel_ratio=_GENESIS["proposal_cancel_ratio"],
        proposal_cancel_dest="",
        expedited_voting_period=voting,  # the mock votes as long on an expedited proposal
        expedited_threshold=_GENESIS["expedited_threshold"],
        expedited_min_deposit=_coins(MIN_DEPOSIT),
        burn_vote_quorum=False,
        burn_proposal_deposit_prevote=False,
        burn_vote_veto=True,
        min_deposit_ratio=_GENESIS["min_deposit_ratio"],
    )


def _gov_params_answer(node: ChainNode, data: bytes, height: int) -> dict[str, Any]:
    """x/gov `queryServer.Params`: `params` always, plus the deprecated part params_type names."""
    try:
        request = query_pb2.QueryParamsRequest.FromString(data)
    except DecodeError as exc:
        return _error(ERR_INVALID_REQUEST, f"failed to decode QueryParamsRequest: {exc}", height)
    if request.params_type not in _PARAMS_TYPES:
        return _error(
            ERR_INVALID_REQUEST,
            f"rpc error: code = InvalidArgument desc = unknown params type: {request.params_type}",
            height,
        )
    params = gov_params(node)
    answer = query_pb2.QueryParamsResponse(params=params)
    if request.params_type == "voting":
        answer.voting_params.voting_period.CopyFrom(params.voting_period)
    elif request.params_type == "deposit":
        answer.deposit_params.min_deposit.extend(params.min_deposit)
        answer.deposit_params.max_deposit_period.CopyFrom(params.max_deposit_period)
    elif request.params_type == "tallying":
        answer.tally_params.quorum = params.quorum
        answer.tally_params.threshold = params.threshold
        answer.tally_params.veto_threshold = params.veto_threshold
    return _response(value=answer.SerializeToString(), height=height)


def _inference_answer(method: inference_query.Method, state: StateSnapshot, data: bytes) -> dict[str, Any]:
    try:
        value = method.call(state, data)
    except inference_query.QueryError as exc:
        code = _SDK_CODE_OF.get(exc.code, ERR_UNKNOWN_REQUEST)
        status = "".join(part.capitalize() for part in exc.code.name.split("_"))
        return _error(code, f"rpc error: code = {status} desc = {exc.message}", state.height)
    return _response(value=value, height=state.height)


def abci_query(node: ChainNode, path: str, data: bytes, height: int | None) -> dict[str, Any]:
    """The `response` object of CometBFT's `abci_query` result, in its JSON shape."""
    method = None
    if path.startswith(INFERENCE_QUERY_PREFIX):
        method = inference_query.METHODS.get(path.removeprefix(INFERENCE_QUERY_PREFIX))
    if path != GOV_PARAMS_PATH and method is None:
        return _error(ERR_UNKNOWN_REQUEST, "unknown query path")
    latest = node.served_height
    requested = height or 0
    if requested < 0:
        return _error(ERR_INVALID_REQUEST, "cannot query with height < 0; please provide a valid height")
    if latest == 0:
        return _error(ERR_INVALID_HEIGHT, f"{APP_NAME} is not ready; please wait for first block")
    if requested > latest:
        return _error(
            ERR_INVALID_HEIGHT, "cannot query with height in the future; please provide a valid height"
        )
    at = requested or latest
    try:
        state = node.chain.state_at(at, head=latest)
    except StateUnavailable:
        return _error(
            ERR_INVALID_REQUEST,
            f"failed to load state at height {at}; version does not exist (latest height: {latest})",
        )
    if method is not None:
        return _inference_answer(method, state, data)
    return _gov_params_answer(node, data, at)
