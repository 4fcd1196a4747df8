"""Modbus exception responses by their meaning, through an in-memory register bus.

Busy and gateway codes are retried within the device's back-off; illegal address and value
split the request, and the next cycles are planned again to the fewest requests around what
the unit refused; illegal function and unknown codes park the points. What the unit was
asked, what was published and what was logged; the schedule in virtual time.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DeviceRefused
from agent.sources.modbus.plan import Refused, Span
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import REFUSED_RETRY_CYCLES, DevicePoller
from agent.testing import FakeRegisterBus, captured_logs, run_in_virtual_time
from tests.test_plan import fewest_requests
from tests.test_poller_unit import (
    COIL,
    HOLDING,
    INPUT,
    UNIT,
    Emitted,
    Event,
    cycle,
    events,
    holding,
    make_poller,
)

RETRIED = [
    DeviceRefused.SERVER_DEVICE_FAILURE,
    DeviceRefused.ACKNOWLEDGE,
    DeviceRefused.SERVER_DEVICE_BUSY,
    DeviceRefused.GATEWAY_PATH_UNAVAILABLE,
    DeviceRefused.GATEWAY_TARGET_FAILED_TO_RESPOND,
]
PARKED = [DeviceRefused.ILLEGAL_FUNCTION, DeviceRefused.MEMORY_PARITY_ERROR, 7, 12, 0x80]
VIRTUAL_DEADLINE = 120.0  # seconds of the loop's time a test may run the poller


def coils(*addresses: int) -> list[dict[str, object]]:
    return [{"id": f"c{a}", "table": "coil", "address": a} for a in addresses]


def outage(logs: list[Event]) -> list[tuple[str, str, object, object]]:
    """The outage's log lines: event, level, code and meaning."""
    return [
        (e["event"], e["log_level"], e.get("code"), e.get("meaning"))
        for e in logs
        if e["event"].startswith("device_")
    ]


async def run_until(poller: DevicePoller, emitted: Emitted, readings: int) -> None:
    """Run the poller until `readings` readings were published (within 2 minutes of the
    loop's time, which costs no real time)."""
    task = asyncio.create_task(poller.run(), name="poll[meter1]")
    try:
        async with asyncio.timeout(VIRTUAL_DEADLINE):
            while len(emitted.readings) < readings:  # noqa: ASYNC110 - virtual time: free
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- retried: busy, acknowledge, device failure, the gateway codes ---------------------------


def test_a_unit_busy_twice_is_asked_again_within_backoff_max_and_read() -> None:
    backoff_max = 2.0

    async def main() -> tuple[list[float], list[float], list[Event], DevicePoller]:
        bus = FakeRegisterBus()
        bus.set_registers(UNIT, Table.HOLDING, 0, [42])
        bus.refuse(UNIT, code=DeviceRefused.SERVER_DEVICE_BUSY, times=2)
        with captured_logs() as logs:
            poller, emitted = make_poller(bus, holding(0), interval=1.0, backoff_max=backoff_max)
            await run_until(poller, emitted, 2)
        assert [(HOLDING, 0, 1)] * 4 == bus.calls()
        assert [{"bucket": "b", "id": "p0", "value": 42}] * 2 == [
            {k: v for k, v in r.items() if k != "timestamp"} for r in emitted.readings
        ]
        return [r.at for r in bus.requests], emitted.times, logs, poller

    asked, published, logs, poller = run_in_virtual_time(main())

    pauses = [later - earlier for earlier, later in itertools.pairwise(asked)]
    assert all(0 < pause <= backoff_max for pause in pauses[:2]), pauses
    assert asked[2] <= 2 * backoff_max  # not parked for REFUSED_RETRY_CYCLES
    assert [asked[2], asked[2] + 1.0] == published  # then on the interval again
    assert [
        ("device_unreachable", "warning", 6, "server device busy"),
        ("device_still_unreachable", "debug", 6, "server device busy"),
        ("device_recovered", "info", None, None),
    ] == outage(logs)
    assert [] == events(logs, "read_refused")
    stats = poller.stats
    assert (2, 2, 0, 2, 0) == (
        stats.refused,
        stats.read_errors,
        stats.timeouts,
        stats.requests_ok,
        stats.consecutive_failures,
    )


def test_a_gateway_whose_target_fails_for_3_s_is_read_within_backoff_max_after() -> None:
    backoff_max = 2.0
    ends = 3.0

    async def main() -> tuple[list[float], list[float], list[Event]]:
        bus = FakeRegisterBus()
        bus.set_registers(UNIT, Table.INPUT, 7, [9])
        bus.refuse(UNIT, code=DeviceRefused.GATEWAY_TARGET_FAILED_TO_RESPOND)
        asyncio.get_running_loop().call_later(ends, bus.clear_faults)
        with captured_logs() as logs:
            poller, emitted = make_poller(
                bus,
                [{"id": "flow", "table": "input", "address": 7}],
                interval=1.0,
                backoff_max=backoff_max,
            )
            await run_until(poller, emitted, 1)
        assert {"flow": 9} == emitted.values()
        return [r.at for r in bus.requests], emitted.times, logs

    asked, published, logs = run_in_virtual_time(main())

    refused = [at for at in asked if at < ends]
    assert 2 <= len(refused)  # asked during the outage, every time within backoff_max
    assert all(b - a <= backoff_max for a, b in itertools.pairwise(asked)), asked
    assert ends < published[0] <= ends + backoff_max
    assert ("device_unreachable", "warning", 11, "gateway target device failed to respond") == (
        outage(logs)[0]
    )
    assert ("device_recovered", "info", None, None) == outage(logs)[-1]
    assert [] == events(logs, "read_refused")


@pytest.mark.parametrize("code", RETRIED)
async def test_a_code_that_means_not_now_fails_the_cycle_and_parks_nothing(code: int) -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [5])
    bus.refuse(UNIT, Table.HOLDING, code=code, times=2)
    poller, emitted = make_poller(bus, holding(0, 1))

    answered = [await poller.poll_once() for _ in range(3)]

    assert [False, False, True] == answered
    assert [(HOLDING, 0, 2)] * 3 == bus.calls()  # the same request: not split, not parked
    assert {"p0": 5, "p1": 0} == emitted.values()
    assert (2, 2, 0) == (
        poller.stats.refused,
        poller.stats.read_errors,
        poller.stats.consecutive_failures,
    )


async def test_a_busy_answer_ends_the_cycle_like_a_time_out() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(0, 1), code=DeviceRefused.SERVER_DEVICE_BUSY, times=1)
    points = [*coils(0), *holding(0), *holding(100)]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        first = await cycle(poller, bus)
        answered = poller.stats.consecutive_failures
        second = await cycle(poller, bus)

    assert [(COIL, 0, 1), (HOLDING, 0, 1)] == first  # holding 100 is not asked
    assert [(COIL, 0, 1), (HOLDING, 0, 1), (HOLDING, 100, 1)] == second
    assert 0 == answered  # the coil answered: not a failed cycle, as after a time-out
    assert [
        {
            "event": "cycle_cut_short",
            "log_level": "warning",
            "device": "meter1",
            "connection": "fake",
            "unit": UNIT,
            "error": "unit 1 refused function 3 at 0 (count 1): exception code 6",
            "unsent": 1,
            "code": 6,
            "meaning": "server device busy",
        }
    ] == events(logs, "cycle_cut_short")
    assert {"c0", "p0", "p100"} == set(emitted.values())


# -- parked: illegal function, memory parity, codes the standard does not define -----------


@pytest.mark.parametrize("code", PARKED)
async def test_a_code_that_means_never_parks_the_points_logged_once_with_its_name(
    code: int,
) -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.INPUT, code=code)
    points = [
        {"id": "i0", "table": "input", "address": 0},
        {"id": "i3", "table": "input", "address": 3},
        *holding(0),
    ]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        asked = [await cycle(poller, bus) for _ in range(2 * REFUSED_RETRY_CYCLES + 1)]

    retry = [(HOLDING, 0, 1), (INPUT, 0, 4)]
    assert [retry, *[[(HOLDING, 0, 1)]] * (REFUSED_RETRY_CYCLES - 1)] * 2 + [retry] == [
        sorted(calls) for calls in asked
    ]
    assert [] == events(logs, "request_split")
    meaning = DeviceRefused.MEANINGS.get(code, "not a standard exception code")
    assert [("warning", "input", 0, 4, ["i0", "i3"], code, meaning, REFUSED_RETRY_CYCLES)] == [
        (
            e["log_level"],
            e["table"],
            e["start"],
            e["count"],
            e["points"],
            e["code"],
            e["meaning"],
            e["retry_in_cycles"],
        )
        for e in events(logs, "read_refused")
    ]
    assert [("debug", code)] * 2 == [
        (e["log_level"], e["code"]) for e in events(logs, "read_still_refused")
    ]
    assert {"p0"} == set(emitted.values())
    assert (0, 3) == (poller.stats.consecutive_failures, poller.stats.refused)


async def test_a_parked_request_that_answers_again_is_planned_back_in() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(2, 3), code=DeviceRefused.ILLEGAL_FUNCTION)
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, holding(0, 1, 2))
        first = await cycle(poller, bus)
        bus.clear_faults()
        for _ in range(REFUSED_RETRY_CYCLES - 1):
            await poller.poll_once()
        emitted.take()
        retry = await cycle(poller, bus)
        after = await cycle(poller, bus)

    assert [(HOLDING, 0, 3)] == first  # not split: all of it parked
    assert [(HOLDING, 0, 3)] == retry
    assert [(HOLDING, 0, 3)] == after
    assert {"p0", "p1", "p2"} == set(emitted.values())
    assert [["p0", "p1", "p2"]] == [e["points"] for e in events(logs, "read_resumed")]


# -- split: illegal address and value, then the fewest requests -----------------------------


async def test_after_a_split_the_halves_are_merged_back_around_the_parked_points() -> None:
    # The unit: no holding 200 and no coil 100, both configured as points.
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 195, [195, 196, 197, 0, 199])
    bus.set_bits(UNIT, Table.COIL, 97, [True, False, True])
    bus.refuse(UNIT, Table.HOLDING, range(200, 201))
    bus.refuse(UNIT, Table.COIL, range(100, 101), code=DeviceRefused.ILLEGAL_DATA_VALUE)
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, [*coils(97, 99, 100), *holding(195, 196, 197, 199, 200)])
        first = await cycle(poller, bus)
        emitted.take()
        later = [await cycle(poller, bus) for _ in range(3)]

    assert [
        (COIL, 97, 4),  # refused: halves
        (COIL, 97, 1),
        (COIL, 99, 2),  # refused: halves
        (COIL, 99, 1),
        (COIL, 100, 1),  # refused alone: parked
        (HOLDING, 195, 6),  # refused: halves
        (HOLDING, 195, 2),
        (HOLDING, 197, 4),  # refused: halves
        (HOLDING, 197, 1),
        (HOLDING, 199, 2),  # refused: halves
        (HOLDING, 199, 1),
        (HOLDING, 200, 1),  # refused alone: parked
    ] == first
    # Then one request per table: 98 and 198 were never refused on their own.
    assert [[(COIL, 97, 3), (HOLDING, 195, 5)]] * 3 == later
    assert {"c97": True, "c99": True, "p195": 195, "p196": 196, "p197": 197, "p199": 199} == (
        emitted.values()
    )
    assert [(["c100"], "illegal data value"), (["p200"], "illegal data address")] == [
        (e["points"], e["meaning"]) for e in events(logs, "read_refused")
    ]
    assert (7, 7, 5 + 3 * 2) == (
        poller.stats.refused,
        poller.stats.read_errors,
        poller.stats.requests_ok,
    )


async def test_an_address_the_unit_lacks_between_points_keeps_them_apart() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(198, 199))  # a hole: no point there
    poller, _ = make_poller(bus, holding(195, 196, 197, 199))

    first = await cycle(poller, bus)
    later = [await cycle(poller, bus) for _ in range(3)]

    assert [(HOLDING, 195, 5), (HOLDING, 195, 2), (HOLDING, 197, 3)] == first[:3]
    assert [[(HOLDING, 195, 3), (HOLDING, 199, 1)]] * 3 == later  # two: the minimum
    assert 2 == poller.stats.refused


async def test_a_merge_the_unit_refuses_is_learnt_from_once() -> None:
    # No 198 (a hole) and no 200 (a point): after the first split only 200 is known, so
    # 195-199 is tried as one; its refusal pins down 198.
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(198, 199))
    bus.refuse(UNIT, Table.HOLDING, range(200, 201))
    poller, _ = make_poller(bus, holding(195, 196, 197, 199, 200))

    await cycle(poller, bus)
    second = await cycle(poller, bus)
    refused = poller.stats.refused
    later = [await cycle(poller, bus) for _ in range(3)]

    # 195-199 refused: halves 195-196 and 197-199; 197-199 refused: halves 197 and 199.
    assert [(HOLDING, 195, 5), (HOLDING, 195, 2), (HOLDING, 197, 3)] == second[:3]
    assert [(HOLDING, 197, 1), (HOLDING, 199, 1)] == second[3:]
    assert [[(HOLDING, 195, 3), (HOLDING, 199, 1)]] * 3 == later
    assert refused == poller.stats.refused


async def test_a_split_cut_short_by_a_busy_unit_is_carried_on_in_the_next_cycles() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(5, 6))
    bus.refuse(UNIT, Table.HOLDING, range(0, 1), code=DeviceRefused.SERVER_DEVICE_BUSY, times=1)
    poller, emitted = make_poller(bus, holding(*range(8)))

    first = await cycle(poller, bus)
    for _ in range(3):
        await poller.poll_once()
    emitted.take()
    settled = await cycle(poller, bus)

    assert [(HOLDING, 0, 8), (HOLDING, 0, 4)] == first  # refused, then busy: the cycle ends
    assert [(HOLDING, 0, 5), (HOLDING, 6, 2)] == settled
    assert {f"p{n}" for n in range(8)} - {"p5"} == set(emitted.values())


# -- property: the plan a unit settles on is the fewest requests that it answers ------------


TABLES = st.sampled_from([Table.COIL, Table.HOLDING])


@st.composite
def units(draw: st.DrawFn) -> tuple[list[tuple[Table, int, int]], list[tuple[Table, int]], int]:
    """Points (table, address, width) that do not overlap, the addresses the unit lacks,
    and max_gap."""
    cells = draw(
        st.lists(st.tuples(TABLES, st.integers(0, 14)), unique=True, min_size=1, max_size=6)
    )
    points = []
    taken: set[tuple[Table, int]] = set()
    for table, address in sorted(cells):
        width = 1 if table.is_bits else draw(st.sampled_from([1, 1, 2]))
        covered = {(table, a) for a in range(address, address + width)}
        if not covered & taken:
            taken |= covered
            points.append((table, address, width))
    missing = draw(st.lists(st.tuples(TABLES, st.integers(0, 15)), unique=True, max_size=4))
    return points, missing, draw(st.integers(0, 4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(units())
def test_the_plan_a_unit_settles_on_is_the_fewest_requests_around_what_it_lacks(
    unit: tuple[list[tuple[Table, int, int]], list[tuple[Table, int]], int],
) -> None:
    points, missing, max_gap = unit
    lacks = [Refused(table, address, address + 1) for table, address in missing]
    config = [
        {
            "id": f"{table}{address}",
            "table": str(table),
            "address": address,
            **({} if width == 1 else {"type": "uint32"}),
        }
        for table, address, width in points
    ]

    async def main() -> tuple[int, list[list[tuple[int, int, int]]], DevicePoller]:
        bus = FakeRegisterBus()
        for table, address in missing:
            bus.refuse(UNIT, table, range(address, address + 1))
        poller, _ = make_poller(bus, config, max_gap=max_gap)
        learning = 0
        while learning < 10:  # cycles until nothing is refused any more
            refused = poller.stats.refused
            await poller.poll_once()
            if refused == poller.stats.refused and learning:
                break
            learning += 1
        refused = poller.stats.refused
        settled = [await cycle(poller, bus) for _ in range(2)]
        assert refused == poller.stats.refused  # what it settled on, the unit answers
        return learning, settled, poller

    learning, settled, poller = run_in_virtual_time(main())

    readable = [
        Span(table, address, width, index)
        for index, (table, address, width) in enumerate(points)
        if not any(r.within(table, address, address + width) for r in lacks)
    ]
    assert learning < 10
    assert settled[0] == settled[1]
    assert len(settled[0]) == fewest_requests(readable, poller.device.limits, lacks)
    assert sorted(s.index for r in poller.requests for s in r.spans) == [s.index for s in readable]
