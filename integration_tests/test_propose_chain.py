"""`mlnode-upgrade propose --rpc` against a running mock chain, over its CometBFT RPC socket.

The CLI runs as its own process, reads the chain's x/gov params through `abci_query` and its
block time through `/status` and `/block`, and its verdict holds on the chain: a height it
refuses the vote would outlast, a height it writes the chain stores and applies.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import httpx

from integration_tests.chain_support import ChainControl
from integration_tests.support import propose_cli
from mock_chain.server import MockChainServer
from proto.cosmos.gov.v1 import query_pb2

VOTING = "0x" + query_pb2.QueryParamsRequest(params_type="voting").SerializeToString().hex()


async def test_abci_query_answers_the_gov_params_over_http(
    chain: MockChainServer, control: ChainControl
) -> None:
    await control.advance(5)
    async with httpx.AsyncClient(base_url=chain.rpc_url, timeout=5) as http:
        response = await http.get(
            "/abci_query", params={"path": '"/cosmos.gov.v1.Query/Params"', "data": VOTING}
        )
        unknown = await http.get("/abci_query", params={"path": '"/cosmos.gov.v1.Query/Proposals"'})
    assert response.status_code == 200, response.text
    answer = response.json()["result"]["response"]
    assert (answer["code"], answer["height"]) == (0, "5")
    params = query_pb2.QueryParamsResponse.FromString(base64.b64decode(answer["value"])).params
    assert [(c.denom, c.amount) for c in params.min_deposit] == [("ngonka", "1")]
    assert params.voting_period.ToNanoseconds() > 0
    gone = unknown.json()["result"]["response"]
    assert (gone["code"], gone["codespace"], gone["log"]) == (6, "sdk", "unknown query path: unknown request")


async def test_propose_refuses_what_the_vote_outlasts_and_the_chain_applies_what_it_writes(
    chain: MockChainServer, control: ChainControl, tmp_path: Path
) -> None:
    current = await control.advance(20)  # blocks on demand: the height stays put while the CLI runs
    out = tmp_path / "proposal.json"
    common = ("--node-version", "v3.0.9", "--rpc", chain.rpc_url, "--out", str(out))

    code, _, err = await propose_cli("--height", str(current + 3), "--deposit", "1ngonka", *common)
    assert code == 2, err
    assert f"is 3 blocks ahead of the chain (at {current})" in err and "voting period" not in err
    match = re.search(r"The lowest safe height is (\d+)", err)
    assert match, err
    lowest = int(match.group(1))
    assert not out.exists()

    code, _, err = await propose_cli("--height", str(current + 3), "--deposit", "1ngonka", "--force", *common)
    assert code == 0 and "(--force: going on)" in err and out.exists()

    code, _, err = await propose_cli("--height", str(lowest), "--deposit", "1ngonka", *common)
    assert code == 0, err
    assert "warning" not in err

    async with httpx.AsyncClient(base_url=chain.rpc_url, timeout=5) as http:
        submitted = await http.post("/gov/proposals", json=json.loads(out.read_text()))
    assert submitted.status_code == 200, submitted.text
    assert int(submitted.json()["voting_end_height"]) < lowest  # the vote ends before the plan's height
    await control.advance(lowest - current)
    assert chain.node.chain.mlnode_version == "v3.0.9"


async def test_propose_flags_a_deposit_the_chain_would_not_take(
    chain: MockChainServer, control: ChainControl, tmp_path: Path
) -> None:
    current = await control.advance(3)
    out = tmp_path / "proposal.json"
    code, _, err = await propose_cli(
        "--height", str(current + 500), "--node-version", "v3.0.9", "--deposit", "100stake",
        "--rpc", chain.rpc_url, "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "accepts deposits only in ngonka" in err and "below the chain's min_deposit of 1ngonka" in err


async def test_propose_with_a_node_that_is_not_there_stops(tmp_path: Path) -> None:
    out = tmp_path / "proposal.json"
    args = ("--height", "100", "--node-version", "v3.0.9", "--deposit", "1ngonka", "--out", str(out))
    code, _, err = await propose_cli(*args, "--rpc", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach http://127.0.0.1:9/status" in err and "--force" in err
    assert not out.exists()
