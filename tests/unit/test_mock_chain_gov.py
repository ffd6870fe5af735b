"""Proposal JSON: what the chain refuses is refused, with the reason; addresses are real bech32."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from mock_chain import bech32
from mock_chain.gov import (
    BECH32_PREFIX,
    GOV_MODULE_ADDRESS,
    MIN_DEPOSIT,
    MSG_CREATE_PARTIAL_UPGRADE,
    MsgCreatePartialUpgrade,
    ProposalRejected,
    parse_proposal,
)
from shared.coins import Coin, parse_coins
from tests.unit.test_mock_chain_chain import proposal


def test_gov_module_address_is_derived_from_the_module_name() -> None:
    assert bech32.module_address("gov", BECH32_PREFIX) == GOV_MODULE_ADDRESS
    hrp, payload = bech32.decode(GOV_MODULE_ADDRESS)
    assert hrp == "gonka" and payload == hashlib.sha256(b"gov").digest()[:20]


def test_bech32_round_trip_and_checksum() -> None:
    address = bech32.encode("gonka", bytes(range(20)))
    assert bech32.decode(address) == ("gonka", bytes(range(20)))
    corrupted = address[:-1] + ("q" if address[-1] != "q" else "p")
    with pytest.raises(bech32.Bech32Error, match="checksum"):
        bech32.decode(corrupted)
    with pytest.raises(bech32.Bech32Error, match="mixed case"):
        bech32.decode(address[:8] + address[8:].upper())


def test_the_cli_and_the_chain_agree_on_the_constants() -> None:
    from cli import propose

    assert propose.GOV_MODULE_ADDRESS == GOV_MODULE_ADDRESS
    assert propose.MSG_CREATE_PARTIAL_UPGRADE == MSG_CREATE_PARTIAL_UPGRADE


def test_a_valid_proposal_parses() -> None:
    draft = parse_proposal(proposal((12000, "v3.0.9"), expedited=True))
    assert draft.messages == (MsgCreatePartialUpgrade(GOV_MODULE_ADDRESS, 12000, "v3.0.9", ""),)
    assert draft.expedited and draft.deposit == "10000000ngonka"


def test_height_may_be_a_json_number_as_protojson_allows() -> None:
    doc = proposal((100, "v3.0.9"))
    doc["messages"][0]["height"] = 100
    assert parse_proposal(doc).messages[0].height == 100


def _message(**fields: Any) -> dict[str, Any]:
    doc = proposal((100, "v3.0.9"))
    doc["messages"][0].update(fields)
    return doc


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ([], "must be a JSON object"),
        (proposal(), "non-empty list"),
        ({**proposal((100, "v3.0.9")), "titel": "x"}, "unknown proposal field 'titel'"),
        (_message(authority="gonka1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"), "invalid authority"),
        (
            _message(authority=bech32.module_address("inference", "gonka")),
            "expected gov account as only signer",
        ),
        (_message(height="0"), "height: must be greater than 0"),
        (_message(height="-5"), "unsigned integer"),
        (_message(height=True), "boolean"),
        (_message(nodeVersion=" ", apiBinariesJson=""), "cannot both be empty"),
        (_message(nodeVersion="v3.0.9/../../admin"), "path separator"),
        (_message(nodeVersion="latest"), "invalid MLNode version"),
        (_message(node_version="v3.0.9"), "unknown field 'node_version'"),
        (_message(**{"@type": "/cosmos.gov.v1.MsgExecLegacyContent"}), "unsupported message type"),
        (_message(height=str(2**63)), "beyond any block height"),
        ({**proposal((100, "v3.0.9")), "title": ""}, "title cannot be empty"),
        ({**proposal((100, "v3.0.9")), "summary": " "}, "summary cannot be empty"),
        ({**proposal((100, "v3.0.9")), "deposit": ""}, "invalid deposit: no coins given"),
        ({**proposal((100, "v3.0.9")), "deposit": "10"}, "invalid deposit: '10' is not <amount><denom>"),
        ({**proposal((100, "v3.0.9")), "deposit": "0ngonka"}, "must be positive"),
        ({**proposal((100, "v3.0.9")), "metadata": "x" * 256}, "metadata too long"),
        ({**proposal((100, "v3.0.9")), "expedited": "yes"}, "expedited must be true or false"),
    ],
)
def test_refused_with_a_reason(doc: Any, reason: str) -> None:
    with pytest.raises(ProposalRejected, match=reason.replace("(", r"\(")):
        parse_proposal(doc)


def test_deposits_are_coins_in_the_accepted_denomination() -> None:
    assert parse_coins("5ngonka, 7uatom") == (Coin("ngonka", 5), Coin("uatom", 7))  # sorted by denom
    assert [str(c) for c in MIN_DEPOSIT] == ["1ngonka"]
    assert parse_proposal({**proposal((100, "v3.0.9")), "deposit": "1ngonka"}).deposit == "1ngonka"
    with pytest.raises(ProposalRejected, match="duplicate denomination ngonka"):
        parse_proposal({**proposal((100, "v3.0.9")), "deposit": "1ngonka,2ngonka"})
    refusal = (
        "deposited 100stake, but gov accepts only the following denom(s): [ngonka]: invalid deposit denom"
    )
    with pytest.raises(ProposalRejected, match=re.escape(refusal)):
        parse_proposal({**proposal((100, "v3.0.9")), "deposit": "100stake"})


def test_a_deposit_below_the_minimum_is_refused_for_want_of_a_deposit_period() -> None:
    real = (Coin("ngonka", 25_000_000),)
    expedited = (Coin("ngonka", 50_000_000),)
    below = {**proposal((100, "v3.0.9")), "deposit": "10000000ngonka"}
    with pytest.raises(ProposalRejected, match="below min_deposit 25000000ngonka: the real chain would keep"):
        parse_proposal(below, min_deposit=real, expedited_min_deposit=expedited)
    enough = {**below, "deposit": "25000000ngonka"}
    assert (
        parse_proposal(enough, min_deposit=real, expedited_min_deposit=expedited).deposit == "25000000ngonka"
    )
    with pytest.raises(ProposalRejected, match="below expedited_min_deposit 50000000ngonka"):
        parse_proposal({**enough, "expedited": True}, min_deposit=real, expedited_min_deposit=expedited)
