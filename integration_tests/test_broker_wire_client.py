"""The broker's keep-alive HTTP/1.1 client against a scripted server on a real socket.

Each test starts a tiny `asyncio.start_server` on 127.0.0.1 that reads a request head (and its
body by Content-Length), records it, and writes the raw bytes the test scripted: the client is
judged by what crossed the wire, not by a library on the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from services.broker.upstream import UpstreamError, WireUpstream
from services.broker.wire_client import MAX_ANSWER_BYTES, WireError, WirePool

DEADLINE_S = 5.0  # nothing here should take more than a fraction of this


@dataclass(frozen=True)
class Seen:
    """One request as the server read it; `conn` numbers the server's connections from 0."""

    conn: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    lines: tuple[tuple[str, str], ...] = ()  # the header lines as sent: names unfolded, in order


@dataclass(frozen=True)
class Answer:
    data: bytes = b""  # raw bytes to write
    close: bool = False  # close the connection after writing (without saying so)
    hang: bool = False  # write nothing more; wait until the client goes
    then: tuple[asyncio.Event, bytes] | None = None  # after `data`: wait for the event, write these


Script = Callable[[Seen], Answer]


def ok(body: bytes = b'{"ok": true}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class ScriptedServer:
    script: Script
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    accepted: int = 0
    open_now: int = 0
    peak_open: int = 0
    ended: list[int] = field(default_factory=list)  # connections the server saw end, in order
    got_request: asyncio.Event = field(default_factory=asyncio.Event)
    conn_ended: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        index = self.accepted
        self.accepted += 1
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        try:
            await self._serve(index, reader, writer)
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.ended.append(index)
            self.conn_ended.set()
            self._handlers.discard(task)

    async def _serve(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, OSError):
                return  # the client closed the connection
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            sent: list[tuple[str, str]] = []
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                    sent.append((name.strip(), value.strip()))
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen = Seen(index, method, target, headers, body, tuple(sent))
            self.seen.append(seen)
            self.got_request.set()
            answer = self.script(seen)
            if answer.data:
                writer.write(answer.data)
                await writer.drain()
            if answer.then is not None:
                release, rest = answer.then
                await release.wait()
                writer.write(rest)
                await writer.drain()
            if answer.hang:
                with contextlib.suppress(OSError):
                    await reader.read()  # until the client gives up and closes
                return
            if answer.close:
                return

    async def wait_ended(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while len(self.ended) < count:
                self.conn_ended.clear()
                await self.conn_ended.wait()

    async def stop(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def serving(script: Script, pool_size: int = 2) -> AsyncIterator[tuple[ScriptedServer, WirePool]]:
    """A scripted server on a free port and a client pool for it; both torn down afterwards."""
    scripted = ScriptedServer(script)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    pool = WirePool(("http", "127.0.0.1", scripted.port), size=pool_size, connect_timeout_s=2.0)
    try:
        async with asyncio.timeout(DEADLINE_S * 4):
            yield scripted, pool
    finally:
        await pool.aclose()
        server.close()
        await scripted.stop()
        await server.wait_closed()


def always(answer: Answer) -> Script:
    return lambda _seen: answer


async def test_a_content_length_json_answer_and_the_request_on_the_wire() -> None:
    async with serving(always(Answer(ok(b'{"state": "INFERENCE"}')))) as (server, pool):
        response = await pool.request("POST", "/v3.0.8/api/v1/state?x=1", b'{"a": 1}', timeout_s=2.0)
        assert response.status == 200
        assert response.body == b'{"state": "INFERENCE"}'
        assert response.json() == {"state": "INFERENCE"}

        empty = await pool.request("POST", "/v3.0.8/api/v1/stop", None, timeout_s=2.0)
        assert empty.status == 200
        got = await pool.request("GET", "/v1/models", None, timeout_s=2.0)
        assert got.status == 200

    with_body, without_body, get = server.seen
    assert (with_body.method, with_body.target) == ("POST", "/v3.0.8/api/v1/state?x=1")
    assert with_body.headers["host"] == f"127.0.0.1:{server.port}"
    assert with_body.headers["content-type"] == "application/json"
    assert with_body.headers["content-length"] == str(len(b'{"a": 1}'))
    assert with_body.body == b'{"a": 1}'
    assert (without_body.method, without_body.target) == ("POST", "/v3.0.8/api/v1/stop")
    assert without_body.headers["content-length"] == "0"
    assert "content-type" not in without_body.headers
    assert get.method == "GET" and "content-length" not in get.headers


async def test_sequential_calls_reuse_one_connection() -> None:
    def echo(seen: Seen) -> Answer:
        return Answer(ok(json.dumps({"target": seen.target}).encode()))

    async with serving(echo) as (server, pool):
        for i in range(10):
            response = await pool.request("GET", f"/call/{i}", None, timeout_s=2.0)
            assert response.json() == {"target": f"/call/{i}"}
    assert server.accepted == 1
    assert [s.conn for s in server.seen] == [0] * 10


async def test_a_chunked_answer_with_a_trailer_is_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"5\r\n"
        b'{"a":\r\n'
        b"3;ext=1\r\n"
        b" 12\r\n"
        b"A\r\n"
        b', "b": "x"\r\n'
        b"1\r\n"
        b"}\r\n"
        b"0\r\n"
        b"X-Trailer: done\r\n"
        b"\r\n"
    )
    async with serving(always(Answer(chunked))) as (server, pool):
        first = await pool.request("GET", "/chunked", None, timeout_s=2.0)
        assert first.status == 200
        assert first.body == b'{"a": 12, "b": "x"}'
        assert first.json() == {"a": 12, "b": "x"}
        # The trailer was consumed: the kept-alive connection reads the next answer cleanly.
        second = await pool.request("GET", "/chunked", None, timeout_s=2.0)
        assert second.body == first.body
    assert server.accepted == 1


async def test_connection_close_in_the_answer_means_a_new_connection_next_time() -> None:
    async with serving(always(Answer(ok(b"{}", "Connection: close"), close=True))) as (server, pool):
        first = await pool.request("GET", "/one", None, timeout_s=2.0)
        second = await pool.request("GET", "/two", None, timeout_s=2.0)
    assert first.status == second.status == 200
    assert server.accepted == 2
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/one"), (1, "/two")]


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    # The server answers as if keeping the connection, then closes it while it is idle.
    async with serving(always(Answer(ok(), close=True))) as (server, pool):
        first = await pool.request("GET", "/one", None, timeout_s=2.0)
        assert first.status == 200
        await server.wait_ended(1)  # the idle connection is gone on the server's side
        second = await pool.request("POST", "/two", b"{}", timeout_s=2.0)
    assert second.status == 200
    assert server.accepted == 2
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/one"), (1, "/two")]


async def test_a_kept_alive_connection_closed_before_any_byte_of_the_answer_is_retried() -> None:
    # The race the retry is for: the server takes the next request on the kept-alive connection
    # but closes it without writing a byte (as a server timing out an idle connection does).
    def script(seen: Seen) -> Answer:
        if seen.conn == 0 and seen.target == "/two":
            return Answer(close=True)
        return Answer(ok(json.dumps({"target": seen.target}).encode()))

    async with serving(script) as (server, pool):
        assert (await pool.request("GET", "/one", None, timeout_s=2.0)).status == 200
        second = await pool.request("GET", "/two", None, timeout_s=2.0)
    assert second.json() == {"target": "/two"}
    assert server.accepted == 2
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/one"), (0, "/two"), (1, "/two")]


async def test_a_post_on_a_kept_alive_connection_closed_before_answering_is_not_resent() -> None:
    # The server may have acted on it (a stop, an inference/up): the caller decides what to retry.
    def script(seen: Seen) -> Answer:
        if seen.conn == 0 and seen.target == "/api/v1/stop":
            return Answer(close=True)
        return Answer(ok(b"{}"))

    async with serving(script) as (server, pool):
        assert (await pool.request("GET", "/api/v1/state", None, timeout_s=2.0)).status == 200
        with pytest.raises(WireError, match="IncompleteReadError"):
            await pool.request("POST", "/api/v1/stop", None, timeout_s=2.0)
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/api/v1/state"), (0, "/api/v1/stop")]


async def test_a_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async with serving(always(Answer(close=True))) as (server, pool):
        with pytest.raises(WireError, match="IncompleteReadError"):
            await pool.request("GET", "/x", None, timeout_s=2.0)
    assert server.accepted == 1 and len(server.seen) == 1


async def test_an_answer_over_the_size_bound_is_refused_before_its_body() -> None:
    too_big = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n".encode()

    def script(seen: Seen) -> Answer:
        # The body never comes: a client that tried to buffer it would hit the timeout instead.
        return Answer(too_big, hang=True) if seen.conn == 0 else Answer(ok())

    async with serving(script) as (server, pool):
        with pytest.raises(WireError, match=f"answer of {MAX_ANSWER_BYTES + 1} bytes or more is over the"):
            await pool.request("GET", "/big", None, timeout_s=DEADLINE_S * 2)
        await server.wait_ended(1)  # the client dropped that connection rather than keep it
        assert (await pool.request("GET", "/small", None, timeout_s=2.0)).status == 200
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/big"), (1, "/small")]


async def test_a_server_that_never_answers_times_out() -> None:
    async with serving(always(Answer(hang=True))) as (server, pool):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WireError, match=r"no answer within 0\.2s"):
            await pool.request("GET", "/silent", None, timeout_s=0.2)
        assert loop.time() - started < DEADLINE_S
        await server.wait_ended(1)
    assert len(server.seen) == 1


async def test_a_refused_port_is_a_wire_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = WirePool(("http", "127.0.0.1", port), size=1, connect_timeout_s=2.0)
    try:
        with pytest.raises(WireError, match=f"connect to 127.0.0.1:{port}"):
            await pool.request("GET", "/", None, timeout_s=2.0)
    finally:
        await pool.aclose()


async def test_garbage_instead_of_a_status_line_is_a_wire_error() -> None:
    async with serving(always(Answer(b"hello\r\n\r\n", hang=True))) as (server, pool):
        with pytest.raises(WireError, match="not an HTTP status line"):
            await pool.request("GET", "/", None, timeout_s=2.0)
        await server.wait_ended(1)


async def test_concurrent_calls_never_open_more_connections_than_the_pool_size() -> None:
    def echo(seen: Seen) -> Answer:
        return Answer(ok(json.dumps({"target": seen.target}).encode()))

    async with serving(echo, pool_size=4) as (server, pool):
        responses = await asyncio.gather(
            *(pool.request("GET", f"/c/{i}", None, timeout_s=DEADLINE_S) for i in range(50))
        )
        assert [r.json()["target"] for r in responses] == [f"/c/{i}" for i in range(50)]
        assert server.peak_open <= 4
        assert server.accepted <= 4
    assert len(server.seen) == 50


# --- `open`: a forwarded request, its answer streamed -------------------------------------------


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def drain(body: AsyncIterator[bytes], into: list[bytes]) -> None:
    """Read a body to its end (or its error), keeping what came."""
    async for data in body:
        into.append(data)


async def test_a_chunked_sse_answer_is_streamed_as_it_arrives_then_the_connection_is_reused() -> None:
    release = asyncio.Event()
    first_event = b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
    second_event = b'data: {"choices": [{"delta": {"content": "lo"}}]}\n\ndata: [DONE]\n\n'
    sse_head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
    )

    def script(seen: Seen) -> Answer:
        if seen.target == "/v1/chat/completions":
            # The head and one event now; the rest only once the test says so.
            return Answer(sse_head + chunk(first_event), then=(release, chunk(second_event) + b"0\r\n\r\n"))
        return Answer(ok())

    async with serving(script) as (server, pool):
        stream = await pool.open(
            "POST", "/v1/chat/completions", {"Content-Type": "application/json"}, b'{"stream": true}', 2.0
        )
        assert stream.status == 200
        assert stream.header("content-type") == "text/event-stream"
        assert ("transfer-encoding", "chunked") in stream.headers
        body = stream.chunks()
        async with asyncio.timeout(2.0):  # a client that buffered the body would wait here
            assert await anext(body) == first_event
        assert not release.is_set()  # the first event came while the server still held the rest
        release.set()
        async with asyncio.timeout(DEADLINE_S):
            assert [data async for data in body] == [second_event]
        await stream.aclose()

        after = await pool.request("GET", "/v1/models", None, timeout_s=2.0)
        assert after.status == 200
    assert server.accepted == 1
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/v1/chat/completions"), (0, "/v1/models")]


async def test_a_content_length_answer_read_by_chunks_is_exact_and_the_connection_is_reused() -> None:
    payload = bytes(range(256)) * 1200  # 300 KiB: more than one read of the socket
    async with serving(always(Answer(ok(payload)))) as (server, pool):
        stream = await pool.open("POST", "/v1/completions", {}, b"{}", 2.0)
        assert stream.status == 200
        assert stream.header("content-length") == str(len(payload))
        parts = [data async for data in stream.chunks()]
        await stream.aclose()
        assert b"".join(parts) == payload
        assert len(parts) > 1  # it did come in pieces, and they add up

        again = await pool.open("POST", "/v1/completions", {}, b"{}", 2.0)
        assert await again.read() == payload
        await again.aclose()
    assert server.accepted == 1
    assert [s.conn for s in server.seen] == [0, 0]


async def test_a_stream_closed_unread_is_not_reused_and_frees_its_pool_slot() -> None:
    async with serving(always(Answer(ok(b'{"big": "answer nobody read"}'))), pool_size=1) as (server, pool):
        unread = await pool.open("POST", "/v1/chat/completions", {}, b"{}", 2.0)
        assert unread.status == 200
        await unread.aclose()  # the body is still on the connection: it cannot carry another request
        await unread.aclose()  # a second aclose is harmless (does not free a second slot)
        await server.wait_ended(1)

        async with asyncio.timeout(1.0):  # the only slot was given back: this does not wait for one
            second = await pool.open("POST", "/v1/chat/completions", {}, b"{}", 2.0)
        assert await second.read() == b'{"big": "answer nobody read"}'
        await second.aclose()

        async with asyncio.timeout(1.0):  # and the read-whole one gave it back too
            third = await pool.request("GET", "/v1/models", None, timeout_s=2.0)
        assert third.status == 200
    assert server.accepted == 2
    assert [s.conn for s in server.seen] == [0, 1, 1]


async def test_open_sends_exactly_the_given_headers_and_its_own_framing() -> None:
    body = b'{"model": "m", "messages": []}'
    given = {
        "Authorization": "Bearer secret-token",
        "X-Request-Id": "req-42",
        "Host": "evil.example",
        "Content-Length": "999",
        "Connection": "close",
        "Keep-Alive": "timeout=1",
        "Transfer-Encoding": "chunked",
    }
    async with serving(always(Answer(ok()))) as (server, pool):
        stream = await pool.open("POST", "/v1/chat/completions", given, body, 2.0)
        assert await stream.read() == b'{"ok": true}'
        await stream.aclose()
        # `Connection: close` was not passed on: the connection stayed open for the next call.
        assert (await pool.request("GET", "/v1/models", None, timeout_s=2.0)).status == 200

    sent = server.seen[0]
    assert (sent.method, sent.target, sent.body) == ("POST", "/v1/chat/completions", body)
    assert sent.lines == (
        ("Host", f"127.0.0.1:{server.port}"),
        ("Authorization", "Bearer secret-token"),
        ("X-Request-Id", "req-42"),
        ("Content-Length", str(len(body))),
    )
    assert "content-type" not in sent.headers  # none given, none added (the API node sends none)
    assert server.accepted == 1 and [s.conn for s in server.seen] == [0, 0]


async def test_open_with_no_headers_given_sends_only_host_and_content_length() -> None:
    async with serving(always(Answer(ok()))) as (server, pool):
        stream = await pool.open("POST", "/v1/completions", {}, b"{}", 2.0)
        await stream.read()
        await stream.aclose()
    assert server.seen[0].lines == (("Host", f"127.0.0.1:{server.port}"), ("Content-Length", "2"))


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Request-Id": "a\r\nX-Injected: 1"},
        {"Authorization": "Bearer t\n"},
        {"Authorization": "Bearer t\r"},
        {"X-Request-Id": "a\0b"},
        {"X-Bad\r\nX-Injected": "1"},
        {"X-Bad:Name": "1"},
    ],
    ids=["crlf-value", "lf-value", "cr-value", "nul-value", "crlf-name", "colon-name"],
)
async def test_a_header_that_would_break_the_framing_is_refused_before_anything_is_sent(
    headers: dict[str, str],
) -> None:
    async with serving(always(Answer(ok())), pool_size=1) as (server, pool):
        with pytest.raises(WireError, match="refusing a header that would break the request"):
            await pool.open("POST", "/v1/chat/completions", headers, b"{}", 2.0)
        # Nothing went out, and the refusal took no slot: the pool of one still serves.
        assert server.accepted == 0 and server.seen == []
        async with asyncio.timeout(1.0):
            assert (await pool.request("GET", "/v1/models", None, timeout_s=2.0)).status == 200
    assert [s.target for s in server.seen] == ["/v1/models"]


async def test_an_answer_that_breaks_off_mid_body_is_a_wire_error_and_an_upstream_error() -> None:
    broken = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b"x" * 10

    def script(seen: Seen) -> Answer:
        return Answer(broken, close=True) if seen.target.startswith("/broken") else Answer(ok())

    async with serving(script) as (server, pool):
        stream = await pool.open("POST", "/broken/wire", {}, b"{}", 2.0)
        got: list[bytes] = []
        with pytest.raises(WireError, match="the server closed the answer 90 bytes short"):
            await drain(stream.chunks(), got)
        await stream.aclose()
        assert b"".join(got) == b"x" * 10  # what came before the break was passed on

        upstream = WireUpstream(await pool.open("POST", "/broken/upstream", {}, b"{}", 2.0))
        assert upstream.status == 200
        relayed: list[bytes] = []
        with pytest.raises(UpstreamError, match="90 bytes short") as caught:
            await drain(upstream.chunks(), relayed)
        assert b"".join(relayed) == b"x" * 10
        assert isinstance(caught.value.__cause__, WireError)
        await upstream.aclose()

        # Neither broken connection went back to the pool.
        assert (await pool.request("GET", "/v1/models", None, timeout_s=2.0)).status == 200
    assert [(s.conn, s.target) for s in server.seen] == [
        (0, "/broken/wire"),
        (1, "/broken/upstream"),
        (2, "/v1/models"),
    ]


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
async def test_an_answer_framed_by_the_close_is_read_whole_and_the_connection_not_reused(
    version: str,
) -> None:
    payload = b"an answer with no length, ended by the close\n" * 2000

    def script(seen: Seen) -> Answer:
        if seen.target == "/until-close":
            head = f"{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode()
            return Answer(head + payload, close=True)
        return Answer(ok())

    async with serving(script) as (server, pool):
        stream = await pool.open("GET", "/until-close", {"Accept": "text/plain"}, b"", 2.0)
        assert stream.status == 200
        assert stream.header("content-length") == ""
        assert await stream.read() == payload
        await stream.aclose()
        assert (await pool.request("GET", "/v1/models", None, timeout_s=2.0)).status == 200
    assert server.accepted == 2
    assert [(s.conn, s.target) for s in server.seen] == [(0, "/until-close"), (1, "/v1/models")]
