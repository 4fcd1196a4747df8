"""Polling one Modbus unit: scheduled reads → decoded, typed, timestamped readings.

Each device runs its own `DevicePoller.run` task. The schedule does not drift: cycle k is
due at start + k * interval; a cycle that overruns skips the slots it missed. A unit that
stops answering is backed off exponentially so that the other units on its line keep
their intervals. A coalesced request that the unit refuses with an illegal-address or
illegal-data exception is split in halves until every point that can be read is read;
the layout found is kept for the next cycles.
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
from agent.sources.modbus.plan import ReadRequest, Span, plan_reads, split
from agent.sources.modbus.points import Table
from agent.sources.source import Outage, PointView, SourceStats, backoff, scale

log = structlog.get_logger("agent.poller")

REFUSED_RETRY_CYCLES = 60  # a point the unit refuses alone is tried again this many cycles on


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


def plan_device(device: Device) -> list[ReadRequest]:
    """A device's coalesced reads."""
    spans = [Span(*point.location, point.width, index) for index, point in enumerate(device.points)]
    return plan_reads(spans, device.limits)


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
        self._limits, self.requests = device.limits, plan_device(device)
        self._refused_until: dict[ReadRequest, int] = {}
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
        stats = self.stats
        stats.cycles += 1
        answered = False
        failure: DeviceError | None = None
        work = deque(self.requests)
        try:
            while work:
                request = work.popleft()
                # (A request hashes all its spans: look only when something was refused.)
                if self._refused_until and self._refused_until.get(request, 0) > stats.cycles:
                    continue
                try:
                    values = await self._bus.read(
                        self.device.unit, request.table, request.start, request.count
                    )
                except DeviceRefused as exc:
                    answered = True
                    stats.read_errors += 1
                    stats.refused += 1
                    work.extendleft(reversed(self._refused(request, exc)))
                    continue
                except DeviceError as exc:
                    stats.read_errors += 1
                    stats.timeouts += isinstance(exc, DeviceTimeout)
                    failure = exc
                    break  # a unit that does not answer is not asked again this cycle
                answered = True
                stats.requests_ok += 1
                self._deliver(request, values, self._wall_ms())
        finally:
            await self._bus.end_cycle()
        if answered:
            self._outage.answered()
        elif failure is not None:
            self._outage.failed(failure)
            return False
        return True

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
        """Replace a refused request by its halves; park a lone refused point for a while."""
        if exc.is_layout_problem and len(request.spans) > 1:
            parts = split(request, self._limits)
            index = self.requests.index(request)
            self.requests[index : index + 1] = parts
            self._log.info(
                "request_split",
                table=str(request.table),
                start=request.start,
                count=request.count,
                into=[(p.start, p.count) for p in parts],
                code=exc.code,
            )
            return parts
        self._refused_until[request] = self.stats.cycles + REFUSED_RETRY_CYCLES
        points = [self._readers[s.index].id for s in request.spans]
        if self._throttle.allow(("refused", request)):
            self._log.warning(
                "read_refused",
                table=str(request.table),
                start=request.start,
                count=request.count,
                points=points,
                code=exc.code,
                retry_in_cycles=REFUSED_RETRY_CYCLES,
            )
        return []

    def point_views(self, now: float) -> Iterator[PointView]:
        """Each point's last report, for the agent's state."""
        for reader in self._readers:
            last, at = reader.filter.last()
            yield PointView(reader.id, reader.bucket, last, None if last is None else now - at)
