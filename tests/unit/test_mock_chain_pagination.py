"""Cosmos pagination semantics (cosmos-sdk v0.50-v0.53 `CollectionPaginate`): key or offset,
default limit 100 with count_total, next_key, count_total, an offset past the end, reverse."""

from __future__ import annotations

import pytest

from mock_chain.pagination import DEFAULT_LIMIT, Page, PaginationError, paginate, uint64_key

ENTRIES = [(uint64_key(h), h) for h in range(1, 251)]


def test_uint64_keys_are_big_endian_so_they_sort_by_height() -> None:
    assert uint64_key(1) == b"\x00" * 7 + b"\x01"
    assert sorted(uint64_key(h) for h in (300, 2, 70_000)) == [uint64_key(h) for h in (2, 300, 70_000)]


def test_default_limit_is_100_and_next_key_walks_every_entry() -> None:
    seen: list[int] = []
    key = b""
    pages = 0
    while True:
        page = paginate(ENTRIES, key=key)
        pages += 1
        assert len(page.items) <= DEFAULT_LIMIT
        seen += page.items
        key = page.next_key
        if not key:
            break
    assert seen == list(range(1, 251)) and pages == 3


def test_next_key_is_the_first_key_of_the_next_page() -> None:
    page = paginate(ENTRIES, limit=10)
    assert page.items == tuple(range(1, 11)) and page.next_key == uint64_key(11)
    assert paginate(ENTRIES, key=page.next_key, limit=10).items == tuple(range(11, 21))


def test_last_page_has_an_empty_next_key() -> None:
    assert paginate(ENTRIES, offset=240, limit=10).next_key == b""
    assert paginate(ENTRIES, offset=245, limit=10).items == tuple(range(246, 251))


def test_count_total_only_for_offset_queries() -> None:
    assert paginate(ENTRIES, limit=5, count_total=True).total == 250
    assert paginate(ENTRIES, offset=10, limit=5, count_total=True).total == 250  # offset + the rest
    assert paginate(ENTRIES, key=uint64_key(3), limit=5, count_total=True).total == 0
    assert paginate(ENTRIES, limit=5).total == 0


def test_no_limit_means_100_and_count_total() -> None:
    """`initPageRequestDefaults`: limit 0 (no `pagination` at all, as the dapi asks) counts the total."""
    page = paginate(ENTRIES)
    assert len(page.items) == DEFAULT_LIMIT and page.total == 250 and page.next_key == uint64_key(101)
    assert paginate(ENTRIES, offset=200).total == 250
    # ... except on the key path, which never counts.
    assert paginate(ENTRIES, key=uint64_key(101)).total == 0


def test_an_offset_past_the_end_is_an_empty_page_not_an_error() -> None:
    """advanceIter runs off the end: `new(PageResponse)`, i.e. no items, no next_key, total 0."""
    assert paginate(ENTRIES, offset=251, limit=10, count_total=True) == Page(items=(), next_key=b"", total=0)
    assert paginate(ENTRIES, offset=10_000) == Page(items=(), next_key=b"", total=0)
    assert paginate([], offset=1) == Page(items=(), next_key=b"", total=0)
    # Exactly at the end the iterator is still valid: an empty page that still counts.
    assert paginate(ENTRIES, offset=250, limit=10, count_total=True) == Page(
        items=(), next_key=b"", total=250
    )


def test_a_key_past_the_end_is_an_empty_last_page() -> None:
    assert paginate(ENTRIES, key=uint64_key(999), limit=10) == Page(items=(), next_key=b"", total=0)


def test_reverse() -> None:
    page = paginate(ENTRIES, limit=3, reverse=True)
    assert page.items == (250, 249, 248) and page.next_key == uint64_key(247)
    assert paginate(ENTRIES, key=page.next_key, limit=3, reverse=True).items == (247, 246, 245)


def test_key_and_offset_together_are_refused() -> None:
    with pytest.raises(PaginationError, match="either offset or key"):
        paginate(ENTRIES, key=uint64_key(3), offset=2)
