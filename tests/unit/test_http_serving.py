"""The one uvicorn wrapper: binds before it returns, serves, refuses a taken port, stops."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI

from shared.http_serving import HttpServer


def _app() -> FastAPI:
    app = FastAPI(strict_content_type=False)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def test_serves_on_a_picked_port_until_stopped() -> None:
    async with HttpServer(_app()) as server:
        assert server.port > 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/ping")).json() == {"pong": "yes"}
    assert server.task is not None and server.task.done()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0  # nothing listens any more


async def test_a_taken_port_fails_loudly() -> None:
    async with HttpServer(_app()) as first:
        with pytest.raises(OSError, match="in use"):
            await HttpServer(_app(), port=first.port).start()
