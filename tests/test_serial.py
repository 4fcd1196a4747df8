"""Plain serial instruments on socat pty pairs, the test writing as the instrument."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import resource
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import model, resolve
from agent.config.schema import SerialConfig
from agent.pipeline.readings import Reading
from agent.service.agent import Agent
from agent.service.supervise import supervise
from agent.sources.serial import nmea
from agent.sources.serial.instrument import Instrument
from agent.sources.serial.lines import LineFramer
from agent.sources.serial.port import SerialPort
from sim.broker import Broker
from sim.cloud import CloudClient, Message
from sim.gps import sentence
from sim.pty import PtyPair
from tests.helpers import agent_toml, poll_until, running_agent

WAIT = 30.0


def nmea_sentence(body: str) -> str:
    """A sentence with its checksum, without the line end."""
    return sentence(body).rstrip()


GGA_NORTH_EAST = nmea_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
GGA_SOUTH_WEST = nmea_sentence("GNGGA,092750.000,3352.0000,S,15112.5000,W,2,11,0.8,12.5,M,,M,,")
GGA_NO_FIX = nmea_sentence("GPGGA,123520,,,,,0,03,,,M,,M,,")
RMC_SOUTH_WEST = nmea_sentence(
    "GPRMC,225446.25,A,3352.0000,S,15112.5000,W,10.0,054.7,191194,020.3,E"
)
RMC_VOID = nmea_sentence("GPRMC,225446,V,,,,,,,191194,,")


def test_gga_gives_position_altitude_fix_and_satellites() -> None:
    fix = nmea.parse(GGA_NORTH_EAST)

    assert fix is not None
    assert {
        "coordinate": [48.1173, 11.5166667],
        "altitude": 545.4,
        "fix_quality": 1,
        "satellites": 8,
    } == fix.values


def test_southern_and_western_hemispheres_are_negative() -> None:
    gga, rmc = nmea.parse(GGA_SOUTH_WEST), nmea.parse(RMC_SOUTH_WEST)

    assert gga is not None
    assert rmc is not None
    assert [-33.8666667, -151.2083333] == gga.values["coordinate"]
    assert [-33.8666667, -151.2083333] == rmc.values["coordinate"]
    assert {"speed": 18.52, "course": 54.7} == {k: rmc.values[k] for k in ("speed", "course")}
    assert 785285686250 == rmc.utc_ms  # 1994-11-19T22:54:46.25Z, the GPS's own time


def test_no_fix_gives_no_position() -> None:
    gga, rmc = nmea.parse(GGA_NO_FIX), nmea.parse(RMC_VOID)

    assert gga is not None
    assert rmc is not None
    assert {"fix_quality": 0, "satellites": 3} == gga.values
    assert {} == rmc.values


def test_a_bad_checksum_is_refused() -> None:
    broken = GGA_NORTH_EAST[:-2] + ("00" if not GGA_NORTH_EAST.endswith("00") else "01")

    with pytest.raises(nmea.NmeaError, match="checksum"):
        nmea.parse(broken)


def test_a_line_without_terminator_never_grows_the_buffer() -> None:
    framer = LineFramer(terminator=b"\n", max_line=100)
    for _ in range(1024):
        assert [] == framer.feed(b"x" * 1024)
    assert [b"ok"] == framer.feed(b"tail of the long line\nok\n")
    assert 1 == framer.stats.overlong


@contextmanager
def instrument_end(pair: PtyPair) -> Iterator[int]:
    fd = os.open(pair.device_a, os.O_RDWR | os.O_NOCTTY)
    try:
        yield fd
    finally:
        os.close(fd)


async def logged(logs: Sequence[MutableMapping[str, Any]], event: str) -> None:
    await poll_until(
        lambda: any(e["event"] == event for e in logs), timeout=WAIT, what=f"the log line {event}"
    )


async def port_open(agent: Agent) -> None:
    """Until the agent reads the instrument's port: lines written before are not its."""
    await asyncio.wait_for(agent.instruments[0].open.wait(), WAIT)


def serial_block(pair: PtyPair, body: str) -> str:
    return f"""
[[serial]]
name = "inst"
device = "{pair.device_b}"
baudrate = 9600
bucket = "s"
{body}
"""


async def test_regex_lines_give_every_value_type(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = r"""
format = "regex"
pattern = '^T=(?P<t>[-\d.]+) N=(?P<n>\d+) OK=(?P<ok>\w+) ID=(?P<id>\w+) ST=(?P<st>[0-9A-Fa-f]+) H=(?P<h>\d+)$'
interval = 0.2
points = [
  { id = "temperature", field = "t", value_type = "float" },
  { id = "count", field = "n", value_type = "integer" },
  { id = "ok", field = "ok", value_type = "boolean" },
  { id = "name", field = "id", value_type = "string" },
  { id = "status", field = "st", value_type = "hex" },
  { id = "humidity", field = "h", scale = 0.1 },
]
"""
    with instrument_end(pty_pair) as fd:
        async with running_agent(
            tmp_path, agent_toml(broker, serial_block(pty_pair, body))
        ) as agent:
            await port_open(agent)
            os.write(fd, b"garbage line\r\nT=-12.5 N=42 OK=true ID=st7 ST=be0f H=655\r\n")
            await cloud.wait_for(lambda m: len(cloud.readings("s")) >= 6, timeout=WAIT)

    values = {r["id"]: r["value"] for r in cloud.readings("s")}
    assert {
        "temperature": -12.5,
        "count": 42,
        "ok": True,
        "name": "st7",
        "status": "BE0F",
        "humidity": 65.5,
    } == values


async def test_a_polled_instrument_answers_then_falls_silent_and_is_backed_off(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = r"""
format = "regex"
pattern = '^W=(?P<w>[\d.]+)$'
request = "READ\r\n"
interval = 0.2
timeout = 0.3
backoff_max = 0.5
points = [ { id = "weight", field = "w" } ]
"""
    loop = asyncio.get_running_loop()
    requests = 0
    answering = True

    def on_request() -> None:
        nonlocal requests
        data = os.read(fd, 100)
        requests += data.count(b"READ\r\n")
        if answering:
            os.write(fd, b"W=%d.5\r\n" % requests)

    with instrument_end(pty_pair) as fd, capture_logs() as logs:
        loop.add_reader(fd, on_request)
        try:
            async with running_agent(tmp_path, agent_toml(broker, serial_block(pty_pair, body))):
                await cloud.wait_for(lambda m: len(cloud.readings("s")) >= 3, timeout=WAIT)
                answering = False
                await logged(logs, "instrument_unreachable")
                answered = len(cloud.readings("s"))
                answering = True
                await cloud.wait_for(
                    lambda m: len(cloud.readings("s")) > answered + 2, timeout=WAIT
                )
        finally:
            loop.remove_reader(fd)

    weights = [r["value"] for r in cloud.readings("s")]
    assert weights == sorted(weights)
    assert all(w % 1 == 0.5 for w in weights)
    assert any(e["event"] == "instrument_recovered" for e in logs)


async def test_nmea_gps_gives_exact_coordinates_and_its_own_time(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = """
format = "nmea"
interval = 0.3
timestamp = "gps"
points = [
  { id = "location", field = "coordinate" },
  { id = "satellites", field = "satellites" },
  { id = "speed", field = "speed" },
]
"""
    lines = [GGA_NO_FIX, GGA_NORTH_EAST[:-1] + "0", RMC_SOUTH_WEST, GGA_SOUTH_WEST]
    with instrument_end(pty_pair) as fd:
        async with running_agent(
            tmp_path, agent_toml(broker, serial_block(pty_pair, body))
        ) as agent:
            await port_open(agent)
            os.write(fd, "".join(line + "\r\n" for line in lines).encode())
            await cloud.wait_for(
                lambda m: any(r["id"] == "location" for r in cloud.readings("s")), timeout=WAIT
            )

    readings = cloud.readings("s")
    locations = [r for r in readings if r["id"] == "location"]
    assert [[-33.8666667, -151.2083333]] == [r["value"] for r in locations]
    speeds = [r for r in readings if r["id"] == "speed"]
    assert [("18.52", "785285686250")] == [(str(r["value"]), r["timestamp"]) for r in speeds]


async def test_a_10_hz_stream_is_sampled_at_the_interval(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = r"""
format = "regex"
pattern = '^V=(?P<v>\d+)$'
interval = 1.0
points = [ { id = "v", field = "v", value_type = "integer" } ]
"""
    with instrument_end(pty_pair) as fd:
        async with running_agent(
            tmp_path, agent_toml(broker, serial_block(pty_pair, body))
        ) as agent:
            await port_open(agent)
            for n in range(1, 41):  # 4 s at 10 Hz
                os.write(fd, b"V=%d\n" % n)
                await asyncio.sleep(0.1)
            await cloud.wait_for(lambda m: len(cloud.readings("s")) >= 3, timeout=WAIT)

    values = [r["value"] for r in cloud.readings("s")]
    assert 3 <= len(values) <= 5, values
    assert values == sorted(values)
    assert all(b - a >= 6 for a, b in itertools.pairwise(values)), values


async def test_a_megabyte_without_a_newline_does_not_grow_memory(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = r"""
format = "regex"
pattern = '^V=(?P<v>\d+)$'
interval = 0.2
max_line = 256
points = [ { id = "v", field = "v", value_type = "integer" } ]
"""
    with instrument_end(pty_pair) as fd:
        async with running_agent(
            tmp_path, agent_toml(broker, serial_block(pty_pair, body))
        ) as agent:
            await port_open(agent)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            chunk = b"x" * 4096
            for _ in range(256):  # 1 MiB, written from a thread: the pty blocks when full
                await asyncio.to_thread(os.write, fd, chunk)
            os.write(fd, b"\nV=7\n")
            await cloud.wait_for(lambda m: bool(cloud.readings("s")), timeout=WAIT)
            grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            assert 1 == agent.instruments[0].stats.overlong

    assert [7] == [r["value"] for r in cloud.readings("s")]
    assert grown_kib < 4096, f"peak memory grew by {grown_kib} KiB"


async def test_an_unplugged_device_is_reopened(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
) -> None:
    body = r"""
format = "regex"
pattern = '^V=(?P<v>\d+)$'
interval = 0.2
backoff_max = 0.5
points = [ { id = "v", field = "v", value_type = "integer" } ]
"""
    pair = PtyPair(tmp_path / "pty").start()
    try:
        with capture_logs() as logs:
            async with running_agent(
                tmp_path, agent_toml(broker, serial_block(pair, body))
            ) as agent:
                with instrument_end(pair) as fd:
                    await port_open(agent)
                    os.write(fd, b"V=1\n")
                    await cloud.wait_for(lambda m: bool(cloud.readings("s")), timeout=WAIT)
                pair.stop()  # the USB adapter is pulled
                await logged(logs, "instrument_lost")
                pair.start()  # and plugged back in
                await logged(logs, "instrument_reopened")
                with instrument_end(pair) as fd:
                    await port_open(agent)
                    os.write(fd, b"V=2\n")
                    await cloud.wait_for(
                        lambda m: any(r["value"] == 2 for r in cloud.readings("s")), timeout=WAIT
                    )
    finally:
        pair.stop()


# -- failures inside an instrument: structural, logged, restarted --------------------------


def counter_instrument(name: str, device: str) -> model.Instrument:
    """Lines `V=<n>`, sampled every 0.1 s."""
    config = SerialConfig.model_validate(
        {
            "name": name,
            "device": device,
            "bucket": "s",
            "format": "regex",
            "pattern": r"^V=(?P<v>\d+)$",
            "interval": 0.1,
            "points": [{"id": "v", "field": "v", "value_type": "integer"}],
        }
    )
    return resolve.instrument(config)


async def count_lines(fd: int) -> None:
    """A simple instrument on the other end of the line: V=1, V=2, ... at 20 Hz."""
    for n in itertools.count(1):
        os.write(fd, b"V=%d\n" % n)
        await asyncio.sleep(0.05)  # the instrument's own pace, not a wait for a condition


class HandOff:
    """Where an instrument's readings go; `fail_once()` makes the next hand-off raise."""

    def __init__(self) -> None:
        self.values: list[int] = []
        self._arrived = asyncio.Event()
        self._fail = False

    def emit(self, reading: Reading) -> None:
        if self._fail:
            self._fail = False
            raise RuntimeError("hand-off failed")
        assert isinstance(reading.value, int)
        self.values.append(reading.value)
        self._arrived.set()

    def fail_once(self) -> None:
        self._fail = True

    async def more_than(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.values) <= count:
                self._arrived.clear()
                await self._arrived.wait()


async def test_a_raising_hand_off_is_logged_and_the_instrument_restarted_the_other_unaffected(
    tmp_path: Path,
    pty_pair: PtyPair,
) -> None:
    failing, steady = HandOff(), HandOff()
    gps = Instrument(
        open_line=SerialPort, config=counter_instrument("gps", pty_pair.device_b), emit=failing.emit
    )
    with (
        PtyPair(tmp_path / "pty-other") as other_pair,
        instrument_end(pty_pair) as gps_end,
        instrument_end(other_pair) as other_end,
        capture_logs() as logs,
    ):
        other = Instrument(
            open_line=SerialPort,
            config=counter_instrument("scale", other_pair.device_b),
            emit=steady.emit,
        )
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(count_lines(gps_end), name="line[gps]"),
                group.create_task(count_lines(other_end), name="line[scale]"),
                *(
                    group.create_task(
                        supervise(f"serial[{i.name}]", i.run, backoff_min=0.1, backoff_max=0.5),
                        name=f"serial[{i.name}]",
                    )
                    for i in (gps, other)
                ),
            ]
            await failing.more_than(0)
            await steady.more_than(0)
            failing.fail_once()
            await logged(logs, "source_failed")
            before_restart, other_before = len(failing.values), len(steady.values)
            await failing.more_than(before_restart)  # read from the pty again
            await steady.more_than(other_before + 2)
            for task in tasks:
                task.cancel()

    [failed] = [e for e in logs if e["event"] == "source_failed"]
    assert ("error", "serial[gps]", 1, "RuntimeError: hand-off failed") == (
        failed["log_level"],
        failed["source"],
        failed["restarts"],
        failed["error"],
    )
    assert isinstance(failed["exc_info"], RuntimeError)
    assert [] == [e for e in logs if e["event"] == "instrument_lost"]
    assert failing.values[before_restart] > failing.values[before_restart - 1]
    assert steady.values == sorted(set(steady.values))  # fresh samples all along


async def test_an_error_while_framing_a_line_ends_run_with_it_and_closes_the_port(
    pty_pair: PtyPair,
) -> None:
    """The reader callback's failure is not left to the loop's exception handler."""

    def broken_clock() -> int:
        raise OverflowError("clock broke")

    instrument = Instrument(
        open_line=SerialPort,
        config=counter_instrument("inst", pty_pair.device_b),
        emit=lambda reading: None,
        wall_ms=broken_clock,
    )
    with instrument_end(pty_pair) as fd:
        task = asyncio.create_task(instrument.run(), name="serial[inst]")
        await asyncio.wait_for(instrument.open.wait(), WAIT)
        os.write(fd, b"V=1\n")
        with pytest.raises(ExceptionGroup) as caught:
            await asyncio.wait_for(task, WAIT)

    assert caught.group_contains(OverflowError, match="clock broke")
    assert not instrument.open.is_set()
    device = os.open(pty_pair.device_b, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(device, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the agent's lock is gone
    finally:
        os.close(device)


async def test_an_instruments_point_is_aggregated_and_its_samples_kept_unpublished(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = r"""
format = "regex"
pattern = '^V=(?P<v>\d+)$'
interval = 0.2
points = [ { id = "v", field = "v", value_type = "integer", publish = false, aggregate = { window = 1, functions = ["max", "count"] } } ]
"""
    with instrument_end(pty_pair) as fd:
        async with running_agent(
            tmp_path, agent_toml(broker, serial_block(pty_pair, body))
        ) as agent:
            await port_open(agent)
            for n in range(1, 31):  # 3 s at 10 Hz, sampled every 0.2 s
                os.write(fd, b"V=%d\n" % n)
                await asyncio.sleep(0.1)
            await cloud.wait_for(
                lambda m: len({r["timestamp"] for r in cloud.readings("s")}) >= 2, timeout=WAIT
            )

    readings = cloud.readings("s")
    assert {"v_max", "v_count"} == {r["id"] for r in readings}  # no raw "v"
    assert all(int(r["timestamp"]) % 1000 == 0 for r in readings)
    counts = [r["value"] for r in readings if r["id"] == "v_count"]
    assert all(1 <= c <= 6 for c in counts), counts


async def test_an_instruments_point_is_a_derived_points_input(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    body = r"""
format = "regex"
pattern = '^V=(?P<v>\d+)$'
interval = 0.2
points = [ { id = "v", field = "v", value_type = "integer" } ]
"""
    derived = '\n[[derived]]\nid = "twice"\nbucket = "s"\nexpression = "v * 2"\n'
    with instrument_end(pty_pair) as fd:
        async with running_agent(
            tmp_path, agent_toml(broker, serial_block(pty_pair, body)) + derived
        ) as agent:
            await port_open(agent)
            for n in range(1, 11):
                os.write(fd, b"V=%d\n" % n)
                await cloud.wait_for(_seen(cloud, {"id": "v", "value": n}), timeout=WAIT)
            await cloud.wait_for(_seen(cloud, {"id": "twice", "value": 20}), timeout=WAIT)

    readings = cloud.readings("s")
    raw = {r["timestamp"]: r["value"] for r in readings if r["id"] == "v"}
    twice = {r["timestamp"]: r["value"] for r in readings if r["id"] == "twice"}
    assert twice, "no derived readings"
    assert {stamp: 2 * raw[stamp] for stamp in twice} == twice  # each from the reading it read


def _seen(cloud: CloudClient, reading: dict[str, object]) -> Callable[[Message], bool]:
    """Whether the cloud has had a reading of that id and value in bucket s."""
    return lambda _: reading in [{"id": r["id"], "value": r["value"]} for r in cloud.readings("s")]
