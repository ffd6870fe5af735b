"""The durable JetStream consumer loop every service uses.

At-least-once with explicit acks: a message is acked only after its handler returned, so a crash
redelivers it and handlers must be idempotent. A payload that fails validation can never become
valid by retrying, so it is logged with the reason, copied to `errors.<service>`, counted, and
acked: it changes nothing and does not block the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from shared.bus import PROVISION_COMMAND, Bus, BusError
from shared.events import Event, InvalidEventError, RejectedMessage, parse_event
from shared.logging import get_logger

log = get_logger(__name__)

MAX_REJECTED_PAYLOAD = 65_536


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer. Its position lives on the server, under `durable`."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_ack_pending: int = 1000
    batch: int = 64
    fetch_timeout_s: float = 1.0
    # Redelivery delays after a handler error, by delivery count; the last one repeats.
    retry_delays_s: tuple[float, ...] = (0.2, 1.0, 5.0, 15.0)

    def config(self) -> js_api.ConsumerConfig:
        filters = list(self.filter_subjects)
        return js_api.ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a message sits in its stream, for handlers that log or deduplicate by it."""

    subject: str
    stream: str
    stream_seq: int
    num_delivered: int
    published_at: datetime | None


Handler = Callable[[Event, Delivery], Awaitable[None]]
# Several events at once, in stream order: a handler that can apply a fetched batch in one write.
BatchHandler = Callable[[list[tuple[Event, Delivery]]], Awaitable[None]]


class DurableConsumer:
    """Runs `handler` over a durable consumer until cancelled; survives NATS restarts.

    With `batch_handler`, each fetched batch's valid events go to it at once and are acked
    together after it returned; when it raises, the batch is handled again one event at a time
    with `handler`, so only the event that fails is redelivered (handlers are idempotent anyway).
    """

    def __init__(
        self, bus: Bus, spec: ConsumerSpec, handler: Handler, batch_handler: BatchHandler | None = None
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.handler = handler
        self.batch_handler = batch_handler
        self._rebind = asyncio.Event()
        bus.on_reconnect(self._on_reconnect)

    async def _on_reconnect(self) -> None:
        self._rebind.set()

    async def run(self) -> None:
        """Bind to the provisioned consumer and pump it; a missing consumer is waited for, loudly."""
        delay = 0.1
        while True:
            try:
                await self._check_provisioned()
                sub = await self.bus.js.pull_subscribe_bind(
                    durable=self.spec.durable, stream=self.spec.stream
                )
                self._rebind.clear()
                delay = 0.1
                try:
                    await self._pump(sub)
                finally:
                    await _quietly_unsubscribe(sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The server restarted, lost the consumer, or the connection is reconnecting.
                log.warning(
                    "consumer interrupted, re-binding",
                    extra={"durable": self.spec.durable, "stream": self.spec.stream, "error": repr(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _check_provisioned(self) -> None:
        try:
            await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
        except nats.js.errors.NotFoundError:
            log.error(
                f"consumer not provisioned: run `{PROVISION_COMMAND}`",
                extra={"durable": self.spec.durable, "stream": self.spec.stream},
            )
            raise

    async def _pump(self, sub: nats.js.JetStreamContext.PullSubscription) -> None:
        idle_since = time.monotonic()
        while not self._rebind.is_set():
            try:
                msgs = await sub.fetch(self.spec.batch, timeout=self.spec.fetch_timeout_s)
            except (nats.errors.TimeoutError, TimeoutError):
                # No messages (nats-py raises either kind). Now and then confirm the consumer
                # still exists on the server.
                if time.monotonic() - idle_since > 10 * self.spec.fetch_timeout_s:
                    await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            if self.batch_handler is not None and len(msgs) > 1:
                await self._process_batch(msgs, self.batch_handler)
                continue
            for msg in msgs:
                await self._process(msg)

    async def _parse(self, msg: Msg) -> tuple[Event, Delivery] | None:
        """The message's event, or None when it was invalid (rejected and acked)."""
        meta = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            stream=meta.stream,
            stream_seq=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            published_at=meta.timestamp,
        )
        self.bus.metrics.events_received_total.labels(subject=msg.subject).inc()
        try:
            return parse_event(msg.subject, msg.data), delivery
        except InvalidEventError as err:
            await self._reject(msg, delivery, err)
            return None

    async def _process_batch(self, msgs: list[Msg], handler: BatchHandler) -> None:
        parsed: list[tuple[Msg, Event, Delivery]] = []
        for msg in msgs:
            found = await self._parse(msg)
            if found is not None:
                parsed.append((msg, *found))
        if not parsed:
            return
        started = time.perf_counter()
        try:
            await handler([(event, delivery) for _, event, delivery in parsed])
        except Exception as exc:
            log.warning(
                "batch handler failed; handling the batch one event at a time",
                extra={"durable": self.spec.durable, "events": len(parsed), "error": repr(exc)},
            )
            for msg, event, delivery in parsed:
                await self._handle(msg, event, delivery)
            return
        share = (time.perf_counter() - started) / len(parsed)
        metrics = self.bus.metrics
        for msg, _, _ in parsed:
            metrics.event_handle_seconds.labels(subject=msg.subject).observe(share)
            await msg.ack()
            metrics.events_handled_total.labels(subject=msg.subject).inc()

    async def _process(self, msg: Msg) -> None:
        found = await self._parse(msg)
        if found is not None:
            await self._handle(msg, *found)

    async def _handle(self, msg: Msg, event: Event, delivery: Delivery) -> None:
        metrics = self.bus.metrics
        started = time.perf_counter()
        try:
            await self.handler(event, delivery)
        except Exception:
            metrics.handler_errors_total.labels(subject=msg.subject).inc()
            retry_in = self._retry_delay(delivery.num_delivered)
            log.exception(
                "handler failed; message will be redelivered",
                extra={"subject": msg.subject, "stream_seq": delivery.stream_seq, "retry_in_s": retry_in},
            )
            await msg.nak(delay=retry_in)
            return
        metrics.event_handle_seconds.labels(subject=msg.subject).observe(time.perf_counter() - started)
        await msg.ack()
        metrics.events_handled_total.labels(subject=msg.subject).inc()

    def _retry_delay(self, num_delivered: int) -> float:
        delays = self.spec.retry_delays_s
        return delays[min(max(num_delivered, 1), len(delays)) - 1]

    async def _reject(self, msg: Msg, delivery: Delivery, err: InvalidEventError) -> None:
        service = self.bus.service
        self.bus.metrics.events_invalid_total.labels(subject=msg.subject, reason=err.reason).inc()
        log.warning(
            "rejected invalid payload",
            extra={"subject": msg.subject, "stream_seq": delivery.stream_seq, "reason": err.reason,
                   "detail": err.detail},
        )  # fmt: skip
        rejected = RejectedMessage(
            service=service,
            subject=msg.subject,
            reason=err.reason,
            detail=err.detail,
            payload=msg.data[:MAX_REJECTED_PAYLOAD].decode("utf-8", errors="replace"),
            stream=delivery.stream,
            stream_seq=delivery.stream_seq,
        )
        try:
            await self.bus.publish_raw(
                RejectedMessage.subject_for(service),
                rejected.model_dump_json().encode(),
                msg_id=f"rejected-{service}-{delivery.stream}-{delivery.stream_seq}",
            )
        except BusError:
            # Keep the message until its rejection is recorded; the id makes the retry safe.
            await msg.nak(delay=self._retry_delay(delivery.num_delivered))
            return
        await msg.ack()


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> js_api.ConsumerInfo:
    """Create the durable consumer, or update it to `spec`; its position is kept either way.

    Provisioning only: services have no right to create or change consumers.
    """
    try:
        return await bus.js.add_consumer(spec.stream, spec.config())
    except nats.js.errors.APIError as exc:
        raise BusError(f"cannot create consumer {spec.durable} on {spec.stream}: {exc}") from exc


async def _quietly_unsubscribe(sub: nats.js.JetStreamContext.PullSubscription) -> None:
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, BusError):
        await sub.unsubscribe()
