"""The one RFC 3339 reader: CometBFT block times carry nanoseconds (`...00.123456789Z`).

Python keeps microseconds, so the fraction is cut to six digits before parsing. `rfc3339` is
strict (a time without a zone is refused, as RFC 3339 requires); `parse_rfc3339` is the lenient
form for untrusted frames, where an unreadable time is only missing information.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["parse_rfc3339", "rfc3339"]

_FRACTION = re.compile(r"\.(\d+)")


def _parse(text: str) -> datetime:
    trimmed = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    return datetime.fromisoformat(trimmed.replace("Z", "+00:00").replace("z", "+00:00"))


def rfc3339(text: object) -> datetime:
    """The time `text` names; ValueError when it is not an RFC 3339 time with a zone."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    value = _parse(text)
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return value


def parse_rfc3339(text: object) -> datetime | None:
    """The time `text` names, None when unreadable; a time without a zone is read as UTC."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = _parse(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
