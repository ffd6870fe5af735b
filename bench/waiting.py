"""Waiting for the stack to reach a state: a condition polled against a deadline, never a sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["BenchError", "wait_for"]


class BenchError(RuntimeError):
    """The test bed could not be set up or did not reach the state a benchmark needs."""


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.05
) -> float:
    """Poll `check` until it is true; returns when (time.time()) it first was. Raises after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)  # polling a condition with a deadline
