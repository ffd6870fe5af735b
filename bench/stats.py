"""Pure helpers of the benchmarks: percentiles, summaries, /proc parsing, load schedules.

Kept free of I/O so unit tests pin them down: a benchmark whose arithmetic is wrong would
publish wrong figures with a straight face.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from shared.timestamps import parse_rfc3339 as read_rfc3339

__all__ = [
    "parse_log_ts",
    "parse_rfc3339",
    "parse_vmrss_kib",
    "percentile",
    "ratio",
    "send_offsets",
    "step_rates",
    "summarize_ms",
]


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile, `q` in [0, 100]; None for no values.

    Nearest rank, not interpolation: p99 of 100 samples is the 99th sample, a value that was
    actually observed, which is what a latency target is about.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p99 and max of durations given in seconds, in milliseconds (2 decimals)."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "n": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


def parse_vmrss_kib(status_text: str) -> int | None:
    """The `VmRSS:` line of /proc/<pid>/status in KiB; None when absent (a zombie or kernel thread)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def send_offsets(rate_per_s: float, duration_s: float) -> list[float]:
    """Open-loop schedule: the second (from the start) at which each request is sent.

    Requests go out on this schedule whether or not earlier ones were answered, so a stalled
    server shows up as latency and failures instead of silently lowering the offered rate.
    """
    if rate_per_s <= 0 or duration_s <= 0:
        return []
    count = round(rate_per_s * duration_s)
    return [i / rate_per_s for i in range(count)]


def step_rates(start: float, factor: float, limit: float) -> list[float]:
    """Geometric steps start, start*factor, ... up to `limit` (inclusive), rounded to whole requests."""
    if start <= 0 or factor <= 1:
        raise ValueError("start must be positive and factor above 1")
    rates: list[float] = []
    rate = start
    while rate <= limit + 1e-9:
        rates.append(float(round(rate)))
        rate *= factor
    return rates


def parse_rfc3339(stamp: str) -> float:
    """Epoch seconds of an RFC 3339 time with up to nanoseconds (CometBFT block times)."""
    value = read_rfc3339(stamp)  # a time without a zone is UTC
    if value is None:
        raise ValueError(f"{stamp!r} is not an RFC 3339 time")
    return value.timestamp()


def parse_log_ts(stamp: str) -> float:
    """Epoch seconds of a service log line's `ts` (`2026-01-02T03:04:05.678Z`)."""
    return parse_rfc3339(stamp)
