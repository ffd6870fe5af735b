"""The API node's one MLNode address per node: `/nodes/{node_id}/...` to the node's current version.

An API node's node config names the broker as both ports of a node, with the segment
`/nodes/{node_id}`; every call then goes to the version the registry made current, whatever
version prefix the client put in front (a mismatch is logged and counted). No call reaches a node
in the middle of its handoff: each waits, bounded, for the switch to be done with the node.
Inference calls then wait, bounded, until the node serves; management calls that change what the
node runs take the node's turn in the scheduler (never between a handoff's stop and its
bring-up), and their 2xx answers set the node's work, which the next switch carries over.

Inference for a node that does not serve now because a switch hands it over, or because it is
staged for the next version (loaded on it before the height, see `stager`), is served by the
least busy node with the same model that serves the current version: a staged switch is then
zero-wait through this endpoint too. A staged node's status calls are read from the version it
runs (the API node sees a node serving a model, not one to restart), and a management call takes
it out of the staging first (the API node's work wins).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.responses import JSONResponse, Response

from services.broker.endpoint_paths import CallKind, EndpointCall, EndpointPathError, parse_endpoint_path
from services.broker.handoff_runner import work_phase
from services.broker.metrics import BrokerMetrics
from services.broker.mlnode_client import ClientBook
from services.broker.node_work import WorkKind, work_after_call
from services.broker.pool import STAGING_PHASES, Lease, NodePool, NoNodeReady, SlotPhase
from services.broker.relay import answer_headers, passed_headers, relay
from services.broker.scheduler import NodeScheduler
from services.broker.upstream import UpstreamError
from services.broker.work_book import WorkBook
from shared.logging import get_logger
from shared.versions import MLNodeVersion

__all__ = ["NodeEndpoint"]

log = get_logger(__name__)

VERSION_HEADER = "x-broker-version"
NODE_HEADER = "x-broker-node"  # set when another node than the one addressed answered


def _refusal(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class NodeEndpoint:
    def __init__(
        self,
        pool: NodePool,
        book: ClientBook,
        scheduler: NodeScheduler,
        works: WorkBook,
        metrics: BrokerMetrics,
        wait_s: float,
        release_staged: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        self.book = book
        self.scheduler = scheduler
        self.works = works
        self.metrics = metrics
        self.wait_s = wait_s
        self.release_staged = release_staged  # `Stager.release`, called in the node's turn

    async def handle(self, request: Request) -> Response:
        try:
            call = parse_endpoint_path(request.url.path, request.method)
        except EndpointPathError as exc:
            return _refusal(404, str(exc))
        if self.pool.get(call.node_id) is None:
            return _refusal(404, f"no node {call.node_id!r}")
        current = self.pool.current
        if current is None:
            return _refusal(503, "no MLNode version is current yet (the registry has not said)")
        if call.disagrees_with(current):
            assert call.sent_version is not None
            self.metrics.endpoint_version_mismatch_total.labels(
                sent=call.sent_version.raw, current=current.raw
            ).inc()
            log.warning(
                "client's version is not the current one; the registry's wins",
                extra={"node": call.node_id, "sent": call.sent_version.raw, "version": current.raw},
            )
        body = await request.body()
        if call.kind is CallKind.MANAGEMENT:
            return await self._manage(request, call, body)
        staged_on = self._staged_on(call.node_id)
        if call.kind is CallKind.INFERENCE and (staged_on or self._handed_over(call.node_id)):
            return await self._redirect(request, call, body, itself=staged_on is None)
        try:  # no call reaches a node in the middle of its handoff
            await self.scheduler.wait_switch(call.node_id, self.wait_s)
        except TimeoutError:
            return _refusal(503, f"{call.node_id} is being handed over (waited {self.wait_s:.1f}s)")
        if staged_on is not None:
            return await self._send(request, call, staged_on, body)  # its status, where it runs
        if call.kind is CallKind.INFERENCE and not await self._serving(call.node_id):
            version = self.pool.current
            return _refusal(503, f"{call.node_id} does not serve {version} yet (waited {self.wait_s:.1f}s)")
        return await self._send(request, call, self.pool.current or current, body)

    def _staged_on(self, node_id: str) -> MLNodeVersion | None:
        """The next version, when the node is staged for it (and it is not current yet)."""
        slot = self.pool.get(node_id)
        if slot is None or slot.phase not in STAGING_PHASES or slot.version == self.pool.current:
            return None
        return slot.version

    def _handed_over(self, node_id: str) -> bool:
        """A switch works on the node (and it serves a model): its inference need not wait for it."""
        work = self.works.get(node_id)
        serves_a_model = work is None or work.kind is WorkKind.INFERENCE
        return serves_a_model and self.scheduler.switching(node_id)

    async def _redirect(self, request: Request, call: EndpointCall, body: bytes, *, itself: bool) -> Response:
        """Inference for a node staged for the next version, or being handed over: the least busy
        node serving the current version with the same model answers (the node `itself`, too,
        once it serves: then nothing was redirected)."""
        slot = self.pool.get(call.node_id)
        model = slot.config.model if slot is not None else None
        among = frozenset(
            n
            for n, other in self.pool.slots.items()
            if other.config.model == model and (itself or n != call.node_id)
        )
        try:
            lease = await self.pool.acquire(self.wait_s, among=among)
        except NoNodeReady as exc:
            return _refusal(503, f"{call.node_id} does not serve now (waited {self.wait_s:.1f}s): {exc}")
        if lease.node.id != call.node_id:
            self.metrics.endpoint_redirected_total.inc()
        return await self._forward(request, call, lease, body)

    async def _manage(self, request: Request, call: EndpointCall, body: bytes) -> Response:
        """A call that changes the node's work: in the node's turn, then the work recorded."""
        try:
            with self.works.waiting(call.node_id, call.route):
                async with self.scheduler.client_turn(call.node_id, self.wait_s):
                    if self.release_staged is not None and self._staged_on(call.node_id) is not None:
                        await self.release_staged(call.node_id)
                    version = self.pool.current
                    if version is None:
                        return _refusal(503, "no MLNode version is current")
                    answer = await self._send(request, call, version, body)
                    if 200 <= answer.status_code < 300:
                        await self._record(call, version, request.method, body)
                    return answer
        except TimeoutError:
            return _refusal(503, f"{call.node_id} is being handed over; try again")

    async def _record(self, call: EndpointCall, version: MLNodeVersion, method: str, body: bytes) -> None:
        before = self.works.get(call.node_id)
        work = work_after_call(before, method, call.route, body)
        if work is None:
            return
        try:
            await self.works.record(call.node_id, work)
        except Exception:  # the MLNode did it: the API node gets its answer, the operator the error
            log.exception(
                "node work not recorded; the next switch may not carry it",
                extra={"event": "node.work_unrecorded", "node": call.node_id, "work": work.label()},
            )
        # A 2xx from the blocking inference/up means the model is loaded; after the async one the
        # next upkeep round sees it serve.
        serving = work.kind is WorkKind.INFERENCE and call.route.endswith("/inference/up")
        if work.kind is WorkKind.INFERENCE:
            phase = SlotPhase.READY if serving else SlotPhase.BRING_UP
        else:
            phase = work_phase(work.kind)
        if version == self.pool.current and not self.scheduler.switching(call.node_id):
            # (A switch decided while the call ran marks the node itself: it is queued for it.)
            self.pool.mark(call.node_id, ready=serving, phase=phase, version=version)
        log.info(
            "node work set by the API node",
            extra={
                "event": "node.work",
                "node": call.node_id,
                "version": version.raw,
                "work": work.label(),
                "route": call.route,
            },
        )

    async def _serving(self, node_id: str) -> bool:
        """Wait (bounded) until the node is ready on the current version.

        A node the API node gave other work (stopped, PoC, training) is not waited for: the
        call goes to it and the MLNode answers as it does when no model is loaded.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            slot = self.pool.get(node_id)
            if slot is None:
                return False
            if slot.ready and slot.version == self.pool.current:
                return True
            work = self.works.get(node_id)
            if work is not None and work.kind is not WorkKind.INFERENCE:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.pool.wait_change(min(remaining, 0.5))

    async def _send(
        self, request: Request, call: EndpointCall, version: MLNodeVersion, body: bytes
    ) -> Response:
        """Forward under a lease on (node, version): a handoff's drain waits for the answer to finish."""
        lease = self.pool.hold(call.node_id, version)  # before any await: the version is still current
        if lease is None:
            return _refusal(404, f"no node {call.node_id!r}")
        return await self._forward(request, call, lease, body)

    async def _forward(self, request: Request, call: EndpointCall, lease: Lease, body: bytes) -> Response:
        """Forward `call` to the lease's node and version; the lease ends with the answer."""
        version, answering = lease.version, lease.node.id
        client = self.book.get(lease.node, version)
        base = client.inference_url if call.kind is CallKind.INFERENCE else client.poc_url
        url = f"{base}{call.route}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        try:
            upstream = await client.open(request.method, url, body, passed_headers(request.headers))
        except UpstreamError as exc:
            self.pool.release(lease)
            return _refusal(502, f"{answering}@{version}: {exc}")
        headers = answer_headers(upstream)
        headers[VERSION_HEADER] = version.raw
        if answering != call.node_id:
            headers[NODE_HEADER] = answering
        relayed = await relay(
            upstream,
            headers,
            lambda: self.pool.release(lease),
            lambda exc: _refusal(502, f"{answering}@{version} broke off its answer: {exc}"),
        )
        return relayed.response
