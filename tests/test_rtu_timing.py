"""An RTU line's timing and port modes, on socat pty pairs against sim.plant's pymodbus server.

The silence between frames runs from the end of the last frame on the line (the reply's
last bytes coming in): the next request goes at once when it has passed, after only the
remainder otherwise, and that remainder is not rounded up to asyncio's millisecond. The
port's low-latency and RS-485 modes are asked of the kernel; a pty has neither, which
is what is tested here: what the agent says, and whether it still polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agent.config import resolve
from agent.errors import DeviceUnreachable
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.points import Table
from agent.sources.modbus.timer import Timer
from agent.testing import captured_logs
from sim.plant import Packet, PlantServer, SimUnit, serve_rtu
from sim.pty import PtyPair
from tests.test_adapter_errors import modbus_config

BAUDRATE = 115200
READ = (1, Table.HOLDING, 0, 2)
ROUNDING = 0.001  # what asyncio.sleep may add: its selector waits whole milliseconds
SHORT = 0.0002  # a wait far below asyncio's millisecond


@asynccontextmanager
async def rtu_plant(pair: PtyPair) -> AsyncIterator[PlantServer]:
    unit = SimUnit(1)
    unit.set_registers("holding", 0, [3, 4])
    plant = await serve_rtu([unit], pair.device_a, BAUDRATE)
    try:
        yield plant
    finally:
        await plant.stop()


def rtu_line(pair: PtyPair, **keys: Any) -> ModbusLine:
    config = modbus_config(transport="rtu", device=pair.device_b, baudrate=BAUDRATE, **keys)
    return ModbusLine(resolve.connection(config))


def silences(wire: Sequence[Packet]) -> list[float]:
    """Seconds from each reply the server sent to the next request's first bytes."""
    gaps: list[float] = []
    replied: float | None = None
    for packet in wire:
        if packet.sending:
            replied = packet.at
        elif replied is not None:
            gaps.append(packet.at - replied)
            replied = None
    return gaps


def last_request_at(plant: PlantServer) -> float:
    return next(p.at for p in reversed(plant.wire) if not p.sending)


# -- waiting to the microsecond ------------------------------------------------------------


@pytest.fixture
async def timer() -> AsyncIterator[Timer]:
    made = Timer()
    yield made
    made.close()


async def test_a_deadline_already_passed_returns_without_giving_up_the_loop(
    timer: Timer,
) -> None:
    others: list[str] = []
    asyncio.get_running_loop().call_soon(others.append, "ran")

    await timer.sleep_until(time.monotonic() - 0.001)

    assert [] == others


async def test_a_short_wait_is_never_early_nor_rounded_up_to_the_millisecond(
    timer: Timer,
) -> None:
    lateness = []
    for _ in range(30):
        deadline = time.monotonic() + SHORT
        await timer.sleep_until(deadline)
        lateness.append(time.monotonic() - deadline)

    assert min(lateness) >= 0
    # asyncio.sleep(0.0002) wakes 0.8 ms late at best: its selector's 1 ms, less the wait;
    # the least lateness is the wake a loaded machine did not delay.
    assert min(lateness) < (ROUNDING - SHORT) / 2, lateness


async def test_a_cancelled_wait_does_not_end_the_next_one_early(timer: Timer) -> None:
    # Far enough ahead that a loaded machine still cancels the wait before it is due.
    first = time.monotonic() + 0.05
    waiting = asyncio.create_task(timer.sleep_until(first), name="wait")
    await asyncio.sleep(0)  # it arms the timer for `first`
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    while time.monotonic() < first:  # the loop held: the expiry is not read
        pass

    second = time.monotonic() + 10 * SHORT
    await timer.sleep_until(second)  # the first expiry, unread, is not this one's

    assert time.monotonic() >= second


async def test_a_closed_timer_works_again(timer: Timer) -> None:
    await timer.sleep_until(time.monotonic() + SHORT)
    timer.close()

    deadline = time.monotonic() + SHORT
    await timer.sleep_until(deadline)

    assert time.monotonic() >= deadline


# -- the silence between frames ----------------------------------------------------------


async def test_the_silence_is_kept_and_not_rounded_up(pty_pair: PtyPair) -> None:
    silence = 0.0012  # asyncio.sleep would make it 2 ms
    reads = 91
    async with rtu_plant(pty_pair) as plant:
        line = rtu_line(pty_pair, inter_frame=silence)
        try:
            for _ in range(reads):
                assert [3, 4] == await line.read(*READ)
        finally:
            await line.close()

    gaps = silences(plant.wire)
    assert reads - 1 == len(gaps)
    assert min(gaps) >= silence, "from the reply's end, not shorter"
    # Rounded up to asyncio's millisecond, no gap could be under 2 ms; kept, most are
    # (the least of them is the one a loaded machine woke on time: noise only adds, and
    # on a machine busy with a whole suite 30 gaps were once all late: 90 of them).
    assert min(gaps) < silence + ROUNDING * 3 / 4, gaps


async def test_only_what_is_left_of_the_silence_is_waited(pty_pair: PtyPair) -> None:
    silence, busy = 0.05, 0.03  # the caller spends `busy` between two reads
    async with rtu_plant(pty_pair) as plant:
        line = rtu_line(pty_pair, inter_frame=silence)
        try:
            await line.read(*READ)
            await asyncio.sleep(busy)  # the caller's own time: part of the silence
            called = time.monotonic()
            await line.read(*READ)
            waited = last_request_at(plant) - called
            await asyncio.sleep(silence * 1.2)  # the silence passes meanwhile
            called = time.monotonic()
            await line.read(*READ)
            at_once = last_request_at(plant) - called
        finally:
            await line.close()

    gaps = silences(plant.wire)
    assert all(gap >= silence for gap in gaps), gaps
    # Bounds wide enough for a loaded machine, narrow enough to tell the rest of the
    # silence (0.02 s) from the whole of it (0.05 s), and at once from either.
    assert silence - busy - 0.005 < waited < silence - 0.01, waited
    assert at_once < (silence - busy) / 2, at_once


# -- the port's modes on a port without them ------------------------------------------------


async def test_low_latency_on_a_port_without_it_is_a_warning_and_the_line_polls(
    pty_pair: PtyPair,
) -> None:
    async with rtu_plant(pty_pair):
        line = rtu_line(pty_pair, low_latency=True)
        with captured_logs() as logs:
            try:
                first = await line.read(*READ)
                await line.close()  # a reconnection says it again, at debug level
                second = await line.read(*READ)
            finally:
                await line.close()

    assert [3, 4] == first == second
    told = [e for e in logs if e["event"] == "low_latency_unavailable"]
    assert ["warning", "debug"] == [e["log_level"] for e in told]
    assert {("plc", pty_pair.device_b)} == {(e["connection"], e["device"]) for e in told}
    assert "Inappropriate ioctl for device" in told[0]["error"]


async def test_rs485_on_a_port_without_it_is_unreachable_and_the_port_is_let_go(
    pty_pair: PtyPair,
) -> None:
    async with rtu_plant(pty_pair) as plant:
        line = rtu_line(pty_pair, rs485=True)
        try:
            with pytest.raises(DeviceUnreachable) as raised:
                await line.read(*READ)
        finally:
            await line.close()
        # The port was closed: another opener gets it (pyserial locks it exclusively).
        other = rtu_line(pty_pair)
        try:
            values = await other.read(*READ)
        finally:
            await other.close()

    assert (
        f"cannot switch {pty_pair.device_b} to the kernel's RS-485 mode: Failed to set RS485"
        " mode: [Errno 25] Inappropriate ioctl for device (if the adapter switches the"
        " line's direction by itself, set rs485 = false)"
    ) == str(raised.value)
    assert [3, 4] == values
    assert 1 == len(plant.unit(1).requests), "nothing was sent on the port without RS-485"
