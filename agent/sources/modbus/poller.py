"""Polling one Modbus unit: scheduled reads → decoded, typed, timestamped readings.

Each device runs its own `DevicePoller.run` task. The schedule does not drift: cycle k is
due at start + k * interval; a cycle that overruns skips the slots it missed. A unit that
stops answering is backed off exponentially so that the other units on its line keep
their intervals.

A Modbus exception response is handled as its code says, after one table
(`DeviceRefused.ACTIONS` in agent.errors):

- retry: server device failure (4), acknowledge (5), server device busy (6), gateway path
  unavailable (10), gateway target device failed to respond (11). As for a time-out, the
  cycle ends there (its remaining requests are not sent) and, if the unit answered nothing
  in it, counts as failed: the unit is backed off and asked again within `backoff_max`
  (`device_unreachable`, with the code and its meaning). A cycle cut short so, or by a
  time-out, after the unit answered part of it is not a failed cycle; it is logged at most
  once a minute (`cycle_cut_short`).
- split: illegal data address (2), illegal data value (3). A request for several points
  is split in halves, recursively, until every point that can be read is read; a point
  refused alone is parked. What the unit refused is remembered (`plan.Refusals`) and the
  next cycles' requests are planned again around it: the fewest requests that cover no
  refused range whole (an address the unit lacks, a parked point).
- park: illegal function (1), memory parity error (8) and codes the standard does not
  define. The request is not split: its points are parked.

A parked request is left out of the plan and asked again alone every REFUSED_RETRY_CYCLES
cycles; once it answers, its points are planned back in. It is logged when parked
(`read_refused`, with the code and its meaning), at debug level when refused again
(`read_still_refused`) and when it answers again (`read_resumed`); a new plan is logged
as `requests_planned`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import structlog

from agent.config.model import Device, Point
from agent.errors import DeviceError, DeviceRefused, DeviceTimeout
from agent.pipeline.readings import (
    ChangeFilter,
    Value,
    encode_value,
    id_prefix,
    now_ms,
    timestamp_suffix,
    to_shape,
)
from agent.service.logs import Throttle
from agent.sources.modbus.decode import decode_registers
from agent.sources.modbus.plan import ReadRequest, Refusals, Span, plan_reads, split
from agent.sources.modbus.points import Table
from agent.sources.source import Outage, PointView, SourceStats, backoff, point_views, scale

log = structlog.get_logger("agent.poller")

REFUSED_RETRY_CYCLES = 60  # a parked request is tried again this many cycles on


class RegisterBus(Protocol):
    """What a poller needs from a connection (the Modbus adapter provides it)."""

    name: str

    async def read(
        self, unit: int, table: Table, start: int, count: int
    ) -> list[int] | list[bool]: ...

    async def end_cycle(self) -> None: ...


class _PointReader:
    """Everything needed to turn a point's registers into a reading, worked out once."""

    __slots__ = (
        "bit",
        "bucket",
        "byte_order",
        "filter",
        "id",
        "offset",
        "prefix",
        "scale",
        "scaled",
        "shape",
        "type",
        "width",
    )

    def __init__(self, point: Point) -> None:
        self.id = point.id
        self.prefix = id_prefix(point.id)
        self.bucket = point.bucket
        self.type = point.type
        self.byte_order = point.byte_order
        self.bit = point.bit
        self.scale = point.scale
        self.offset = point.offset
        self.scaled = point.scale is not None or point.offset is not None
        self.shape = point.shape
        self.width = point.width
        self.filter = ChangeFilter(point.deadband, point.max_silence)

    def value(self, raw_values: list[int] | list[bool]) -> Value:
        """The point's value from its registers, typed to its data shape."""
        if raw_values and isinstance(raw_values[0], bool):
            raw: int | float | bool | str = bool(raw_values[0])
        else:
            raw = decode_registers(raw_values, self.type, byte_order=self.byte_order, bit=self.bit)
            if self.scaled and isinstance(raw, int | float) and not isinstance(raw, bool):
                # A register's integer has no decimals; a float's are not rounded.
                places = 0 if isinstance(raw, int) else None
                raw = scale(raw, scale=self.scale, offset=self.offset, raw_places=places)
        return to_shape(raw, self.shape, width=self.width)


def device_spans(device: Device) -> list[Span]:
    """What a device's points cover, each span indexed by its point."""
    return [Span(*point.location, point.width, index) for index, point in enumerate(device.points)]


def plan_device(device: Device) -> list[ReadRequest]:
    """A device's coalesced reads."""
    return plan_reads(device_spans(device), device.limits)


class DevicePoller:
    """Polls one unit on its own schedule and hands its readings to `emit`.

    `emit(bucket, fragments)` receives each response's readings of one bucket, already
    encoded as JSON objects (see agent.pipeline.readings): no per-reading object on the hot path.
    """

    kind = "device"

    def __init__(
        self,
        *,
        device: Device,
        bus: RegisterBus,
        emit: Callable[[str, list[bytes]], None],
        wall_ms: Callable[[], int] = now_ms,
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.device = device
        self._room = room  # awaited before each cycle: the queue keeping up
        self.name = device.name
        self.where = bus.name  # the connection, for the agent's state
        self._bus = bus
        self._emit = emit
        self._wall_ms = wall_ms
        self._readers = [_PointReader(point) for point in device.points]
        self._spans, self._limits = device_spans(device), device.limits
        self.requests = plan_reads(self._spans, self._limits)  # this cycle's, parked ones left out
        self._refusals = Refusals()  # what the unit refused as a layout problem
        self._parked: dict[ReadRequest, int] = {}  # a parked request → the cycle it is retried
        self._replan = False  # what was learnt in this cycle changes the plan
        self.stats = SourceStats()
        self._throttle = Throttle(interval=60.0)
        self.interval = device.interval
        self._log = log.bind(device=device.name, connection=bus.name, unit=device.unit)
        self._outage = Outage(self._log, self.stats, "device")

    async def run(self) -> None:
        """Poll until cancelled."""
        loop = asyncio.get_running_loop()
        origin = loop.time()
        cycle = 0
        grid = self.interval  # the interval the schedule is laid on
        while True:
            if self._room is not None:
                await self._room()
            ok = await self.poll_once()
            cycle += 1
            now = loop.time()
            if grid != self.interval:  # a new interval: a new grid from this cycle's start
                origin, cycle, grid = origin + (cycle - 1) * grid, 1, self.interval
            if ok:
                due = origin + cycle * grid
                if due < now:
                    missed = math.ceil((now - due) / grid)
                    self.stats.skipped_cycles += missed
                    cycle += missed
                    due = origin + cycle * grid
            else:
                due = now + backoff(
                    self.interval, self.stats.consecutive_failures, self.device.backoff_max
                )
                # Re-anchor the schedule so recovery resumes on a regular grid.
                origin, cycle = due, 0
            await asyncio.sleep(max(0.0, due - loop.time()))

    def set_interval(self, interval: float) -> None:
        """Takes effect from the next cycle."""
        self.interval = interval

    async def poll_once(self) -> bool:
        """One cycle. False when the unit answered nothing (a transient failure)."""
        self.stats.cycles += 1
        work = deque(self.requests)
        if self._parked:
            work.extend(r for r, due in self._parked.items() if due <= self.stats.cycles)
        try:
            answered, failure = await self._ask(work)
        finally:
            await self._bus.end_cycle()
        if self._replan:
            self._plan()
        if answered:
            self._outage.answered()
            if failure is not None and self._throttle.allow("cut_short"):
                self._log.warning(
                    "cycle_cut_short", error=str(failure), unsent=len(work), **_code(failure)
                )
        elif failure is not None:
            self._outage.failed(failure, **_code(failure))
            return False
        return True

    async def _ask(
        self, work: deque[ReadRequest]
    ) -> tuple[bool, DeviceError | DeviceRefused | None]:
        """Send `work` in order; whether the unit answered, and the transient failure that
        ended the cycle early (what was not sent stays in `work`)."""
        stats = self.stats
        answered = False
        while work:
            request = work.popleft()
            try:
                values = await self._bus.read(
                    self.device.unit, request.table, request.start, request.count
                )
            except DeviceRefused as exc:
                stats.read_errors += 1
                stats.refused += 1
                if exc.action == "retry":
                    return answered, exc  # as a time-out: the unit cannot serve now
                answered = True
                work.extendleft(reversed(self._refused(request, exc)))
                continue
            except DeviceError as exc:
                stats.read_errors += 1
                stats.timeouts += isinstance(exc, DeviceTimeout)
                return answered, exc  # a unit that does not answer is not asked again this cycle
            answered = True
            stats.requests_ok += 1
            self._answered(request)
            self._deliver(request, values, self._wall_ms())
        return answered, None

    def _deliver(
        self, request: ReadRequest, values: list[int] | list[bool], timestamp_ms: int
    ) -> None:
        now = time.monotonic()
        suffix = timestamp_suffix(timestamp_ms)
        by_bucket: dict[str, list[bytes]] = {}
        for span in request.spans:
            reader = self._readers[span.index]
            begin = span.start - request.start
            try:
                value = reader.value(values[begin : begin + span.width])
            except ValueError as exc:
                self.stats.decode_errors += 1
                if self._throttle.allow(("decode", reader.id)):
                    self._log.warning("point_decode_failed", point=reader.id, error=str(exc))
                continue
            if reader.filter.admit(value, now):
                by_bucket.setdefault(reader.bucket, []).append(
                    reader.prefix + encode_value(value) + suffix
                )
        for bucket, parts in by_bucket.items():
            self.stats.readings += len(parts)
            self._emit(bucket, parts)

    def _refused(self, request: ReadRequest, exc: DeviceRefused) -> list[ReadRequest]:
        """What to ask instead of a refused request: its halves, or nothing (it is parked)."""
        if exc.action == "split":
            self._refusals.refused(request.table, request.start, request.end)
            self._replan = True
            if len(request.spans) > 1:
                self._parked.pop(request, None)  # parked before for another code: split now
                parts = split(request, self._limits)
                self._log.info(
                    "request_split",
                    **_where(request),
                    into=[(p.start, p.count) for p in parts],
                    **_code(exc),
                )
                return parts
        self._park(request, exc)
        return []

    def _park(self, request: ReadRequest, exc: DeviceRefused) -> None:
        """Leave the request's points out until its retry cycle; said once at warning."""
        again = request in self._parked
        self._parked[request] = self.stats.cycles + REFUSED_RETRY_CYCLES
        self._replan |= not again
        say = self._log.debug if again else self._log.warning
        say(
            "read_still_refused" if again else "read_refused",
            **_where(request),
            points=self._points(request),
            **_code(exc),
            retry_in_cycles=REFUSED_RETRY_CYCLES,
        )

    def _answered(self, request: ReadRequest) -> None:
        """What an answer tells: a refusal void, a parked request served again."""
        if self._refusals and self._refusals.answered(request.table, request.start, request.end):
            self._replan = True
        # (A request hashes all its spans: look only when something is parked.)
        if self._parked and self._parked.pop(request, None) is not None:
            self._replan = True
            self._log.info("read_resumed", **_where(request), points=self._points(request))

    def _plan(self) -> None:
        """The requests for the points not parked, around what the unit refused."""
        self._replan = False
        parked = {span.index for request in self._parked for span in request.spans}
        spans = [span for span in self._spans if span.index not in parked]
        planned = plan_reads(spans, self._limits, self._refusals.ranges())
        if planned != self.requests:
            self._log.info(
                "requests_planned", requests=[(str(r.table), r.start, r.count) for r in planned]
            )
        self.requests = planned

    def _points(self, request: ReadRequest) -> list[str]:
        return [self._readers[span.index].id for span in request.spans]

    def point_views(self, now: float) -> Iterator[PointView]:
        return point_views(self._readers, now)


def _where(request: ReadRequest) -> dict[str, object]:
    return {"table": str(request.table), "start": request.start, "count": request.count}


def _code(error: DeviceError | DeviceRefused) -> dict[str, object]:
    """A refusal's code and what it means, for a log line."""
    if isinstance(error, DeviceRefused):
        return {"code": error.code, "meaning": error.meaning}
    return {}
