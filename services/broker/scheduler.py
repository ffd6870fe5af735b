"""Who may touch a node, in one place.

The rule: **one management operation per node at a time** (a switch's handoff, a bring-up, a
pending-stop retry, a management call the API node sends through the node endpoint), and **a
switch pre-empts upkeep** and goes before the API node's calls.

- A switch claims its nodes synchronously, at the moment it is decided: every upkeep task is
  cancelled and one switch task per node is created before anything can await, so no upkeep
  slips in between the decision and the handoff. A switch task waits for the node's turn.
- Upkeep never waits for a turn: it is skipped when the node is busy or claimed by a switch, and
  runs again next round (it is idempotent). At most one upkeep task runs per node.
- A removed node is forgotten: its tasks are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

__all__ = ["NodeScheduler"]

T = TypeVar("T")


class NodeScheduler:
    def __init__(self) -> None:
        self._turns: dict[str, asyncio.Lock] = {}
        self._switch: dict[str, asyncio.Task[None]] = {}
        self._upkeep: dict[str, asyncio.Task[None]] = {}
        self._kept: set[asyncio.Task[None]] = set()  # upkeep a switch lets finish (an early load)

    def _turn(self, node_id: str) -> asyncio.Lock:
        lock = self._turns.get(node_id)
        if lock is None:
            lock = self._turns[node_id] = asyncio.Lock()
        return lock

    # -- switches ----------------------------------------------------------------------------------

    def claim_for_switch(
        self, node_ids: Iterable[str], work: Callable[[str], Coroutine[Any, Any, None]]
    ) -> dict[str, asyncio.Task[None]]:
        """Pre-empt upkeep and start `work(node)` for each node; synchronous on purpose (see above)."""
        for task in self._upkeep.values():
            if task not in self._kept:
                task.cancel()
        self._switch = {n: asyncio.create_task(work(n)) for n in node_ids}
        return dict(self._switch)

    def release_switch(self) -> None:
        self._switch = {}

    def claimed_by_switch(self, node_id: str) -> bool:
        return node_id in self._switch

    def switching(self, node_id: str) -> bool:
        """A switch's work on the node is still to come or under way (not only claimed: unfinished)."""
        task = self._switch.get(node_id)
        return task is not None and not task.done()

    @contextlib.asynccontextmanager
    async def switch_turn(self, node_id: str) -> AsyncIterator[None]:
        """A switch's work on the node: waits for an upkeep operation under way to end."""
        async with self._turn(node_id):
            yield

    # -- the API node's own calls ---------------------------------------------------------------------

    async def wait_switch(self, node_id: str, timeout_s: float) -> None:
        """Until no switch works on the node (at once when none does); TimeoutError past `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while self.switching(node_id):
                await asyncio.wait({self._switch[node_id]})

    @contextlib.asynccontextmanager
    async def client_turn(self, node_id: str, timeout_s: float) -> AsyncIterator[None]:
        """An API node's `stop`, `inference/up`, `pow/init/*`...: after any switch on the node has
        finished with it, never between a handoff's stop and its bring-up; bounded by `timeout_s`
        (TimeoutError), as a request waiting for a ready node is."""
        async with asyncio.timeout(timeout_s):
            while True:
                while self.switching(node_id):
                    await asyncio.wait({self._switch[node_id]})
                lock = self._turn(node_id)
                await lock.acquire()
                if not self.switching(node_id):
                    break
                lock.release()  # a switch claimed the node while this call waited: it goes first
        try:
            yield
        finally:
            lock.release()

    # -- upkeep ------------------------------------------------------------------------------------

    async def upkeep_turn(self, node_id: str, work: Callable[[], Awaitable[T]]) -> T | None:
        """Run `work` as the node's one operation, or skip it (None) when the node is busy."""
        lock = self._turn(node_id)
        if lock.locked() or node_id in self._switch:
            return None
        async with lock:
            if node_id in self._switch:
                return None
            return await work()

    def spawn_upkeep(
        self, node_id: str, work: Callable[[], Coroutine[Any, Any, None]], *, keep_on_switch: bool = False
    ) -> None:
        """At most one upkeep task per node, none on a node a switch has claimed. A switch cancels
        upkeep under way, except what is `keep_on_switch` (its handoff then waits for it)."""
        running = self._upkeep.get(node_id)
        if node_id in self._switch or (running is not None and not running.done()):
            return
        task = asyncio.create_task(work())
        self._upkeep[node_id] = task
        if keep_on_switch:
            self._kept.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._kept.discard(done)
            if self._upkeep.get(node_id) is done:
                del self._upkeep[node_id]

        task.add_done_callback(forget)

    async def wait_upkeep(self) -> None:
        tasks = list(self._upkeep.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- membership --------------------------------------------------------------------------------

    def forget(self, node_id: str) -> None:
        """The node was removed: stop whatever runs on it."""
        for tasks in (self._switch, self._upkeep):
            task = tasks.get(node_id)
            if task is not None:
                task.cancel()
        self._turns.pop(node_id, None)

    async def cancel_upkeep(self) -> None:
        tasks = list(self._upkeep.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
