"""Points with an interval of their own: a slow value and a fast one on one unit.

Through an in-memory register bus (the requests of each cycle, exactly; the schedule in
virtual time), then the real agent against a pymodbus unit and mosquitto (how often the
unit was asked for each point, and what the cloud received).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.errors import DeviceRefused
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import REFUSED_RETRY_CYCLES, DevicePoller, cycles, plan_groups
from agent.testing import FakeRegisterBus, captured_logs, run_in_virtual_time
from sim.broker import Broker
from sim.cloud import CloudClient, Message, data_topic
from sim.plant import PlantServer, SimUnit
from tests.helpers import agent_toml, device, numbers, running_agent, tcp_connection
from tests.test_poller_unit import COIL, HOLDING, INPUT, UNIT, cycle, events, make_poller

Call = tuple[int, int, int]  # function, address, count

FAST = (HOLDING, 0, 1)  # the point read every cycle (at holding 0)
SLOW = (HOLDING, 10, 1)  # the point with an interval of its own (at holding 10)


def fast_and_slow(seconds: float = 3.0) -> list[dict[str, Any]]:
    """A point read every cycle and one read every `seconds` (the device's cycle: 1 s)."""
    return [
        {"id": "current", "table": "holding", "address": 0},
        {"id": "total", "table": "holding", "address": 10, "interval": seconds},
    ]


async def cycles_of(poller: DevicePoller, bus: FakeRegisterBus, count: int) -> list[list[Call]]:
    return [await cycle(poller, bus) for _ in range(count)]


Step = tuple[int, Callable[[FakeRegisterBus, DevicePoller], None]]


def run_schedule(
    points: Sequence[dict[str, Any]], until: int, steps: Sequence[Step] = (), **device: Any
) -> tuple[list[tuple[float, int]], DevicePoller]:
    """Run the poller (a device of 1 s) in virtual time until `until` requests were made,
    each step's action called once its count of requests was; (time, address) of each."""

    async def main() -> tuple[list[tuple[float, int]], DevicePoller]:
        bus = FakeRegisterBus()
        poller, _ = make_poller(bus, points, interval=1.0, **device)
        task = asyncio.create_task(poller.run(), name="poll[meter1]")
        for after, action in steps:
            await bus.wait_requests(after)
            action(bus, poller)
        await bus.wait_requests(until)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [(r.at, r.address) for r in bus.requests[:until]], poller

    return run_in_virtual_time(main())


# -- which groups a cycle reads -----------------------------------------------------------


async def test_each_group_is_read_in_the_cycles_its_interval_makes_all_in_the_first() -> None:
    bus = FakeRegisterBus()
    points = [
        {"id": "current", "table": "holding", "address": 0},
        {"id": "power", "table": "holding", "address": 5, "interval": 2.0},
        {"id": "total", "table": "holding", "address": 10, "interval": 3.0},
    ]
    poller, emitted = make_poller(bus, points)

    asked = await cycles_of(poller, bus, 7)

    power = (HOLDING, 5, 1)
    assert [
        [FAST, power, SLOW],  # every group in the first cycle, the faster first
        [FAST],
        [FAST, power],
        [FAST, SLOW],
        [FAST, power],
        [FAST],
        [FAST, power, SLOW],
    ] == asked
    assert 3 == sum(1 for r in emitted.readings if r["id"] == "total")


async def test_requests_are_coalesced_within_a_group_never_across_groups() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(UNIT, Table.HOLDING, 0, [10, 11, 12, 13])
    points = [
        {"id": "a0", "table": "holding", "address": 0},
        {"id": "b1", "table": "holding", "address": 1, "interval": 3.0},
        {"id": "a2", "table": "holding", "address": 2},
        {"id": "b3", "table": "holding", "address": 3, "interval": 3.0},
    ]
    poller, emitted = make_poller(bus, points)

    asked = await cycles_of(poller, bus, 2)

    # One request would read all four; the slow pair must not be read every cycle.
    assert [[(HOLDING, 0, 3), (HOLDING, 1, 3)], [(HOLDING, 0, 3)]] == asked
    assert [("a0", 10), ("a2", 12), ("b1", 11), ("b3", 13), ("a0", 10), ("a2", 12)] == [
        (r["id"], r["value"]) for r in emitted.readings
    ]
    assert [(1.0, [(Table.HOLDING, 0, 3)]), (3.0, [(Table.HOLDING, 1, 3)])] == [
        (seconds, [(r.table, r.start, r.count) for r in requests])
        for seconds, requests in plan_groups(poller.device)
    ]
    assert [(Table.HOLDING, 0, 3), (Table.HOLDING, 1, 3)] == [
        (r.table, r.start, r.count) for r in poller.requests
    ]


async def test_a_device_whose_points_all_have_an_interval_asks_nothing_in_between() -> None:
    bus = FakeRegisterBus()
    poller, _ = make_poller(bus, [{"id": "t", "table": "holding", "address": 0, "interval": 2.0}])

    answered = [await poller.poll_once() for _ in range(5)]

    assert [True] * 5 == answered
    assert [FAST] * 3 == bus.calls()
    assert 3 == bus.cycles_ended  # a cycle with nothing due does not touch the connection


@pytest.mark.parametrize(
    ("seconds", "interval", "expected"),
    [
        (None, 1.0, 1),
        (60.0, 1.0, 60),
        (60.0, 0.5, 120),
        (5.0, 3.0, 2),  # 1.67: the nearest
        (4.0, 3.0, 1),  # 1.33
        (1.0, 5.0, 1),  # at least one
    ],
)
def test_a_point_interval_is_the_nearest_whole_number_of_cycles_at_least_one(
    seconds: float | None, interval: float, expected: int
) -> None:
    assert expected == cycles(seconds, interval)


# -- the schedule: skipped slots, cycles cut short, back-off, a new interval -----------------


def test_a_slow_group_whose_slot_was_skipped_is_read_in_the_next_cycle_once() -> None:
    def overrun(bus: FakeRegisterBus, poller: DevicePoller) -> None:
        bus.latency = 1.5  # the third cycle (slot 2) ends at 3.5: slot 3 is skipped

    def back_to_normal(bus: FakeRegisterBus, poller: DevicePoller) -> None:
        bus.latency = 0.0

    asked, poller = run_schedule(fast_and_slow(), 11, [(3, overrun), (4, back_to_normal)])

    assert [
        (0.0, 0),
        (0.0, 10),
        (1.0, 0),
        (2.0, 0),  # overruns: slot 3, the slow group's, is skipped
        (4.0, 0),
        (4.0, 10),  # in the next cycle
        (5.0, 0),
        (6.0, 0),
        (6.0, 10),  # and in its own next slot: not twice for the one skipped
        (7.0, 0),
        (8.0, 0),
    ] == asked
    assert 1 == poller.stats.skipped_cycles


@pytest.mark.parametrize(
    "silent",
    [
        pytest.param(Table.INPUT, id="after-an-answer"),
        pytest.param(None, id="a-silent-unit"),
    ],
)
async def test_a_cycle_cut_short_before_the_slow_group_asks_it_in_the_next_cycle(
    silent: Table | None,
) -> None:
    bus = FakeRegisterBus()
    points = [
        {"id": "c", "table": "coil", "address": 0},
        {"id": "i", "table": "input", "address": 0},
        {"id": "total", "table": "holding", "address": 0, "interval": 3.0},
    ]
    poller, emitted = make_poller(bus, points)
    before = await cycles_of(poller, bus, 3)
    bus.time_out(UNIT, silent)
    cut = await cycle(poller, bus)
    bus.clear_faults()
    emitted.take()

    after = await cycles_of(poller, bus, 3)

    fast = [(COIL, 0, 1), (INPUT, 0, 1)]
    total = (HOLDING, 0, 1)
    assert [[*fast, total], fast, fast] == before
    assert (fast if silent is not None else fast[:1]) == cut  # slot 3: the slow group's, not sent
    assert [[*fast, total], fast, [*fast, total]] == after  # then its own slot again
    assert 2 == sum(1 for r in emitted.readings if r["id"] == "total")


async def test_what_a_slow_group_left_unanswered_is_asked_alone_in_the_next_cycle() -> None:
    bus = FakeRegisterBus()
    points = [
        {"id": "c", "table": "coil", "address": 0},
        {"id": "t0", "table": "holding", "address": 0, "interval": 3.0},
        {"id": "t100", "table": "holding", "address": 100, "interval": 3.0},
    ]
    bus.time_out(UNIT, Table.HOLDING, range(100, 101))
    poller, _ = make_poller(bus, points)
    first = await cycle(poller, bus)
    bus.clear_faults()

    later = await cycles_of(poller, bus, 3)

    coil, t0, t100 = (COIL, 0, 1), (HOLDING, 0, 1), (HOLDING, 100, 1)
    assert [coil, t0, t100] == first  # t100 times out
    assert [[coil, t100], [coil], [coil, t0, t100]] == later


def test_a_back_off_counts_as_one_slot_for_the_slow_group() -> None:
    def silence(bus: FakeRegisterBus, poller: DevicePoller) -> None:
        bus.time_out(UNIT)

    def answer(bus: FakeRegisterBus, poller: DevicePoller) -> None:
        bus.clear_faults()

    asked, poller = run_schedule(fast_and_slow(), 10, [(2, silence), (3, answer)])

    # Slot 1 is not answered (a back-off follows); slots 2, 3 ... follow it.
    assert [0, 10, 0, 0, 0, 10, 0, 0, 0, 10] == [address for _, address in asked]
    assert 1 == poller.stats.timeouts


SLOW_AFTER_CHANGE = [
    # the device's new interval (from 1 s, during the second cycle's sleep; the slow point's
    # 4 s), when the slow and the fast points are read
    pytest.param(2.0, [0, 4, 8, 12], [0, 1, 2, 4, 6, 8, 10, 12], id="2 s: every 2nd cycle"),
    pytest.param(
        0.5, [0, 4, 8, 12], [0, 1, *(2 + i / 2 for i in range(21))], id="0.5 s: every 8th"
    ),
    pytest.param(3.0, [0, 5, 8, 11], [0, 1, 2, 5, 8, 11], id="3 s: nearest, every cycle"),
]


@pytest.mark.parametrize(("interval", "slow", "fast"), SLOW_AFTER_CHANGE)
def test_a_new_device_interval_makes_a_new_multiple_from_the_point_interval_in_seconds(
    interval: float, slow: list[float], fast: list[float]
) -> None:
    def change(bus: FakeRegisterBus, poller: DevicePoller) -> None:
        poller.set_interval(interval)  # the third cycle (2.0 s) is already scheduled

    asked, _ = run_schedule(fast_and_slow(seconds=4.0), len(slow) + len(fast), [(3, change)])

    assert slow == [at for at, address in asked if address == 10]
    assert fast == [at for at, address in asked if address == 0]


# -- refusals in a slow group -------------------------------------------------------------


async def test_a_refusal_in_the_slow_group_replans_that_group_and_parks_as_usual() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(12, 13))
    points = [
        {"id": "current", "table": "holding", "address": 0},
        *(
            {"id": f"t{a}", "table": "holding", "address": a, "interval": 7.0}
            for a in range(10, 14)
        ),
    ]
    with captured_logs() as logs:
        poller, emitted = make_poller(bus, points)
        asked = await cycles_of(poller, bus, 2 * REFUSED_RETRY_CYCLES + 1)

    assert [
        FAST,
        (HOLDING, 10, 4),  # refused: halves
        (HOLDING, 10, 2),
        (HOLDING, 12, 2),  # refused: halves
        (HOLDING, 12, 1),  # refused alone: parked
        (HOLDING, 13, 1),
    ] == asked[0]
    assert [[FAST]] * 6 == asked[1:7]
    assert [FAST, (HOLDING, 10, 2), (HOLDING, 13, 1)] == asked[7]  # its next slot, replanned
    assert [(7.0, [("holding", 10, 2), ("holding", 13, 1)])] == [
        (e["interval"], e["requests"]) for e in events(logs, "requests_planned")
    ]
    # The parked point is asked again every REFUSED_RETRY_CYCLES cycles, in no slot of its
    # group (60 and 120 are not multiples of 7).
    retried = [n for n, calls in enumerate(asked, start=1) if (HOLDING, 12, 1) in calls]
    assert [1, 1 + REFUSED_RETRY_CYCLES, 1 + 2 * REFUSED_RETRY_CYCLES] == retried
    assert [["t12"]] == [e["points"] for e in events(logs, "read_refused")]
    assert {"current", "t10", "t11", "t13"} == set(emitted.values())


async def test_a_busy_answer_in_the_slow_group_asks_the_rest_of_it_in_the_next_cycle() -> None:
    bus = FakeRegisterBus()
    bus.refuse(UNIT, Table.HOLDING, range(10, 11), code=DeviceRefused.SERVER_DEVICE_BUSY, times=1)
    poller, emitted = make_poller(bus, fast_and_slow())

    asked = await cycles_of(poller, bus, 4)

    assert [[FAST, SLOW], [FAST, SLOW], [FAST], [FAST, SLOW]] == asked
    assert 2 == sum(1 for r in emitted.readings if r["id"] == "total")


# -- live: the agent, a pymodbus unit and mosquitto -----------------------------------------

LIVE_INTERVAL = 0.2  # the device's
LIVE_SLOW = 1.0  # the slow point's: every 5th cycle
LIVE_EVERY = round(LIVE_SLOW / LIVE_INTERVAL)
SLOW_READS = 5
WAIT = 30.0


def counted(unit: SimUnit, address: int) -> int:
    """How many reads of holding `address` the unit answered (its counting register)."""
    return unit.get_registers("holding", address)[0]


async def test_a_slow_and_a_fast_point_on_one_unit_are_asked_and_published_at_their_rates(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    # Each register counts the reads that touch it: a reading says which read it came from.
    sim_unit.count_reads("holding", 0)
    sim_unit.count_reads("holding", 2)
    points = (
        '{ id = "current", table = "holding", address = 0 },\n'
        f'    {{ id = "total", table = "holding", address = 2, interval = {LIVE_SLOW} }}'
    )
    config = agent_toml(
        broker, tcp_connection(tcp_plant, device(interval=LIVE_INTERVAL, points=points))
    )
    topic = data_topic(broker.thing_id, "b")

    def has_total(number: int) -> Callable[[Message], bool]:
        def match(message: Message) -> bool:
            return message.topic == topic and any(
                r["id"] == "total" and r["value"] == number for r in message.json()
            )

        return match

    async with running_agent(tmp_path, config):
        await sim_unit.wait_until(lambda u: counted(u, 2) >= SLOW_READS, timeout=WAIT)
        slow, fast = counted(sim_unit, 2), counted(sim_unit, 0)
        await cloud.wait_for(has_total(SLOW_READS), timeout=WAIT)

    reads = {(r.function_code, r.address, r.count) for r in sim_unit.requests}
    assert {(3, 0, 1), (3, 2, 1)} == reads  # 0 and 2 would be one request: not coalesced
    # Once in LIVE_EVERY cycles (a cycle skipped on a busy machine makes the ratio lower),
    # and at most one cycle's fast read ahead of the slow one.
    assert 0.6 * LIVE_EVERY * slow <= fast <= LIVE_EVERY * slow + 1, (fast, slow)
    readings = cloud.readings("b")
    totals = numbers(readings, "total")
    currents = numbers(readings, "current")
    assert set(range(1, SLOW_READS + 1)) <= set(totals)  # from the first cycle on, each once
    assert 1 == max(totals.values())
    assert 1 == min(currents)
    assert 0.6 * LIVE_EVERY * SLOW_READS <= len(currents), (len(currents), len(totals))
