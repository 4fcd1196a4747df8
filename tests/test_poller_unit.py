"""The poller through an in-memory register bus: what a unit is asked, and what is published.

Refused reads (split, parked, retried), units that do not answer, the schedule (skipped
cycles, back-off; in virtual time, so exact) and values that cannot be decoded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import astuple
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import resolve
from agent.config.model import Aggregate
from agent.config.schema import ModbusConfig
from agent.errors import DeviceRefused
from agent.pipeline.aggregates import Result
from agent.pipeline.aggregation import Aggregation
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import REFUSED_RETRY_CYCLES, DevicePoller, device_spans
from agent.testing import FakeRegisterBus, captured_logs, run_in_virtual_time
from tests.test_aggregation_unit import decoded

UNIT = 1
WALL_MS = 1_800_000_000_000
HOLDING = 3  # function codes
INPUT = 4
COIL = 1

Reading = dict[str, Any]
Event = MutableMapping[str, Any]


class Emitted:
    """What the poller hands on: readings per bucket, decoded from their JSON fragments."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.times: list[float] = []  # the loop's time of each reading
        self.sent: list[tuple[str, bytes]] = []  # each fragment as it was handed on

    def __call__(self, bucket: str, fragments: list[bytes]) -> None:
        self.readings += [{"bucket": bucket, **json.loads(f)} for f in fragments]
        self.sent += [(bucket, fragment) for fragment in fragments]
        self.times += [asyncio.get_running_loop().time()] * len(fragments)

    def values(self) -> dict[str, Any]:
        return {r["id"]: r["value"] for r in self.readings}

    def take(self) -> dict[str, Any]:
        values = self.values()
        self.readings.clear()
        self.times.clear()
        return values


def make_poller(
    bus: FakeRegisterBus,
    points: Sequence[dict[str, Any]],
    *,
    interval: float = 1.0,
    emitted: Emitted | None = None,
    **device: Any,
) -> tuple[DevicePoller, Emitted]:
    connection = resolve.connection(
        ModbusConfig.model_validate(
            {
                "name": bus.name,
                "transport": "tcp",
                "host": "127.0.0.1",
                "devices": [
                    {
                        "name": "meter1",
                        "unit": UNIT,
                        "interval": interval,
                        "bucket": "b",
                        "points": list(points),
                        **device,
                    }
                ],
            }
        )
    )
    emitted = Emitted() if emitted is None else emitted
    poller = DevicePoller(
        device=connection.devices[0],
        bus=bus,
        emit=emitted,
        wall_ms=lambda: WALL_MS,
    )
    return poller, emitted


def holding(*addresses: int) -> list[dict[str, Any]]:
    return [{"id": f"p{a}", "table": "holding", "address": a} for a in addresses]


def events(logs: list[Event], name: str) -> list[Event]:
    return [e for e in logs if e["event"] == name]


async def cycle(poller: DevicePoller, bus: FakeRegisterBus) -> list[tuple[int, int, int]]:
    """One poll cycle; the requests it made as (function, address, count)."""
    before = len(bus.requests)
    await poller.poll_once()
    return bus.calls()[before:]


# -- refused reads: split, parked, retried --------------------------------------------------


async def test_a_refused_read_is_split_recursively_down_to_the_point_the_unit_lacks() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [100, 101, 102, 103, 104, 0, 106, 107])
    bus.refuse(UNIT, Table.HOLDING, range(5, 6))
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, holding(*range(8)))
        first = await cycle(poller, bus)

    assert [
        (HOLDING, 0, 8),  # refused: halves
        (HOLDING, 0, 4),
        (HOLDING, 4, 4),  # refused: halves
        (HOLDING, 4, 2),  # refused: halves
        (HOLDING, 4, 1),
        (HOLDING, 5, 1),  # refused alone: parked
        (HOLDING, 6, 2),
    ] == first
    assert {
        "p0": 100,
        "p1": 101,
        "p2": 102,
        "p3": 103,
        "p4": 104,
        "p6": 106,
        "p7": 107,
    } == emitted.values()
    assert [(0, 8, [(0, 4), (4, 4)]), (4, 4, [(4, 2), (6, 2)]), (4, 2, [(4, 1), (5, 1)])] == [
        (e["start"], e["count"], e["into"]) for e in events(logs, "request_split")
    ]
    assert [
        {
            "event": "read_refused",
            "log_level": "warning",
            "device": "meter1",
            "connection": "fake",
            "unit": UNIT,
            "table": "holding",
            "start": 5,
            "count": 1,
            "points": ["p5"],
            "code": DeviceRefused.ILLEGAL_DATA_ADDRESS,
            "meaning": "illegal data address",
            "retry_in_cycles": REFUSED_RETRY_CYCLES,
        }
    ] == events(logs, "read_refused")
    assert (4, 3) == (poller.stats.refused, poller.stats.requests_ok)


async def test_after_the_split_the_next_cycles_read_the_rest_in_the_fewest_requests() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(5, 6))
    with captured_logs() as logs:
        poller, _ = make_poller(bus, holding(*range(8)))
        await cycle(poller, bus)
        later = [await cycle(poller, bus) for _ in range(3)]

    # Not the halves 0-3, 4 and 6-7: 0-4 and 6-7, around the parked 5.
    assert [[(HOLDING, 0, 5), (HOLDING, 6, 2)]] * 3 == later
    assert 4 == poller.stats.refused  # nothing refused after the first cycle
    assert [[("holding", 0, 5), ("holding", 6, 2)]] == [
        e["requests"] for e in events(logs, "requests_planned")
    ]


async def test_a_refused_point_is_asked_again_every_retry_cycles_and_logged_once() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(1, 2))
    with captured_logs() as logs:
        poller, _ = make_poller(bus, holding(0, 1))
        asked = [
            c
            for c in range(1, 2 * REFUSED_RETRY_CYCLES + 2)
            if (HOLDING, 1, 1) in await cycle(poller, bus)
        ]

    assert [1, 1 + REFUSED_RETRY_CYCLES, 1 + 2 * REFUSED_RETRY_CYCLES] == asked
    assert 1 == len(events(logs, "read_refused"))  # the repeats are within the rate limit


async def test_a_parked_point_the_unit_now_has_is_read_from_its_retry_cycle_on() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [7, 8])
    bus.refuse(UNIT, Table.HOLDING, range(1, 2))
    poller, emitted = make_poller(bus, holding(0, 1))
    await cycle(poller, bus)
    bus.clear_faults()  # e.g. the device's firmware was updated

    seen = []
    for number in range(2, REFUSED_RETRY_CYCLES + 4):
        await poller.poll_once()
        if "p1" in emitted.take():
            seen.append(number)

    assert [1 + REFUSED_RETRY_CYCLES, 2 + REFUSED_RETRY_CYCLES, 3 + REFUSED_RETRY_CYCLES] == seen


async def test_an_illegal_function_parks_the_whole_request_without_splitting_it() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.INPUT, code=DeviceRefused.ILLEGAL_FUNCTION)  # no input table
    points = [
        {"id": "i0", "table": "input", "address": 0},
        {"id": "i1", "table": "input", "address": 1},
        *holding(0),
    ]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        first = await cycle(poller, bus)
        second = await cycle(poller, bus)

    assert [(INPUT, 0, 2), (HOLDING, 0, 1)] == first
    assert [(HOLDING, 0, 1)] == second
    assert [] == events(logs, "request_split")
    assert [(["i0", "i1"], DeviceRefused.ILLEGAL_FUNCTION)] == [
        (e["points"], e["code"]) for e in events(logs, "read_refused")
    ]
    assert {"p0"} == set(emitted.values())


async def test_a_unit_that_refuses_everything_is_not_unreachable() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT)
    with captured_logs() as logs:
        poller, _ = make_poller(bus, holding(0))
        answered = [await poller.poll_once() for _ in range(3)]

    assert [True, True, True] == answered
    assert 0 == poller.stats.consecutive_failures
    assert [] == events(logs, "device_unreachable")


# -- units that do not answer ---------------------------------------------------------------


async def test_a_silent_unit_is_asked_once_per_cycle_logged_once_and_its_recovery_noted() -> None:
    bus = FakeRegisterBus()
    bus.time_out(UNIT)
    points = [{"id": "c", "table": "coil", "address": 0}, *holding(0, 100)]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        failed = [await cycle(poller, bus) for _ in range(3)]
        answered = [await poller.poll_once() for _ in range(2)]  # still silent
        bus.clear_faults()
        recovered = await poller.poll_once()

    assert [[(COIL, 0, 1)]] * 3 == failed  # the first request only: not asked again
    assert [False, False] == answered
    assert recovered is True
    assert 5 == poller.stats.timeouts
    assert 6 == bus.cycles_ended  # end_cycle after every cycle, failed ones too
    unreachable = [
        (e["event"], e["log_level"], e.get("failed_cycles"))
        for e in logs
        if "unreachable" in e["event"] or "recovered" in e["event"]
    ]
    assert [
        ("device_unreachable", "warning", None),
        ("device_still_unreachable", "debug", 2),
        ("device_still_unreachable", "debug", 3),
        ("device_still_unreachable", "debug", 4),
        ("device_still_unreachable", "debug", 5),
        ("device_recovered", "info", 5),
    ] == unreachable
    assert {"c": False, "p0": 0, "p100": 0} == emitted.values()


async def test_a_time_out_after_an_answer_ends_the_cycle_without_counting_a_failure() -> None:
    bus = FakeRegisterBus()
    bus.time_out(UNIT, Table.INPUT)
    points = [
        {"id": "c", "table": "coil", "address": 0},
        {"id": "i", "table": "input", "address": 0},
        *holding(0),
    ]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        calls = await cycle(poller, bus)

    assert [(COIL, 0, 1), (INPUT, 0, 1)] == calls  # holding not asked after the time-out
    assert (1, 0) == (poller.stats.timeouts, poller.stats.consecutive_failures)
    assert {"c": False} == emitted.values()
    assert [("warning", "unit 1 did not answer function 4 at 0", 1)] == [
        (e["log_level"], e["error"], e["unsent"]) for e in events(logs, "cycle_cut_short")
    ]


# -- the schedule, in virtual time ----------------------------------------------------------


async def _starts(
    poller: DevicePoller,
    bus: FakeRegisterBus,
    count: int,
    *,
    first_latency: float = 0.0,
    then: float = 0.0,
) -> list[float]:
    """When the first `count` cycles began, the first taking `first_latency` seconds."""
    bus.latency = first_latency
    task = asyncio.create_task(poller.run(), name="poll[meter1]")
    await bus.wait_requests(1)
    bus.latency = then
    await bus.wait_requests(count)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return [request.at for request in bus.requests[:count]]


@pytest.mark.parametrize(
    ("overrun", "expected_starts", "skipped"),
    [
        (0.5, [0.0, 1.0, 2.0, 3.0], 0),
        (1.0, [0.0, 1.0, 2.0, 3.0], 0),  # ends exactly when the next is due
        (1.5, [0.0, 2.0, 3.0, 4.0], 1),
        (2.0, [0.0, 2.0, 3.0, 4.0], 1),
        (2.5, [0.0, 3.0, 4.0, 5.0], 2),
        (10.25, [0.0, 11.0, 12.0, 13.0], 10),
    ],
)
def test_a_cycle_that_overruns_skips_the_slots_it_missed_and_keeps_the_grid(
    overrun: float,
    expected_starts: list[float],
    skipped: int,
) -> None:
    async def main() -> tuple[list[float], int]:
        bus = FakeRegisterBus()
        poller, _ = make_poller(bus, holding(0), interval=1.0)
        starts = await _starts(poller, bus, 4, first_latency=overrun)
        return starts, poller.stats.skipped_cycles

    assert (expected_starts, skipped) == run_in_virtual_time(main())


def test_slow_answers_within_the_interval_do_not_make_the_schedule_drift() -> None:
    async def main() -> tuple[list[float], int]:
        bus = FakeRegisterBus()
        poller, _ = make_poller(bus, holding(0), interval=1.0)
        starts = await _starts(poller, bus, 5, first_latency=0.75, then=0.75)
        return starts, poller.stats.skipped_cycles

    assert ([0.0, 1.0, 2.0, 3.0, 4.0], 0) == run_in_virtual_time(main())


def test_a_silent_unit_is_backed_off_exponentially_then_polled_on_a_fresh_grid() -> None:
    timeout = 0.5

    async def main() -> list[float]:
        bus = FakeRegisterBus(timeout=timeout)
        bus.time_out(UNIT)
        poller, _ = make_poller(bus, holding(0), interval=1.0, backoff_max=6.0)
        task = asyncio.create_task(poller.run(), name="poll[meter1]")
        await bus.wait_requests(4)  # the fourth attempt is found silent as it is made
        bus.clear_faults()
        await bus.wait_requests(7)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [request.at for request in bus.requests]

    starts = run_in_virtual_time(main())

    pauses = [later - (earlier + timeout) for earlier, later in itertools.pairwise(starts[:5])]
    # Between half and all of interval * 2**failures, capped at backoff_max.
    ceilings = [2.0, 4.0, 6.0, 6.0]
    assert all(c / 2 <= p <= c for p, c in zip(pauses, ceilings, strict=True)), pauses
    recovered = starts[4]
    assert pytest.approx([recovered + 1.0, recovered + 2.0]) == starts[5:7]


INTERVAL_CHANGES = [
    # from, to, starts of cycles 1-5 (the interval changes during the third)
    pytest.param(1.0, 5.0, [0.0, 1.0, 2.0, 3.0, 8.0], id="longer"),
    pytest.param(5.0, 1.0, [0.0, 5.0, 10.0, 15.0, 16.0], id="shorter"),
]


@pytest.mark.parametrize(("before", "after", "expected"), INTERVAL_CHANGES)
def test_a_new_interval_takes_effect_from_the_next_cycle(
    before: float,
    after: float,
    expected: list[float],
) -> None:
    async def main() -> tuple[list[float], int]:
        bus = FakeRegisterBus()
        poller, _ = make_poller(bus, holding(0), interval=before)
        task = asyncio.create_task(poller.run(), name="poll[meter1]")
        await bus.wait_requests(3)
        poller.set_interval(after)  # the fourth cycle is already scheduled
        await bus.wait_requests(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [request.at for request in bus.requests], poller.stats.skipped_cycles

    assert (expected, 0) == run_in_virtual_time(main())


# -- values that cannot be decoded ----------------------------------------------------------


@pytest.mark.parametrize(
    ("point_type", "registers", "error"),
    [
        ("float32", [0x7FC0, 0x0000], "non-finite value nan"),
        ("float32", [0x7F80, 0x0000], "non-finite value inf"),
        ("float32", [0xFF80, 0x0000], "non-finite value -inf"),
        ("float64", [0x7FF8, 0, 0, 0], "non-finite value nan"),
        ("float64", [0xFFF0, 0, 0, 0], "non-finite value -inf"),
        ("uint16", [70_000], "registers are integers 0..65535, got [70000]"),
        ("int32", [1, -1], "registers are integers 0..65535, got [1, -1]"),
    ],
)
async def test_a_value_that_cannot_be_decoded_is_counted_logged_and_not_published(
    point_type: str,
    registers: list[int],
    error: str,
) -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, registers)
    bus.set_registers(UNIT, Table.HOLDING, 4, [42])
    points = [
        {"id": "bad", "table": "holding", "address": 0, "type": point_type},
        {"id": "good", "table": "holding", "address": 4},
    ]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        calls = await cycle(poller, bus)

    assert [(HOLDING, 0, 5)] == calls  # one request: the good point still arrives
    assert {"good": 42} == emitted.values()
    assert 1 == poller.stats.decode_errors
    assert [
        {
            "event": "point_decode_failed",
            "log_level": "warning",
            "device": "meter1",
            "connection": "fake",
            "unit": UNIT,
            "point": "bad",
            "error": error,
        }
    ] == events(logs, "point_decode_failed")


async def test_a_non_finite_float_shown_as_integer_is_a_decode_error_too() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [0x7F80, 0x0000])
    poller, emitted = make_poller(
        bus,
        [{"id": "f", "table": "holding", "address": 0, "type": "float32", "value_type": "integer"}],
    )

    await poller.poll_once()

    assert ({}, 1) == (emitted.values(), poller.stats.decode_errors)


async def test_repeated_decode_errors_are_all_counted_and_logged_once() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [0x7FC0, 0x0000])
    with captured_logs() as logs:
        poller, emitted = make_poller(
            bus, [{"id": "f", "table": "holding", "address": 0, "type": "float32"}]
        )
        for _ in range(5):
            await poller.poll_once()

    assert (5, 0) == (poller.stats.decode_errors, poller.stats.readings)
    assert 1 == len(events(logs, "point_decode_failed"))
    assert [] == emitted.readings


async def test_a_string_with_invalid_utf8_is_published_with_replacement_characters() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [0x41FF, 0xC328, 0x4200])  # A \xff \xc3( B
    poller, emitted = make_poller(
        bus, [{"id": "s", "table": "holding", "address": 0, "type": "string", "length": 3}]
    )

    await poller.poll_once()

    assert {"s": "A\ufffd\ufffd(B"} == emitted.values()
    assert 0 == poller.stats.decode_errors


async def test_readings_carry_the_bucket_and_the_time_of_the_response() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [5448])
    poller, emitted = make_poller(
        bus, [{"id": "v", "table": "holding", "address": 0, "scale": 0.01, "bucket": "power"}]
    )

    await poller.poll_once()

    assert [
        {"bucket": "power", "id": "v", "value": 54.48, "timestamp": str(WALL_MS)}
    ] == emitted.readings


# -- delivery: each response's readings made while the next request is out ----------------

FAR_APART = holding(0, 20, 40)  # beyond max_gap: three requests a cycle


class BrokenSink(Emitted):
    def __call__(self, bucket: str, fragments: list[bytes]) -> None:
        raise RuntimeError("the sink is broken")


async def test_a_cycles_readings_are_all_delivered_before_it_ends_and_derived_points_run() -> None:
    bus = FakeRegisterBus(latency=0.001)  # every read waits: deliveries run meanwhile
    bus.set_registers(UNIT, Table.HOLDING, 0, list(range(41)))
    poller, emitted = make_poller(bus, FAR_APART)
    seen_by_on_cycle: list[dict[str, Any]] = []
    poller.on_cycle = lambda: seen_by_on_cycle.append(emitted.values())

    await poller.poll_once()

    assert [(HOLDING, 0, 1), (HOLDING, 20, 1), (HOLDING, 40, 1)] == bus.calls()
    assert ["p0", "p20", "p40"] == [r["id"] for r in emitted.readings], "in the responses' order"
    assert [{"p0": 0, "p20": 20, "p40": 40}] == seen_by_on_cycle


async def test_what_a_delivery_raises_ends_the_cycle_in_the_pollers_task() -> None:
    bus = FakeRegisterBus(latency=0.001)
    poller, _ = make_poller(bus, FAR_APART, emitted=BrokenSink())

    with pytest.raises(RuntimeError, match="the sink is broken"):
        await poller.poll_once()


# -- a run: a read of plain points, made into readings in one pass -------------------------

_PLAIN = {  # a plain type, its registers, and the shape it is shown as
    "float32": (2, "float"),
    "float64": (4, "float"),
    "int16": (1, "integer"),
    "uint16": (1, "integer"),
    "int32": (2, "integer"),
    "uint64": (4, "integer"),
}
_REGISTER = st.integers(0, 0xFFFF) | st.sampled_from([0x7F80, 0x7FC0, 0xFF80, 0x8000])


def _block(types: Sequence[str], **extra: Any) -> list[dict[str, Any]]:
    """Points of `types` one after another from address 0, shown as themselves."""
    points, address = [], 0
    for n, point_type in enumerate(types):
        width, shape = _PLAIN[point_type]
        points.append(
            {
                "id": f"q{n}",
                "table": "holding",
                "address": address,
                "type": point_type,
                "value_type": shape,
                **extra,
            }
        )
        address += width
    return points


def _first_cycle(points: list[dict[str, Any]], registers: list[int]) -> tuple[Emitted, int, bool]:
    """One cycle of a poller of `points` over `registers`: what it emitted, its decode
    errors, and whether its one read is a run."""
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, registers)
    poller, emitted = make_poller(bus, points)
    asyncio.run(poller.poll_once())
    (request,) = poller.requests
    return emitted, poller.stats.decode_errors, poller._plan_of(request)[2] is not None


@settings(max_examples=60, deadline=None)
@given(
    types=st.lists(st.sampled_from(sorted(_PLAIN)), min_size=1, max_size=12),
    data=st.data(),
)
def test_a_run_publishes_what_the_point_by_point_path_publishes(
    types: list[str], data: st.DataObject
) -> None:
    """The same readings, errors and order whether a read is a run or, with a deadband of 0
    on every point (a first value always goes), point by point; NaN and infinities
    included (a run with one is delivered point by point, its bad value refused)."""
    width = sum(_PLAIN[t][0] for t in types)
    registers = data.draw(st.lists(_REGISTER, min_size=width, max_size=width))

    fast, fast_errors, is_run = _first_cycle(_block(types), registers)
    slow, slow_errors, slow_is_run = _first_cycle(_block(types, deadband=0), registers)

    assert (is_run, slow_is_run) == (True, False)
    assert slow.sent == fast.sent  # byte for byte: -0.0 is not 0.0, nor 1 1.0
    assert slow_errors == fast_errors


async def test_a_run_with_a_nan_publishes_the_others_and_counts_the_nan() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [0x4120, 0, 0x7FC0, 0, 0x4140, 0])  # 10, NaN, 12
    poller, emitted = make_poller(bus, _block(["float32"] * 3))

    await poller.poll_once()

    assert ({"q0": 10.0, "q2": 12.0}, 1) == (emitted.values(), poller.stats.decode_errors)


class Inputs:
    """Derived points' inputs as a poller sees them (agent.pipeline.derive's Calculator):
    every value given, by a point's tap or in a row, and each row asked for."""

    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)
        self.given: list[tuple[str, Any, int, str]] = []  # (id, value, timestamp, how)
        self.rows_asked: list[tuple[str, ...]] = []

    def __contains__(self, point_id: str) -> bool:
        return point_id in self.ids

    def tap(self, point_id: str) -> Any:
        return lambda value, stamp: self.given.append((point_id, value, stamp, "tap"))

    def rows(self, point_ids: Sequence[str]) -> Any:
        self.rows_asked.append(tuple(point_ids))
        places = [(n, point_id) for n, point_id in enumerate(point_ids) if point_id in self.ids]

        def row(values: Sequence[Any], stamp: int) -> None:
            self.given.extend((point_id, values[n], stamp, "row") for n, point_id in places)

        return row


async def test_inputs_set_after_a_run_was_made_are_given_its_values_as_a_row() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [1, 2, 3])
    poller, emitted = make_poller(bus, holding(0, 1, 2))
    await poller.poll_once()  # the run is made, without inputs
    inputs = Inputs("p1")
    poller.set_inputs(inputs)
    bus.set_registers(UNIT, Table.HOLDING, 1, [20])

    await poller.poll_once()

    assert [("p0", "p1", "p2")] == inputs.rows_asked
    assert [("p1", 20, WALL_MS, "row")] == inputs.given
    assert {"p0": 1, "p1": 20, "p2": 3} == emitted.values()


async def test_inputs_a_cut_short_cycle_left_unread_are_given_none() -> None:
    bus = FakeRegisterBus()
    bus.time_out(UNIT, Table.INPUT)
    bus.set_registers(UNIT, Table.HOLDING, 0, [5])
    points = [{"id": "i", "table": "input", "address": 0}, *holding(0)]
    poller, _ = make_poller(bus, points)
    inputs = Inputs("i", "p0")
    poller.set_inputs(inputs)

    await poller.poll_once()  # the input read times out: the holding one is not asked
    poller.set_inputs(None)  # (a reload without derived points)
    await poller.poll_once()

    assert [("i", None, "tap"), ("p0", None, "tap")] == [
        (point_id, value, how) for point_id, value, _, how in inputs.given
    ]


async def test_inputs_read_point_by_point_are_given_through_their_taps() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [1, 2])
    points = [*holding(0), {"id": "d", "table": "holding", "address": 1, "deadband": 5}]
    poller, _ = make_poller(bus, points)  # a deadband: no run
    inputs = Inputs("p0", "d")
    poller.set_inputs(inputs)

    await poller.poll_once()

    assert [] == inputs.rows_asked
    assert [("p0", 1, WALL_MS, "tap"), ("d", 2, WALL_MS, "tap")] == inputs.given


async def test_a_runs_aggregates_take_its_values_as_a_row_and_a_nan_point_by_point() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [0x4120, 0, 0x4130, 0, 0x4140, 0])  # 10, 11, 12
    poller, emitted = make_poller(bus, _block(["float32"] * 3))
    results: list[Result] = []
    windows = Aggregation(
        [("b", f"q{n}", Aggregate(60, ("count", "sum"))) for n in range(3)],
        emit=lambda bucket, parts: results.extend(decoded(parts)),
    )
    asked: list[tuple[str, tuple[str, ...], str]] = []
    made: list[str] = []  # the point-by-point taps made

    class Asked:
        def __contains__(self, key: tuple[str, str]) -> bool:
            return key in windows

        def tap(self, bucket: str, point_id: str) -> Any:
            made.append(point_id)
            return windows.tap(bucket, point_id)

        def rows(self, bucket: str, ids: Sequence[str], typecode: str) -> Any:
            asked.append((bucket, tuple(ids), typecode))
            return windows.rows(bucket, ids, typecode)

    inputs = Inputs("q0")
    poller.set_inputs(inputs)
    poller.set_aggregates(Asked())
    await poller.poll_once()
    await poller.poll_once()
    assert [] == made  # rows only: no point's own tap
    bus.set_registers(UNIT, Table.HOLDING, 2, [0x7FC0, 0])  # q1: NaN

    await poller.poll_once()  # point by point: q1 has no value, the others count
    windows.close_due(10**15)

    assert [("b", ("q0", "q1", "q2"), "f")] == asked
    assert ["q0", "q1", "q2"] == made  # only once a value came point by point
    # The derived points' input, in rows or not.
    assert [(10.0, "row"), (10.0, "row"), (10.0, "tap")] == [
        (value, how) for _, value, _, how in inputs.given
    ]
    assert {"q0_count": 3, "q1_count": 2, "q2_count": 3, "q1_sum": 22.0, "q2_sum": 36.0} == {
        r.id: r.value for r in results if r.id != "q0_sum"
    }
    assert 1 == poller.stats.decode_errors
    assert {"q0": 10.0, "q1": 11.0, "q2": 12.0} == emitted.values()  # q1's last: 11


async def test_status_shows_each_points_last_report_run_or_deadband() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [1, 2, 3])
    points = [*holding(0, 1), {"id": "d", "table": "holding", "address": 2, "deadband": 5}]
    poller, _ = make_poller(bus, points)
    assert [None, None, None] == [view.value for view in poller.point_views(0.0)]
    await poller.poll_once()
    bus.set_registers(UNIT, Table.HOLDING, 0, [10, 20, 4])  # d moves less than its deadband

    await poller.poll_once()

    assert [10, 20, 3] == [view.value for view in poller.point_views(time.monotonic())]


def test_devices_alike_share_their_spans_and_others_do_not() -> None:
    bus = FakeRegisterBus()
    one, _ = make_poller(bus, holding(0, 1, 2))
    two, _ = make_poller(bus, holding(0, 1, 2))
    other, _ = make_poller(bus, holding(0, 1, 3))

    spans = [device_spans(p.device) for p in (one, two, other)]

    assert all(a is b for a, b in zip(spans[0], spans[1], strict=True))
    assert not any(a is b for a, b in zip(spans[0], spans[2], strict=True))
    assert (Table.HOLDING, 3, 1, 2) == astuple(spans[2][2])


async def test_a_point_read_only_in_runs_needs_no_reader_until_a_nan_comes() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [0x4120, 0, 0x4140, 0])  # 10.0, 12.0
    poller, emitted = make_poller(bus, _block(["float32"] * 2))
    await poller.poll_once()
    assert [None, None] == poller._readers  # the run held what the readings needed

    bus.set_registers(UNIT, Table.HOLDING, 0, [0x7FC0, 0])  # q0 NaN: point by point
    await poller.poll_once()

    assert all(reader is not None for reader in poller._readers)
    assert {"q0": 10.0, "q1": 12.0} == emitted.values()
    assert 1 == poller.stats.decode_errors
