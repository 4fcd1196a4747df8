"""agent.sources.source: the one back-off, outage log and scaling rule every source uses."""

from __future__ import annotations

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.source import Outage, SourceStats, backoff, places, scale
from agent.testing import captured_logs


@pytest.mark.parametrize("raw", [7, 2.5, -3])
def test_without_scale_or_offset_raw_is_returned_unchanged(raw: float) -> None:
    scaled = scale(raw, scale=None, offset=None, raw_places=0)

    assert raw == scaled
    assert type(raw) is type(scaled)


@pytest.mark.parametrize(
    ("raw", "factor", "offset", "raw_places", "expected"),
    [
        (2550, 0.01, None, 0, 25.5),
        (5448, 0.01, None, 0, 54.48),  # not 54.480000000000004
        (1000, 0.5, -10.0, 0, 490.0),
        (5, None, 1.5, 0, 6.5),
        (3, 2.0, None, 0, 6.0),
        (-4, -0.25, 0.0, 0, 1.0),
        (21.5, 0.1, None, 1, 2.15),  # "21.5" read as text: not 2.1500000000000004
        (0.3, None, 0.1, 1, 0.4),  # not 0.39999999999999997
        (1.23, 10.0, None, 2, 12.3),
    ],
)
def test_scaling_is_rounded_to_the_places_its_inputs_carry(
    raw: float, factor: float | None, offset: float | None, raw_places: int, expected: float
) -> None:
    scaled = scale(raw, scale=factor, offset=offset, raw_places=raw_places)

    assert repr(expected) == repr(scaled)
    assert type(scaled) is float


def test_a_binary_float_is_scaled_without_rounding() -> None:
    assert 0.1 * 3 == scale(0.1, scale=3.0, offset=None, raw_places=None)


@given(st.integers(-(2**31), 2**31), st.sampled_from([0.1, 0.01, 0.001, 0.5, 2.0, 10.0]))
def test_a_scaled_integer_never_shows_binary_noise(raw: int, factor: float) -> None:
    scaled = scale(raw, scale=factor, offset=None, raw_places=0)

    assert places(scaled) <= places(factor)


@pytest.mark.parametrize(
    ("number", "expected"), [("21.50", 2), (0.01, 2), (1e-3, 3), (5, 0), ("7", 0), (None, 0)]
)
def test_places_are_counted_as_written(number: str | float | None, expected: int) -> None:
    assert expected == places(number)


def test_backoff_doubles_from_the_interval_up_to_the_ceiling_in_its_upper_half() -> None:
    tops = [backoff(1.0, failures, 6.0, uniform=lambda low, high: high) for failures in range(5)]
    bottoms = [backoff(1.0, failures, 6.0, uniform=lambda low, high: low) for failures in range(5)]

    assert [1.0, 2.0, 4.0, 6.0, 6.0] == tops
    assert [0.5, 1.0, 2.0, 3.0, 3.0] == bottoms


def test_a_huge_failure_count_does_not_overflow() -> None:
    assert 60.0 == backoff(1.0, 10**6, 60.0, uniform=lambda low, high: high)


def test_an_outage_is_logged_when_it_starts_quietly_while_it_lasts_and_when_it_ends() -> None:
    stats = SourceStats()
    with captured_logs() as logs:
        outage = Outage(structlog.get_logger("test").bind(device="m"), stats, "device")
        outage.answered()  # no outage: nothing
        for _ in range(3):
            outage.failed("timed out")
        failing = stats.failing
        outage.answered()
        outage.answered()

    assert failing
    assert not stats.failing
    assert [
        ("device_unreachable", "warning", None),
        ("device_still_unreachable", "debug", 2),
        ("device_still_unreachable", "debug", 3),
        ("device_recovered", "info", 3),
    ] == [(e["event"], e["log_level"], e.get("failed_cycles")) for e in logs]
    assert {"m"} == {e["device"] for e in logs}
