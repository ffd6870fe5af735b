"""A small HTTP/1.1 client for the broker's MLNode calls: keep-alive connections, answers streamed.

A switch makes five short calls per node (state, stop, state, inference/up, /v1/models), each a
few hundred bytes each way. httpx spends about 0.8 ms of CPU on such a call (URL and header
models, the pool's bookkeeping, its task machinery); reading the bytes off the socket directly
costs a fraction of that (`bench/http_client.py` measures both on the same server), and at a
thousand nodes that is the difference between seconds and a fraction of a second of the broker's
one event loop. Forwarded inference uses it too (`open`: the answer's head, then its body as it
arrives, for SSE), so a forwarded request costs the broker the parsing of its bytes and little more.

Only what those calls need: `Content-Length` or chunked answers, `Connection: close`, TLS for
`https` base URLs, a bound on a management answer's size (a hostile or broken server cannot make
the broker buffer gigabytes), headers that cannot break the request's framing, and, for a GET,
one retry on a fresh connection when a kept-alive one turns out to be closed before any byte of
the answer came (the server may have read a POST before closing: a stop or an `inference/up` is
never sent twice by this client; the handoff decides what to retry).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MAX_ANSWER_BYTES", "WireError", "WirePool", "WireResponse", "WireStream", "origin_and_target"]

MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a management answer is a few hundred bytes
MAX_HEAD_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_JSON = {"Accept": "*/*", "Content-Type": "application/json"}
_ACCEPT_ANY = {"Accept": "*/*"}
# Set by this client from the request itself, never passed on from the caller's headers.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
_READ_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)
_SAFE_TO_RESEND = frozenset({"GET", "HEAD"})


class WireError(Exception):
    """No usable answer: refused, reset, timed out, or not HTTP/1.1 the client can read."""


@dataclass(frozen=True, slots=True)
class WireResponse:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


Origin = tuple[str, str, int]  # scheme, host, port


def origin_and_target(url: str) -> tuple[Origin, str]:
    """`http://h:p/a/b?q` -> ((http, h, p), "/a/b?q")."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WireError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return (parts.scheme, parts.hostname, port), target


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class _Closed(Exception):
    """A kept-alive connection was closed by the server before any byte of the answer."""


class WirePool:
    """Keep-alive connections to one origin, at most `size` at once."""

    def __init__(
        self, origin: Origin, size: int, connect_timeout_s: float, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.scheme, self.host, self.port = origin
        self.size = size
        self.connect_timeout_s = connect_timeout_s
        self.ssl_context = ssl_context
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._host_header = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        self._closed = False

    async def request(self, method: str, target: str, body: bytes | None, timeout_s: float) -> WireResponse:
        """A management call: JSON body (if any), the whole answer read (bounded)."""
        head = self._head(method, target, body, _JSON if body is not None else None)
        stream = await self._open(method, head, body, timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                content = await stream.read(MAX_ANSWER_BYTES)
        except TimeoutError:
            raise WireError(f"no answer within {timeout_s:g}s") from None
        finally:
            await stream.aclose()
        return WireResponse(stream.status, content)

    async def open(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> WireStream:
        """A forwarded request: the given headers only, the answer's head read, its body to stream.

        The caller must `aclose()` the stream; it holds one of the pool's connections until then.
        """
        return await self._open(method, self._head(method, target, body, headers), body, timeout_s)

    async def _open(self, method: str, head: bytes, body: bytes | None, timeout_s: float) -> WireStream:
        await self._slots.acquire()
        try:
            if self._idle and method not in _SAFE_TO_RESEND:
                # Not resent if the connection turns out closed: let the loop read a close that
                # has arrived already, so an idle connection the server dropped is not taken.
                await asyncio.sleep(0)
            for fresh in (False, True):
                conn = None if fresh else self._take_idle()
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                try:
                    async with asyncio.timeout(timeout_s):
                        answer = await _exchange(conn, head, body, reused, method)
                except _Closed:
                    conn.close()
                    continue  # the server dropped the idle connection: once more on a new one
                except TimeoutError:
                    conn.close()
                    raise WireError(f"no answer within {timeout_s:g}s") from None
                except _READ_ERRORS as exc:
                    conn.close()
                    raise WireError(f"{type(exc).__name__}: {exc}") from None
                except BaseException:
                    conn.close()
                    raise
                return WireStream(self, conn, answer, timeout_s)
            raise WireError("the server closed the connection before answering")
        except BaseException:
            self._slots.release()
            raise

    def _done(self, conn: _Connection, reusable: bool) -> None:
        """A stream is over: its connection back to the idle ones (or closed), its slot freed."""
        if reusable and not self._closed and conn.usable:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl_context if self.scheme == "https" else None,
                    limit=MAX_HEAD_BYTES,
                )
        except TimeoutError:
            raise WireError(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise WireError(f"connect to {self.host}:{self.port}: {exc}") from None
        return _Connection(reader, writer)

    def _head(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str] | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        for name, value in (_ACCEPT_ANY if headers is None else headers).items():
            if name.lower() in _OWN_HEADERS:
                continue
            if any(c in name or c in value for c in "\r\n\0") or ":" in name:
                raise WireError(f"refusing a header that would break the request: {name!r}")
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in the order sent
    keep: bool  # the connection may carry another request once the body is read
    length: int | None  # Content-Length; None: chunked, or until the server closes
    chunked: bool


async def _exchange(conn: _Connection, head: bytes, body: bytes | None, reused: bool, method: str) -> _Head:
    """Send the request, read the answer's head; the body is left for the stream."""
    conn.writer.write(head + body if body else head)
    try:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if reused and not exc.partial and method in _SAFE_TO_RESEND:
            raise _Closed from None
        raise
    status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
    try:
        version, code, *_ = status_line.split(" ", 2)
        status = int(code)
    except ValueError:
        raise WireError(f"not an HTTP status line: {status_line[:80]!r}") from None
    if not version.startswith("HTTP/1."):
        raise WireError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise WireError(f"malformed header line: {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip()))
    found = dict(headers)
    keep = version == "HTTP/1.1" and found.get("connection", "").lower() != "close"
    if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
        return _Head(status, tuple(headers), keep, 0, False)
    if "chunked" in found.get("transfer-encoding", "").lower():
        return _Head(status, tuple(headers), keep, None, True)
    length = found.get("content-length")
    if length is not None:
        size = int(length)
        if size < 0:
            raise WireError(f"negative Content-Length {size}")
        return _Head(status, tuple(headers), keep, size, False)
    return _Head(status, tuple(headers), False, None, False)  # until the server closes


class WireStream:
    """An answer whose head has been read; its body comes through `chunks()` or `read()`."""

    def __init__(self, pool: WirePool, conn: _Connection, head: _Head, timeout_s: float) -> None:
        self._pool = pool
        self._conn = conn
        self._head = head
        self._timeout_s = timeout_s  # for each read of the body
        self._complete = head.length == 0
        self._released = False

    @property
    def status(self) -> int:
        return self._head.status

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._head.headers

    def header(self, name: str) -> str:
        return next((v for k, v in self._head.headers if k == name), "")

    async def chunks(self, limit: int | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives; raises WireError when it breaks off (or exceeds `limit`)."""
        reader, head, total = self._conn.reader, self._head, 0
        try:
            if head.chunked:
                while True:
                    async with asyncio.timeout(self._timeout_s):
                        line = await reader.readuntil(b"\r\n")
                        size = int(line.split(b";", 1)[0].strip(), 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                                pass
                            break
                        data = (await reader.readexactly(size + 2))[:-2]
                    total += size
                    _check_limit(total, limit)
                    yield data
            elif head.length is not None:
                _check_limit(head.length, limit)
                remaining = head.length
                while remaining:
                    async with asyncio.timeout(self._timeout_s):
                        data = await reader.read(min(remaining, 65536))
                    if not data:
                        raise WireError(f"the server closed the answer {remaining} bytes short")
                    remaining -= len(data)
                    yield data
            else:
                while True:
                    async with asyncio.timeout(self._timeout_s):
                        data = await reader.read(65536)
                    if not data:
                        break
                    total += len(data)
                    _check_limit(total, limit)
                    yield data
        except TimeoutError:
            raise WireError(f"the answer stalled for {self._timeout_s:g}s") from None
        except _READ_ERRORS as exc:
            raise WireError(f"{type(exc).__name__}: {exc}") from None
        self._complete = True

    async def read(self, limit: int | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(limit)])

    async def aclose(self) -> None:
        """Give the connection back (kept alive only when the body was read whole)."""
        if not self._released:
            self._released = True
            self._pool._done(self._conn, self._complete and self._head.keep)


def _check_limit(total: int, limit: int | None) -> None:
    if limit is not None and total > limit:
        raise WireError(f"answer of {total} bytes or more is over the {limit} bytes allowed")
