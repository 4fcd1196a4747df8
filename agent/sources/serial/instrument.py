"""A plain serial instrument: lines → fields → typed, timestamped readings.

Two ways to talk:
- streaming (no `request`): the instrument talks on its own (a GPS at 10 Hz). Every
  line updates the latest value of its fields; every `interval` the latest values seen
  since the previous tick are reported (latest wins), through the points' deadbands.
- polled (`request` set): every `interval` the request is sent and the first line that
  parses is the answer. No answer within `timeout` is a failed read: nothing is
  published and the instrument is backed off exponentially, like a Modbus unit.

Lines that do not parse are counted and logged at a limited rate, never published. A
vanished device is reopened with back-off; the rest of the agent does not notice.

While the port is open, the talker (`serial[name].talk`) runs in a TaskGroup of the
instrument whose body waits for the port to be lost. Anything unexpected (the hand-off
raising, a bug while framing a line in the reader callback) ends `run()` with that error
and the port closed; the service's supervisor logs it and starts the instrument again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog

from agent.config import model
from agent.config.sections import InstrumentLine
from agent.errors import DeviceUnreachable
from agent.pipeline.readings import ChangeFilter, Reading, Value, ValueType, now_ms
from agent.service.logs import Throttle
from agent.sources.serial import nmea
from agent.sources.serial.lines import LineFramer, regex_fields
from agent.sources.source import (
    Cadence,
    Outage,
    PointView,
    SourceStats,
    backoff,
    places,
    point_views,
    scale,
)

log = structlog.get_logger("agent.instrument")

DAY_MS = 86_400_000
Field = str | float | int | list[float]  # a field as a line gives it


class SerialLine(Protocol):
    """What an instrument needs of its serial port: the port (agent.sources.serial.port's
    SerialPort, or a fake) hands what it reads to the `on_data` callback it was made with."""

    def open(self) -> None: ...

    async def wait_lost(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def discard_input(self) -> None: ...

    def close(self) -> None: ...


OpenLine = Callable[[InstrumentLine, Callable[[bytes], None]], SerialLine]


Tap = Callable[[Value | None, int], None]  # a value read (None: failed) and its time, ms


class _Point:
    __slots__ = ("bucket", "field", "filter", "id", "offset", "publish", "scale", "shape", "tap")

    def __init__(self, point: model.InstrumentPoint) -> None:
        self.id = point.id
        self.bucket = point.bucket
        self.field = point.field
        self.shape: ValueType = point.shape
        self.scale = point.scale
        self.offset = point.offset
        self.filter = ChangeFilter(point.deadband, point.max_silence)
        self.publish = point.publish
        self.tap: Tap | None = None  # set by the agent for an aggregated point

    def value(self, raw: Field) -> Value:
        """Type a field to the point's data shape; ValueError when it cannot be."""
        if isinstance(raw, list):
            return raw
        if self.shape == "string":
            return str(raw)
        if self.shape == "hex":
            text = str(raw).strip().upper()
            int(text, 16)
            return text
        if self.shape == "boolean":
            word = str(raw).strip().lower()
            if word in ("1", "true", "on", "yes"):
                return True
            if word in ("0", "false", "off", "no"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        number = float(raw)
        if not math.isfinite(number):
            raise ValueError(f"non-finite value {raw!r}")
        if self.scale is not None or self.offset is not None:
            # A number read as text has the places it was written with.
            written = places(raw.strip()) if isinstance(raw, str) else None
            number = scale(number, scale=self.scale, offset=self.offset, raw_places=written)
        if self.shape == "integer":
            return round(number)
        return number


class Instrument:
    kind = "instrument"

    def __init__(
        self,
        *,
        config: model.Instrument,
        open_line: OpenLine,
        emit: Callable[[Reading], None],
        wall_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config.line
        self.name = config.name
        self._emit = emit
        self._wall_ms = wall_ms
        self._points = [_Point(p) for p in config.points]
        self._framer = LineFramer(terminator=config.terminator, max_line=config.line.max_line)
        self._pattern = config.pattern
        self._request = config.request
        self._port = open_line(config.line, self._on_data)
        self._latest: dict[str, tuple[Field, int]] = {}
        self._reply: asyncio.Future[None] | None = None
        self._throttle = Throttle(interval=60.0)
        self.stats = SourceStats()
        self.cadence = Cadence()
        self.interval = config.line.interval
        self.open = asyncio.Event()  # the port is open and being read
        self.where = config.line.device  # the port, for the agent's state
        self._log = log.bind(instrument=config.name, device=config.line.device)
        self._outage = Outage(self._log, self.stats, "instrument")
        self.on_report: Callable[[], None] | None = None  # after each report's values

    async def run(self) -> None:
        """Read the instrument until cancelled, reopening a lost device with back-off.

        Raises whatever unexpected error stopped it (in an ExceptionGroup), the port closed.
        """
        attempt = 0
        while True:
            try:
                self._port.open()
            except DeviceUnreachable as exc:
                attempt += 1
                if attempt == 1:
                    self._log.warning("instrument_unavailable", error=str(exc))
                await asyncio.sleep(self._backoff(attempt))
                continue
            if attempt:
                self.stats.reopened += 1
                self._log.info("instrument_reopened", attempts=attempt)
            attempt = 0
            self._framer.reset()
            try:
                await self._talk_until_lost()
            except* DeviceUnreachable as lost:
                self._log.warning("instrument_lost", error=str(lost.exceptions[0]))
            finally:
                self.open.clear()
                self._port.close()
            attempt = 1
            await asyncio.sleep(self._backoff(attempt))

    def set_interval(self, interval: float) -> None:
        self.interval = interval

    def set_tap(self, point_id: str, tap: Tap) -> None:
        """`tap` is given every value of that point this instrument takes."""
        for point in self._points:
            if point.id == point_id:
                point.tap = tap

    async def _talk_until_lost(self) -> None:
        """Talk to the open port until it is lost (or something fails)."""
        talk = self._polled(self._request) if self._request is not None else self._streaming()
        async with asyncio.TaskGroup() as group:
            group.create_task(talk, name=f"serial[{self.name}].talk")
            self.open.set()
            # Waited for here, not in a task: before Python 3.13 a TaskGroup leaves its
            # task's cancellation count raised when a child fails after the body ended.
            await self._port.wait_lost()

    # -- the two ways of talking ----------------------------------------------------------

    async def _streaming(self) -> None:
        loop = asyncio.get_running_loop()
        origin, tick = loop.time(), 0
        grid = self.interval  # the interval the ticks are laid on
        while True:
            tick += 1
            if grid != self.interval:  # a new interval: a new grid from the last tick
                origin, tick, grid = origin + (tick - 1) * grid, 1, self.interval
            self.cadence.waits_until(origin + tick * grid)
            await asyncio.sleep(max(0.0, origin + tick * grid - loop.time()))
            self.cadence.started(loop.time())
            latest, self._latest = self._latest, {}
            if latest:
                self._outage.answered()  # lines came in: the instrument is talking
            self._report(latest)

    async def _polled(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self.cadence.started(started)
            self._port.discard_input()
            self._latest = {}
            self._reply = loop.create_future()
            self._port.write(request)
            try:
                async with asyncio.timeout(self.config.timeout):
                    await self._reply
            except TimeoutError:
                self.stats.read_errors += 1
                self.stats.timeouts += 1
                self._outage.failed(f"no reply within {self.config.timeout:g} s")
                pause = self._backoff(self.stats.consecutive_failures)
                self.cadence.waits_until(loop.time() + pause)
                await asyncio.sleep(pause)
                continue
            finally:
                self._reply = None
            self._outage.answered()
            latest, self._latest = self._latest, {}
            self._report(latest)
            self.cadence.waits_until(started + self.interval)
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    # -- lines ----------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        arrived = self._wall_ms()
        lines = self._framer.feed(data)
        if self._framer.stats.overlong != self.stats.overlong:
            self.stats.overlong = self._framer.stats.overlong
            if self._throttle.allow("overlong"):
                self._log.warning(
                    "instrument_line_too_long",
                    max_line=self.config.max_line,
                    dropped=self.stats.overlong,
                )
        for line in lines:
            self.stats.lines += 1
            parsed = self._parse(line.decode(self.config.encoding, errors="replace"), arrived)
            if parsed is None:
                continue
            fields, taken_at = parsed
            for key, value in fields.items():
                self._latest[key] = (value, taken_at)
            if self._reply is not None and not self._reply.done():
                self._reply.set_result(None)

    def _parse(self, line: str, arrived: int) -> tuple[dict[str, Field], int] | None:
        """The fields a line gives and the time they were taken; None if it gives none."""
        if self._pattern is not None:  # format regex
            found = regex_fields(self._pattern, line)
            if found is None:
                self._unmatched(line, "no match")
                return None
            return dict(found), arrived
        if not line.startswith("$"):
            return None  # other talkers' chatter (e.g. $PUBX without $ or binary)
        try:
            fix = nmea.parse(line)
        except nmea.NmeaError as exc:
            if isinstance(exc, nmea.NmeaChecksumError):
                self.stats.bad_checksum += 1
            self._unmatched(line, str(exc))
            return None
        if fix is None:
            return None  # a sentence type we do not use (GSV, VTG, ...)
        taken_at = arrived
        if self.config.timestamp == "gps":
            gps_ms = fix.utc_ms if fix.utc_ms is not None else self._gga_time(fix, arrived)
            taken_at = gps_ms if gps_ms is not None else arrived
        return dict(fix.values), taken_at

    def _gga_time(self, fix: nmea.Fix, arrived: int) -> int | None:
        """A GGA time of day on the right date: the nearest one to the arrival time."""
        if fix.time_of_day_ms is None:
            return None
        midnight = arrived - arrived % DAY_MS
        candidates = [midnight + day * DAY_MS + fix.time_of_day_ms for day in (-1, 0, 1)]
        return min(candidates, key=lambda t: abs(t - arrived))

    def _report(self, latest: dict[str, tuple[Field, int]]) -> None:
        now = asyncio.get_running_loop().time()
        for point in self._points:
            found = latest.get(point.field)
            if found is None:
                continue
            raw, timestamp = found
            try:
                value = point.value(raw)
            except ValueError as exc:
                self.stats.decode_errors += 1
                if self._throttle.allow(("value", point.id)):
                    self._log.warning("instrument_value_invalid", point=point.id, error=str(exc))
                continue
            if point.tap is not None:
                point.tap(value, timestamp)
            if point.publish and point.filter.admit(value, now):
                self.stats.readings += 1
                self._emit(Reading(point.bucket, point.id, value, timestamp))
        if self.on_report is not None:
            self.on_report()

    def _unmatched(self, line: str, reason: str) -> None:
        self.stats.unmatched += 1
        if self._throttle.allow("unmatched"):
            self._log.warning(
                "instrument_line_unmatched",
                reason=reason,
                line=line[:80],
                unmatched_total=self.stats.unmatched,
            )

    def _backoff(self, attempt: int) -> float:
        return backoff(self.interval, attempt, self.config.backoff_max)

    def point_views(self, now: float) -> Iterator[PointView]:
        return point_views(self._points, now)
