"""A serial instrument through an in-memory serial line, in virtual time.

`Instrument` takes the serial line it talks through (`open_line`): here a
`FakeSerialLine`, the test at its other end. Everything else is the real instrument.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest

from agent.config import resolve
from agent.config.schema import SerialConfig
from agent.config.sections import InstrumentLine
from agent.pipeline.readings import Reading
from agent.sources.serial.instrument import Instrument
from agent.testing import FakeSerialLine, captured_logs, run_in_virtual_time

Event = MutableMapping[str, Any]
PATTERN = r"^T=(?P<t>[-\d.]+)$"


MADE: list[FakeSerialLine] = []  # the lines `make` opened, for the `lines` fixture


def fake_line(config: InstrumentLine, on_data: Callable[[bytes], None]) -> FakeSerialLine:
    MADE.append(FakeSerialLine(on_data, name=config.name))
    return MADE[-1]


@pytest.fixture
def lines() -> Iterator[list[FakeSerialLine]]:
    """The serial lines instruments made, in order."""
    MADE.clear()
    yield MADE
    MADE.clear()


class Emitted:
    def __init__(self) -> None:
        self.readings: list[tuple[float, Reading]] = []  # (the loop's time, reading)
        self._changed = asyncio.Event()

    def __call__(self, reading: Reading) -> None:
        self.readings.append((asyncio.get_running_loop().time(), reading))
        self._changed.set()

    async def wait(self, count: int) -> None:
        """Until at least `count` readings have been emitted."""
        while len(self.readings) < count:
            self._changed.clear()
            await self._changed.wait()

    def values(self) -> list[tuple[float, Any]]:
        return [(at, r.value) for at, r in self.readings]


def make(**options: Any) -> tuple[Instrument, Emitted]:
    config = SerialConfig.model_validate(
        {
            "name": "inst",
            "device": "/dev/ttyFAKE",
            "bucket": "s",
            "format": "regex",
            "pattern": PATTERN,
            "interval": 1.0,
            "points": [{"id": "temperature", "field": "t"}],
            **options,
        }
    )
    emitted = Emitted()
    source = Instrument(
        config=resolve.instrument(config), open_line=fake_line, emit=emitted, wall_ms=lambda: 0
    )
    return source, emitted


def events(logs: list[Event], name: str) -> list[Event]:
    return [e for e in logs if e["event"] == name]


async def running(source: Instrument, body: Callable[[], Awaitable[object]]) -> None:
    """Run the instrument while `body` runs, then stop it."""
    task = asyncio.create_task(source.run(), name=f"serial[{source.name}]")
    await source.open.wait()
    try:
        await body()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_stream_is_reported_once_per_interval_latest_value_wins(
    lines: list[FakeSerialLine],
) -> None:
    async def main() -> list[tuple[float, Any]]:
        source, emitted = make()

        async def talk() -> None:
            for step in range(1, 13):  # every 0.25 s for 3 s
                await asyncio.sleep(0.25)
                if step % 4:  # a tick falls on every fourth step: talk just before it
                    lines[0].feed(f"T={step}\r\n".encode())
            await asyncio.sleep(0.5)

        await running(source, talk)
        return emitted.values()

    assert [(1.0, 3.0), (2.0, 7.0), (3.0, 11.0)] == run_in_virtual_time(main())


def test_lines_that_do_not_match_are_counted_logged_once_and_not_reported(
    lines: list[FakeSerialLine],
) -> None:
    async def main() -> tuple[list[Event], int, list[tuple[float, Any]]]:
        with captured_logs() as logs:
            source, emitted = make()

            async def talk() -> None:
                lines[0].feed(b"garbage\r\nT=oops\r\n")
                lines[0].feed(b"T=1.5\r\nmore garbage\n")
                await asyncio.sleep(1.5)

            await running(source, talk)
        return logs, source.stats.unmatched, emitted.values()

    logs, unmatched, values = run_in_virtual_time(main())

    assert 3 == unmatched
    assert [("no match", "garbage", 1)] == [
        (e["reason"], e["line"], e["unmatched_total"])
        for e in events(logs, "instrument_line_unmatched")
    ]
    assert [(1.0, 1.5)] == values


def test_a_field_that_cannot_take_its_shape_is_logged_and_not_reported(
    lines: list[FakeSerialLine],
) -> None:
    async def main() -> tuple[list[Event], list[tuple[float, Any]]]:
        with captured_logs() as logs:
            source, emitted = make(
                pattern=r"^S=(?P<s>\w+)$",
                points=[{"id": "status", "field": "s", "value_type": "hex"}],
            )

            async def talk() -> None:
                lines[0].feed(b"S=zz\n")
                await asyncio.sleep(1.5)
                lines[0].feed(b"S=be0f\n")
                await asyncio.sleep(1.0)

            await running(source, talk)
        return logs, emitted.values()

    logs, values = run_in_virtual_time(main())

    assert ["status"] == [e["point"] for e in events(logs, "instrument_value_invalid")]
    assert [(2.0, "BE0F")] == values


def test_a_polled_instrument_is_asked_every_interval_and_backed_off_when_silent(
    lines: list[FakeSerialLine],
) -> None:
    async def main() -> tuple[list[Event], list[float], list[tuple[float, Any]], int]:
        loop = asyncio.get_running_loop()
        asked: list[float] = []
        with captured_logs() as logs:
            source, emitted = make(request="READ\\r\\n", timeout=0.5)
            line = lines[0]

            def answer(request: bytes) -> None:
                asked.append(loop.time())
                if len(asked) != 2:  # the second request goes unanswered
                    loop.call_soon(line.feed, b"T=20.5\r\n")

            line.on_write = answer

            await running(source, lambda: emitted.wait(3))
            assert {b"READ\r\n"} == set(line.written)
            assert len(line.written) == line.discards  # stale input dropped before each
        return logs, asked, emitted.values(), source.stats.read_errors

    logs, asked, values, no_reply = run_in_virtual_time(main())

    assert [0.0, 1.0] == asked[:2]
    assert 2.5 <= asked[2] <= 3.5  # after 0.5 s of silence, a back-off of 1 to 2 s
    assert pytest.approx(asked[2] + 1.0) == asked[3]
    assert [0.0, asked[2], asked[3]] == [at for at, _ in values]
    assert 1 == no_reply
    assert [("instrument_unreachable", "warning"), ("instrument_recovered", "info")] == [
        (e["event"], e["log_level"])
        for e in logs
        if e["event"] in ("instrument_unreachable", "instrument_recovered")
    ]


def test_an_unplugged_line_is_reopened_with_back_off(lines: list[FakeSerialLine]) -> None:
    async def main() -> tuple[list[Event], int, int]:
        with captured_logs() as logs:
            source, _ = make()
            line = lines[0]

            async def unplug() -> None:
                line.fail_opens = 2  # the device is away for two attempts
                line.unplug()
                source.open.clear()
                await source.open.wait()  # set again once the port is open and read

            await running(source, unplug)
        return logs, line.opens, source.stats.reopened

    logs, opens, reopened = run_in_virtual_time(main())

    assert (2, 1) == (opens, reopened)
    # The failed reopenings are repeats of the loss: not logged again.
    assert [("instrument_lost", "warning"), ("instrument_reopened", "info")] == [
        (e["event"], e["log_level"]) for e in logs if e["event"].startswith("instrument_")
    ]
    assert [3] == [e["attempts"] for e in events(logs, "instrument_reopened")]
    assert [] == events(logs, "instrument_unavailable")


def test_a_new_streaming_interval_takes_effect_from_the_next_tick(
    lines: list[FakeSerialLine],
) -> None:
    async def main() -> list[float]:
        source, emitted = make()

        async def talk() -> None:
            for _ in range(80):  # 20 s at most
                lines[0].feed(b"T=1\n")
                await asyncio.sleep(0.25)
                if len(emitted.readings) == 3 and source.interval == 1.0:
                    source.set_interval(5.0)  # at 3.25 s; the tick at 4 s is scheduled
                if len(emitted.readings) == 5:
                    return

        await running(source, talk)
        return [at for at, _ in emitted.readings]

    assert [1.0, 2.0, 3.0, 4.0, 9.0] == run_in_virtual_time(main())
