"""An MLNode's answer as it is relayed: status, headers, the body as it arrives, the connection back.

The forwarder and the node endpoint relay answers without knowing which client fetched them:
the wire client in the service, httpx over an in-process transport in the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import httpx

from services.broker.wire_client import WireError, WireStream

__all__ = ["HttpxUpstream", "Upstream", "UpstreamError", "WireUpstream"]


class UpstreamError(Exception):
    """No answer came (refused, reset, timed out), or the answer broke off."""


class Upstream(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def decoded(self) -> bool:
        """The body comes decoded (its `content-encoding` no longer applies)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises `UpstreamError` when it breaks off."""
        ...

    async def aclose(self) -> None:
        """Done with the answer (read or not): its connection goes back or is closed."""
        ...


class WireUpstream:
    def __init__(self, stream: WireStream) -> None:
        self._stream = stream

    @property
    def status(self) -> int:
        return self._stream.status

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._stream.headers

    @property
    def decoded(self) -> bool:
        return False  # the bytes as sent

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream.chunks():
                yield chunk
        except WireError as exc:
            raise UpstreamError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class HttpxUpstream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return tuple((k.lower(), v) for k, v in self._response.headers.items())

    @property
    def decoded(self) -> bool:
        return True  # httpx decodes gzip and deflate

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._response.aclose()
