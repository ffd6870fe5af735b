"""When `version.changed` and `broker.refreshed` arrived, as a NATS subscriber sees them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

__all__ = ["EventLog"]


@dataclass
class EventLog:
    """Arrival times (time.time()) of `version.changed` and `broker.refreshed`, keyed by transition id."""

    changed: dict[str, float] = field(default_factory=dict)
    refreshed: dict[str, float] = field(default_factory=dict)
    refreshed_body: dict[str, dict[str, Any]] = field(default_factory=dict)
    nc: NatsClient | None = None

    async def start(self, url: str) -> None:
        self.nc = await nats.connect(url, name="bench", max_reconnect_attempts=-1)
        await self.nc.subscribe("version.changed", cb=self._on_changed)
        await self.nc.subscribe("broker.refreshed", cb=self._on_refreshed)

    async def _on_changed(self, msg: Msg) -> None:
        now = time.time()
        body = json.loads(msg.data)
        self.changed.setdefault(str(body.get("transition_id")), now)

    async def _on_refreshed(self, msg: Msg) -> None:
        now = time.time()
        body = json.loads(msg.data)
        tid = str(body.get("transition_id"))
        self.refreshed.setdefault(tid, now)
        self.refreshed_body.setdefault(tid, body)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
