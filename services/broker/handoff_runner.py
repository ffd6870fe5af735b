"""Drives the pure `handoff` machine against the MLNodes: commands out through the Gateway, answers in.

The machine decides every step; this module only executes a command, turns the result (or the
`MLNodeCallError`) into an observation, and shows the node's phase in the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.broker import handoff
from services.broker.handoff import Finish, HandoffPolicy, Phase
from services.broker.mlnode_client import MLNodeCallError
from services.broker.models import NodeConfig
from services.broker.pool import NodePool, SlotPhase
from services.broker.ports import Gateway
from shared.events import NodeOutcome
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["HandoffRunner"]

log = get_logger(__name__)


class HandoffRunner:
    def __init__(
        self,
        pool: NodePool,
        gateway: Gateway,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.clock = clock
        self.sleep = sleep

    async def run(
        self,
        node_id: str,
        target: MLNodeVersion | None,
        stop: tuple[MLNodeVersion, ...],
        model: tuple[str, tuple[str, ...]] | None,
        policy: HandoffPolicy,
        log_fields: dict[str, Any],
    ) -> Finish:
        """One handoff of `node_id` to `target` (None: only stop), until the machine finishes."""
        h, cmd = handoff.start(node_id, target, stop, model, policy, self.clock())
        while not isinstance(cmd, Finish):
            slot = self.pool.get(h.node_id)
            if slot is None:  # removed under us: nothing more to do on it
                outcome = NodeOutcome(node_id=h.node_id, outcome="removed")
                return Finish(outcome, serving=False, confirmed=h.confirmed, unconfirmed=())
            self.pool.note_phase(h.node_id, SlotPhase(h.phase.value))
            if h.phase is Phase.BRING_UP and slot.ready:
                self.pool.mark(h.node_id, ready=False, phase=SlotPhase.BRING_UP)  # it does not serve now
            obs = await self._execute(slot.config, cmd)
            if isinstance(obs, handoff.Failed) and isinstance(
                cmd, handoff.SendStop | handoff.BringUp | handoff.ReadState
            ):
                log.warning(
                    "MLNode call failed",
                    extra={
                        **log_fields,
                        "event": "handoff.call_failed",
                        "node": h.node_id,
                        "command": type(cmd).__name__,
                        "error": obs.error,
                        "status": obs.status,
                    },
                )
            confirmed = len(h.confirmed)
            h, cmd = handoff.advance(h, obs, self.clock())
            for version in h.confirmed[confirmed:]:
                log.info(
                    "old version stopped (confirmed STOPPED)",
                    extra={
                        **log_fields,
                        "event": "stop.confirmed",
                        "node": h.node_id,
                        "stopped": version.raw,
                    },
                )
        return cmd

    async def _execute(self, node: NodeConfig, cmd: handoff.Command) -> handoff.Observation:
        try:
            match cmd:
                case handoff.Drain(versions, timeout_s):
                    return handoff.Drained(await self.pool.wait_drained(node.id, versions, timeout_s))
                case handoff.Wait(seconds):
                    await self.sleep(seconds)
                    return handoff.Woke()
                case handoff.SendStop(version):
                    await self.gateway.stop(node, version)
                    return handoff.Ok()
                case handoff.ReadState(version):
                    return handoff.StateIs(await self.gateway.state(node, version))
                case handoff.BringUp(version, model, args):
                    await self.gateway.inference_up(node, version, model, args)
                    return handoff.Ok()
                case handoff.CheckHealth(version):
                    await self.gateway.serving(node, version)
                    return handoff.Ok()
        except MLNodeCallError as exc:
            return handoff.Failed(str(exc), exc.status)
        raise ValueError(f"no executor for {cmd!r}")
