"""Modbus exception responses by their meaning, against real parts: the pymodbus client
(`ModbusLine`) against a raw TCP unit that answers an exception code before it answers
values (sim.rogue), and against a pymodbus server that lacks some addresses (sim.plant).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from agent.config import resolve
from agent.config.schema import ModbusConfig
from agent.errors import DeviceRefused
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.poller import REFUSED_RETRY_CYCLES, DevicePoller
from agent.testing import captured_logs
from sim.plant import Request, SimUnit, serve_tcp
from sim.rogue import REGISTER_VALUE, Fault, RogueTcpDevice
from tests.helpers import poll_until
from tests.test_poller_unit import events
from tests.test_refusals import RETRIED, outage

UNIT = 1
INTERVAL = 0.2
BACKOFF_MAX = 0.5
WAIT = 5.0  # well within REFUSED_RETRY_CYCLES * INTERVAL, what a parked point would cost


class RefusesFirst(RogueTcpDevice):
    """A TCP unit that answers exception `code` to its first `times` requests, then values."""

    def __init__(self, code: int, *, times: int) -> None:
        super().__init__("exception", exception_code=code)
        self.times = times

    @property
    def fault(self) -> Fault:
        return "exception" if self.requests <= self.times else "ok"

    @fault.setter
    def fault(self, value: Fault) -> None:
        """Set by the base class; this unit's fault follows its request count instead."""


def connection(port: int, points: Sequence[dict[str, Any]]) -> ModbusConfig:
    return ModbusConfig.model_validate(
        {
            "name": "plc",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout": 1.0,
            "devices": [
                {
                    "name": "meter1",
                    "unit": UNIT,
                    "interval": INTERVAL,
                    "backoff_max": BACKOFF_MAX,
                    "bucket": "b",
                    "points": list(points),
                }
            ],
        }
    )


class Published:
    """The readings handed on, and how many requests the unit had seen by the first."""

    def __init__(self, asked: Any) -> None:
        self.values: list[object] = []
        self.asked_by_first: int | None = None
        self._asked = asked

    def __call__(self, bucket: str, fragments: list[bytes]) -> None:
        if self.asked_by_first is None:
            self.asked_by_first = self._asked()
        self.values += [json.loads(f)["value"] for f in fragments]


@contextlib.asynccontextmanager
async def polling(poller: DevicePoller, line: ModbusLine) -> AsyncIterator[None]:
    task = asyncio.create_task(poller.run(), name="poll[meter1]")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await line.close()


@pytest.mark.parametrize("code", RETRIED)
async def test_a_unit_that_answers_not_now_twice_is_read_on_the_third_request(code: int) -> None:
    async with RefusesFirst(code, times=2) as device:
        config = resolve.connection(
            connection(device.port, [{"id": "v", "table": "holding", "address": 0}])
        )
        line = ModbusLine(config)
        published = Published(lambda: device.requests)
        with captured_logs() as logs:
            poller = DevicePoller(device=config.devices[0], bus=line, emit=published)
            async with polling(poller, line):
                await poll_until(
                    lambda: published.values, timeout=WAIT, what="a reading after the refusals"
                )

    assert 3 == published.asked_by_first  # two refused, then read: not parked
    assert REGISTER_VALUE == published.values[0]
    meaning = DeviceRefused.MEANINGS[code]
    assert [
        ("device_unreachable", "warning", code, meaning),
        ("device_still_unreachable", "debug", code, meaning),
        ("device_recovered", "info", None, None),
    ] == outage(logs)
    assert [] == events(logs, "read_refused")


async def test_a_pymodbus_unit_without_some_addresses_is_read_in_the_fewest_requests() -> None:
    # No coil 100 and no holding 200 (both configured), no holding 198 (between points).
    unit = SimUnit(UNIT)
    unit.invalid["coil"].add(100)
    unit.invalid["holding"].update({198, 200})
    unit.set_bits("coil", 97, [True, False, True])
    unit.set_registers("holding", 195, [1, 2, 3, 0, 5])
    points = [
        *({"id": f"c{a}", "table": "coil", "address": a} for a in (97, 99, 100)),
        *({"id": f"h{a}", "table": "holding", "address": a} for a in (195, 196, 197, 199, 200)),
    ]
    plant = await serve_tcp([unit])
    try:
        config = resolve.connection(connection(plant.port, points))
        line = ModbusLine(config)
        values: dict[str, object] = {}

        def emit(bucket: str, fragments: list[bytes]) -> None:
            values.update((r["id"], r["value"]) for r in map(json.loads, fragments))

        with captured_logs() as logs:
            poller = DevicePoller(device=config.devices[0], bus=line, emit=emit)
            cycles: list[list[Request]] = []
            try:
                for _ in range(5):
                    before = len(unit.requests)
                    await poller.poll_once()
                    cycles.append(unit.requests[before:])
            finally:
                await line.close()
    finally:
        await plant.stop()

    # The second cycle tries 195-199 (only 200 was known refused) and learns of 198.
    assert [(1, 97, 3), (3, 195, 3), (3, 199, 1)] == [tuple(r) for r in cycles[-1]]
    assert cycles[-1] == cycles[-2] == cycles[-3]
    assert {"c97": True, "c99": True, "h195": 1, "h196": 2, "h197": 3, "h199": 5} == values
    assert [(["c100"], REFUSED_RETRY_CYCLES), (["h200"], REFUSED_RETRY_CYCLES)] == [
        (e["points"], e["retry_in_cycles"]) for e in events(logs, "read_refused")
    ]
