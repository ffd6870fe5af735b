from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from shared.logging import configure_logging, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("registry", "DEBUG", stream=out)
    yield out
    configure_logging("test", "WARNING", stream=io.StringIO())


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_extra_keys(stream: io.StringIO) -> None:
    get_logger("svc.switch").info(
        "switching %s", "now", extra={"event": "version.changed", "version": "v3.0.8", "height": 120}
    )
    [line] = _lines(stream)
    assert line["msg"] == "switching now"
    assert (line["event"], line["version"], line["height"]) == ("version.changed", "v3.0.8", 120)
    assert (line["service"], line["logger"], line["level"]) == ("registry", "svc.switch", "info")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["ts"]))


def test_exceptions_and_unserialisable_values(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("x").exception("failed", extra={"obj": object(), "items": (1, {2})})
    [line] = _lines(stream)
    assert "RuntimeError: boom" in str(line["exc"])
    assert str(line["obj"]).startswith("<object object")
    assert line["items"] == [1, [2]]


def test_configuring_twice_does_not_duplicate_lines(stream: io.StringIO) -> None:
    configure_logging("registry", "INFO", stream=stream)
    get_logger("x").info("once")
    get_logger("x").debug("filtered by level")
    assert [line["msg"] for line in _lines(stream)] == ["once"]


def test_uvicorn_logs_come_out_as_json(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("server says hi")
    assert _lines(stream)[0]["logger"] == "uvicorn.error"


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("x", "LOUD", stream=io.StringIO())
