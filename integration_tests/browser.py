# ruff: noqa: ASYNC109  (every `timeout` here is a deadline for the browser, not asyncio's in disguise)
"""A real headless Chromium, driven over the Chrome DevTools Protocol with `websockets`.

No Selenium, no Playwright, no driver binary: Debian's `chromium` and one WebSocket to its page
target are all the status page's browser tests need (and all an offline machine has). Every
wait is a deadline; `close` kills the browser's whole process group and removes its profile.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect

__all__ = [
    "CHROMIUM",
    "Browser",
    "BrowserError",
    "JsError",
    "Png",
    "chromium_problem",
    "decode_png",
]

CHROMIUM = Path("/usr/bin/chromium")
T = TypeVar("T")

# The background-networking flags matter here: without them Chromium keeps dialling out and this
# machine's closed network refuses it, slowly.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # an http_proxy in the environment must not catch 127.0.0.1
)

_open: set[Browser] = set()


def chromium_problem(executable: Path = CHROMIUM) -> str | None:
    """Why the browser tests cannot run here, or None: said as a failure, never a skip."""
    if os.access(executable, os.X_OK):
        return None
    return (
        f"Chromium is not installed at {executable}: run scripts/install-system-deps.sh "
        "(make test does), or apt-get install chromium"
    )


class BrowserError(RuntimeError):
    """The browser did not start, a CDP call failed, or a wait ran out."""


class JsError(BrowserError):
    """A script evaluated in the page threw."""


@dataclass(eq=False)
class Browser:
    """One Chromium with one page; make it with `launch`, end it with `close`."""

    proc: subprocess.Popen[bytes]
    home: Path
    ws: ClientConnection
    width: int
    height: int
    console: list[str]  # console messages and uncaught exceptions of the page, for failure messages

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded: set[str] = set()  # loader ids whose document fired its load event
        self._lifecycle = asyncio.Event()  # set (and replaced) on every lifecycle event
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader = asyncio.create_task(self._read())
        _open.add(self)

    @classmethod
    async def launch(
        cls, *, width: int = 1280, height: int = 900, executable: Path = CHROMIUM, start_s: float = 30.0
    ) -> Browser:
        problem = chromium_problem(executable)
        if problem:
            raise BrowserError(problem)
        home = Path(tempfile.mkdtemp(prefix="chromium-"))
        profile = home / "profile"
        log = (home / "chromium.log").open("wb")
        argv = [str(executable), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
        argv += [f"--window-size={width},{height}", "about:blank"]
        # Its own session: `close` kills the group, renderers and zygote included.
        proc = await asyncio.to_thread(
            subprocess.Popen,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            ws = await _connect_page(proc, home, profile, start_s)
        except BaseException:
            await asyncio.to_thread(_kill_group, proc)
            shutil.rmtree(home, ignore_errors=True)
            raise
        browser = cls(proc, home, ws, width, height, [])
        try:
            await browser.call("Page.enable")
            await browser.call("Page.setLifecycleEventsEnabled", {"enabled": True})
            await browser.call("Runtime.enable")
            await browser.call("Log.enable")  # CSP violations and failed loads land here
            # The viewport exactly width x height, so a screenshot's size is known.
            await browser.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            await browser.close()
            raise
        return browser

    # -- the protocol --------------------------------------------------------------------------

    async def _read(self) -> None:
        """Every message from the page: answers go to their call, events are noted."""
        reason = "the browser closed the DevTools connection"
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    future = self._calls.pop(msg["id"], None)
                    if future is not None and not future.done():
                        future.set_result(msg)
                else:
                    self._note(msg.get("method", ""), msg.get("params", {}))
        except Exception as exc:  # the connection went: every caller hears why
            reason = repr(exc)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(BrowserError(f"DevTools connection lost: {reason}"))
        self._lifecycle.set()

    def _note(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.lifecycleEvent":
            if params.get("name") == "load":
                self._loaded.add(params.get("loaderId", ""))
            self._lifecycle.set()
            self._lifecycle = asyncio.Event()
        elif method == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"exception: {_describe(details)}")
        elif method == "Page.javascriptDialogOpening":
            # An alert() would block the page (and every evaluate after it): noted and dismissed.
            self.console.append(f"dialog.{params.get('type')}: {params.get('message')}")
            task = asyncio.create_task(self.call("Page.handleJavaScriptDialog", {"accept": False}))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(f"log.{entry.get('level')}: {entry.get('text')}")

    def _done(self, task: asyncio.Task[Any]) -> None:
        """A background call finished: forgotten, its failure read (it only dismissed a dialog)."""
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        """One CDP command; its result, or BrowserError with the protocol's error."""
        if self._reader.done():
            raise BrowserError("the DevTools connection is closed")
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        try:
            answer = await _within(future, timeout, f"{method} to answer")
        finally:
            self._calls.pop(call_id, None)
        if "error" in answer:
            raise BrowserError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    # -- what tests use ------------------------------------------------------------------------

    async def navigate(self, url: str, timeout: float = 20.0) -> None:
        """Load `url` and wait for the load event of that very document (its loader id), not of
        the one before; a refused or failed navigation raises."""
        deadline = time.monotonic() + timeout
        result = await self.call("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {result['errorText']}")
        loader = result.get("loaderId", "")
        while loader not in self._loaded:
            if self._reader.done():
                raise BrowserError("the DevTools connection is closed")
            changed = self._lifecycle
            await _within(changed.wait(), deadline - time.monotonic(), f"{url} to load")

    async def evaluate(self, js: str, timeout: float = 15.0) -> Any:
        """The value of the expression `js` in the page (promises awaited), as JSON."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": js, "returnByValue": True, "awaitPromise": True},
            timeout,
        )
        if "exceptionDetails" in result:
            raise JsError(f"{js!r} threw: {_describe(result['exceptionDetails'])}")
        return result.get("result", {}).get("value")

    async def wait_for(
        self, predicate: str, timeout: float = 10.0, interval: float = 0.05, message: str | None = None
    ) -> Any:
        """Evaluate `predicate` until it is truthy; its value. On the deadline, fail with the
        last value and the page's console so the failure says what the page showed."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(predicate)
            if value:
                return value
            if time.monotonic() >= deadline:
                console = "\n  ".join(self.console[-20:]) or "(nothing)"
                raise BrowserError(
                    f"timed out after {timeout}s waiting for {message or predicate!r} "
                    f"(last value {value!r}); page console:\n  {console}"
                )
            await asyncio.sleep(interval)  # the poll interval inside the deadline loop

    async def screenshot(self, *paths: Path) -> bytes:
        """The viewport as PNG, written to every one of `paths`; the PNG's bytes."""
        result = await self.call("Page.captureScreenshot", {"format": "png"}, timeout=30.0)
        data = base64.b64decode(result["data"])
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return data

    async def close(self) -> None:
        """Kill the browser's process group and remove its profile; safe to call twice."""
        _open.discard(self)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await asyncio.to_thread(_kill_group, self.proc)
        shutil.rmtree(self.home, ignore_errors=True)


async def _within(awaitable: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, max(timeout, 0.0))
    except TimeoutError:
        raise BrowserError(f"timed out after {timeout:.1f}s waiting for {what}") from None


def _describe(details: dict[str, Any]) -> str:
    exception = details.get("exception", {})
    return str(exception.get("description") or details.get("text") or details)


async def _connect_page(
    proc: subprocess.Popen[bytes], home: Path, profile: Path, within_s: float
) -> ClientConnection:
    """Chromium writes its port to DevToolsActivePort; the page target's socket from /json."""
    deadline = time.monotonic() + within_s
    port_file = profile / "DevToolsActivePort"
    port = 0
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                log = (home / "chromium.log").read_text(errors="replace")[-3000:]
                raise BrowserError(f"chromium exited with {proc.returncode} while starting:\n{log}")
            if not port:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    port = int(port_file.read_text().splitlines()[0])
            if port:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    targets = (await client.get(f"http://127.0.0.1:{port}/json")).json()
                    pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                    if pages:
                        # Screenshots are megabytes of base64: no frame-size limit.
                        return await connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not offer a page target within {within_s}s")
            await asyncio.sleep(0.05)  # waiting for the browser's port, within the deadline


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group (renderers, zygote, GPU process), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; anything left in its group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


@atexit.register
def _kill_leftovers() -> None:
    """A test process that dies without running its finalizers still takes its browsers along."""
    for browser in list(_open):
        _kill_group(browser.proc)
        shutil.rmtree(browser.home, ignore_errors=True)


# -- PNG ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    colours: int  # distinct colours among the pixels (RGB; alpha ignored)


_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (no palettes)


def decode_png(data: bytes) -> Png:
    """Size and colour count of an 8-bit, non-interlaced PNG (what Chromium writes), with zlib
    alone: enough to tell a real screenshot from a blank or truncated one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG")
        if zlib.crc32(kind + body) != int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big"):
            raise ValueError(f"bad CRC in the {kind!r} chunk")
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    if depth != 8 or colour_type not in _CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}, interlace {interlace}")
    bpp = _CHANNELS[colour_type]
    stride = width * bpp
    raw = zlib.decompress(bytes(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG data is {len(raw)} bytes, expected {height * (stride + 1)}")
    colours: set[bytes] = set()
    prev = bytearray(stride)
    keep = 3 if colour_type in (2, 6) else 1  # RGB, or grey
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prev, bpp)
        colours.update(bytes(row[x : x + keep]) for x in range(0, stride, bpp))
        prev = row
    return Png(width, height, len(colours))


def _unfilter(kind: int, row: bytearray, prev: bytearray, bpp: int) -> bytearray:
    """Undo one scanline's filter (PNG spec, section 9), in place."""
    n = len(row)
    if kind == 0:
        return row
    if kind == 1:
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:
        for i in range(n):
            row[i] = (row[i] + prev[i]) & 0xFF
    elif kind == 3:
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            row[i] = (row[i] + pred) & 0xFF
    else:
        raise ValueError(f"unknown PNG filter type {kind}")
    return row
