"""Bech32 (BIP-173) addresses, as Cosmos chains write them.

The chain's `ValidateBasic` refuses an authority that is not valid bech32, and a module account's
address is the first 20 bytes of sha256(module name); both are needed to refuse what the real
chain refuses, and to derive (rather than trust) the gov module address.
"""

from __future__ import annotations

import hashlib

__all__ = ["Bech32Error", "decode", "encode", "module_address"]

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
# The Cosmos SDK decodes with a 1023-character limit instead of BIP-173's 90.
_MAX_LENGTH = 1023


class Bech32Error(ValueError):
    """Not a bech32 string; the message says what is wrong."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & max_value):
        raise Bech32Error("invalid padding in the data part")
    return out


def encode(hrp: str, payload: bytes) -> str:
    data = _convert_bits(payload, 8, 5, pad=True)
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def decode(address: str) -> tuple[str, bytes]:
    """Split a bech32 string into its human-readable prefix and payload, checking the checksum."""
    if not address or len(address) > _MAX_LENGTH:
        raise Bech32Error(f"length {len(address)} is out of range")
    if address.lower() != address and address.upper() != address:
        raise Bech32Error("mixed case")
    if any(ord(c) < 33 or ord(c) > 126 for c in address):
        raise Bech32Error("invalid character")
    address = address.lower()
    sep = address.rfind("1")
    if sep < 1 or sep + 7 > len(address):
        raise Bech32Error("missing separator '1' or too short a data part")
    hrp, rest = address[:sep], address[sep + 1 :]
    if any(c not in _CHARSET for c in rest):
        raise Bech32Error("invalid character in the data part")
    data = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise Bech32Error("invalid checksum")
    return hrp, bytes(_convert_bits(data[:-6], 5, 8, pad=False))


def module_address(module: str, hrp: str) -> str:
    """A Cosmos module account's address: bech32 of sha256(module name)[:20]."""
    return encode(hrp, hashlib.sha256(module.encode()).digest()[:20])
