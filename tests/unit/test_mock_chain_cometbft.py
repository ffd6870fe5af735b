"""The CometBFT documents the mock renders have the real shapes and encodings."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from mock_chain.chain import Chain
from mock_chain.cometbft import (
    block_result,
    is_new_block_query,
    new_block_event,
    rfc3339_nano,
    status_result,
)


def _chain(blocks: int) -> Chain:
    chain = Chain()
    for i in range(blocks):
        chain.advance(datetime(2026, 11, 23, 10, 0, i, 120000, tzinfo=UTC))
    return chain


def test_new_block_event_shape() -> None:
    chain = _chain(12)
    event = new_block_event(chain.blocks[12], "1")
    assert event["jsonrpc"] == "2.0" and event["id"] == "1"
    result = event["result"]
    assert result["query"] == "tm.event='NewBlock'"
    assert result["data"]["type"] == "tendermint/event/NewBlock"
    value = result["data"]["value"]
    assert value["block"]["header"]["height"] == "12"  # int64 as a decimal string
    assert value["block_id"]["hash"] == chain.blocks[12].hash
    assert value["block"]["header"]["last_block_id"]["hash"] == chain.blocks[11].hash
    assert value["block"]["last_commit"]["height"] == "11"
    assert set(value["block"]) == {"header", "data", "evidence", "last_commit"}
    assert (
        base64.b64decode(value["result_finalize_block"]["app_hash"]).hex().upper()
        == chain.blocks[12].app_hash
    )
    assert result["events"]["tm.event"] == ["NewBlock"]


def test_block_and_status_results() -> None:
    chain = _chain(3)
    block = block_result(chain.blocks[2])
    assert block["block_id"]["hash"] == chain.blocks[2].hash
    assert block["block"]["header"]["height"] == "2"
    status = status_result(chain.blocks[3], chain.blocks[1], chain_id="gonka-mock-1")
    sync = status["sync_info"]
    assert sync["latest_block_height"] == "3" and sync["earliest_block_height"] == "1"
    assert sync["latest_block_hash"] == chain.blocks[3].hash and sync["catching_up"] is False
    assert status["node_info"]["network"] == "gonka-mock-1"


def test_times_are_rfc3339_utc_without_trailing_zeros() -> None:
    assert rfc3339_nano(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)) == "2026-01-02T03:04:05.12Z"
    assert rfc3339_nano(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_new_block_query_matching_ignores_spaces() -> None:
    assert is_new_block_query("tm.event = 'NewBlock'")
    assert not is_new_block_query("tm.event='NewBlockHeader'")
