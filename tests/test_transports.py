"""The four transports, each against a pymodbus server of its framing (sim.plant).

- `tcp`: Modbus TCP (MBAP) on loopback;
- `rtu-over-tcp`: RTU frames, CRC included, over a TCP socket, as a serial device server
  passes them on (pymodbus's TCP server with its RTU framer);
- `rtu` and `ascii`: Modbus RTU and Modbus ASCII on a serial line, a socat pty pair.

First what the adapter (`ModbusLine`) makes of each framing's faults: a reply with a bad
checksum, a silent unit, an exception response, a TCP connection lost under a request.
Then the agent, the same on every transport: coalesced points read in the planned
requests, a refused range split, a silent unit backed off while the other unit on its
connection keeps its interval, a setting from the cloud written to a holding register.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerType

from agent.config import load_config, resolve
from agent.config.model import Config
from agent.errors import DeviceProtocolError, DeviceRefused, DeviceTimeout, DeviceUnreachable
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import plan_device
from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import PlantServer, Request, SimUnit, serve_serial, serve_tcp
from sim.pty import PtyPair
from tests.helpers import agent_toml, device, running_agent
from tests.test_adapter_errors import failure, modbus_config
from tests.test_cloudconfig import reported_with

TRANSPORTS = ("tcp", "rtu-over-tcp", "rtu", "ascii")
CHECKSUMMED = ("rtu-over-tcp", "rtu", "ascii")  # a garbled reply fails its CRC or LRC
OVER_TCP = ("tcp", "rtu-over-tcp")
FRAMERS = {
    "tcp": FramerType.SOCKET,
    "rtu-over-tcp": FramerType.RTU,
    "rtu": FramerType.RTU,
    "ascii": FramerType.ASCII,
}
BAUDRATE = 38400
TIMEOUT = 0.25  # a request's; what a silent unit costs
LONG_TIMEOUT = 5.0  # for what must be told well before the time-out
WAIT = 30.0
READ = (1, Table.HOLDING, 0, 2)  # unit 1, holding registers 0 and 1
FUNCTIONS = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}


@dataclass(frozen=True, slots=True)
class Served:
    """A plant served with one transport's framing, and the `[[modbus]]` keys reaching it."""

    plant: PlantServer
    keys: dict[str, Any]

    def toml(self, devices: str, *, timeout: float = TIMEOUT) -> str:
        keys = "\n".join(f"{key} = {value!r}" for key, value in self.keys.items())
        # str's repr quotes with ', a TOML literal string: a device path needs no escape.
        return f"""
[[modbus]]
name = "line"
{keys}
timeout = {timeout}
{devices}
"""


@contextlib.asynccontextmanager
async def served(transport: str, units: Sequence[SimUnit], tmp_path: Path) -> AsyncIterator[Served]:
    """`units` behind one connection of `transport`: a TCP port or a pty pair's far end."""
    framer = FRAMERS[transport]
    async with contextlib.AsyncExitStack() as stack:
        if transport in OVER_TCP:
            plant = await serve_tcp(units, framer=framer)
            keys: dict[str, Any] = {"host": "127.0.0.1", "port": plant.port}
        else:
            pair = stack.enter_context(PtyPair(tmp_path / "pty"))
            plant = await serve_serial(units, pair.device_a, BAUDRATE, framer=framer)
            keys = {"device": pair.device_b, "baudrate": BAUDRATE}
        stack.push_async_callback(plant.stop)
        yield Served(plant, {"transport": transport, **keys})


def config_of(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "planned.toml"
    path.write_text(text)
    return load_config(path)


def line_to(place: Served, *, timeout: float = TIMEOUT) -> ModbusLine:
    return ModbusLine(resolve.connection(modbus_config(**place.keys, timeout=timeout)))


# -- the adapter's replies -----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_whole_reads_of_both_register_tables_come_back_as_the_unit_holds_them(
    transport: str, tmp_path: Path
) -> None:
    """The adapter decodes a read-registers reply itself (`REGISTER_RESPONSES`): every
    register of the largest read, each table, each framing, as the unit holds it."""
    unit = SimUnit(1)
    holding = [(n * 7919) % 65536 for n in range(125)]
    unit.set_registers("holding", 0, holding)
    unit.set_registers("input", 0, holding[::-1])
    async with served(transport, [unit], tmp_path) as place:
        line = line_to(place, timeout=LONG_TIMEOUT)
        try:
            got_holding = await line.read(1, Table.HOLDING, 0, 125)
            got_input = await line.read(1, Table.INPUT, 0, 125)
            got_part = await line.read(1, Table.HOLDING, 3, 1)
        finally:
            await line.close()

    assert holding == got_holding
    assert holding[::-1] == got_input
    assert [holding[3]] == got_part


# -- the adapter's errors ------------------------------------------------------------------


@pytest.mark.parametrize("transport", CHECKSUMMED)
async def test_a_reply_with_a_bad_checksum_is_a_protocol_error_with_its_bytes(
    transport: str, tmp_path: Path
) -> None:
    unit = SimUnit(1)
    unit.garble = True
    async with served(transport, [unit], tmp_path) as place:
        error = await failure(line_to(place))

    assert isinstance(error, DeviceProtocolError)
    assert error.received, "the bytes that came in are kept for the log"
    assert "no usable reply (a bad CRC" in str(error)
    assert 1 == len(unit.requests)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_silent_unit_is_a_time_out(transport: str, tmp_path: Path) -> None:
    unit = SimUnit(1)
    unit.dead = True
    async with served(transport, [unit], tmp_path) as place:
        error = await failure(line_to(place))

    assert isinstance(error, DeviceTimeout)
    assert f"unit 1 did not answer function 3 at 0 within {TIMEOUT}s" == str(error)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_exception_response_is_a_refusal_with_its_code(
    transport: str, tmp_path: Path
) -> None:
    unit = SimUnit(1)
    unit.invalid["holding"].add(1)
    async with served(transport, [unit], tmp_path) as place:
        error = await failure(line_to(place))

    assert isinstance(error, DeviceRefused)
    assert (2, 3, 0, 2) == (error.code, error.function, error.address, error.count)


@pytest.mark.parametrize("transport", OVER_TCP)
async def test_a_connection_lost_under_a_request_is_told_at_once_and_reopened(
    transport: str, tmp_path: Path
) -> None:
    unit = SimUnit(1)
    unit.dead = True
    unit.set_registers("holding", 0, [5, 6])
    async with served(transport, [unit], tmp_path) as place:
        line = line_to(place, timeout=LONG_TIMEOUT)
        try:
            started = time.monotonic()
            reading = asyncio.create_task(line.read(*READ), name="read")
            await unit.wait_for_requests(1, timeout=WAIT)
            place.plant.drop_connections()
            with pytest.raises(DeviceUnreachable):
                await reading
            elapsed = time.monotonic() - started
            unit.dead = False
            values = await line.read(*READ)
        finally:
            await line.close()

    assert elapsed < LONG_TIMEOUT / 2
    assert ([5, 6], 2) == (values, place.plant.connections)


# -- the agent on each transport ------------------------------------------------------------

COALESCED_POINTS = """
    { id = "h1", address = "40001" },
    { id = "h2", address = "40002" },
    { id = "h6", address = "40006" },
    { id = "t", address = "30001", type = "float32" },
    { id = "r", address = "30003" },
    { id = "c1", address = "00001" },
    { id = "c3", address = "00003" },
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_coalesced_points_arrive_read_in_the_planned_requests(
    transport: str, tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    unit = SimUnit(1)
    unit.set_registers("holding", 0, [11, 22, 0, 0, 0, 66])
    unit.set_float32("input", 0, 21.5)
    unit.set_registers("input", 2, [7])
    unit.set_bits("coil", 0, [True, False, True])
    async with served(transport, [unit], tmp_path) as place:
        text = agent_toml(broker, place.toml(device(interval=0.1, points=COALESCED_POINTS)))
        planned = [
            Request(FUNCTIONS[r.table], r.start, r.count)
            for r in plan_device(config_of(tmp_path, text).connections[0].devices[0])
        ]
        async with running_agent(tmp_path, text):
            await cloud.wait_for(lambda m: len({r["id"] for r in cloud.readings("b")}) == 7)
            await unit.wait_for_requests(2 * len(planned), timeout=WAIT)

    assert 3 == len(planned), "holding, input and coils: one request each"
    assert planned * 2 == unit.requests[: 2 * len(planned)]
    values = {r["id"]: r["value"] for r in cloud.readings("b")}
    assert {"h1": 11, "h2": 22, "h6": 66, "t": 21.5, "r": 7, "c1": True, "c3": True} == values


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_range_is_split_and_the_readable_points_arrive(
    transport: str, tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    unit = SimUnit(1)
    unit.invalid["holding"].add(198)  # between the points: a read across it is refused
    unit.set_registers("holding", 195, [1, 2, 3, 0, 5])
    points = ", ".join(
        f'{{ id = "h{a}", table = "holding", address = {a} }}' for a in (195, 196, 197, 199)
    )
    async with served(transport, [unit], tmp_path) as place:
        text = agent_toml(broker, place.toml(device(interval=0.1, points=points)))
        async with running_agent(tmp_path, text):
            await cloud.wait_for(lambda m: len({r["id"] for r in cloud.readings("b")}) == 4)
            learnt = len(unit.requests)
            await unit.wait_for_requests(learnt + 4, timeout=WAIT)

    assert Request(3, 195, 5) == unit.requests[0], "one read for the four points, refused"
    assert {Request(3, 195, 3), Request(3, 199, 1)} == set(unit.requests[learnt : learnt + 4])
    values = {r["id"]: r["value"] for r in cloud.readings("b")}
    assert {"h195": 1, "h196": 2, "h197": 3, "h199": 5} == values


FAST = 0.05  # the live unit's interval
BACKOFF_MAX = 0.5  # the silent unit's: asked again within this once backed off
SILENT_TIMEOUT = 0.1  # what each try of the silent unit costs the line
READS = 20  # the live unit's reads measured


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_silent_unit_is_backed_off_and_the_other_keeps_its_interval(
    transport: str, tmp_path: Path, broker: Broker
) -> None:
    live, silent = SimUnit(1), SimUnit(2)
    silent.dead = True
    devices = "".join(
        f"""
  [[modbus.devices]]
  name = "{name}"
  unit = {unit.unit_id}
  interval = {FAST}
  backoff_max = {BACKOFF_MAX}
  bucket = "b"
  points = [ {{ id = "{name}", address = "40001" }} ]
"""
        for name, unit in (("live", live), ("silent", silent))
    )
    async with served(transport, [live, silent], tmp_path) as place:
        text = agent_toml(broker, place.toml(devices, timeout=SILENT_TIMEOUT))
        async with running_agent(tmp_path, text):
            # Four failures in a row: its back-off is at its ceiling (0.4 s, 0.8 s capped).
            await silent.wait_for_requests(4, timeout=WAIT)
            started, asked = time.monotonic(), len(silent.requests)
            reads = live.read_count
            await live.wait_until(lambda u: u.read_count >= reads + READS, timeout=WAIT)
            elapsed = time.monotonic() - started
            tries = len(silent.requests) - asked

    # Asked in every cycle, the silent unit would hold the line SILENT_TIMEOUT of every
    # FAST + SILENT_TIMEOUT seconds: the live unit would make a third of its reads.
    assert elapsed < 2 * READS * FAST, f"{READS} reads in {elapsed:.2f} s"
    assert tries <= elapsed / (BACKOFF_MAX / 2) + 1, f"{tries} tries in {elapsed:.2f} s"


SETTINGS = """
[[config_groups]]
name = "limits"
settings = [
  { id = "limit", device = "meter1", address = "40011", type = "uint16", min = 0, max = 5000 },
  { id = "total", device = "meter1", address = "40021", type = "uint32" },
]
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_setting_from_the_cloud_is_written_to_the_unit(
    transport: str, tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    unit = SimUnit(1)
    async with served(transport, [unit], tmp_path) as place:
        text = agent_toml(broker, place.toml(device(interval=0.2)) + SETTINGS)
        async with running_agent(tmp_path, text):
            await cloud.publish_expected(
                "limits", [{"id": "limit", "value": 1234}, {"id": "total", "value": 70000}]
            )
            await cloud.wait_for(
                reported_with("limits", {"limit": 1234, "total": 70000}), timeout=WAIT
            )

    assert [1234] == unit.get_registers("holding", 10)
    assert [1, 70000 - 65536] == unit.get_registers("holding", 20, 2)
    written = [r for r in unit.requests if r.function_code in (6, 16)]
    assert [Request(6, 10, 1), Request(16, 20, 2)] == sorted(written)
