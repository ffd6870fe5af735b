"""Cosmos SDK pagination over an ordered key space, with the real semantics.

A page is selected by `key` (the previous page's `next_key`) or by `offset`, never both; `limit`
defaults to 100; `next_key` is the key of the first item after the page (empty on the last page);
`total` is only counted for offset queries with `count_total`. Clients that stop after the first
page miss entries (the real dapi did, until v0.2.2), which is what the 250-plan test checks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["DEFAULT_LIMIT", "Page", "PaginationError", "paginate", "uint64_key"]

DEFAULT_LIMIT = 100

T = TypeVar("T")


class PaginationError(ValueError):
    """A page request the chain refuses."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_key: bytes
    total: int


def uint64_key(value: int) -> bytes:
    """How a collections.Map[uint64, ...] key is encoded: 8 bytes, big-endian."""
    return value.to_bytes(8, "big")


def paginate(
    entries: Sequence[tuple[bytes, T]],
    *,
    key: bytes = b"",
    offset: int = 0,
    limit: int = 0,
    count_total: bool = False,
    reverse: bool = False,
) -> Page[T]:
    """One page of `entries` (sorted ascending by key)."""
    if key and offset:
        raise PaginationError("invalid request, either offset or key is expected, got both")
    if limit == 0:
        limit = DEFAULT_LIMIT
    ordered = list(reversed(entries)) if reverse else list(entries)
    keys = [k for k, _ in ordered]
    if key:
        if reverse:
            # Descending order: start at the last key <= `key`.
            ascending = [k for k, _ in entries]
            start = len(ascending) - bisect.bisect_right(ascending, key)
        else:
            start = bisect.bisect_left(keys, key)
    else:
        start = offset
    window = ordered[start : start + limit]
    after = start + limit
    next_key = keys[after] if after < len(keys) else b""
    total = len(entries) if (count_total and not key) else 0
    return Page(items=tuple(v for _, v in window), next_key=next_key, total=total)
