"""The running mock node: the chain plus its clock, its websocket subscribers and its faults.

Everything here runs on one event loop and touches the chain without awaiting in between, so a
block, a proposal and a query never interleave.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from mock_chain.chain import Block, Chain, Proposal
from mock_chain.cometbft import is_new_block_query, new_block_event
from mock_chain.gov import parse_proposal
from mock_chain.settings import MockChainSettings
from shared.logging import get_logger

__all__ = ["CLOSE", "BlocksPaused", "ChainNode", "Faults", "GrpcFault", "Subscriber"]

log = get_logger(__name__)

CLOSE = object()  # queued to a subscriber: close its websocket
SUBSCRIBER_QUEUE = 1000  # a client this far behind is dropped, as CometBFT drops slow subscribers


class BlocksPaused(RuntimeError):
    """Blocks are paused by a fault; nothing is produced until resumed."""


@dataclass
class GrpcFault:
    """Answer gRPC calls with `code` (all methods, or one), `times` times or until cleared."""

    code: grpc.StatusCode
    message: str = "injected fault"
    method: str | None = None
    times: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"code": self.code.name, "message": self.message, "method": self.method, "times": self.times}


@dataclass
class Faults:
    paused: bool = False
    skip_events: int = 0  # NewBlock events of the next N blocks are not sent
    grpc: GrpcFault | None = None
    # Queries (/status, /block, gRPC) answer as a node this many blocks behind the websocket's.
    query_lag: int = 0

    def take_grpc(self, method: str) -> GrpcFault | None:
        fault = self.grpc
        if fault is None or (fault.method is not None and fault.method != method):
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self.grpc = None
        return fault

    def describe(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "skip_events": self.skip_events,
            "grpc": self.grpc.describe() if self.grpc else None,
            "query_lag_blocks": self.query_lag,
        }


@dataclass(eq=False)
class Subscriber:
    """One websocket connection: its subscriptions and the queue its sender drains."""

    queue: asyncio.Queue[object] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    subscriptions: dict[str, Any] = field(default_factory=dict)  # query -> JSON-RPC id

    def send(self, message: object) -> bool:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        """Drop whatever is queued and have the sender close the socket next."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(CLOSE)


class ChainNode:
    def __init__(self, settings: MockChainSettings, clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.chain = Chain(
            voting_period_blocks=settings.voting_period_blocks,
            chain_id=settings.chain_id,
            mlnode_version=settings.genesis_version,
            state_retention_blocks=settings.state_retention_blocks,
            block_retention_blocks=settings.block_retention_blocks,
        )
        self.faults = Faults(query_lag=settings.query_lag_blocks)
        self.subscribers: set[Subscriber] = set()
        self.connections_total = 0

    # -- blocks -----------------------------------------------------------------------------

    @property
    def served_height(self) -> int:
        """The newest height queries answer for: the chain's, less the lagging-node fault."""
        return max(0, self.chain.height - self.faults.query_lag)

    def advance(self, n: int = 1) -> list[Block]:
        if self.faults.paused:
            raise BlocksPaused("blocks are paused (POST /mock/faults/resume)")
        blocks = []
        for _ in range(n):
            before = self.chain.mlnode_version
            block = self.chain.advance(self.clock())
            blocks.append(block)
            if self.chain.mlnode_version != before:
                log.info(
                    "MLNodeVersion changed in end-block",
                    extra={
                        "event": "mlnode_version_applied",
                        "height": block.height,
                        "version": self.chain.mlnode_version,
                        "previous": before,
                    },
                )
            self._broadcast(block)
        return blocks

    async def run_timer(self) -> None:
        """Produce a block every `block_time_s` (unless paused); runs until cancelled."""
        interval = self.settings.block_time_s
        if interval <= 0:
            return
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if not self.faults.paused:
                self.advance(1)

    def _broadcast(self, block: Block) -> None:
        if self.faults.skip_events > 0:
            self.faults.skip_events -= 1
            return
        for sub in list(self.subscribers):
            for query, sub_id in sub.subscriptions.items():
                if is_new_block_query(query) and not sub.send(
                    json.dumps(new_block_event(block, sub_id, query))
                ):
                    log.warning("dropping a websocket client that is not reading its events")
                    self.subscribers.discard(sub)
                    sub.close()
                    break

    # -- governance -------------------------------------------------------------------------

    def submit_proposal(self, raw: Any, *, passes: bool = True) -> Proposal:
        """Parse, validate and enter a proposal; `ProposalRejected` leaves the chain unchanged."""
        draft = parse_proposal(raw)
        proposal = self.chain.submit_proposal(draft, passes=passes)
        for msg in draft.messages:
            log.info(
                "partial upgrade proposed",
                extra={
                    "event": "proposal_submitted",
                    "proposal_id": proposal.id,
                    "height": msg.height,
                    "version": msg.node_version,
                    "voting_end_height": proposal.voting_end_height,
                },
            )
        return proposal

    # -- websockets -------------------------------------------------------------------------

    def add_subscriber(self) -> Subscriber:
        sub = Subscriber()
        self.subscribers.add(sub)
        self.connections_total += 1
        return sub

    def remove_subscriber(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close_websockets(self) -> int:
        subs = list(self.subscribers)
        for sub in subs:
            self.subscribers.discard(sub)
            sub.close()
        return len(subs)

    def send_raw(self, text: str) -> int:
        """Send `text` verbatim to every websocket client (malformed frames, hand-written events)."""
        count = 0
        for sub in list(self.subscribers):
            count += sub.send(text)
        return count

    def websocket_stats(self) -> dict[str, int]:
        return {
            "connections": len(self.subscribers),
            "subscriptions": sum(len(s.subscriptions) for s in self.subscribers),
            "connections_total": self.connections_total,
        }
