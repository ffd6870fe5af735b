"""The state the watcher's loops share: what the node serves and the frames seen above the cursor."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from services.chain_watcher.core import ObservedBlock

__all__ = ["MAX_FRAMES_PER_HEIGHT", "MAX_HINTS", "ChainView"]

MAX_HINTS = 10_000
MAX_FRAMES_PER_HEIGHT = 4  # distinct frames kept per height (a forged one and the real one, ...)


@dataclass
class ChainView:
    """What the observing loops learned about the node, and the signals they give the sync loop."""

    chain_height: int | None = None  # newest height the query node serves (/status, /block)
    served: int | None = None  # the newest height the query node answered for
    claimed: int | None = None  # the newest height a websocket frame claimed
    earliest: int | None = None  # the query node's earliest retained block
    reachable: bool = False
    catching_up: bool = False
    websocket_connected: bool = False
    frames: dict[int, list[ObservedBlock]] = field(default_factory=dict)  # above the cursor
    # Set when a height may be ready to publish (a frame, a higher served height).
    work_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Set to ask /status at once (the websocket came up or went down).
    poll_now: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the query node's served height went up (a waited-for height may be there).
    served_rose: asyncio.Event = field(default_factory=asyncio.Event)
