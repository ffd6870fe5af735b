"""The benchmarks' arithmetic: a wrong percentile or schedule would publish wrong figures."""

from __future__ import annotations

import pytest

from bench.result import BenchResult, Check
from bench.stats import (
    parse_log_ts,
    parse_rfc3339,
    parse_vmrss_kib,
    percentile,
    ratio,
    send_offsets,
    step_rates,
    summarize_ms,
)

STATUS = """\
Name:\tpython
State:\tS (sleeping)
VmPeak:\t  300000 kB
VmRSS:\t   65536 kB
RssAnon:\t   50000 kB
"""


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0


def test_percentile_takes_any_order_and_small_samples() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_percentile_p99_of_a_few_samples_is_the_max() -> None:
    assert percentile([1.0, 2.0, 3.0, 10.0], 99) == 10.0


def test_percentile_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0], 101)


def test_summarize_ms_converts_seconds() -> None:
    summary = summarize_ms([0.001, 0.002, 0.003, 0.004])
    assert summary == {"n": 4, "p50_ms": 2.0, "p99_ms": 4.0, "max_ms": 4.0}
    assert summarize_ms([]) == {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(10, 4) == 2.5
    assert ratio(10, 0) is None
    assert ratio(None, 3) is None


def test_vmrss_parsed_in_kib() -> None:
    assert parse_vmrss_kib(STATUS) == 65536


def test_vmrss_absent_for_kernel_threads() -> None:
    assert parse_vmrss_kib("Name:\tkthreadd\nState:\tS\n") is None


def test_send_offsets_keep_the_rate() -> None:
    offsets = send_offsets(100, 2.0)
    assert len(offsets) == 200
    assert offsets[0] == 0.0
    assert offsets[1] == pytest.approx(0.01)
    assert offsets[-1] == pytest.approx(1.99)


def test_send_offsets_empty_for_no_load() -> None:
    assert send_offsets(0, 5) == []
    assert send_offsets(10, 0) == []


def test_step_rates_are_geometric_up_to_the_limit() -> None:
    assert step_rates(100, 2, 800) == [100.0, 200.0, 400.0, 800.0]
    assert step_rates(50, 1.25, 100) == [50.0, 62.0, 78.0, 98.0]
    with pytest.raises(ValueError, match="factor above 1"):
        step_rates(100, 1, 200)


def test_rfc3339_with_nanoseconds() -> None:
    assert parse_rfc3339("1970-01-01T00:00:01.500000000Z") == pytest.approx(1.5)
    assert parse_rfc3339("1970-01-01T00:00:01Z") == pytest.approx(1.0)
    assert parse_rfc3339("1970-01-01T01:00:01.25+01:00") == pytest.approx(1.25)


def test_log_ts_has_milliseconds() -> None:
    assert parse_log_ts("1970-01-01T00:00:02.123Z") == pytest.approx(2.123)


def test_bench_result_met_needs_every_check() -> None:
    ok = Check.at_most("a", 1.0, 2.0, "ms")
    missed = Check.at_least("b", 1.0, 2.0, "x")
    unknown = Check.at_most("c", None, 2.0, "ms")
    assert ok.met is True and missed.met is False and unknown.met is None
    assert BenchResult("x", {}, [ok]).met is True
    assert BenchResult("x", {}, [ok, missed, unknown]).met is False
    assert BenchResult("x", {}, [ok, unknown]).met is None
    doc = BenchResult("x", {"figure": 1}, [ok, missed]).to_json()
    assert doc["met"] is False
    assert doc["figure"] == 1
    assert doc["target"] == "a <= 2 ms; b >= 2 x"
