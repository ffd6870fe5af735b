"""Cosmos SDK coins as `propose` writes them and the chain parses them: `25000000ngonka,5uatom`.

One parser for the CLI and the mock chain, so the two can never disagree on what a deposit is.
It follows `sdk.ParseCoinsNormalized` for integer amounts: positive, no denomination twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Coin", "InvalidCoins", "below", "coins_text", "foreign_denoms", "parse_coins"]

_COIN = re.compile(r"^([0-9]+)([a-zA-Z][a-zA-Z0-9/:._-]{2,127})$")


class InvalidCoins(ValueError):
    """Text that is not `<amount><denom>[,...]`; the message says which part."""


@dataclass(frozen=True, slots=True, order=True)
class Coin:
    """One `cosmos.base.v1beta1.Coin`; printed as the SDK prints it (`25000000ngonka`)."""

    denom: str
    amount: int

    def __str__(self) -> str:
        return f"{self.amount}{self.denom}"


def parse_coins(raw: str) -> tuple[Coin, ...]:
    """The coins of `raw`, sorted by denomination."""
    if not raw.strip():
        raise InvalidCoins('no coins given, e.g. "25000000ngonka"')
    coins: dict[str, Coin] = {}
    for text in raw.split(","):
        match = _COIN.fullmatch(text.strip())
        if match is None:
            raise InvalidCoins(f"{text.strip()!r} is not <amount><denom>, e.g. 25000000ngonka")
        coin = Coin(match.group(2), int(match.group(1)))
        if coin.amount == 0:
            raise InvalidCoins(f"{text.strip()!r}: the amount must be positive")
        if coin.denom in coins:
            raise InvalidCoins(f"{raw!r}: duplicate denomination {coin.denom}")
        coins[coin.denom] = coin
    return tuple(sorted(coins.values()))


def coins_text(coins: Iterable[Coin]) -> str:
    return ",".join(str(c) for c in coins) or "nothing"


def foreign_denoms(coins: Iterable[Coin], accepted: Iterable[Coin]) -> list[str]:
    """Denominations of `coins` that x/gov refuses: those not in `min_deposit` (when it has any)."""
    allowed = {c.denom for c in accepted}
    return [c.denom for c in coins if allowed and c.denom not in allowed]


def below(coins: Iterable[Coin], minimum: Iterable[Coin]) -> bool:
    """True when some denomination of `minimum` is not covered by `coins`."""
    have = {c.denom: c.amount for c in coins}
    return any(have.get(c.denom, 0) < c.amount for c in minimum)
