"""A request that waits for a node gives up its place when its client disconnects.

Mid-switch, requests queue for the new version while its model loads. A client that gave up
meanwhile would still be served when capacity comes (a wasted forward, and a longer wait for
every live request behind it), so the wait is raced against the client's disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from services.broker.pool import Lease, NodePool, NoNodeReady

__all__ = ["ClientGone", "Disconnected", "acquire_while_connected", "disconnected"]

Disconnected = Callable[[], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected while its request waited for a node."""


def disconnected(request: Request) -> Disconnected:
    """An awaitable factory that returns once the client of `request` (body already read) is gone."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return wait


async def acquire_while_connected(
    pool: NodePool,
    timeout_s: float,
    gone: Disconnected | None,
    avoid: frozenset[str] = frozenset(),
    among: frozenset[str] | None = None,
) -> Lease:
    """`pool.acquire`, unless the client goes first (`ClientGone`); a free node costs no task."""
    lease = pool.try_acquire(avoid, among)
    if lease is not None:
        return lease
    if gone is None:
        return await pool.acquire(timeout_s, avoid, among)
    waiting = asyncio.ensure_future(pool.acquire(timeout_s, avoid, among))
    watching = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((waiting, watching), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        watching.cancel()
        _give_back_when_done(pool, waiting)
        raise
    watching.cancel()
    if waiting.done():
        return waiting.result()
    waiting.cancel()
    try:
        lease = await waiting
    except (asyncio.CancelledError, NoNodeReady):
        raise ClientGone from None
    pool.release(lease)  # granted just as the client went
    raise ClientGone


def _give_back_when_done(pool: NodePool, waiting: asyncio.Future[Lease]) -> None:
    """The caller is cancelled: whatever lease the wait got (now, or as it ends) goes back."""

    def release(done: asyncio.Future[Lease]) -> None:
        if not done.cancelled() and done.exception() is None:
            pool.release(done.result())

    waiting.cancel()  # a wait still under way ends cancelled and hands nothing out
    waiting.add_done_callback(release)
