"""Cosmos SDK pagination over an ordered key space, with the real semantics.

As `query.CollectionPaginate` (cosmos-sdk v0.50.0 to v0.53.3, and the product-science fork
v0.50.9-ps2 / v0.53.3-ps4 the gonka chain builds with; types/query/collections_pagination.go and
`initPageRequestDefaults` in pagination.go) pages a `collections.Map`:

- a page is selected by `key` (the previous page's `next_key`) or by `offset`, never both;
- `limit` 0 (or no `pagination` at all, as the dapi sends) means 100 **and** `count_total`;
- `next_key` is the key of the first item after the page (empty on the last page);
- `total` is counted only on the offset path (never with a `key`), as offset + the rest;
- an `offset` past the end is not an error: no items and an empty (but present) PageResponse.

Clients that stop after the first page miss entries (the real dapi did, until v0.2.2), which is
what the 250-plan test checks.
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
        count_total = True
    if not key and offset > len(entries):
        # advanceIter runs off the end: ErrInvalidIterator, answered as `new(PageResponse)`.
        return Page(items=(), next_key=b"", total=0)
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
