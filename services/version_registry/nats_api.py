"""The registry over NATS request-reply: `registry.state`, `registry.history`, `registry.rollback`."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.version_registry.core import RollbackRefused
from services.version_registry.registry import RegistryService
from shared.registry_api import (
    HISTORY_SUBJECT,
    ROLLBACK_SUBJECT,
    STATE_SUBJECT,
    ErrorReply,
    HistoryRequest,
    RollbackRequest,
)

__all__ = ["QUEUE", "serve_requests"]

QUEUE = "version-registry"  # instances share the requests


async def _reply(msg: Msg, body: bytes) -> None:
    if msg.reply:
        await msg.respond(body)


def _error(text: str) -> bytes:
    return ErrorReply(error=text).model_dump_json().encode()


async def serve_requests(nc: Client, service: RegistryService) -> None:
    """Subscribe the three request subjects (as a queue group) to `service`."""

    async def on_state(msg: Msg) -> None:
        await _reply(msg, (await service.state()).model_dump_json().encode())

    async def on_history(msg: Msg) -> None:
        try:
            request = HistoryRequest.model_validate_json(msg.data or b"{}")
        except ValidationError as exc:
            await _reply(msg, _error(f"invalid history request: {exc}"))
            return
        await _reply(msg, (await service.history(request.limit)).model_dump_json().encode())

    async def on_rollback(msg: Msg) -> None:
        try:
            request = RollbackRequest.model_validate_json(msg.data or b"")
            stored = await service.rollback(request)
        except ValidationError as exc:
            await _reply(msg, _error(f"invalid rollback request: {exc}"))
            return
        except RollbackRefused as exc:
            await _reply(msg, _error(str(exc)))
            return
        await _reply(msg, stored.state.core.view(stored.revision or 0).model_dump_json().encode())

    await nc.subscribe(STATE_SUBJECT, queue=QUEUE, cb=on_state)
    await nc.subscribe(HISTORY_SUBJECT, queue=QUEUE, cb=on_history)
    await nc.subscribe(ROLLBACK_SUBJECT, queue=QUEUE, cb=on_rollback)
