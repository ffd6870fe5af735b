"""The one `/status` parser and the one RFC 3339 reader, on what CometBFT nodes send."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.chain_status import ChainStatus, ChainStatusError, parse_status, parse_status_reply
from shared.timestamps import parse_rfc3339, rfc3339

SYNC = {
    "latest_block_hash": "AB" * 32,
    "latest_block_height": "120",
    "latest_block_time": "2026-11-23T10:00:00.123456789Z",
    "earliest_block_height": "1",
    "catching_up": False,
}


def test_a_status_reply_reads_into_its_typed_fields() -> None:
    assert parse_status_reply({"jsonrpc": "2.0", "id": -1, "result": {"sync_info": SYNC}}) == ChainStatus(
        height=120,
        catching_up=False,
        latest_hash="AB" * 32,
        earliest_height=1,
        latest_time=datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "result",
    [None, {}, {"sync_info": "x"}, {"sync_info": {**SYNC, "latest_block_height": "12a"}}],
)
def test_a_status_without_a_readable_height_is_refused(result: object) -> None:
    with pytest.raises(ChainStatusError):
        parse_status(result)


def test_an_earliest_height_of_zero_and_an_unzoned_time_mean_unknown() -> None:
    status = parse_status(
        {"sync_info": {**SYNC, "earliest_block_height": "0", "latest_block_time": "2026-11-23T10:00:00"}}
    )
    assert status.earliest_height is None and status.latest_time is None


def test_rfc3339_keeps_microseconds_of_nanosecond_times_and_requires_a_zone() -> None:
    assert rfc3339("2026-11-23T10:00:00.123456789Z") == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    assert rfc3339("1970-01-01T01:00:01.25+01:00").timestamp() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="no time zone"):
        rfc3339("2026-11-23T10:00:00")
    assert parse_rfc3339("2026-11-23T10:00:00") == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert parse_rfc3339("yesterday") is None and parse_rfc3339(None) is None
