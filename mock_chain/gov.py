"""The governance proposal file `inferenced tx gov submit-proposal` takes, parsed and validated.

Pure: turns the JSON into a `ProposalDraft` or raises `ProposalRejected` with the reason. It refuses
what the real chain refuses (unknown message fields, an authority that is not the gov module
account, `ValidateBasic` failures, bad deposit coins or a denomination x/gov does not accept, empty
title or summary) and, on top, version strings that would not survive as a URL path segment.

Deposits: the real chain puts a proposal whose deposit is below `min_deposit` into a deposit
period, where it waits for more deposits and is never voted on if they do not come. This mock has
no deposit period, so it refuses such a proposal instead, saying so. `MIN_DEPOSIT` is what it
enforces and what its `/cosmos.gov.v1.Query/Params` reports (`mock_chain.abci`). Checks that need
the chain's height live in `mock_chain.chain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mock_chain.bech32 import Bech32Error, decode
from shared.coins import Coin, InvalidCoins, below, coins_text, foreign_denoms, parse_coins
from shared.versions import InvalidVersionError, parse_version

__all__ = [
    "BECH32_PREFIX",
    "GOV_MODULE_ADDRESS",
    "MAX_METADATA_LEN",
    "MIN_DEPOSIT",
    "MSG_CREATE_PARTIAL_UPGRADE",
    "MsgCreatePartialUpgrade",
    "ProposalDraft",
    "ProposalRejected",
    "parse_proposal",
]

BECH32_PREFIX = "gonka"
# bech32("gonka", sha256("gov")[:20]); the gov module account signs executed proposal messages.
# It appears as `authority` in the public gonka governance proposals; a unit test re-derives it.
GOV_MODULE_ADDRESS = "gonka10d07y265gmmuvt4z0w9aw880jnsr700j2h5m33"

MSG_CREATE_PARTIAL_UPGRADE = "/inference.inference.MsgCreatePartialUpgrade"
MAX_METADATA_LEN = 255  # the Cosmos SDK gov module's default metadata limit
MAX_HEIGHT = 2**63 - 1  # CometBFT heights are int64

_MSG_FIELDS = frozenset({"@type", "authority", "height", "nodeVersion", "apiBinariesJson"})
_PROPOSAL_FIELDS = frozenset({"messages", "metadata", "deposit", "title", "summary", "expedited"})


class ProposalRejected(ValueError):
    """The chain refuses this proposal; the message is the reason, for the submitter."""


# The mock's x/gov `min_deposit` and `expedited_min_deposit`: the smallest positive amount, so the
# `1ngonka` deposits of the dev tools enter the vote. The real network's is 25000000ngonka
# (50000000ngonka expedited) at genesis.
MIN_DEPOSIT: tuple[Coin, ...] = (Coin("ngonka", 1),)


@dataclass(frozen=True, slots=True)
class MsgCreatePartialUpgrade:
    """`inference.inference.MsgCreatePartialUpgrade` (proto field names are camelCase on the chain)."""

    authority: str
    height: int
    node_version: str
    api_binaries_json: str

    def validate_basic(self) -> None:
        """The chain's own stateless checks: bech32 authority, height > 0, not both blank."""
        try:
            decode(self.authority)
        except Bech32Error as exc:
            raise ProposalRejected(f"invalid authority address {self.authority!r}: {exc}") from None
        if self.height == 0:
            raise ProposalRejected("invalid height: must be greater than 0")
        if not self.node_version.strip() and not self.api_binaries_json.strip():
            raise ProposalRejected("nodeVersion and apiBinariesJson cannot both be empty")

    def to_json(self) -> dict[str, Any]:
        return {
            "@type": MSG_CREATE_PARTIAL_UPGRADE,
            "authority": self.authority,
            "height": str(self.height),
            "nodeVersion": self.node_version,
            "apiBinariesJson": self.api_binaries_json,
        }


@dataclass(frozen=True, slots=True)
class ProposalDraft:
    """A validated proposal, not yet on the chain."""

    messages: tuple[MsgCreatePartialUpgrade, ...]
    title: str
    summary: str
    metadata: str
    deposit: str
    expedited: bool


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ProposalRejected(f"{where} must be a string, got {type(value).__name__}")
    return value


def _uint64(where: str, value: Any) -> int:
    """protojson accepts a uint64 as a decimal string (canonical) or a JSON number."""
    if isinstance(value, bool):
        raise ProposalRejected(f"{where} must be an unsigned integer, got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ProposalRejected(f"{where} must be an unsigned integer (a decimal string), got {value!r}")
    if number < 0 or number > 2**64 - 1:
        raise ProposalRejected(f"{where} {number} is out of the uint64 range")
    return number


def _parse_message(index: int, raw: Any) -> MsgCreatePartialUpgrade:
    where = f"messages[{index}]"
    if not isinstance(raw, Mapping):
        raise ProposalRejected(f"{where} must be a JSON object")
    type_url = raw.get("@type")
    if type_url != MSG_CREATE_PARTIAL_UPGRADE:
        raise ProposalRejected(
            f"{where}: unsupported message type {type_url!r}; this mock chain executes only "
            f"{MSG_CREATE_PARTIAL_UPGRADE}"
        )
    unknown = sorted(set(raw) - _MSG_FIELDS)
    if unknown:
        raise ProposalRejected(f"{where}: unknown field {unknown[0]!r} in {MSG_CREATE_PARTIAL_UPGRADE}")
    msg = MsgCreatePartialUpgrade(
        authority=_string(f"{where}.authority", raw.get("authority", "")),
        height=_uint64(f"{where}.height", raw.get("height", "0")),
        node_version=_string(f"{where}.nodeVersion", raw.get("nodeVersion", "")),
        api_binaries_json=_string(f"{where}.apiBinariesJson", raw.get("apiBinariesJson", "")),
    )
    try:
        msg.validate_basic()
    except ProposalRejected as exc:
        raise ProposalRejected(f"{where}: {exc}") from None
    if msg.authority != GOV_MODULE_ADDRESS:
        raise ProposalRejected(
            f"{where}: expected gov account as only signer for proposal message "
            f"(authority must be {GOV_MODULE_ADDRESS}, got {msg.authority})"
        )
    # Ours, beyond the chain: the version becomes a URL path segment on every operator's proxy.
    if msg.node_version:
        try:
            parse_version(msg.node_version)
        except InvalidVersionError as exc:
            raise ProposalRejected(f"{where}: {exc}") from None
    if msg.height > MAX_HEIGHT:
        raise ProposalRejected(f"{where}: height {msg.height} is beyond any block height (int64)")
    return msg


def _check_deposit(raw: str, minimum: tuple[Coin, ...], which: str) -> str:
    """x/gov `validateDepositDenom`, then the deposit-period rule (refused here, see the module doc)."""
    try:
        deposit = parse_coins(raw)
    except InvalidCoins as exc:
        raise ProposalRejected(f"invalid deposit: {exc}") from None
    if foreign_denoms(deposit, minimum):
        raise ProposalRejected(
            f"deposited {coins_text(deposit)}, but gov accepts only the following denom(s): "
            f"[{' '.join(c.denom for c in minimum)}]: invalid deposit denom"
        )
    if below(deposit, minimum):
        raise ProposalRejected(
            f"deposit {coins_text(deposit)} is below {which} {coins_text(minimum)}: the real chain would "
            "keep the proposal in its deposit period, not voted on until deposits reach the minimum; "
            "this mock has no deposit period and refuses it"
        )
    return raw


def parse_proposal(
    raw: Any,
    *,
    min_deposit: tuple[Coin, ...] = MIN_DEPOSIT,
    expedited_min_deposit: tuple[Coin, ...] = MIN_DEPOSIT,
) -> ProposalDraft:
    """Validate a submit-proposal JSON document; raise `ProposalRejected` saying why not."""
    if not isinstance(raw, Mapping):
        raise ProposalRejected("the proposal must be a JSON object")
    unknown = sorted(set(raw) - _PROPOSAL_FIELDS)
    if unknown:
        raise ProposalRejected(f"unknown proposal field {unknown[0]!r}; expected {sorted(_PROPOSAL_FIELDS)}")
    messages_raw = raw.get("messages")
    if not isinstance(messages_raw, list) or not messages_raw:
        raise ProposalRejected("messages must be a non-empty list of proposal messages")
    messages = tuple(_parse_message(i, m) for i, m in enumerate(messages_raw))
    title = _string("title", raw.get("title", ""))
    summary = _string("summary", raw.get("summary", ""))
    metadata = _string("metadata", raw.get("metadata", ""))
    if not title.strip():
        raise ProposalRejected("proposal title cannot be empty")
    if not summary.strip():
        raise ProposalRejected("proposal summary cannot be empty")
    if len(metadata) > MAX_METADATA_LEN:
        raise ProposalRejected(f"metadata too long: {len(metadata)} characters, at most {MAX_METADATA_LEN}")
    expedited = raw.get("expedited", False)
    if not isinstance(expedited, bool):
        raise ProposalRejected("expedited must be true or false")
    deposit = _check_deposit(
        _string("deposit", raw.get("deposit", "")),
        expedited_min_deposit if expedited else min_deposit,
        "expedited_min_deposit" if expedited else "min_deposit",
    )
    return ProposalDraft(
        messages=messages,
        title=title,
        summary=summary,
        metadata=metadata,
        deposit=deposit,
        expedited=expedited,
    )
