"""A lean HTTP/1.1 load generator: open-loop schedules over keep-alive connections.

Written on raw asyncio streams rather than httpx because on 2 cores the client shares the CPU
with the processes it measures: httpx spends roughly a millisecond of CPU per request, which at
500 requests per second would take half a core from the broker and make the client the
bottleneck. This client spends a few tens of microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.stats import send_offsets

__all__ = ["CHAT_BODY", "RawClient", "Reply", "Sample", "open_loop", "read_reply", "sequential"]

CHAT_BODY = json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}).encode()
IDLE_MAX_S = 3.0  # servers close idle keep-alive connections (uvicorn after 5 s); we retire them first


class HttpProtocolError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RawClient:
    """Keep-alive HTTP/1.1 to one host:port; as many connections as there are requests in flight."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self.opened = 0

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.opened += 1
        return _Conn(reader, writer)

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.last_used < IDLE_MAX_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        """One request; a reused connection the server closed before answering is retried once."""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body or method == "POST":
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        async with asyncio.timeout(self.timeout_s):
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, raw)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    if getattr(exc, "partial", b""):
                        raise
                    # The server closed the idle connection under us: not the server's failure.
            return await self._exchange(await self._connect(), raw)

    async def _exchange(self, conn: _Conn, raw: bytes) -> Reply:
        try:
            conn.writer.write(raw)
            await conn.writer.drain()
            reply, reusable = await read_reply(conn.reader)
        except BaseException:
            conn.close()
            raise
        if reusable:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return reply

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def read_reply(reader: asyncio.StreamReader) -> tuple[Reply, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpProtocolError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by these servers
                break
            chunks.append(await reader.readexactly(size + 2))
        body = b"".join(c[:-2] for c in chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()
        keep_alive = False
    return Reply(status, headers, body), keep_alive


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was sent (wall clock), how long it took, what answered."""

    sent_wall: float
    latency_s: float
    status: int  # 0: no answer (connection error or timeout)
    version: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


async def _one(client: RawClient, path: str, body: bytes) -> Sample:
    wall = time.time()
    started = time.perf_counter()
    try:
        reply = await client.request("POST", path, body)
    except Exception as exc:  # every failure is a data point, whatever its kind
        return Sample(wall, time.perf_counter() - started, 0, "", f"{type(exc).__name__}: {exc}"[:200])
    latency = time.perf_counter() - started
    error = "" if reply.status == 200 else reply.body[:200].decode("utf-8", "replace")
    return Sample(wall, latency, reply.status, reply.headers.get("x-mlnode-version", ""), error)


async def open_loop(
    client: RawClient,
    path: str,
    rate_per_s: float,
    duration_s: float,
    body: bytes = CHAT_BODY,
    at_offsets: dict[float, Callable[[], object]] | None = None,
) -> list[Sample]:
    """Send on the `send_offsets` schedule and wait for every answer.

    `at_offsets` runs callbacks (e.g. committing the upgrade block) at given seconds into the run,
    from the same loop, so their timing is exact relative to the load.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks: list[asyncio.Task[Sample]] = []
    hooks: list[asyncio.Future[object]] = []
    pending_hooks = sorted((at_offsets or {}).items(), key=lambda item: item[0])
    for offset in send_offsets(rate_per_s, duration_s):
        while pending_hooks and pending_hooks[0][0] <= offset:
            at, hook = pending_hooks.pop(0)
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            result = hook()
            if asyncio.iscoroutine(result):
                hooks.append(asyncio.ensure_future(result))
        delay = t0 + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the open-loop schedule
        tasks.append(asyncio.create_task(_one(client, path, body)))
    samples = list(await asyncio.gather(*tasks))
    await asyncio.gather(*hooks)
    return samples


async def sequential(client: RawClient, path: str, count: int, body: bytes = CHAT_BODY) -> list[Sample]:
    """Closed loop, one request at a time: the latency of a request on an otherwise idle path."""
    return [await _one(client, path, body) for _ in range(count)]
