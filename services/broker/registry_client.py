"""The version-registry's state over NATS request-reply (`registry.state`)."""

from __future__ import annotations

import nats.errors
from pydantic import ValidationError

from shared.bus import Bus
from shared.logging import get_logger
from shared.registry_api import STATE_SUBJECT, ErrorReply, RegistryState

__all__ = ["NatsRegistryReader"]

log = get_logger(__name__)


class NatsRegistryReader:
    """None when the registry does not answer in time: the broker then acts on events alone."""

    def __init__(self, bus: Bus, timeout_s: float) -> None:
        self.bus = bus
        self.timeout_s = timeout_s

    async def state(self) -> RegistryState | None:
        try:
            msg = await self.bus.nc.request(STATE_SUBJECT, b"", timeout=self.timeout_s)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("version-registry did not answer registry.state", extra={"error": repr(exc)})
            return None
        try:
            return RegistryState.model_validate_json(msg.data)
        except ValidationError:
            pass
        try:
            reason = ErrorReply.model_validate_json(msg.data).error
        except ValidationError:
            reason = msg.data[:500].decode("utf-8", errors="replace")
        log.warning("version-registry answered registry.state with an error", extra={"error": reason})
        return None
