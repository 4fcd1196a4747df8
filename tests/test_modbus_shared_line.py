"""Several units behind one Modbus TCP connection (a gateway), against a real pymodbus server.

A connection carries one request at a time, so what the agent does between a reply and
the next request limits the line: a response is decoded once the line's next request has
left (the same device's next one, or another device's), in the order of the responses,
and its readings keep the time the response came in.

The plant is sim.plant's pymodbus server in a thread with an event loop of its own, so that
it answers while the agent's loop is busy. The readings' sink blocks the agent's loop
until the plant has received the line's next request (or gives up): that can only happen
if the request left before the readings were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from agent.config import resolve
from agent.config.schema import ModbusConfig
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.poller import DevicePoller
from sim.plant import PlantServer, SimUnit, serve_tcp

WAIT = 10.0
TIMEOUT = 0.25  # a silent unit's cost to the line
NEXT_REQUEST_WAIT = 2.0  # the longest the sink waits for the line's next request
WALL_BASE = 1_800_000_000_000  # ms; the poller's wall clock is this + requests served


@contextlib.contextmanager
def plant_in_thread(units: Sequence[SimUnit]) -> Iterator[PlantServer]:
    """`units` behind one TCP port, served by a thread of their own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="plant", daemon=True)
    thread.start()
    try:
        plant = asyncio.run_coroutine_threadsafe(serve_tcp(units), loop).result(WAIT)
        try:
            yield plant
        finally:
            asyncio.run_coroutine_threadsafe(plant.stop(), loop).result(WAIT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


class Sink:
    """The pollers' `emit`: the readings in the order they are made; for each response but
    the last, whether the plant had received the next request when its readings were made
    (it waits for it, blocking the agent's loop, up to NEXT_REQUEST_WAIT)."""

    def __init__(self, units: Sequence[SimUnit], responses: int | None = None) -> None:
        self.units = units
        self.responses = responses  # the cycle's responses in all; None: nothing waited for
        self.readings: list[dict[str, Any]] = []
        self.next_request_out: list[bool] = []

    def served(self) -> int:
        return sum(len(unit.requests) for unit in self.units)

    def __call__(self, bucket: str, fragments: list[bytes]) -> None:
        self.readings += [json.loads(fragment) for fragment in fragments]
        made = len(self.next_request_out) + 1  # responses made into readings, this one too
        if self.responses is None or made == self.responses:
            return  # the last: no request follows it
        deadline = time.monotonic() + NEXT_REQUEST_WAIT
        while self.served() <= made and time.monotonic() < deadline:
            time.sleep(0.001)
        self.next_request_out.append(self.served() > made)


def gateway(port: int, devices: list[dict[str, Any]], *, timeout: float = 1.0) -> ModbusConfig:
    return ModbusConfig.model_validate(
        {
            "name": "gateway",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout": timeout,
            "devices": devices,
        }
    )


def meter(unit: int, addresses: Sequence[int]) -> dict[str, Any]:
    return {
        "name": f"m{unit}",
        "unit": unit,
        "bucket": "b",
        "points": [{"id": f"m{unit}_{a}", "table": "holding", "address": a} for a in addresses],
    }


async def test_a_response_is_decoded_once_the_lines_next_request_has_left() -> None:
    units = [SimUnit(n) for n in (1, 2, 3)]
    for unit in units:
        unit.set_registers("holding", 0, [unit.unit_id * 100 + a for a in range(41)])
    # Unit 1: three requests a cycle (points too far apart to be read together); units 2
    # and 3: one each. Five responses, the line's requests in turn.
    devices = [meter(1, (0, 20, 40)), meter(2, (0,)), meter(3, (0,))]
    sink = Sink(units, responses=5)
    with plant_in_thread(units) as plant:
        connection = resolve.connection(gateway(plant.port, devices))
        line = ModbusLine(connection)
        pollers = [
            DevicePoller(
                device=device,
                bus=line,
                emit=sink,
                wall_ms=lambda: WALL_BASE + sink.served(),
            )
            for device in connection.devices
        ]
        try:
            # Unit 1 asks first; each device's next request waits for the others' turn.
            results = await asyncio.wait_for(
                asyncio.gather(*(poller.poll_once() for poller in pollers)), WAIT
            )
        finally:
            await line.close()

    assert [True, True, True] == results
    # Within a device (unit 1's second response, while its third request is out) and
    # between devices (each reply while the next device's request is out).
    assert [True, True, True, True] == sink.next_request_out
    # The order of the responses, each reading with its response's time: the plant had
    # served that many requests, not the next one, when the response came in.
    assert [
        ("m1_0", 100, 1),
        ("m2_0", 200, 2),
        ("m3_0", 300, 3),
        ("m1_20", 120, 4),
        ("m1_40", 140, 5),
    ] == [(r["id"], r["value"], int(r["timestamp"]) - WALL_BASE) for r in sink.readings]


async def test_a_silent_unit_behind_the_gateway_costs_the_others_its_time_out_only() -> None:
    units = [SimUnit(n) for n in (1, 2, 3)]
    units[1].dead = True
    for unit in units:
        unit.set_registers("holding", 0, [unit.unit_id])
    devices = [meter(n, (0,)) for n in (1, 2, 3)]
    sink = Sink(units)
    with plant_in_thread(units) as plant:
        connection = resolve.connection(gateway(plant.port, devices, timeout=TIMEOUT))
        line = ModbusLine(connection)
        pollers = [DevicePoller(device=d, bus=line, emit=sink) for d in connection.devices]
        started = time.monotonic()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(poller.poll_once() for poller in pollers)), WAIT
            )
        finally:
            await line.close()
        elapsed = time.monotonic() - started

    assert [True, False, True] == results
    assert ["m1_0", "m3_0"] == [r["id"] for r in sink.readings]
    assert 1 == pollers[1].stats.timeouts
    assert elapsed < TIMEOUT + 1.0, f"{elapsed:.2f} s for one time-out and two replies"
