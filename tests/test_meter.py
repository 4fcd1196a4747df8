"""A connection's load for the agent's state: what `LineMeter` keeps and works out."""

from __future__ import annotations

import pytest

from agent.sources.modbus.meter import KEPT, WINDOW, LineMeter


def test_an_hour_of_one_request_a_second_keeps_only_the_window() -> None:
    meter = LineMeter(0.0)
    for second in range(3600):
        meter.record(second + 0.0, second + 0.01)

    load = meter.snapshot(3600.0)

    assert meter.kept <= WINDOW + 1
    assert load.requests_per_s == pytest.approx(1.0, rel=0.05)
    assert load.rtt_median_s == pytest.approx(0.01)
    assert load.utilisation == pytest.approx(0.01, rel=0.05)


def test_a_fast_line_keeps_at_most_kept_and_its_rate_is_over_what_is_kept() -> None:
    meter = LineMeter(0.0)
    for n in range(3 * KEPT):  # 1,000 requests a second
        meter.record(n / 1000, n / 1000 + 0.0005)

    load = meter.snapshot(3 * KEPT / 1000)

    assert KEPT == meter.kept
    assert load.requests_per_s == pytest.approx(1000, rel=0.01)
