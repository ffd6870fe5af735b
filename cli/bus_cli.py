"""`mlnode-upgrade events pub|sub`: the bus of a stack from a shell, with no NATS CLI needed.

`pub` validates with `shared.events.parse_event`, the very parse every consumer applies, so a
payload it accepts is one the services accept, and a refused one never leaves this process. It
publishes through `Bus.publish`, the services' own path: the same JSON, the same `Nats-Msg-Id`,
so JetStream deduplicates a hand-typed event exactly as it would the service's.

By default both connect to the local stack (`stack.json` in the run directory) as the operator's
user `admin`, the one user that may publish and subscribe on every subject (the services' users
may publish only their own subjects and subscribe to nothing but their inboxes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api as js_api
from pydantic import ValidationError

from cli.stack import StackInfo
from shared.bus import ALL_STREAMS, Bus, BusError, Published, StreamSpec, connect_options
from shared.events import EVENTS_BY_SUBJECT, Event, InvalidEventError, parse_event
from shared.metrics import ServiceMetrics
from shared.nats_config import ADMIN_USER
from shared.settings import NatsSettings
from shared.subjects import publisher_of

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_USER",
    "BusAccess",
    "BusCliError",
    "check_event",
    "describe_published",
    "message_line",
    "publish_event",
    "read_payload",
    "resolve_access",
    "run_pub",
    "run_sub",
    "subscribe",
]

CLIENT_NAME = "mlnode-upgrade-cli"
DEFAULT_USER = ADMIN_USER
USAGE = 2  # bad input: nothing was sent
FAILED = 1  # the server refused, or did not answer

T = TypeVar("T")


class BusCliError(Exception):
    """A one-line reason for stderr, and the exit code: 2 for bad input, 1 for the server's refusal."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- streams ------------------------------------------------------------------------------------


def _stream_holding(subject: str) -> StreamSpec:
    """The one stream whose subjects contain every subject `subject` matches (for --from-start)."""
    for spec in ALL_STREAMS:
        for pattern in spec.subjects:
            prefix = pattern.removesuffix(".>").split(".")
            tokens = subject.split(".")
            if len(tokens) > len(prefix) and tokens[: len(prefix)] == prefix:
                return spec
    streams = ", ".join(f"{s.name} ({' '.join(s.subjects)})" for s in ALL_STREAMS)
    raise BusCliError(
        f"--from-start reads one stream, and no stream holds all of {subject!r}: {streams}", USAGE
    )


# -- payloads -----------------------------------------------------------------------------------


def read_payload(arg: str, stdin: IO[bytes]) -> bytes:
    """The JSON argument itself, `@file.json`, or `-` for standard input."""
    if arg == "-":
        return stdin.read()
    if arg.startswith("@"):
        try:
            return Path(arg[1:]).read_bytes()
        except OSError as exc:
            raise BusCliError(f"cannot read {arg[1:]}: {exc.strerror}", USAGE) from None
    return arg.encode()


def check_event(subject: str, data: bytes) -> Event:
    """The event as the services would parse it, or a BusCliError (exit 2) naming what is wrong."""
    try:
        return parse_event(subject, data)
    except InvalidEventError as err:
        if err.reason == "unknown_subject":
            known = ", ".join(EVENTS_BY_SUBJECT)
            raise BusCliError(f"unknown subject {subject!r}: the events are {known}", USAGE) from None
        raise BusCliError(f"invalid {subject} payload, nothing published: {err.detail}", USAGE) from None


def describe_published(published: Published) -> str:
    msg_id = f" (Nats-Msg-Id {published.msg_id})" if published.msg_id else ""
    if published.duplicate:
        return (
            f"{published.subject}: a duplicate{msg_id} of stream {published.stream} seq {published.seq},"
            " stored once already within the duplicate window; nothing new stored"
        )
    return f"published {published.subject} to stream {published.stream} seq {published.seq}{msg_id}"


def message_line(msg: Msg) -> str:
    """One JSON line: subject, stream and sequence (JetStream deliveries only), id, payload."""
    stream: str | None = None
    seq: int | None = None
    if msg.reply.startswith("$JS.ACK."):
        meta = msg.metadata
        stream, seq = meta.stream, meta.sequence.stream
    line: dict[str, Any] = {
        "subject": msg.subject,
        "stream": stream,
        "stream_seq": seq,
        "msg_id": (msg.headers or {}).get("Nats-Msg-Id"),
    }
    try:
        line["payload"] = json.loads(msg.data)
    except ValueError:
        line["payload"] = None
        line["text"] = msg.data.decode("utf-8", errors="replace")
    return json.dumps(line)


# -- connection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusAccess:
    """Whom to connect as, where, and how that was chosen (for the error messages)."""

    settings: NatsSettings
    user: str
    source: str  # e.g. "var/dev/stack.json"

    def where(self) -> str:
        return f"NATS at {self.settings.url} as {self.user} ({self.source})"


def resolve_access(
    run_dir: Path,
    *,
    url: str | None = None,
    user: str | None = None,
    password_file: Path | None = None,
    timeout_s: float = 5.0,
) -> BusAccess:
    """The local stack's URL and the user's password file from its secrets, unless given.

    A missing stack, user password or a malformed URL is bad input (exit 2): nothing is sent.
    """
    user = user or DEFAULT_USER
    info: StackInfo | None = None
    if url is None or password_file is None:
        try:
            info = StackInfo.load(run_dir)
        except FileNotFoundError as exc:
            if url is None:
                raise BusCliError(f"{exc}; or pass --url and --password-file", USAGE) from None
    source = "--url" if url else str(run_dir / "stack.json")
    if password_file is None:
        secrets = Path(info.secrets_dir) if info is not None and info.secrets_dir else run_dir / "secrets"
        password_file = secrets / f"{user}.password"
    if not password_file.exists():  # a FIFO (`<(pass show nats)`) is fine too
        raise BusCliError(f"no password for NATS user {user!r}: {password_file} does not exist", USAGE)
    try:
        settings = NatsSettings(
            url=url or (info.nats_url if info is not None else ""),
            user=user,
            password_file=password_file,
            name=CLIENT_NAME,
            connect_timeout_s=min(timeout_s, 5.0),
            request_timeout_s=timeout_s,
        )
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        raise BusCliError(f"bad NATS settings: {reasons}", USAGE) from None
    return BusAccess(settings, user, source)


@dataclass
class _Session:
    """One connection that gives up at once, with the server's permission refusals caught."""

    access: BusAccess
    nc: NatsClient = field(default_factory=NatsClient)
    refused: asyncio.Event = field(default_factory=asyncio.Event)
    refusal: str = ""
    errors: list[Exception] = field(default_factory=list)

    async def _on_error(self, exc: Exception) -> None:
        self.errors.append(exc)
        if "permissions violation" in str(exc).lower():
            self.refusal = str(exc).removeprefix("nats: ")
            self.refused.set()

    async def connect(self) -> None:
        opts = connect_options(self.access.settings, CLIENT_NAME)
        # A shell command reports a failure instead of retrying: one pass over the servers.
        opts.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1)
        budget = self.access.settings.connect_timeout_s * (len(self.access.settings.servers) + 1) + 1.0
        try:
            await asyncio.wait_for(self.nc.connect(**opts, error_cb=self._on_error), budget)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            last = self.errors[-1] if self.errors else exc
            reason = str(last).removeprefix("nats: ").strip("'") or type(last).__name__
            if "authorization violation" in reason.lower():
                reason = f"{reason} (wrong user or password: {self.access.settings.password_file})"
            raise BusCliError(f"cannot connect to {self.access.where()}: {reason}") from None

    async def guarded(self, op: Awaitable[T], what: str) -> T:
        """`op`, unless the server refuses a permission first: no waiting out a timeout for it."""
        task = asyncio.ensure_future(op)
        refused = asyncio.ensure_future(self.refused.wait())
        try:
            await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
        if self.refused.is_set():  # also when `op` finished too: a flush's PONG follows the -ERR
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise BusCliError(f"NATS refused {what}: {self.refusal}")
        return task.result()

    async def close(self) -> None:
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()


@contextlib.asynccontextmanager
async def _session(access: BusAccess) -> AsyncIterator[_Session]:
    session = _Session(access)
    await session.connect()
    try:
        yield session
    finally:
        await session.close()


# -- pub ----------------------------------------------------------------------------------------


def _pub_hint(subject: str, user: str) -> str:
    publisher = publisher_of(subject)
    if publisher is None or user in (publisher, ADMIN_USER):
        return ""
    return f"; {subject} is published by user {publisher} (--user {publisher}) or {ADMIN_USER} (the default)"


async def _publish(access: BusAccess, event: Event) -> Published:
    async with _session(access) as session:
        bus = Bus(
            nc=session.nc,
            js=session.nc.jetstream(timeout=access.settings.request_timeout_s),
            settings=access.settings,
            service=CLIENT_NAME,
            metrics=ServiceMetrics(CLIENT_NAME),
        )
        try:
            return await session.guarded(bus.publish(event), f"{access.user} publishing {event.SUBJECT}")
        except BusCliError as exc:
            raise BusCliError(f"{exc}{_pub_hint(event.SUBJECT, access.user)}") from None
        except BusError as exc:
            cause = exc.__cause__
            if isinstance(cause, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
                reason = "no stream stores it (are the streams provisioned: `mlnode-upgrade nats provision`?)"
            elif isinstance(cause, nats.errors.TimeoutError):
                reason = f"no acknowledgement within {access.settings.request_timeout_s:g}s"
            else:
                reason = str(exc)
            raise BusCliError(f"{event.SUBJECT} not stored via {access.where()}: {reason}") from None
        except nats.errors.Error as exc:
            raise BusCliError(f"{event.SUBJECT} not stored via {access.where()}: {exc}") from None


def publish_event(access: BusAccess, event: Event) -> Published:
    """Publish a checked event and wait for the stream's ack."""
    return asyncio.run(_publish(access, event))


# -- sub ----------------------------------------------------------------------------------------


async def _subscribe(
    access: BusAccess,
    subject: str,
    *,
    count: int | None,
    timeout_s: float | None,
    from_start: bool,
    emit: Callable[[str], None],
    ready: Callable[[str], None],
) -> int:
    stream = _stream_holding(subject) if from_start else None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    async with _session(access) as session:
        what = f"{access.user} subscribing to {subject}"
        hint = (
            f" (a service user may subscribe only to its inbox and requests: use {ADMIN_USER}, the default)"
        )
        try:
            if stream is not None:
                sub: Any = await session.guarded(
                    session.nc.jetstream(timeout=access.settings.request_timeout_s).subscribe(
                        subject,
                        stream=stream.name,
                        ordered_consumer=True,
                        deliver_policy=js_api.DeliverPolicy.ALL,
                    ),
                    what,
                )
            else:
                sub = await session.nc.subscribe(subject)
            await session.guarded(session.nc.flush(max(1, round(access.settings.request_timeout_s))), what)
        except BusCliError as exc:
            raise BusCliError(f"{exc}{hint if access.user != ADMIN_USER else ''}") from None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusCliError(f"cannot subscribe to {subject} via {access.where()}: {exc!r}") from None
        source = f"stream {stream.name} from its first message" if stream else "messages from now on"
        ready(f"listening on {subject} ({source}) via {access.where()}; Ctrl-C to stop")
        received = 0
        while count is None or received < count:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                if count is not None:
                    raise BusCliError(f"timed out after {timeout_s:g}s with {received} of {count} messages")
                break
            try:
                msg = await sub.next_msg(timeout=wait)
            except (nats.errors.TimeoutError, TimeoutError):
                if session.nc.is_closed:
                    raise BusCliError(f"the connection to {access.where()} was closed") from None
                continue
            except nats.errors.Error as exc:
                raise BusCliError(
                    f"the subscription to {subject} via {access.where()} ended: {exc!r}"
                ) from None
            emit(message_line(msg))
            received += 1
        return received


def subscribe(
    access: BusAccess,
    subject: str,
    *,
    count: int | None = None,
    timeout_s: float | None = None,
    from_start: bool = False,
    emit: Callable[[str], None] = print,
    ready: Callable[[str], None] = print,
) -> int:
    """Print each message on `subject` as a JSON line until `count` or `timeout_s`; how many."""
    return asyncio.run(
        _subscribe(
            access, subject, count=count, timeout_s=timeout_s, from_start=from_start, emit=emit, ready=ready
        )
    )


# -- the commands -------------------------------------------------------------------------------


def run_pub(
    subject: str,
    payload: str,
    stdin: IO[bytes],
    run_dir: Path,
    *,
    url: str | None = None,
    user: str | None = None,
    password_file: Path | None = None,
    timeout_s: float = 5.0,
) -> str:
    """`events pub`: read, check (before any connection), publish; the line to print."""
    if timeout_s <= 0:
        raise BusCliError("--timeout must be positive", USAGE)
    event = check_event(subject, read_payload(payload, stdin))
    access = resolve_access(run_dir, url=url, user=user, password_file=password_file, timeout_s=timeout_s)
    return describe_published(publish_event(access, event))


def run_sub(
    subject: str,
    run_dir: Path,
    *,
    emit: Callable[[str], None],
    ready: Callable[[str], None],
    count: int | None = None,
    timeout_s: float | None = None,
    from_start: bool = False,
    url: str | None = None,
    user: str | None = None,
    password_file: Path | None = None,
) -> int:
    """`events sub`: print messages until `count`, `timeout_s` or Ctrl-C; how many were printed."""
    if count is not None and count < 1:
        raise BusCliError("--count must be at least 1", USAGE)
    if timeout_s is not None and timeout_s <= 0:
        raise BusCliError("--timeout must be positive", USAGE)
    request_s = min(timeout_s, 5.0) if timeout_s is not None else 5.0
    access = resolve_access(run_dir, url=url, user=user, password_file=password_file, timeout_s=request_s)
    try:
        return subscribe(
            access, subject, count=count, timeout_s=timeout_s, from_start=from_start, emit=emit, ready=ready
        )
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a subscription without --count ends
