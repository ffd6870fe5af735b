"""The status page as the broker serves it: its hooks, no external resources, no markup from data.

The page's behaviour in a browser is tested in integration_tests/test_status_page.py; these
checks catch, without one, what would break it silently offline or open it to a node id.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from services.broker.forwarder import Forwarder
from services.broker.http_app import create_app
from services.broker.mlnode_client import ClientBook, ClientTimeouts
from services.broker.pool import SlotPhase
from services.broker.status_page import PAGE, PAGE_HEADERS
from tests.unit.broker_fakes import harness, node

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def broker() -> httpx.AsyncClient:
    """The broker's whole app, as `create_app` builds it, so the page's route is tested wired in."""
    h = harness(node("a"))
    book = ClientBook(ClientTimeouts(), transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    forwarder = Forwarder(h.pool, book, h.coordinator.metrics, wait_s=0.1, attempts=1)
    app = create_app(h.coordinator, forwarder, h.coordinator.metrics)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://broker")


async def test_the_broker_serves_the_page_at_its_root_outside_the_api_schema(
    broker: httpx.AsyncClient,
) -> None:
    page = await broker.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == PAGE
    assert page.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert page.headers["cache-control"] == "no-cache"
    schema = (await broker.get("/openapi.json")).json()
    assert "/" not in schema["paths"]


@pytest.mark.parametrize(
    "hook",
    [
        "height",
        "block-time",
        "current-version",
        "last-used-version",
        "result",
        "banner",
        "status",
        "countdown",
        "pending",
        "readiness",
        "nodes",
        "switch",
        "held",
        "served",
        "stops-pending",
        "stops-retried",
        "stops",
    ],
)
def test_the_page_has_the_hooks_tests_and_operators_rely_on(hook: str) -> None:
    assert f'data-testid="{hook}"' in PAGE


def test_each_node_row_carries_its_id_phase_and_version_as_attributes() -> None:
    for attribute in ("data-node", "data-phase", "data-version", "data-ready", "data-outcome"):
        assert f'"{attribute}":' in PAGE


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No internet on operators' machines: no URL to another host, no @import, no script or
    stylesheet by reference; the only fetch is the relative live view (it works behind a prefix)."""
    assert not re.search(r"(?i)\b(?:https?|wss?|ftp):", PAGE)
    assert not re.search(r"(?i)@import|url\(|<script[^>]*\bsrc=|<link[^>]*stylesheet|<iframe|<img", PAGE)
    assert re.findall(r"""<link[^>]*href="([^"]*)\"""", PAGE) == ["data:,"]
    assert re.findall(r'LIVE_URL = "([^"]*)"', PAGE) == ["upgrade/live"]
    assert PAGE.count("fetch(") == 1 and "fetch(LIVE_URL" in PAGE


def test_strings_from_the_broker_never_become_markup() -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in PAGE, sink


def test_the_policy_allows_exactly_the_pages_own_script_and_style() -> None:
    policy = PAGE_HEADERS["Content-Security-Policy"]
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}';" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_every_node_phase_has_a_colour() -> None:
    """A phase the page does not know would be drawn grey in the middle of a switch."""
    table = re.search(r"const PHASE_GROUP = \{(.*?)\};", PAGE, flags=re.DOTALL)
    assert table is not None
    known = set(re.findall(r"(\w+):", table.group(1)))
    assert {phase.value for phase in SlotPhase} <= known


def test_the_page_is_packaged_with_the_broker() -> None:
    """`pip install .` (the Docker image) copies only the package data pyproject names."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "status_page.html" in config["tool"]["setuptools"]["package-data"]["services.broker"]
