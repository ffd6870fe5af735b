"""`mlnode-upgrade propose`: the proposal file, the printed command, and what it refuses."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import duration_pb2
from typer.testing import CliRunner

from cli import propose as propose_module
from cli.app import app
from cli.propose import (
    BlockTime,
    ChainReadError,
    GovParams,
    ProposalInputError,
    assess,
    build_proposal,
    check_api_binaries_json,
    read_chain,
    submit_command,
)
from mock_chain.gov import parse_proposal
from proto.cosmos.base.v1beta1 import coin_pb2
from proto.cosmos.gov.v1 import gov_pb2, query_pb2
from shared.coins import Coin

runner = CliRunner()
H = 3600.0
# The gonka network's x/gov parameters at genesis (genesis/genesis.json of gonka-ai/gonka).
GONKA = GovParams(
    voting_period_s=48 * H,
    expedited_voting_period_s=12 * H,
    min_deposit=(Coin("ngonka", 25_000_000),),
    expedited_min_deposit=(Coin("ngonka", 50_000_000),),
    max_deposit_period_s=48 * H,
)
SIX_SECONDS = BlockTime(6.0, 100)


def test_written_proposal_is_what_the_chain_accepts(tmp_path: Path) -> None:
    out = tmp_path / "proposal.json"
    result = runner.invoke(
        app,
        [
            "propose",
            "--height",
            "12000",
            "--node-version",
            "v3.0.9",
            "--deposit",
            "10000000ngonka",
            "--title",
            "Upgrade",
            "--summary",
            "Move to v3.0.9",
            "--current-height",
            "11000",
            "--voting-period-blocks",
            "100",
            "--out",
            str(out),
            "--from",
            "gov-key",
            "--chain-id",
            "gonka-mainnet",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["messages"] == [
        {
            "@type": "/inference.inference.MsgCreatePartialUpgrade",
            "authority": "gonka10d07y265gmmuvt4z0w9aw880jnsr700j2h5m33",
            "height": "12000",
            "nodeVersion": "v3.0.9",
            "apiBinariesJson": "",
        }
    ]
    assert (doc["title"], doc["summary"], doc["deposit"], doc["expedited"]) == (
        "Upgrade",
        "Move to v3.0.9",
        "10000000ngonka",
        False,
    )
    draft = parse_proposal(doc)  # the mock chain's parser, which refuses what the chain refuses
    assert draft.messages[0].height == 12000
    assert f"inferenced tx gov submit-proposal {out} --from gov-key --chain-id gonka-mainnet" in result.output
    assert "warning" not in result.output


def test_stdout_output_and_default_title(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "propose",
            "--height",
            "500",
            "--node-version",
            "v3.1.0-rc1",
            "--deposit",
            "1ngonka",
            "--current-height",
            "10",
            "--out",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["title"] == "MLNode upgrade to v3.1.0-rc1 at height 500"


def _too_close(tmp_path: Path, *extra: str) -> tuple[Any, Path]:
    out = tmp_path / "p.json"
    argv = ["propose", "--height", "105", "--node-version", "v3.0.9", "--deposit", "1ngonka"]
    argv += ["--current-height", "100", "--voting-period-blocks", "10", "--out", str(out), *extra]
    return runner.invoke(app, argv), out


def test_a_height_the_vote_outlasts_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    result, out = _too_close(tmp_path)
    assert result.exit_code == 2
    assert "only 5 blocks ahead but the voting period is 10 blocks" in result.stderr
    assert "the lowest safe height is 111" in result.stderr and "--force" in result.stderr
    assert not out.exists()


def test_force_writes_it_anyway_with_a_warning(tmp_path: Path) -> None:
    result, out = _too_close(tmp_path, "--force")
    assert result.exit_code == 0, result.output
    assert (
        "warning: height 105 is only 5 blocks ahead" in result.stderr
        and "(--force: going on)" in result.stderr
    )
    assert out.exists()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--node-version", "v3.0.9/../admin"], "path separator"),
        (["--node-version", "latest"], "invalid MLNode version"),
        (["--current-height", "200"], "not in the future"),
        (["--api-binaries-json", "{broken"], "not valid JSON"),
        (["--api-binaries-json", "[1]"], "must be a JSON object"),
        (["--deposit", "lots"], "is not <amount><denom>"),
    ],
)
def test_invalid_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], reason: str) -> None:
    out = tmp_path / "p.json"
    base = {"--height": "150", "--node-version": "v3.0.9", "--deposit": "1ngonka", "--current-height": "100"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["propose", "--out", str(out), *[x for pair in base.items() for x in pair]]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert reason in result.stderr
    assert not out.exists()


def test_api_binaries_json_warnings() -> None:
    assert check_api_binaries_json("", "v3.0.9") == []
    good = json.dumps(
        {"api_binaries": {"linux/amd64": "https://x?checksum=sha256:ab"}, "node_version": "v3.0.9"}
    )
    assert check_api_binaries_json(good, "v3.0.9") == []
    warnings = check_api_binaries_json('{"amd64": "hash1"}', "v3.0.9")
    assert any("skip such an entry" in w for w in warnings)
    mismatch = json.dumps({"api_binaries": {"linux/amd64": "u"}, "node_version": "v3.0.10"})
    assert any("take the one inside the JSON" in w for w in check_api_binaries_json(mismatch, "v3.0.9"))


def test_height_checks_with_a_block_count() -> None:
    assert assess(height=200, current_height=100, deposit="1ngonka", voting_period_blocks=50).refusals == ()
    unknown = assess(height=200, current_height=None, deposit="1ngonka")
    assert "height is unknown" in unknown.warnings[0] and unknown.refusals == ()
    close = assess(height=150, current_height=100, deposit="1ngonka", voting_period_blocks=60)
    assert close.lowest_safe_height == 161 and "the lowest safe height is 161" in close.refusals[0]
    assert assess(height=161, current_height=100, deposit="1ngonka", voting_period_blocks=60).refusals == ()
    no_period = assess(height=150, current_height=100, deposit="1ngonka")
    assert "voting period is unknown" in no_period.warnings[0]
    with pytest.raises(ProposalInputError, match="not in the future"):
        assess(height=100, current_height=100, deposit="1ngonka", voting_period_blocks=10)


def test_the_chains_voting_period_in_blocks_plus_a_margin() -> None:
    # 48 h at 6 s per block = 28800 blocks; margin 10% (2880) + 20 blocks; above 1000 + 31700
    kw: dict[str, Any] = {"current_height": 1000, "deposit": "25000000ngonka", "gov": GONKA}
    verdict = assess(height=1003, block_time=SIX_SECONDS, **kw)
    assert verdict.lowest_safe_height == 32_701 and verdict.warnings == ()
    (refusal,) = verdict.refusals
    for figure in ("3 blocks ahead", "48h0m0s", "about 28800 blocks", "6 s per block", "last 100", "32701"):
        assert figure in refusal, figure
    assert "margin of 2900 (10% + 20 blocks)" in refusal
    assert assess(height=32_701, block_time=SIX_SECONDS, **kw).refusals == ()
    assert assess(height=32_700, block_time=SIX_SECONDS, **kw).refusals
    slower = assess(height=32_701, block_time=BlockTime(5.0, 100), **kw)  # more blocks in 48 h
    assert slower.lowest_safe_height == 1000 + 34_560 + 3_456 + 20 + 1 and slower.refusals


def test_an_expedited_vote_uses_the_expedited_period_and_minimum() -> None:
    kw: dict[str, Any] = {"current_height": 1000, "gov": GONKA, "block_time": SIX_SECONDS, "expedited": True}
    verdict = assess(height=8_941, deposit="50000000ngonka", **kw)
    assert verdict.lowest_safe_height == 1000 + 7200 + 740 + 1 and verdict == type(verdict)((), (), 8941)
    assert "expedited vote lasts 12h0m0s" in assess(height=8_940, deposit="50000000ngonka", **kw).refusals[0]
    (warning,) = assess(height=9_000, deposit="25000000ngonka", **kw).warnings
    assert "below the chain's expedited_min_deposit of 50000000ngonka" in warning


def test_a_denomination_twice_is_refused_as_the_chain_refuses_it() -> None:
    with pytest.raises(ProposalInputError, match="duplicate denomination ngonka"):
        assess(
            height=40_000,
            current_height=1000,
            deposit="20000000ngonka,5000000ngonka",
            gov=GONKA,
            block_time=SIX_SECONDS,
        )


@pytest.mark.parametrize(
    ("deposit", "expected"),
    [
        ("25000000ngonka", []),
        ("30000000ngonka", []),
        (
            "10000000ngonka",
            ["below the chain's min_deposit of 25000000ngonka", "deposit period (up to 48h0m0s)"],
        ),
        ("25000000stake", ["accepts deposits only in ngonka", "below the chain's min_deposit"]),
    ],
)
def test_the_deposit_against_min_deposit(deposit: str, expected: list[str]) -> None:
    verdict = assess(height=40_000, current_height=1000, deposit=deposit, gov=GONKA, block_time=SIX_SECONDS)
    text = " | ".join(verdict.warnings)
    assert verdict.refusals == ()
    assert all(part in text for part in expected), text
    assert bool(verdict.warnings) == bool(expected)


# -- a node over HTTP (httpx.MockTransport) ---------------------------------------------------

T_LATEST = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _gov_answer(voting_s: int = 172_800, code: int = 0) -> dict[str, Any]:
    params = gov_pb2.Params(
        min_deposit=[coin_pb2.Coin(denom="ngonka", amount="25000000")],
        max_deposit_period=duration_pb2.Duration(seconds=172_800),
        voting_period=duration_pb2.Duration(seconds=voting_s),
        expedited_voting_period=duration_pb2.Duration(seconds=43_200),
        expedited_min_deposit=[coin_pb2.Coin(denom="ngonka", amount="50000000")],
    )
    value = query_pb2.QueryParamsResponse(params=params).SerializeToString()
    response = {
        "code": code,
        "log": "unknown query path: unknown request" if code else "",
        "info": "",
        "index": "0",
        "key": None,
        "value": None if code else base64.b64encode(value).decode(),
        "proofOps": None,
        "height": "0" if code else "1000",
        "codespace": "sdk" if code else "",
    }
    return {"jsonrpc": "2.0", "id": -1, "result": {"response": response}}


def _rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as CometBFT prints


class FakeNode:
    """A CometBFT RPC endpoint: /status, /block?height=, /abci_query; records what was asked."""

    def __init__(
        self, *, latest: int = 1000, earliest: int = 1, seconds_per_block: float = 6.0, **overrides: Any
    ) -> None:
        self.latest, self.earliest, self.step = latest, earliest, seconds_per_block
        self.overrides = overrides
        self.requests: list[httpx.Request] = []

    def time_at(self, height: int) -> datetime:
        return T_LATEST - timedelta(seconds=self.step * (self.latest - height))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = request.url.path.strip("/")
        if route in self.overrides:
            answer = self.overrides[route]
            if isinstance(answer, Exception):
                raise answer
            return httpx.Response(200, json=answer)
        if route == "status":
            sync = {
                "latest_block_height": str(self.latest),
                "latest_block_time": _rfc3339(self.time_at(self.latest)),
                "earliest_block_height": str(self.earliest),
                "catching_up": False,
            }
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": -1, "result": {"sync_info": sync}})
        if route == "block":
            height = int(request.url.params["height"])
            header = {"height": str(height), "time": _rfc3339(self.time_at(height))}
            return httpx.Response(
                200, json={"jsonrpc": "2.0", "id": -1, "result": {"block": {"header": header}}}
            )
        if route == "abci_query":
            return httpx.Response(200, json=_gov_answer())
        return httpx.Response(404, text="not found")


def _client(node: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(node))


def test_read_chain_queries_gov_params_and_measures_the_block_time() -> None:
    node = FakeNode()
    chain = read_chain(_client(node), "http://node:26657/")
    assert chain.height == 1000 and chain.gov == GONKA
    assert chain.block_time is not None
    assert chain.block_time.intervals == 100 and abs(chain.block_time.seconds_per_block - 6.0) < 1e-6
    abci = next(r for r in node.requests if r.url.path == "/abci_query")
    assert abci.url.params["path"] == '"/cosmos.gov.v1.Query/Params"'
    assert abci.url.params["data"] == "0x0a06766f74696e67"  # QueryParamsRequest{params_type: "voting"}
    assert [r.url.params.get("height") for r in node.requests if r.url.path == "/block"] == ["900"]


@pytest.mark.parametrize(("latest", "earliest", "oldest"), [(30, 1, 1), (1000, 950, 950)])
def test_a_short_or_pruned_chain_is_measured_over_what_it_has(
    latest: int, earliest: int, oldest: int
) -> None:
    node = FakeNode(latest=latest, earliest=earliest, seconds_per_block=5.0)
    chain = read_chain(_client(node), "http://node:26657")
    assert chain.block_time == BlockTime(5.0, latest - oldest)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            FakeNode(
                status={"jsonrpc": "2.0", "id": -1, "error": {"code": -32603, "message": "Internal error"}}
            ),
            "answered an error: Internal error",
        ),
        (
            FakeNode(
                block={
                    "jsonrpc": "2.0",
                    "id": -1,
                    "error": {
                        "code": -32603,
                        "message": "Internal error",
                        "data": "height 900 is not available",
                    },
                }
            ),
            "height 900 is not available",
        ),
        (FakeNode(abci_query=_gov_answer(code=6)), "code 6 (sdk): unknown query path: unknown request"),
        (FakeNode(latest=1, earliest=1), "no earlier block than 1"),
        (
            FakeNode(
                status={
                    "jsonrpc": "2.0",
                    "id": -1,
                    "result": {
                        "sync_info": {
                            "latest_block_height": "7",
                            "latest_block_time": "2026-11-23T10:00:00Z",
                            "catching_up": True,
                        }
                    },
                }
            ),
            "is catching up",
        ),
        (FakeNode(status=httpx.ConnectError("refused")), "cannot reach http://node:26657/status"),
    ],
)
def test_what_the_node_cannot_tell_is_an_error_saying_what(node: FakeNode, message: str) -> None:
    with pytest.raises(ChainReadError, match=re.escape(message)):
        read_chain(_client(node), "http://node:26657")


def _propose_against(
    monkeypatch: pytest.MonkeyPatch, node: FakeNode, tmp_path: Path, *args: str
) -> tuple[Any, Path]:
    monkeypatch.setattr(propose_module, "_http_client", lambda: _client(node))
    out = tmp_path / "p.json"
    argv = ["propose", "--node-version", "v3.0.9", "--rpc", "http://node:26657", "--out", str(out), *args]
    return runner.invoke(app, argv), out


def test_propose_with_rpc_refuses_a_height_the_48h_vote_outlasts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, out = _propose_against(
        monkeypatch, FakeNode(), tmp_path, "--height", "1003", "--deposit", "25000000ngonka"
    )
    assert result.exit_code == 2
    assert (
        "error: height 1003 is 3 blocks ahead" in result.stderr
        and "lowest safe height is 32701" in result.stderr
    )
    assert not out.exists()

    forced, out = _propose_against(
        monkeypatch, FakeNode(), tmp_path, "--height", "1003", "--deposit", "25000000ngonka", "--force"
    )
    assert forced.exit_code == 0 and out.exists()
    assert "warning: height 1003" in forced.stderr


def test_propose_with_rpc_writes_a_safe_height_and_flags_a_small_deposit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, out = _propose_against(
        monkeypatch, FakeNode(), tmp_path, "--height", "40000", "--deposit", "10000000ngonka"
    )
    assert result.exit_code == 0, result.output
    assert "below the chain's min_deposit of 25000000ngonka" in result.stderr
    assert json.loads(out.read_text())["messages"][0]["height"] == "40000"
    clean, _ = _propose_against(
        monkeypatch, FakeNode(), tmp_path, "--height", "40000", "--deposit", "25000000ngonka"
    )
    assert clean.exit_code == 0 and "warning" not in clean.stderr


def test_propose_with_an_unreadable_node_stops_unless_forced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    down = FakeNode(abci_query=_gov_answer(code=6))
    result, out = _propose_against(
        monkeypatch, down, tmp_path, "--height", "40000", "--deposit", "25000000ngonka"
    )
    assert result.exit_code == 1 and "unknown query path" in result.stderr and "--force" in result.stderr
    assert not out.exists()
    forced, out = _propose_against(
        monkeypatch, down, tmp_path, "--height", "40000", "--deposit", "25000000ngonka", "--force"
    )
    assert forced.exit_code == 0 and out.exists()
    assert "not checked against the chain (--force)" in forced.stderr


def test_a_block_count_override_with_rpc_still_checks_the_deposit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node = FakeNode()
    result, _ = _propose_against(
        monkeypatch,
        node,
        tmp_path,
        "--height",
        "1011",
        "--deposit",
        "1ngonka",
        "--voting-period-blocks",
        "10",
    )
    assert result.exit_code == 0, result.output
    assert "below the chain's min_deposit" in result.stderr
    assert not any(r.url.path == "/block" for r in node.requests)  # no block time needed


def test_builder_refuses_bad_values() -> None:
    with pytest.raises(ProposalInputError, match="--height"):
        build_proposal(height=0, node_version="v3.0.9", title="t", summary="s", deposit="1ngonka")
    with pytest.raises(ProposalInputError, match="--deposit"):
        build_proposal(height=5, node_version="v3.0.9", title="t", summary="s", deposit=" ")


def test_command_quotes_what_the_shell_would_split() -> None:
    assert submit_command("my proposal.json", "k", "c", "tcp://n:26657") == (
        "inferenced tx gov submit-proposal 'my proposal.json' --from k --chain-id c --node tcp://n:26657"
    )
