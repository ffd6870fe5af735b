"""The load generator's HTTP reading and the zero-downtime phase split, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from bench.loadgen import HttpProtocolError, Sample, read_reply
from bench.zero_downtime import phases


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_reads_a_content_length_reply_and_keeps_the_connection() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n"
        b"x-mlnode-version: v3.0.8\r\n\r\n{}"
    )
    reply, keep = await read_reply(_reader(raw))
    assert (reply.status, reply.body, reply.headers["x-mlnode-version"], keep) == (200, b"{}", "v3.0.8", True)


async def test_reads_a_chunked_reply() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    reply, keep = await read_reply(_reader(raw))
    assert (reply.body, keep) == (b"abcde", True)


async def test_connection_close_is_not_reused() -> None:
    raw = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    reply, keep = await read_reply(_reader(raw))
    assert (reply.status, keep) == (503, False)


async def test_a_reply_without_length_reads_to_the_end() -> None:
    reply, keep = await read_reply(_reader(b"HTTP/1.0 200 OK\r\n\r\nall of it"))
    assert (reply.body, keep) == (b"all of it", False)


async def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(HttpProtocolError):
        await read_reply(_reader(b"SSH-2.0-OpenSSH\r\n\r\n"))


def test_phases_split_by_send_time_around_the_block() -> None:
    samples = [Sample(t, 0.01, 200, "v") for t in (9.0, 9.99, 10.0, 12.0, 14.99, 15.0, 20.0)]
    split = phases(samples, block_at=10.0, during_s=5.0)
    assert [s.sent_wall for s in split["before"]] == [9.0, 9.99]
    assert [s.sent_wall for s in split["during"]] == [10.0, 12.0, 14.99]
    assert [s.sent_wall for s in split["after"]] == [15.0, 20.0]


def test_only_200_is_ok() -> None:
    assert Sample(0, 0, 200, "v").ok
    assert not Sample(0, 0, 503, "v").ok
    assert not Sample(0, 0, 0, "", "ConnectionResetError").ok
