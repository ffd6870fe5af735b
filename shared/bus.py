"""The NATS/JetStream edge: connection, stream and bucket topology, deduplicated publishing.

Streams and buckets are declared here once. They are created or updated only by the provisioning
step (`shared/provisioning.py`, with its own credentials); services bind to them (`bind_bucket`)
and wait, saying what is missing, until they exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from shared.events import Event
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.settings import NatsSettings

log = get_logger(__name__)

PROVISION_COMMAND = "mlnode-upgrade nats provision"
STREAM_NAME_IN_USE = 10058  # JetStream API error: stream exists with another configuration


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    description: str
    history: int = 16


CHAIN_STREAM = StreamSpec("CHAIN", ("chain.>",), "Chain facts published by the chain-watcher")
VERSION_STREAM = StreamSpec("VERSION", ("version.>",), "Version decisions published by the version-registry")
BROKER_STREAM = StreamSpec("BROKER", ("broker.>",), "Handoff outcomes and readiness published by the broker")
ERRORS_STREAM = StreamSpec("ERRORS", ("errors.>",), "Payloads a consumer rejected, with the reason")
ALL_STREAMS: tuple[StreamSpec, ...] = (CHAIN_STREAM, VERSION_STREAM, BROKER_STREAM, ERRORS_STREAM)


class BusError(RuntimeError):
    """NATS could not be reached or refused an operation; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Published:
    subject: str
    msg_id: str | None
    stream: str
    seq: int
    duplicate: bool


ReconnectListener = Callable[[], Awaitable[None]]


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file and settings.tls_key_file:
        ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return ctx


def connect_options(settings: NatsSettings, service: str) -> dict[str, Any]:
    """nats-py options from settings. Reconnects forever: a service never gives up on NATS."""
    opts: dict[str, Any] = {
        "servers": settings.servers,
        "name": settings.name or service,
        "connect_timeout": settings.connect_timeout_s,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
    }
    if settings.user:
        opts["user"] = settings.user
        opts["password"] = settings.resolved_password()
    token = settings.resolved_token()
    if token:
        opts["token"] = token
    if settings.creds_file:
        opts["user_credentials"] = str(settings.creds_file)
    if settings.nkey_seed_file:
        opts["nkeys_seed"] = str(settings.nkey_seed_file)
    tls = _tls_context(settings)
    if tls is not None:
        opts["tls"] = tls
        if settings.tls_hostname:
            opts["tls_hostname"] = settings.tls_hostname
    return opts


# Answers of a JetStream cluster that is still forming or electing: worth retrying, not fatal.
_PLACEMENT_NOT_YET = ("no suitable peers", "insufficient resources", "temporarily unavailable")

T = TypeVar("T")


class _BucketExists(Exception):
    """The bucket is there already: update it instead."""


# Failures a publish can retry: the server (or its JetStream) is briefly away, not a refusal.
_TRANSIENT_PUBLISH_ERRORS = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
)


@dataclass
class Bus:
    """One service's connection to NATS. Create with `await Bus.connect(...)`."""

    nc: NatsClient
    js: JetStreamContext
    settings: NatsSettings
    service: str
    metrics: ServiceMetrics
    _reconnect_listeners: list[ReconnectListener] = field(default_factory=list)

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings,
        service: str,
        metrics: ServiceMetrics | None = None,
        *,
        give_up_after_s: float | None = 30.0,
    ) -> Bus:
        """Connect, retrying with backoff; `give_up_after_s=None` retries forever."""
        metrics = metrics or ServiceMetrics(service)
        holder: dict[str, Bus] = {}

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"service": service})
            if "bus" in holder:
                for listener in list(holder["bus"]._reconnect_listeners):
                    await listener()

        async def on_disconnect() -> None:
            log.warning("nats disconnected", extra={"service": service})

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra={"service": service, "error": repr(exc)})

        opts = connect_options(settings, service)
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        delay = 0.1
        while True:
            try:
                # nats-py's first connect loops forever with max_reconnect_attempts=-1, so it
                # tries each server once here and our loop owns the backoff and the deadline;
                # once connected the client reconnects forever.
                # It can also hang after a failed TLS handshake, so each attempt has a deadline.
                nc = NatsClient()
                attempt_s = settings.connect_timeout_s * (2 * len(settings.servers) + 1) + 1.0
                try:
                    await asyncio.wait_for(
                        nc.connect(
                            **{**opts, "max_reconnect_attempts": 1},
                            reconnected_cb=on_reconnect,
                            disconnected_cb=on_disconnect,
                            error_cb=on_error,
                        ),
                        attempt_s,
                    )
                except TimeoutError:
                    with contextlib.suppress(Exception):
                        await nc.close()
                    raise TimeoutError(
                        f"no connection within {attempt_s:.1f}s (last error: {nc.last_error!r})"
                    ) from None
                nc.options["max_reconnect_attempts"] = opts["max_reconnect_attempts"]
                break
            except (OSError, nats.errors.Error, TimeoutError, ssl.SSLError) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise BusError(f"cannot connect to NATS at {settings.url}: {exc!r}") from exc
                log.warning("nats connect failed, retrying", extra={"url": settings.url, "error": repr(exc)})
                await asyncio.sleep(delay * (1 + random.random() / 2))
                delay = min(delay * 2, 5.0)
        bus = cls(nc=nc, js=nc.jetstream(timeout=settings.request_timeout_s), settings=settings,
                  service=service, metrics=metrics)  # fmt: skip
        holder["bus"] = bus
        return bus

    def on_reconnect(self, listener: ReconnectListener) -> None:
        self._reconnect_listeners.append(listener)

    async def jetstream_ready(self, timeout_s: float = 1.0) -> bool:
        """True when the JetStream API answers now; for readiness checks and after a server restart."""
        if not self.nc.is_connected:
            return False
        try:
            await self.nc.request("$JS.API.INFO", b"", timeout=timeout_s)
        except (nats.errors.Error, TimeoutError, OSError):
            return False
        return True

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    # -- topology ---------------------------------------------------------------------------

    def stream_config(self, spec: StreamSpec) -> js_api.StreamConfig:
        return js_api.StreamConfig(
            name=spec.name,
            description=spec.description,
            subjects=list(spec.subjects),
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            num_replicas=self.settings.replicas,
            max_age=self.settings.stream_max_age_s,
            duplicate_window=self.settings.duplicate_window_s,
        )

    async def ensure_stream(self, spec: StreamSpec) -> js_api.StreamInfo:
        """Create the stream, or bring an existing one to this configuration."""
        config = self.stream_config(spec)
        try:
            return await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise BusError(f"cannot create stream {spec.name}: {exc.description}") from exc
        try:
            return await self.js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise BusError(f"cannot update stream {spec.name}: {exc.description}") from exc

    async def ensure_streams(self, specs: tuple[StreamSpec, ...] = ALL_STREAMS) -> None:
        for spec in specs:
            await self.while_cluster_forms(lambda spec=spec: self.ensure_stream(spec))  # type: ignore[misc]

    async def while_cluster_forms(self, op: Callable[[], Awaitable[T]], wait_s: float = 60.0) -> T:
        """Retry `op` while a forming or recovering cluster cannot place replicas or answer yet.

        For idempotent topology operations only (a create that timed out but happened is found
        on the retry and updated instead).
        """
        deadline = time.monotonic() + wait_s
        delay = 0.2
        while True:
            try:
                return await op()
            except (BusError, *_TRANSIENT_PUBLISH_ERRORS) as exc:
                transient = not isinstance(exc, BusError) or any(t in str(exc) for t in _PLACEMENT_NOT_YET)
                if not transient or time.monotonic() >= deadline:
                    raise
                log.warning("cluster not ready, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def ensure_bucket(self, spec: BucketSpec) -> KeyValue:
        """Create the KV bucket, or bring its stream to this history and replica count."""
        try:
            return await self.while_cluster_forms(lambda: self._create_bucket(spec))
        except _BucketExists:
            pass
        return await self._update_bucket(spec)

    async def bind_bucket(self, name: str, *, retry_for_s: float | None = None) -> KeyValue:
        """The provisioned KV bucket `name`; until it exists, log that it is missing and retry."""
        deadline = None if retry_for_s is None else time.monotonic() + retry_for_s
        delay = 0.2
        while True:
            try:
                return await self.js.key_value(name)
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise BusError(f"KV bucket {name} does not exist: run `{PROVISION_COMMAND}`") from exc
                log.error(
                    f"KV bucket not provisioned: run `{PROVISION_COMMAND}`; waiting",
                    extra={"bucket": name, "service": self.service},
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise BusError(f"KV bucket {name} cannot be read: {exc!r}") from exc
                log.warning(
                    "KV bucket not reachable yet; waiting", extra={"bucket": name, "error": repr(exc)}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _create_bucket(self, spec: BucketSpec) -> KeyValue:
        try:
            return await self.js.create_key_value(
                bucket=spec.name,
                description=spec.description,
                history=spec.history,
                replicas=self.settings.replicas,
                storage=js_api.StorageType.FILE,
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise BusError(f"cannot create KV bucket {spec.name}: {exc.description}") from exc
            raise _BucketExists from None

    async def _update_bucket(self, spec: BucketSpec) -> KeyValue:
        info = await self.js.stream_info(f"KV_{spec.name}")
        assert info.config is not None
        wanted = info.config.evolve(
            description=spec.description,
            max_msgs_per_subject=spec.history,
            num_replicas=self.settings.replicas,
        )
        try:
            await self.js.update_stream(wanted)
        except nats.js.errors.APIError as exc:
            raise BusError(f"cannot update KV bucket {spec.name}: {exc.description}") from exc
        return await self.js.key_value(spec.name)

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, event: Event, *, retry_for_s: float = 0.0) -> Published:
        """Publish an event with its deduplication id; JetStream stores it once."""
        return await self.publish_raw(event.SUBJECT, event.to_json(), event.msg_id(), retry_for_s=retry_for_s)

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None, *, retry_for_s: float = 0.0
    ) -> Published:
        """Publish bytes and wait for the stream's ack, retrying (same id, so no duplicates) on outages."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        deadline = time.monotonic() + retry_for_s
        delay = 0.05
        while True:
            try:
                ack = await self.js.publish(subject, data, headers=headers)
                break
            except _TRANSIENT_PUBLISH_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise BusError(f"publish to {subject} (id {msg_id}) not acknowledged: {exc!r}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        duplicate = bool(ack.duplicate)
        self.metrics.events_published_total.labels(subject=subject, duplicate=str(duplicate).lower()).inc()
        return Published(subject=subject, msg_id=msg_id, stream=ack.stream, seq=ack.seq, duplicate=duplicate)
