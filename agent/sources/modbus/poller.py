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
as `requests_planned` (one line per interval group whose requests changed).

Interval groups. A point may have its own interval, a whole multiple of its device's (an
energy total every 60 s beside a current read every second). The device's points are
grouped by interval (`interval_groups`: the points without one, read every cycle, first,
then the shorter intervals before the longer) and each group is planned on its own: its
requests are coalesced within the group, never across groups, so a slow point is not read
every cycle because it sits next to a fast one. The device keeps its one task and its one
drift-free schedule; the cycles are numbered slots on that grid, and a group of `every`
cycles is due in the slots that are multiples of `every` (all groups in the first, so a
slow value appears at start-up). A cycle asks the due groups' requests one group after
another, the fast ones first (their read time within the cycle does not move when a slow
group is due), then the parked requests due for a retry.

- A slot skipped because a cycle overran counts: a group whose slot was skipped is read in
  the next cycle, and again in its next slot after that (it is not read twice for one).
- A cycle cut short (a time-out, a unit busy) leaves what it did not get answered due: a
  slow group's unanswered requests (the failed one and those not sent) are asked in the
  next cycle, not a whole period later, and the group's next slot stays where it was.
- A back-off skips no slot: the attempt after it is the next slot, whatever time the
  back-off took, so a slow group is at most its period in cycles from its next read once
  the unit answers again (and one whose slot fell in the outage is read at recovery).
- A point's interval is kept in seconds. It becomes `every` = the nearest whole number of
  the device's cycles, at least one (`cycles`), and that is worked out again when the
  cloud changes the device's interval to one it is not a multiple of. At the change,
  each group's next read stays about as many seconds off as it was (the nearest slot of
  the new grid, at most one new period away).
- What the unit refused is one record for the device (an address map) and every group is
  planned around it; a parked request keeps its retry cycle whatever its group.

Decoding. A connection carries one request at a time, so what is done between a reply and
the line's next request is time the line stands idle. A response is turned into readings
once the next request has left (`_defer`): while the device's next request is out, or
another device's on the same connection (`end_cycle` lets that one go first), and at the
latest when the cycle ends, before `on_cycle`. Its readings keep the time the response
came in, and come in the order of the responses.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
from agent.sources.modbus.decode import (
    BlockDecoder,
    RawValue,
    block_decoder,
    decode_registers,
    decodes_as_shown,
)
from agent.sources.modbus.plan import Limits, ReadRequest, Refusals, Span, plan_reads, split
from agent.sources.modbus.points import Table
from agent.sources.source import (
    Cadence,
    Outage,
    PointView,
    SourceStats,
    backoff,
    scale,
)

log = structlog.get_logger("agent.poller")

REFUSED_RETRY_CYCLES = 60  # a parked request is tried again this many cycles on

_NUMBERS = (int, float)  # a value of these types (not bool) is its own repr in JSON

# A response to deliver: its request, its values, its wall time (ms) and monotonic time.
_Response = tuple[ReadRequest, list[int] | list[bool], int, float]


class RegisterBus(Protocol):
    """What a poller needs from a connection (the Modbus adapter provides it)."""

    name: str

    async def read(
        self, unit: int, table: Table, start: int, count: int
    ) -> list[int] | list[bool]: ...

    async def end_cycle(self) -> None: ...


Tap = Callable[[Value | None, int], None]  # a value read (None: failed) and its time, ms
# A read's values together (`Aggregates.rows`, `Inputs.rows`): in order, and their time.
RowTap = Callable[[Sequence[int | float], int], None]


class Inputs(Protocol):
    """What a poller gives the values of derived points' inputs to (agent.pipeline.derive's
    `Calculator`): a read's values as a row where it can, one at a time otherwise."""

    def __contains__(self, point_id: str, /) -> bool:
        """Whether the point is an input of a derived point."""
        ...

    def tap(self, point_id: str) -> Tap:
        """What takes each value of that point, one at a time."""
        ...

    def rows(self, point_ids: Sequence[str]) -> RowTap | None:
        """What takes a read's values of these points together (in order); None when none
        of them is an input."""
        ...


class Aggregates(Protocol):
    """What a poller feeds its points' aggregates through (agent.pipeline.aggregation's
    `Aggregation`): asked for a tap only when a point's value comes point by point."""

    def __contains__(self, key: tuple[str, str], /) -> bool:
        """Whether (bucket, point id) is aggregated."""
        ...

    def tap(self, bucket: str, point_id: str) -> Tap:
        """What takes each value of that point, one at a time."""
        ...

    def rows(self, bucket: str, point_ids: Sequence[str], typecode: str) -> RowTap | None:
        """What takes a read's values of these points together (in order, of the array
        typecode `typecode`: "f", "d" or "q"); None when they are not wanted together."""
        ...


# The array typecode that holds a plain point's values exactly, by its type.
_ROW_TYPECODE: dict[str, str] = {
    "float32": "f",
    "float64": "d",
    **dict.fromkeys(("int16", "uint16", "int32", "uint32", "int64"), "q"),
}


class PointReader:
    """Everything needed to turn a point's registers into a reading, worked out once; the
    rest is read from the point's config."""

    __slots__ = ("filter", "plain", "point", "prefix", "scaled")

    def __init__(self, point: Point) -> None:
        self.point = point
        self.prefix = id_prefix(point.id)
        self.scaled = point.scale is not None or point.offset is not None
        self.plain = is_plain(point)
        # Only a deadband holds a value back: without one every value is reported, and the
        # poller keeps the last (`DevicePoller.point_views`).
        self.filter = (
            ChangeFilter(point.deadband, point.max_silence) if point.deadband is not None else None
        )

    def value(self, raw_values: list[int] | list[bool]) -> Value:
        """The point's value from its registers, typed to its data shape."""
        point = self.point
        if raw_values and isinstance(raw_values[0], bool):
            return to_shape(bool(raw_values[0]), point.shape, width=point.width)
        raw = decode_registers(raw_values, point.type, byte_order=point.byte_order, bit=point.bit)
        return self.typed(raw)

    def typed(self, raw: RawValue) -> Value:
        """The point's value from what its registers decode to (`value`, or a whole read's
        `BlockDecoder`): scaled, typed to its data shape."""
        point = self.point
        if self.scaled and isinstance(raw, int | float) and not isinstance(raw, bool):
            # A register's integer has no decimals; a float's are not rounded.
            places = 0 if isinstance(raw, int) else None
            raw = scale(raw, scale=point.scale, offset=point.offset, raw_places=places)
        elif self.plain and type(raw) is float and raw - raw == 0.0:
            return raw  # what to_shape gives a finite float for "float": itself
        return to_shape(raw, point.shape, width=point.width)


def is_plain(point: Point) -> bool:
    """Published as its registers decode (a finite float of a float point, an integer of an
    integer point): nothing to scale or type."""
    return (
        point.scale is None
        and point.offset is None
        and point.bit is None
        and decodes_as_shown(point.type, point.shape)
    )


class _Run:
    """A read whose points are all plain (`is_plain`), published, without a deadband, of
    one bucket and declared in address order: its readings are made in one pass, from one
    struct call (the hot path of a meter's block of floats). Its points need no
    `PointReader`: the run holds their prefixes and taps. The derived points' inputs among
    them are given the values together (`inputs`), and so are its points' aggregates when
    they take a row at a time (`rows`); otherwise each aggregated point has its own tap."""

    __slots__ = ("bucket", "end", "first", "inputs", "prefixes", "rows", "taps")

    def __init__(self, points: list[Point], first: int, taps: _Taps) -> None:
        self.bucket = points[0].bucket
        self.first, self.end = first, first + len(points)  # the points' indexes
        self.prefixes = tuple(id_prefix(point.id) for point in points)
        self.rows = taps.rows_of(points)
        self.inputs = taps.inputs_of(points)
        mine = () if self.rows else map(taps.aggregate, range(self.first, self.end))
        # (the value's place in the read, its tap) for the points that have one
        tapped = tuple((n, tap) for n, tap in enumerate(mine) if tap is not None)
        self.taps = tapped or None

    @classmethod
    def of(cls, points: tuple[Point, ...], spans: tuple[Span, ...], taps: _Taps) -> _Run | None:
        first = spans[0].index
        if any(span.index != first + n for n, span in enumerate(spans)):
            return None
        mine = list(points[first : first + len(spans)])
        if (
            any(not is_plain(p) or not p.publish or p.deadband is not None for p in mine)
            or len({point.bucket for point in mine}) != 1
        ):
            return None
        return cls(mine, first, taps)


class _Taps:
    """What a poller feeds: the derived points' inputs (`inputs`) and the points'
    aggregates (`aggregates`). A point's tap of both (`each`) is made when a value of it
    first comes point by point: a point read only in rows never has one (a closure less
    per point)."""

    __slots__ = ("_each", "aggregates", "inputs", "points")

    def __init__(self, points: tuple[Point, ...]) -> None:
        self.points = points
        self.inputs: Inputs | None = None
        self.aggregates: Aggregates | None = None
        self._each: dict[int, Tap | None] = {}  # by point index, as they are made

    def set_inputs(self, inputs: Inputs | None) -> None:
        self.inputs = inputs
        self._each.clear()

    def set_aggregates(self, aggregates: Aggregates | None) -> None:
        self.aggregates = aggregates
        self._each.clear()

    def each(self, index: int) -> Tap | None:
        """Point `index`'s tap of its derived points and its aggregate together."""
        try:
            return self._each[index]
        except KeyError:
            pass
        point, inputs = self.points[index], self.inputs
        tap = inputs.tap(point.id) if inputs is not None and point.id in inputs else None
        aggregate = self.aggregate(index)
        if aggregate is not None:
            tap = _both(tap, aggregate) if tap else aggregate
        self._each[index] = tap
        return tap

    def aggregate(self, index: int) -> Tap | None:
        """Point `index`'s tap of its aggregate alone, if it has one."""
        point, aggregates = self.points[index], self.aggregates
        if aggregates is None or (point.bucket, point.id) not in aggregates:
            return None
        return aggregates.tap(point.bucket, point.id)

    def inputs_of(self, points: list[Point]) -> RowTap | None:
        """The row tap of the derived points' inputs among these points, if any is one."""
        inputs = self.inputs
        if inputs is None or not any(point.id in inputs for point in points):
            return None
        return inputs.rows(tuple(point.id for point in points))

    def rows_of(self, points: list[Point]) -> RowTap | None:
        """The row tap of these points' aggregates, if every one is aggregated."""
        typecodes = {_ROW_TYPECODE.get(point.type) for point in points}
        if typecodes == {"f", "d"}:
            typecodes = {"d"}  # float32 and float64: doubles hold both
        typecode = typecodes.pop() if len(typecodes) == 1 else None
        aggregates = self.aggregates
        if (
            aggregates is None
            or typecode is None
            or any((point.bucket, point.id) not in aggregates for point in points)
        ):
            return None
        return aggregates.rows(points[0].bucket, tuple(point.id for point in points), typecode)


def _both(first: Tap, second: Tap) -> Tap:
    def tap(value: Value | None, timestamp_ms: int) -> None:
        first(value, timestamp_ms)
        second(value, timestamp_ms)

    return tap


# What a poller works out once for a read: its decoder of all values at once, if it has
# one, and its run, if it is one (see `_Run`).
_ReadPlan = tuple[ReadRequest, BlockDecoder | None, _Run | None]


class _Spans(list[Span]):
    """A device's spans (a list that can be referred to weakly)."""

    __slots__ = ("__weakref__",)


# The spans of every device layout in use, once: devices alike (the same meter, or the same
# template, many times over) have their spans in common, 64 bytes a point.
_LAYOUTS: weakref.WeakValueDictionary[tuple[object, ...], _Spans] = weakref.WeakValueDictionary()


def device_spans(device: Device) -> list[Span]:
    """What a device's points cover, each span indexed by its point (one list for devices
    whose points lie alike)."""
    points = device.points
    layout = (tuple(point.location for point in points), tuple(point.width for point in points))
    spans = _LAYOUTS.get(layout)
    if spans is None:
        spans = _LAYOUTS[layout] = _Spans(
            Span(*point.location, point.width, index) for index, point in enumerate(points)
        )
    return spans


def interval_groups(device: Device) -> list[tuple[float | None, list[Span]]]:
    """A device's spans by their point's own interval (None: every cycle of the device),
    the every-cycle group first, then the shorter intervals before the longer."""
    groups: dict[float | None, list[Span]] = {}
    for span, point in zip(device_spans(device), device.points, strict=True):
        groups.setdefault(point.interval, []).append(span)
    return sorted(groups.items(), key=lambda group: -1.0 if group[0] is None else group[0])


def plan_groups(device: Device) -> list[tuple[float, list[ReadRequest]]]:
    """Each interval group's seconds (the device's interval for the every-cycle group) and
    its coalesced reads, in the order a cycle asks them."""
    return [
        (device.interval if seconds is None else seconds, plan_reads(spans, device.limits))
        for seconds, spans in interval_groups(device)
    ]


def plan_device(device: Device) -> list[ReadRequest]:
    """A device's coalesced reads, every interval group's."""
    return [request for _, requests in plan_groups(device) for request in requests]


def cycles(seconds: float | None, interval: float) -> int:
    """A point interval in cycles of a device `interval`: the nearest whole number, at least
    one (the config asks for a multiple; the cloud may set an interval it is not one of)."""
    if seconds is None:
        return 1
    return max(1, round(seconds / interval))


class _Group:
    """The points of a device read at one interval, their requests and their next slot."""

    __slots__ = ("due", "every", "left", "requests", "seconds", "spans")

    def __init__(self, seconds: float | None, spans: list[Span], limits: Limits) -> None:
        self.seconds = seconds  # None: every cycle of the device
        self.spans = spans
        self.requests = plan_reads(spans, limits)  # parked ones left out
        self.every = 1  # its interval in the device's cycles (set by the poller)
        self.due = 0  # the slot it is next due in: every group is read in the first cycle
        self.left: list[ReadRequest] = []  # what the unit did not answer of its last slot


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
        self._points = device.points
        # Each point's reader, made when a response is first turned into its reading point
        # by point (a point read only in runs never needs one).
        self._readers: list[PointReader | None] = [None] * len(device.points)
        # Set by the agent, for the points that derived points or their aggregates use:
        # given every value read (None when the read failed), before the deadband.
        self._taps = _Taps(device.points)
        self._spans = device_spans(device)  # held: devices alike share them while it lives
        self._limits = device.limits
        self._groups = [_Group(s, spans, self._limits) for s, spans in interval_groups(device)]
        # No point has an interval of its own: one group, read in every cycle (the common
        # case, and the cheapest cycle: no slots are counted).
        self._uniform = [group.seconds for group in self._groups] == [None]
        # Each point's group, by its index (only where there are several).
        self._group_of = (
            {}
            if self._uniform
            else {span.index: group for group in self._groups for span in group.spans}
        )
        self._slot = 0  # the next cycle's slot on the schedule's grid, skipped ones counted
        self._refusals = Refusals()  # what the unit refused as a layout problem
        self._parked: dict[ReadRequest, int] = {}  # a parked request → the cycle it is retried
        self._replan = False  # what was learnt in this cycle changes the plan
        # The last response, not yet turned into readings (`_defer`), and what delivering
        # it outside this task raised (raised again in it).
        self._pending: _Response | None = None
        self._deferred_error: Exception | None = None
        # Each read's plan (made at its first response; forgotten when the plan changes or
        # the inputs or aggregates are set), by the request's id.
        self._reads: dict[int, _ReadPlan] = {}
        # Each point's last reading and when (monotonic), for a point without a deadband
        # (one with a deadband: its filter's).
        self._last: list[Value | None] = [None] * len(self._readers)
        self._last_at: list[float] = [-math.inf] * len(self._readers)
        self.stats = SourceStats()
        self.cadence = Cadence()
        # Called after every cycle that asked the unit (derived points are worked out
        # then, from one cycle's values).
        self.on_cycle: Callable[[], None] | None = None
        self._throttle = Throttle(interval=60.0)
        self.interval = device.interval
        self._count_cycles(self.interval)
        self._log = log.bind(device=device.name, connection=bus.name, unit=device.unit)
        self._outage = Outage(self._log, self.stats, "device")

    @property
    def requests(self) -> list[ReadRequest]:
        """Every group's planned requests, parked ones left out."""
        return [request for group in self._groups for request in group.requests]

    async def run(self) -> None:
        """Poll until cancelled."""
        loop = asyncio.get_running_loop()
        origin = loop.time()
        cycle = 0
        grid = self.interval  # the interval the schedule is laid on
        self._count_cycles(grid)  # the cloud may have set it before the start
        while True:
            if self._room is not None:
                await self._room()
            self.cadence.started(loop.time())
            ok = await self.poll_once()
            cycle += 1
            now = loop.time()
            if grid != self.interval:  # a new interval: a new grid from this cycle's start
                origin, cycle = origin + (cycle - 1) * grid, 1
                self._regrid(grid, self.interval)
                grid = self.interval
            if ok:
                due = origin + cycle * grid
                if due < now:
                    missed = math.ceil((now - due) / grid)
                    self.stats.skipped_cycles += missed
                    cycle += missed
                    self._slot += missed  # a group due in one is read in the next cycle
                    due = origin + cycle * grid
            else:
                due = now + backoff(
                    self.interval, self.stats.consecutive_failures, self.device.backoff_max
                )
                # Re-anchor the schedule so recovery resumes on a regular grid; the groups'
                # slots carry on (the back-off counts as one).
                origin, cycle = due, 0
            self.cadence.waits_until(due)
            await asyncio.sleep(max(0.0, due - loop.time()))

    def set_inputs(self, inputs: Inputs | None) -> None:
        """What the derived points' inputs are given to: every value of them this poller
        reads (None: the read failed), before the deadband; a run's values as a row."""
        self._taps.set_inputs(inputs)
        self._reads.clear()  # a read's run holds its taps

    def set_aggregates(self, aggregates: Aggregates | None) -> None:
        """What the points' aggregates are fed through: a read whose points are all
        aggregated alike hands over its values as a row, other values go one by one."""
        self._taps.set_aggregates(aggregates)
        self._reads.clear()

    def set_interval(self, interval: float) -> None:
        """Takes effect from the next cycle (`run` works out the groups' cycles again)."""
        self.interval = interval

    async def poll_once(self) -> bool:
        """One cycle. False when the unit answered nothing (a transient failure)."""
        self.stats.cycles += 1
        work = self._work()
        if not work:
            return True  # no group is due: the unit is not asked
        try:
            answered, failure = await self._ask(work)
        finally:
            try:
                # The line may let another device's request go meanwhile: the last
                # response is decoded after it has left.
                await self._bus.end_cycle()
            finally:
                self._deliver_pending()
        if work:  # cut short
            self._keep_unanswered(work)
            self._tap_failed(work)
        if self.on_cycle is not None:
            self.on_cycle()
        if self._replan:
            self._plan()
        if answered:
            self._outage.answered()
            if failure is not None and self._throttle.allow("cut_short"):
                self._log.warning(
                    "cycle_cut_short",
                    error=str(failure),
                    unsent=len(work) - 1,  # after the request that failed
                    **_code(failure),
                )
        elif failure is not None:
            self._outage.failed(failure, **_code(failure))
            return False
        return True

    def _tap_failed(self, work: deque[ReadRequest]) -> None:
        """What a cycle cut short left unread has no value now, for what taps it."""
        stamp = self._wall_ms()
        for request in work:
            for span in request.spans:
                tap = self._taps.each(span.index)
                if tap is not None:
                    tap(None, stamp)

    def _work(self) -> deque[ReadRequest]:
        """This cycle's requests: the due groups', then the parked requests due for a retry."""
        work = deque(self._groups[0].requests) if self._uniform else self._due_groups()
        if self._parked:
            work.extend(r for r, due in self._parked.items() if due <= self.stats.cycles)
        return work

    def _due_groups(self) -> deque[ReadRequest]:
        """The requests of the groups due in this slot, and what the last cycle left
        unanswered of the others."""
        slot = self._slot
        self._slot = slot + 1
        work: deque[ReadRequest] = deque()
        for group in self._groups:
            if group.due <= slot:
                work.extend(group.requests)  # the whole plan, what its last slot left included
                # Its next slot on its own grid: a skipped slot is not made up twice.
                group.due += group.every * ((slot - group.due) // group.every + 1)
                group.left.clear()
            elif group.left:
                work.extend(group.left)
                group.left.clear()
        return work

    def _keep_unanswered(self, work: deque[ReadRequest]) -> None:
        """What a cycle cut short did not get answered, kept for the next cycle: a group read
        every cycle asks it then anyway, and a parked request keeps its retry cycle."""
        if self._uniform:
            return  # one group, read every cycle
        for request in work:
            group = self._group_of[request.spans[0].index]
            if group.every > 1 and request not in self._parked:
                group.left.append(request)

    def _count_cycles(self, interval: float) -> None:
        """Each group's interval in cycles of the device's `interval`."""
        for group in self._groups:
            group.every = cycles(group.seconds, interval)

    def _regrid(self, old: float, new: float) -> None:
        """The groups' cycles for a new device interval, the cycle just run being the new
        grid's first: each group's next read stays about as many seconds off (the nearest
        slot, at least the next, at most its new period away)."""
        self._count_cycles(new)
        current = self._slot - 1
        for group in self._groups:
            ahead = round((group.due - current) * old / new)
            group.due = current + min(group.every, max(1, ahead))

    async def _ask(
        self, work: deque[ReadRequest]
    ) -> tuple[bool, DeviceError | DeviceRefused | None]:
        """Send `work` in order; whether the unit answered, and the transient failure that
        ended the cycle early (what was not answered stays in `work`, the failed request
        first)."""
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
                    work.appendleft(request)
                    return answered, exc  # as a time-out: the unit cannot serve now
                answered = True
                work.extendleft(reversed(self._refused(request, exc)))
                continue
            except DeviceError as exc:
                stats.read_errors += 1
                stats.timeouts += isinstance(exc, DeviceTimeout)
                work.appendleft(request)
                return answered, exc  # a unit that does not answer is not asked again this cycle
            answered = True
            stats.requests_ok += 1
            self._answered(request)
            self._defer((request, values, self._wall_ms(), time.monotonic()))
        return answered, None

    def _defer(self, response: _Response) -> None:
        """Turn `response` into readings once the next request has left: in a callback that
        runs when this task next waits (for that request's reply, or for the line while
        another device's request goes first), or at the cycle's end, whichever is first.
        Its readings keep the time the response came in; their order is the responses'."""
        self._deliver_pending()  # (never more than one waits)
        self._pending = response
        asyncio.get_running_loop().call_soon(self._deliver_deferred)

    def _deliver_deferred(self) -> None:
        try:
            self._deliver_pending()
        except Exception as exc:  # raised again in the poller's task, at its next delivery
            self._deferred_error = exc

    def _deliver_pending(self) -> None:
        """Deliver the response `_defer` holds, if any; raise what delivering the last one
        raised in its callback."""
        error, self._deferred_error = self._deferred_error, None
        if error is not None:
            raise error
        pending, self._pending = self._pending, None
        if pending is not None:
            self._deliver(*pending)

    def _deliver(
        self,
        request: ReadRequest,
        values: list[int] | list[bool],
        timestamp_ms: int,
        now: float,
    ) -> None:
        _, decoder, run = self._plan_of(request)
        raws = None if decoder is None else decoder(values)
        if run is not None and raws is not None:
            total = sum(raws)  # type: ignore[arg-type]  # (a run's values are numbers)
            if total - total == 0:  # every value finite: an infinity or NaN is refused below
                self._deliver_run(run, raws, timestamp_ms, now)
                return
        self._deliver_points(request, values, raws, timestamp_ms, now)

    def _deliver_run(
        self, run: _Run, raws: tuple[RawValue, ...], timestamp_ms: int, now: float
    ) -> None:
        """A run's readings: each value is its own JSON, tapped, and kept as the last."""
        if run.rows is not None:
            run.rows(raws, timestamp_ms)  # type: ignore[arg-type]  # (a run's values are numbers)
        if run.inputs is not None:
            run.inputs(raws, timestamp_ms)  # type: ignore[arg-type]  # (as above)
        if run.taps is not None:
            for n, tap in run.taps:
                tap(raws[n], timestamp_ms)
        suffix = timestamp_suffix(timestamp_ms)
        parts = [
            prefix + repr(value).encode() + suffix
            for prefix, value in zip(run.prefixes, raws, strict=True)
        ]
        self._last[run.first : run.end] = raws
        self._last_at[run.first : run.end] = [now] * len(raws)
        self.stats.readings += len(parts)
        self._emit(run.bucket, parts)

    def _deliver_points(
        self,
        request: ReadRequest,
        values: list[int] | list[bool],
        raws: tuple[RawValue, ...] | None,
        timestamp_ms: int,
        now: float,
    ) -> None:
        """A response's readings point by point: scaled, typed, filtered, each problem told."""
        suffix = timestamp_suffix(timestamp_ms)
        by_bucket: dict[str, list[bytes]] = {}
        tap_of = self._taps.each
        for n, span in enumerate(request.spans):
            reader = self._readers[span.index] or self._reader(span.index)
            tap = tap_of(span.index)
            try:
                if raws is None:
                    begin = span.start - request.start
                    value = reader.value(values[begin : begin + span.width])
                else:
                    value = reader.typed(raws[n])
            except ValueError as exc:
                self._decode_failed(reader, exc)
                if tap is not None:
                    tap(None, timestamp_ms)
                continue
            if tap is not None:
                tap(value, timestamp_ms)
            if not reader.point.publish:
                continue
            if reader.filter is None:
                self._last[span.index], self._last_at[span.index] = value, now
            elif not reader.filter.admit(value, now):
                continue
            text = repr(value).encode() if type(value) in _NUMBERS else encode_value(value)
            by_bucket.setdefault(reader.point.bucket, []).append(reader.prefix + text + suffix)
        for bucket, parts in by_bucket.items():
            self.stats.readings += len(parts)
            self._emit(bucket, parts)

    def _decode_failed(self, reader: PointReader, exc: ValueError) -> None:
        self.stats.decode_errors += 1
        point_id = reader.point.id
        if self._throttle.allow(("decode", point_id)):
            self._log.warning("point_decode_failed", point=point_id, error=str(exc))

    def _reader(self, index: int) -> PointReader:
        reader = self._readers[index] = PointReader(self._points[index])
        return reader

    def _plan_of(self, request: ReadRequest) -> _ReadPlan:
        """What `request`'s responses are decoded with: a decoder of every span's raw value
        in one struct call, or None (bits, a string, a bit of a register, mixed byte orders,
        overlapping points, a short answer: each point decodes its own registers); and its
        run, if it is one."""
        # By identity (hashing a request hashes all its spans), and checked: a request made
        # for one cycle (a split) may be gone, and its id another's.
        known = self._reads.get(id(request))
        if known is None or known[0] is not request:
            decoder = self._decoder(request)
            run = None if decoder is None else _Run.of(self._points, request.spans, self._taps)
            known = self._reads[id(request)] = (request, decoder, run)
        return known

    def _decoder(self, request: ReadRequest) -> BlockDecoder | None:
        if request.table.is_bits:
            return None  # values are booleans
        fields = []
        for span in request.spans:
            point = self._points[span.index]
            fields.append((span.start - request.start, point.type, point.byte_order, point.bit))
        return block_decoder(request.count, fields)

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
            points=self._ids(request),
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
            self._log.info("read_resumed", **_where(request), points=self._ids(request))

    def _plan(self) -> None:
        """Each group's requests for its points not parked, around what the unit refused."""
        self._replan = False
        self._reads.clear()
        parked = {span.index for request in self._parked for span in request.spans}
        refused = self._refusals.ranges()
        for group in self._groups:
            spans = [span for span in group.spans if span.index not in parked]
            planned = plan_reads(spans, self._limits, refused)
            if planned != group.requests:
                self._log.info(
                    "requests_planned",
                    interval=self.interval if group.seconds is None else group.seconds,
                    requests=[(str(r.table), r.start, r.count) for r in planned],
                )
            group.requests = planned

    def _ids(self, request: ReadRequest) -> list[str]:
        return [self._points[span.index].id for span in request.spans]

    def point_views(self, now: float) -> Iterator[PointView]:
        """Each point's last report and its age at monotonic `now`, for the agent's state."""
        for index, point in enumerate(self._points):
            reader = self._readers[index]
            if reader is not None and reader.filter is not None:
                last, at = reader.filter.last()
            else:  # no reader, or no deadband: what the poller kept
                last, at = self._last[index], self._last_at[index]
            yield PointView(point.id, point.bucket, last, None if last is None else now - at)


def _where(request: ReadRequest) -> dict[str, object]:
    return {"table": str(request.table), "start": request.start, "count": request.count}


def _code(error: DeviceError | DeviceRefused) -> dict[str, object]:
    """A refusal's code and what it means, for a log line."""
    if isinstance(error, DeviceRefused):
        return {"code": error.code, "meaning": error.meaning}
    return {}
