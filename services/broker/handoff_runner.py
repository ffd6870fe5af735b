"""Drives the pure `handoff` machine against the MLNodes: commands out through the Gateway, answers in.

The machine decides every step; this module only executes a command, turns the result (or the
`MLNodeCallError`) into an observation, and shows the node's phase in the pool. The node's work
comes from the `WorkBook`, read when the handoff starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.broker import handoff
from services.broker.handoff import Finish, HandoffPolicy, Phase
from services.broker.load_times import LoadTimeBook
from services.broker.mlnode_client import MLNodeCallError
from services.broker.models import NodeConfig
from services.broker.node_work import WorkKind
from services.broker.pool import NodePool, SlotPhase
from services.broker.ports import Gateway
from services.broker.work_book import WorkBook
from shared.events import NodeOutcome
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["HandoffRunner", "settled_phase", "work_phase"]

log = get_logger(__name__)


def work_phase(work: WorkKind) -> SlotPhase:
    """How a node in work other than serving shows: not ready, in PoC (any phase), training or stopped."""
    if work is WorkKind.INFERENCE:
        raise ValueError("a node serving a model shows as ready (or as being brought up)")
    return SlotPhase.POW if work.is_pow else SlotPhase(work.value)


def settled_phase(finish: Finish) -> SlotPhase:
    """How the node shows once the handoff is over: serving, failed, or in the work it was given."""
    if finish.serving:
        return SlotPhase.READY
    if finish.outcome.outcome == "failed" or finish.work is None or finish.work == WorkKind.INFERENCE:
        return SlotPhase.FAILED
    return work_phase(WorkKind(finish.work))


class HandoffRunner:
    def __init__(
        self,
        pool: NodePool,
        gateway: Gateway,
        works: WorkBook,
        load_times: LoadTimeBook,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.works = works
        self.load_times = load_times
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
        *,
        show_phases: bool = True,
    ) -> Finish:
        """One handoff of `node_id` to `target` (None: only stop), until the machine finishes.

        `show_phases=False` for a check in the background (a serving node's upkeep, a pending
        stop's retry): the node keeps showing the phase it is in, and how long it has been in it.
        """
        work = self.works.get(node_id)
        h, cmd = handoff.start(node_id, target, stop, model, policy, self.clock(), work)
        while not isinstance(cmd, Finish):
            slot = self.pool.get(h.node_id)
            if slot is None:  # removed under us: nothing more to do on it
                outcome = NodeOutcome(node_id=h.node_id, outcome="removed")
                return Finish(outcome, serving=False, confirmed=h.confirmed, unconfirmed=())
            if show_phases:
                self.pool.note_phase(h.node_id, SlotPhase(h.phase.value))
            if h.phase is Phase.BRING_UP and slot.ready:
                self.pool.mark(h.node_id, ready=False, phase=SlotPhase.BRING_UP)  # it does not serve now
            obs = await self._execute(slot.config, cmd, policy)
            if isinstance(obs, handoff.Failed) and isinstance(
                cmd, handoff.SendStop | handoff.BringUp | handoff.ReadState | handoff.StartWork
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
        if cmd.load_s is not None and target is not None:
            await self.load_times.record(h.node_id, target, cmd.load_s)
        switched = bool(h.confirmed or h.unconfirmed)  # old versions were stopped: a switch, not upkeep
        if cmd.carried is not None and target is not None and switched:
            log.log(
                logging.INFO if cmd.carried else logging.WARNING,
                "work carried to the new version" if cmd.carried else "work not carried to the new version",
                extra={
                    **log_fields,
                    "event": "handoff.work",
                    "node": h.node_id,
                    "work": cmd.work,
                    "carried": cmd.carried,
                    "detail": cmd.outcome.detail,
                },
            )
        return cmd

    async def _read_work(
        self, node: NodeConfig, version: MLNodeVersion, timeout_s: float
    ) -> handoff.Observation:
        """What the old version runs, bounded by `timeout_s` (`HandoffPolicy.observe_timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                state = await self.gateway.state(node, version)
                pow_status = await self.gateway.pow_status(node, version) if state == "POW" else None
        except TimeoutError:
            return handoff.Failed(f"no answer within {timeout_s}s")
        return handoff.WorkIs(state, pow_status)

    async def _execute(
        self, node: NodeConfig, cmd: handoff.Command, policy: HandoffPolicy
    ) -> handoff.Observation:
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
                case handoff.ReadWork(version):
                    return await self._read_work(node, version, policy.observe_timeout_s)
                case handoff.CheckWaiting():
                    return handoff.Waiting(self.works.waiting_route(node.id))
                case handoff.BringUp(version, model, args, dtype):
                    await self.gateway.inference_up(node, version, model, args, dtype)
                    return handoff.Ok()
                case handoff.StartWork(version, route, body):
                    await self.gateway.start_work(node, version, route, body)
                    return handoff.Ok()
                case handoff.CheckHealth(version):
                    await self.gateway.serving(node, version)
                    return handoff.Ok()
        except MLNodeCallError as exc:
            return handoff.Failed(str(exc), exc.status)
        raise ValueError(f"no executor for {cmd!r}")
