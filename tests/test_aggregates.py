"""agent.pipeline.aggregates: epoch-aligned windows of avg, min, max, sum, count, first, last and
integral, checked against an offline oracle that sees every window's samples at once."""

from __future__ import annotations

import json
import marshal
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from itertools import groupby, pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pipeline.aggregates import (
    FUNCTIONS,
    STATE_VERSION,
    Aggregator,
    Result,
    WindowSpec,
    unpacked_state,
)

Number = int | float
Sample = tuple[int, Number]  # (timestamp_ms, value)

MINUTE_MS = 60_000
T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z, a full minute
UNIT_ROUNDOFF = 2.0**-53  # the relative error of one rounding
TINY = math.ulp(0.0)  # the absolute error of one rounding near 0, where floats are subnormal
MIN_WIDTH_MS, MAX_WIDTH_MS = 1_000, 600_000  # the window sizes the properties draw


def spec(window_s: float = 60, functions: tuple[str, ...] = FUNCTIONS) -> WindowSpec:
    return WindowSpec("meter", window_s, functions)


def feed(aggregator: Aggregator, samples: Iterable[Sample]) -> list[Result]:
    results: list[Result] = []
    for timestamp_ms, value in samples:
        results += aggregator.add(value, timestamp_ms)
    return results


def flush(aggregator: Aggregator) -> list[Result]:
    end_ms = aggregator.next_close_ms()
    return [] if end_ms is None else list(aggregator.close_due(end_ms))


def by_function(results: list[Result]) -> dict[str, Number]:
    return {result.id.removeprefix("meter_"): result.value for result in results}


def exactly(results: list[Result]) -> list[tuple[str, str, int]]:
    """Results as a user sees them on the wire: the repr tells 1 from 1.0 and -0.0 from 0.0."""
    return [(result.id, repr(result.value), result.timestamp_ms) for result in results]


# The offline oracle -------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleWindow:
    end_ms: int
    values: list[Number]  # the window's samples, in order
    integral: Fraction  # exact, in value x seconds
    magnitude: float  # the largest |f| over the window: the scale of the integral's rounding
    width_s: float


def oracle(samples: list[Sample], width_ms: int) -> list[OracleWindow]:
    """Each window with samples, its integral that of the curve f through all of them."""
    groups = [
        (end_ms, list(group))
        for end_ms, group in groupby(samples, key=lambda s: s[0] // width_ms * width_ms + width_ms)
    ]
    vertices = curve(groups)
    windows = []
    for index, (end_ms, group) in enumerate(groups):
        values = [value for _, value in group]
        nearby = values + ([groups[index - 1][1][-1][1]] if index else [])
        windows.append(
            OracleWindow(
                end_ms,
                values,
                integrate(vertices, end_ms - width_ms, end_ms),
                max(abs(float(v)) for v in nearby),
                width_ms / 1000,
            )
        )
    return windows


def curve(groups: list[tuple[int, list[Sample]]]) -> list[tuple[int, Fraction]]:
    """The vertices of f: every sample, and each window's last value held to its end."""
    vertices: list[tuple[int, Fraction]] = []
    for end_ms, group in groups:
        vertices += [(timestamp_ms, Fraction(value)) for timestamp_ms, value in group]
        vertices.append((end_ms, Fraction(group[-1][1])))
    return vertices


def integrate(vertices: list[tuple[int, Fraction]], start_ms: int, end_ms: int) -> Fraction:
    """The exact integral of the piecewise-linear f over [start_ms, end_ms), in value x s."""
    area = Fraction(0)
    for (ta, va), (tb, vb) in pairwise(vertices):
        low, high = max(ta, start_ms), min(tb, end_ms)
        if high > low:
            at_low = va + (vb - va) * (low - ta) / (tb - ta)
            at_high = va + (vb - va) * (high - ta) / (tb - ta)
            area += (at_low + at_high) * (high - low) / 2
    return area / 1000


def exact_sum(values: Iterable[Number]) -> Fraction:
    return sum((Fraction(value) for value in values), Fraction(0))


def sum_tolerance(values: list[Number]) -> float:
    """How far the compensated sum may be from the exact one: one rounding, and the float
    part's compensation carries an error of at most about n**2 u**2 sum |x| (ints add none:
    they are summed exactly, and the parts are joined by one correctly rounded fsum)."""
    floats = [value for value in values if isinstance(value, float)]
    magnitude = math.fsum(map(abs, floats))
    return (
        UNIT_ROUNDOFF * abs(float(exact_sum(values)))
        + 4 * (len(floats) * UNIT_ROUNDOFF) ** 2 * magnitude
    )


def check_sum(actual: Number, window: OracleWindow) -> None:
    if all(type(value) is int for value in window.values):
        assert (int, sum(window.values)) == (type(actual), actual)
        return
    assert type(actual) is float
    assert abs(Fraction(actual) - exact_sum(window.values)) <= sum_tolerance(window.values)


def check_avg(actual: Number, window: OracleWindow) -> None:
    assert type(actual) is float
    count = len(window.values)
    if all(type(value) is int for value in window.values):
        assert sum(window.values) / count == actual  # int / int is correctly rounded
        return
    exact = exact_sum(window.values) / count
    tolerance = sum_tolerance(window.values) / count + 2 * UNIT_ROUNDOFF * abs(float(exact)) + TINY
    assert abs(Fraction(actual) - exact) <= tolerance


def check_integral(actual: Number, window: OracleWindow) -> None:
    assert type(actual) is float
    terms = len(window.values) + 4
    rounding = 16 * terms * UNIT_ROUNDOFF * window.magnitude + terms * TINY  # in a value
    tolerance = rounding * (1 + window.width_s)  # times seconds
    assert abs(Fraction(actual) - window.integral) <= tolerance


def check_sample(pick: Callable[[list[Number]], Number]) -> Callable[[Number, OracleWindow], None]:
    def check(actual: Number, window: OracleWindow) -> None:
        assert repr(pick(window.values)) == repr(actual)  # the sample itself, of its own type

    return check


def check_count(actual: Number, window: OracleWindow) -> None:
    assert (int, len(window.values)) == (type(actual), actual)


CHECKS: dict[str, Callable[[Number, OracleWindow], None]] = {
    "avg": check_avg,
    "min": check_sample(min),
    "max": check_sample(max),
    "sum": check_sum,
    "count": check_count,
    "first": check_sample(lambda values: values[0]),
    "last": check_sample(lambda values: values[-1]),
    "integral": check_integral,
}


def assert_matches_oracle(results: list[Result], samples: list[Sample], width_ms: int) -> None:
    windows = oracle(samples, width_ms)
    expected_ids = [(f"meter_{f}", window.end_ms) for window in windows for f in FUNCTIONS]
    assert expected_ids == [(result.id, result.timestamp_ms) for result in results]
    for index, window in enumerate(windows):
        window_results = results[index * len(FUNCTIONS) : (index + 1) * len(FUNCTIONS)]
        for function, value in by_function(window_results).items():
            CHECKS[function](value, window)


# Strategies ----------------------------------------------------------------------------------

INTS = st.integers(-(2**63), 2**64)  # what 64-bit registers hold, signed or not
FLOATS = st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False)
EQUAL_BUT_NOT_ALIKE = st.sampled_from([0, 0.0, -0.0, 1, 1.0, -1, -1.0])  # which one is kept
VALUES = {"ints": INTS, "floats": FLOATS, "mixed": st.one_of(INTS, FLOATS, EQUAL_BUT_NOT_ALIKE)}


@dataclass(frozen=True)
class Run:
    width_ms: int
    samples: list[Sample]  # in timestamp order, equal timestamps allowed

    def spec(self) -> WindowSpec:
        return spec(self.width_ms / 1000)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    """Sorted samples: several to a window, and gaps across several empty windows."""
    width_ms = draw(st.integers(MIN_WIDTH_MS, MAX_WIDTH_MS))
    values = VALUES[draw(st.sampled_from(sorted(VALUES)))]
    steps = st.one_of(st.integers(0, width_ms // 4), st.integers(0, 5 * width_ms))
    timestamp_ms = draw(st.integers(0, 4 * 10**12))
    samples = []
    for step, value in draw(st.lists(st.tuples(steps, values), min_size=1, max_size=60)):
        timestamp_ms += step
        samples.append((timestamp_ms, value))
    return Run(width_ms, samples)


def run_through(run: Run) -> tuple[list[Result], Aggregator]:
    aggregator = Aggregator(run.spec())
    results = feed(aggregator, run.samples)
    return results + flush(aggregator), aggregator


# Properties ----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(runs())
def test_each_window_publishes_the_aggregates_of_its_own_samples(run: Run) -> None:
    results, aggregator = run_through(run)

    assert_matches_oracle(results, run.samples, run.width_ms)
    assert 0 == aggregator.late


@given(runs(), st.data())
def test_timers_and_late_samples_change_no_result(run: Run, data: st.DataObject) -> None:
    """close_due at any time up to the next sample, and samples older than the newest taken,
    leave the results as they were; the late ones are counted."""
    aggregator = Aggregator(run.spec())
    results: list[Result] = []
    stale = 0
    previous_ms = run.samples[0][0]
    for index, (timestamp_ms, value) in enumerate(run.samples):
        if data.draw(st.booleans(), label="timer"):
            results += aggregator.close_due(data.draw(st.integers(previous_ms, timestamp_ms)))
        if index and data.draw(st.booleans(), label="stale"):
            age_ms = data.draw(st.integers(1, 3 * run.width_ms))
            results += aggregator.add(value, previous_ms - age_ms)
            stale += 1
        results += aggregator.add(value, timestamp_ms)
        previous_ms = timestamp_ms

    assert exactly(run_through(run)[0]) == exactly(results + flush(aggregator))
    assert stale == aggregator.late


def stopped_midway(run: Run, data: st.DataObject) -> tuple[Aggregator, list[Result], list[Sample]]:
    """An aggregator fed the samples of `run` up to a cut (its timer perhaps fired after
    them), its results so far, and the samples after the cut."""
    cut = data.draw(st.integers(0, len(run.samples)), label="cut")
    before, after = run.samples[:cut], run.samples[cut:]
    first = Aggregator(run.spec())
    results = feed(first, before)
    if cut and data.draw(st.booleans(), label="timer before the snapshot"):
        until_ms = after[0][0] if after else before[-1][0] + MAX_WIDTH_MS
        results += first.close_due(data.draw(st.integers(before[-1][0], until_ms)))
    return first, results, after


@given(runs(), st.data())
def test_a_restored_aggregator_continues_as_if_never_stopped(run: Run, data: st.DataObject) -> None:
    uninterrupted, _ = run_through(run)
    first, results, after = stopped_midway(run, data)

    saved = json.loads(json.dumps(first.state(), allow_nan=False))
    second = Aggregator.restore(run.spec(), saved)

    assert saved == second.state()
    assert exactly(uninterrupted) == exactly(results + feed(second, after) + flush(second))


@given(runs(), st.data())
def test_a_packed_state_is_the_state_and_continues_as_if_never_stopped(
    run: Run, data: st.DataObject
) -> None:
    uninterrupted, _ = run_through(run)
    first, results, after = stopped_midway(run, data)

    packed = marshal.loads(marshal.dumps(first.packed()))
    state = unpacked_state(run.spec().point_id, packed)
    assert first.state() == state
    second = Aggregator.restore(run.spec(), state)

    assert packed == second.packed()
    assert exactly(uninterrupted) == exactly(results + feed(second, after) + flush(second))


@pytest.mark.parametrize("packed", [[60_000, 0], (60_000,), (60_000, 0, T0), "x", None])
def test_a_packed_state_of_another_shape_is_refused(packed: object) -> None:
    with pytest.raises(ValueError, match="not a packed state"):
        unpacked_state("meter", packed)


def test_a_packed_state_is_checked_as_a_state_is() -> None:
    aggregator = Aggregator(spec())
    feed(aggregator, [(T0 + 1_000, 1.5), (T0 + 2_000, 2)])
    packed = aggregator.packed()
    for changed, problem in [
        ((30_000, *packed[1:]), "ms window"),
        ((*packed[:5], 0, *packed[6:]), "without samples"),
        ((*packed[:7], 1, *packed[8:]), "two floats"),
    ]:
        with pytest.raises(ValueError, match=problem):
            Aggregator.restore(spec(), unpacked_state("meter", changed))


# Windows and closing -------------------------------------------------------------------------


def test_a_60_s_window_closes_at_the_full_minute_with_its_end_as_timestamp() -> None:
    aggregator = Aggregator(spec(functions=("avg", "min", "max", "count")))
    feed(aggregator, [(T0 + 10_000, 12), (T0 + 20_000, 30), (T0 + 59_999, 18)])

    assert T0 + MINUTE_MS == aggregator.next_close_ms()
    assert not aggregator.close_due(T0 + MINUTE_MS - 1)
    assert [
        Result("meter_avg", 20.0, T0 + MINUTE_MS),
        Result("meter_min", 12, T0 + MINUTE_MS),
        Result("meter_max", 30, T0 + MINUTE_MS),
        Result("meter_count", 3, T0 + MINUTE_MS),
    ] == aggregator.close_due(T0 + MINUTE_MS)
    assert aggregator.next_close_ms() is None


def test_a_sample_of_a_later_window_closes_the_open_one_first() -> None:
    aggregator = Aggregator(spec(functions=("first", "last")))

    assert not aggregator.add(1.5, T0 + 1_000)
    assert not aggregator.add(2.5, T0 + 2_000)
    assert [
        Result("meter_first", 1.5, T0 + MINUTE_MS),
        Result("meter_last", 2.5, T0 + MINUTE_MS),
    ] == aggregator.add(9.0, T0 + MINUTE_MS)  # the boundary belongs to the next window
    assert T0 + 2 * MINUTE_MS == aggregator.next_close_ms()


def test_windows_without_samples_publish_nothing() -> None:
    aggregator = Aggregator(spec(functions=("count",)))
    aggregator.add(1, T0 + 5_000)
    closed = aggregator.close_due(T0 + MINUTE_MS)

    assert not aggregator.close_due(T0 + 10 * MINUTE_MS)  # nothing is open
    assert not aggregator.add(2, T0 + 10 * MINUTE_MS + 1)
    reopened = aggregator.add(3, T0 + 11 * MINUTE_MS)

    assert [Result("meter_count", 1, T0 + MINUTE_MS)] == closed
    # Not one result for each of the nine empty windows in between.
    assert [Result("meter_count", 1, T0 + 11 * MINUTE_MS)] == reopened


def test_a_window_that_ended_while_the_agent_was_down_is_closed_at_start_up() -> None:
    before = Aggregator(spec(functions=("avg", "count")))
    feed(before, [(T0 + 10_000, 4.0), (T0 + 20_000, 6.0)])
    saved = json.loads(json.dumps(before.state()))

    after = Aggregator.restore(spec(functions=("avg", "count")), saved)

    assert T0 + MINUTE_MS == after.next_close_ms()
    assert [
        Result("meter_avg", 5.0, T0 + MINUTE_MS),
        Result("meter_count", 2, T0 + MINUTE_MS),
    ] == after.close_due(T0 + 3 * MINUTE_MS)


def test_windows_are_aligned_to_the_epoch_for_any_whole_number_of_milliseconds() -> None:
    aggregator = Aggregator(spec(window_s=1.5, functions=("count",)))
    aggregator.add(1, 4_400)

    assert 4_500 == aggregator.next_close_ms()  # [3000, 4500)


def test_a_restored_aggregator_still_drops_samples_older_than_its_newest() -> None:
    before = Aggregator(spec(functions=("count",)))
    feed(before, [(T0 + 10_000, 1), (T0 + 20_000, 2)])
    after = Aggregator.restore(spec(functions=("count",)), json.loads(json.dumps(before.state())))

    assert not after.add(3, T0 + 15_000)
    assert 1 == after.late
    assert [Result("meter_count", 2, T0 + MINUTE_MS)] == flush(after)


def test_a_window_kept_without_its_integral_is_refused_by_a_config_that_wants_one() -> None:
    """The area is kept only when the integral is asked for: a window kept without it
    cannot give one (agent.pipeline.aggregation then starts afresh and says so)."""
    before = Aggregator(spec(functions=("avg",)))
    feed(before, [(T0 + 10_000, 1), (T0 + 20_000, 2)])
    state = json.loads(json.dumps(before.state()))

    with pytest.raises(ValueError, match="without its integral"):
        Aggregator.restore(spec(functions=("avg", "integral")), state)
    assert [Result("meter_avg", 1.5, T0 + MINUTE_MS)] == flush(
        Aggregator.restore(spec(functions=("avg",)), state)
    )


# Late samples ----------------------------------------------------------------------------------


def test_samples_older_than_a_closed_window_or_the_newest_one_are_dropped_and_counted() -> None:
    aggregator = Aggregator(spec(functions=("count", "last")))
    feed(aggregator, [(T0 + 1_000, 1), (T0 + 2_000, 2)])
    closed = aggregator.close_due(T0 + MINUTE_MS)

    assert not aggregator.add(3, T0 + 30_000)  # its window is closed and published
    assert not aggregator.add(4, T0 + MINUTE_MS + 5_000)
    assert not aggregator.add(5, T0 + MINUTE_MS + 4_000)  # the clock was stepped back

    assert [Result("meter_count", 2, T0 + MINUTE_MS), Result("meter_last", 2, T0 + MINUTE_MS)] == (
        closed
    )
    assert 2 == aggregator.late
    assert [
        Result("meter_count", 1, T0 + 2 * MINUTE_MS),
        Result("meter_last", 4, T0 + 2 * MINUTE_MS),
    ] == flush(aggregator)


def test_samples_with_equal_timestamps_both_count() -> None:
    aggregator = Aggregator(spec(functions=("count", "sum", "first", "last")))
    feed(aggregator, [(T0 + 1_000, 1), (T0 + 1_000, 2)])

    assert {"count": 2, "sum": 3, "first": 1, "last": 2} == by_function(flush(aggregator))
    assert 0 == aggregator.late


# Values ----------------------------------------------------------------------------------------


def test_count_is_an_int_avg_a_float_and_samples_keep_their_type() -> None:
    aggregator = Aggregator(spec())
    feed(aggregator, [(T0 + 1_000, 3), (T0 + 2_000, 1), (T0 + 3_000, 2)])

    values = by_function(flush(aggregator))

    assert {"avg": float, "min": int, "max": int, "sum": int, "count": int, "first": int} == {
        function: type(values[function])
        for function in ("avg", "min", "max", "sum", "count", "first")
    }
    assert (2.0, 1, 3, 6, 3) == tuple(values[f] for f in ("avg", "min", "max", "sum", "count"))


def test_min_and_max_are_the_first_of_equal_samples() -> None:
    aggregator = Aggregator(spec(functions=("min", "max")))
    feed(aggregator, [(T0 + 1, 2), (T0 + 2, 2.0), (T0 + 3, 1.0), (T0 + 4, 1)])

    assert [("meter_min", "1.0", T0 + MINUTE_MS), ("meter_max", "2", T0 + MINUTE_MS)] == exactly(
        flush(aggregator)
    )


def test_sums_of_ints_are_exact_and_of_floats_compensated() -> None:
    aggregator = Aggregator(spec(functions=("sum", "avg")))
    big = 2**64 - 1
    feed(aggregator, [(T0 + 1, big), (T0 + 2, big), (T0 + 3, 1)])
    ints = by_function(flush(aggregator))
    feed(aggregator, [(T0 + MINUTE_MS + n, value) for n, value in enumerate([1e16, 1.0, -1e16])])

    assert {"sum": 2 * big + 1, "avg": (2 * big + 1) / 3} == ints
    assert {"sum": 1.0, "avg": 1.0 / 3} == by_function(flush(aggregator))  # naively 0.0


def test_compensation_keeps_what_a_float_sum_rounds_away_in_either_order() -> None:
    aggregator = Aggregator(spec(functions=("sum",)))
    feed(aggregator, [(T0 + 1, 1.0), (T0 + 2, 1e100), (T0 + 3, 1.0), (T0 + 4, -1e100)])
    small_first = by_function(flush(aggregator))
    feed(aggregator, [(T0 + MINUTE_MS, 2**60 + 1), (T0 + MINUTE_MS + 1, -(2.0**60))])

    assert {"sum": 2.0} == small_first
    assert {"sum": 1.0} == by_function(flush(aggregator))  # an int beyond a float's 53 bits


def test_the_integral_is_trapezoids_with_the_last_value_held_to_the_window_end() -> None:
    """kW in, kW·s out: 0 to 60 kW over 30 s, then held; the line down to 0 starts the next."""
    aggregator = Aggregator(spec(functions=("integral",)))
    results = feed(aggregator, [(T0, 0), (T0 + 30_000, 60), (T0 + 90_000, 0)]) + flush(aggregator)

    assert [
        Result("meter_integral", 900.0 + 1800.0, T0 + MINUTE_MS),
        Result("meter_integral", 900.0, T0 + 2 * MINUTE_MS),  # from 60 kW at the boundary
    ] == results


def test_the_integral_after_empty_windows_starts_on_the_line_across_them() -> None:
    """10 kW held to T0+60 s, then straight to 40 kW at T0+150 s: 30 kW at T0+120 s."""
    aggregator = Aggregator(spec(functions=("integral",)))
    results = feed(aggregator, [(T0 + 30_000, 10), (T0 + 150_000, 40)]) + flush(aggregator)

    assert [
        Result("meter_integral", 300.0, T0 + MINUTE_MS),  # from its first sample: no earlier one
        Result("meter_integral", 1050.0 + 1200.0, T0 + 3 * MINUTE_MS),
    ] == results


def test_a_constant_value_integrates_to_value_times_window() -> None:
    aggregator = Aggregator(spec(functions=("integral",)))
    samples = [(T0 + 700 + 1_500 * n, 2.5) for n in range(200)]  # polls out of phase

    results = feed(aggregator, samples)

    assert [2.5 * 60] * len(results[1:]) == [result.value for result in results[1:]]


def test_booleans_and_non_finite_values_are_refused() -> None:
    aggregator = Aggregator(spec())

    with pytest.raises(TypeError):
        aggregator.add(True, T0)
    with pytest.raises(ValueError, match="non-finite"):
        aggregator.add(math.nan, T0)
    assert aggregator.next_close_ms() is None


# Naming and specs ------------------------------------------------------------------------------


def test_outputs_are_named_point_underscore_function_unless_renamed() -> None:
    renamed = WindowSpec("meter", 60, ("avg", "max", "integral"), names={"integral": "energy_kws"})

    assert {
        "avg": "meter_avg",
        "max": "meter_max",
        "integral": "energy_kws",
    } == renamed.output_ids()


def test_results_come_in_the_order_of_the_spec_under_their_output_ids() -> None:
    aggregator = Aggregator(WindowSpec("meter", 60, ("max", "avg"), names={"avg": "meter_mean"}))
    feed(aggregator, [(T0, 1), (T0 + 1, 3)])

    assert [Result("meter_max", 3, T0 + MINUTE_MS), Result("meter_mean", 2.0, T0 + MINUTE_MS)] == (
        flush(aggregator)
    )


@pytest.mark.parametrize(
    ("window_s", "functions", "names", "problem"),
    [
        (0.5, ("avg",), {}, "at least 1 s"),
        (1.0005, ("avg",), {}, "whole number of milliseconds"),
        (math.inf, ("avg",), {}, "whole number of milliseconds"),
        (60, (), {}, "at least one"),
        (60, ("mean",), {}, "unknown aggregate functions"),
        (60, ("avg", "avg"), {}, "listed twice"),
        (60, ("avg",), {"max": "meter_peak"}, "not chosen"),
        (60, ("avg", "max"), {"max": "meter_avg"}, "publish as one id"),
    ],
)
def test_a_spec_that_cannot_publish_is_refused(
    window_s: float, functions: tuple[str, ...], names: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        WindowSpec("meter", window_s, functions, names)


# Restore ---------------------------------------------------------------------------------------


def saved_state(**changes: Any) -> dict[str, Any]:
    aggregator = Aggregator(spec())
    feed(aggregator, [(T0 + 1_000, 1.5), (T0 + 2_000, 2)])
    return json.loads(json.dumps(aggregator.state())) | changes  # type: ignore[no-any-return]


def test_state_carries_its_version() -> None:
    assert STATE_VERSION == saved_state()["version"]


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (saved_state(version=STATE_VERSION + 1), "version"),
        (saved_state(window_ms=30_000), "ms window"),
        (saved_state(point_id="other"), "point"),
        (saved_state(late=True), "late is not an integer"),
        (saved_state(last=[T0, "2"]), "sample"),
        (saved_state(last=None), "without its last sample"),
        (saved_state(last=[T0 + MINUTE_MS, 2]), "a window at"),
        (saved_state(window={"start_ms": T0}), "count"),
        (saved_state(window=saved_state()["window"] | {"count": 0}), "without samples"),
        (saved_state(window=saved_state()["window"] | {"float_sum": [1, 0.0]}), "two floats"),
        (saved_state(window=[]), "not a mapping"),
    ],
)
def test_a_state_that_cannot_be_continued_is_refused(state: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Aggregator.restore(spec(), state)
