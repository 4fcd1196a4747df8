"""Derived points: each `[[derived]]` expression worked out from its inputs' latest values.

The sources give every value they read of an input (`tap`, one at a time, None when
the read failed; or `rows`, a read's values together), and call `evaluate` after each
cycle: a derived point whose inputs changed since it was last worked out is worked out
again then, so the inputs of one device come from one cycle. Each input's value must be
no older than the point's `max_input_age` (inputs on other devices); a missing, failed
or stale input gives no value, never a made-up one: counted (`skipped`) and logged at
most once a minute per point (`derived_skipped`). The result carries the newest input's
timestamp and goes through its own deadband, as a polled point's reading does. Derived
points are worked out in the order they are declared, so one may use an earlier one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from heapq import heappop, heappush

import structlog

from agent.config.model import Derived
from agent.pipeline.expressions import EvaluationError
from agent.pipeline.readings import (
    ChangeFilter,
    Value,
    encode_value,
    id_prefix,
    timestamp_suffix,
    to_shape,
)
from agent.service.logs import Throttle
from agent.sources.source import Cadence, PointView, SourceStats

log = structlog.get_logger("agent.derived")

Tap = Callable[[Value | None, int], None]
RowTap = Callable[[Sequence[Value], int], None]  # a read's values (in order) and their time
_NUMBERS = (int, float)  # a value of these types (not bool) is its own repr in JSON
_INPUT_TYPES = frozenset({int, float, bool})  # what an expression may be given


class _Point:
    __slots__ = ("config", "dirty", "filter", "index", "last", "last_at", "prefix", "tap")

    def __init__(self, config: Derived, index: int) -> None:
        self.config = config
        self.index = index  # its place in declared order
        # Only a deadband holds a value back: without one every value is published, and
        # the point keeps the last (`last`, `last_at`: for the agent's state).
        self.filter = (
            ChangeFilter(config.deadband, config.max_silence)
            if config.deadband is not None
            else None
        )
        self.last: Value | None = None
        self.last_at = 0.0
        self.dirty = False  # in the calculator's pending heap
        self.prefix = id_prefix(config.id)  # the start of its readings' fragments
        self.tap: Tap | None = None  # given every value worked out (its aggregate)


class Calculator:
    """Every derived point of the config, fed by the pollers' taps."""

    def __init__(
        self,
        derived: Sequence[Derived],
        *,
        emit: Callable[[str, list[bytes]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._points = [_Point(d, n) for n, d in enumerate(derived)]
        self._emit = emit  # (bucket, encoded readings), as Batcher.add_encoded takes them
        self._clock = clock
        # Each input's latest value (None: its last read failed), where the expressions
        # read it; when it came (monotonic) and its timestamp.
        self._values: dict[str, Value | None] = {}
        self._at: dict[str, float] = {}
        self._stamps: dict[str, int] = {}
        self._users: dict[str, list[_Point]] = {}
        for point in self._points:
            for name in point.config.expression.inputs:
                self._users.setdefault(name, []).append(point)
        # The indexes of the points whose inputs changed (a heap: worked out in declared
        # order, so that one may use an earlier one's new value).
        self._pending: list[int] = []
        self._suffix = (-1, b"")  # the last result timestamp's suffix, and that timestamp
        self._throttle = Throttle(interval=60.0)
        self.skipped = 0  # evaluations that gave no value (an input missing, failed, stale)
        self.failed = 0  # evaluations that raised (a division by zero, an overflow)
        # As the agent's state shows a source: the derived points together.
        self.name, self.kind, self.where = "derived", "derived", "-"
        self.stats = SourceStats()
        self.cadence = Cadence()
        self.interval = 0.0

    def point_views(self, now: float) -> Iterator[PointView]:
        """Each derived point's last report and its age at monotonic `now`."""
        for point in self._points:
            last, at = point.filter.last() if point.filter else (point.last, point.last_at)
            age = None if last is None else now - at
            yield PointView(point.config.id, point.config.bucket, last, age)

    @property
    def inputs(self) -> set[str]:
        """The ids the sources should give the values of (`tap`, `rows`)."""
        return set(self._users)

    def __contains__(self, point_id: str) -> bool:
        """Whether the point is an input of a derived point."""
        return point_id in self._users

    def set_tap(self, point_id: str, tap: Tap) -> None:
        """`tap` is given every value of that derived point worked out (its aggregate)."""
        for point in self._points:
            if point.config.id == point_id:
                point.tap = tap

    def tap(self, point_id: str) -> Tap:
        """What a source calls with each value of input `point_id` (None: its read failed),
        with what it updates bound once (a poller calls it for each value that comes point
        by point; a read's values together go to `rows`)."""
        values, stamps, at, clock = self._values, self._stamps, self._at, self._clock
        users = tuple(self._users.get(point_id, ()))
        pending = self._pending

        def tap(value: Value | None, timestamp_ms: int) -> None:
            values[point_id] = value
            stamps[point_id] = timestamp_ms
            at[point_id] = clock()
            for point in users:
                if not point.dirty:
                    point.dirty = True
                    heappush(pending, point.index)

        return tap

    def rows(self, point_ids: Sequence[str]) -> RowTap | None:
        """What a source calls with a read's values of these points together (in order):
        what `tap` does for each input among them, with one clock reading and each point
        that uses them marked once. None when none of them is an input."""
        places = tuple((n, name) for n, name in enumerate(point_ids) if name in self._users)
        if not places:
            return None
        users = sorted({point.index for _, name in places for point in self._users[name]})
        points = tuple(self._points[index] for index in users)
        values, stamps, at, clock = self._values, self._stamps, self._at, self._clock
        changed = self._changed

        def row(read: Sequence[Value], timestamp_ms: int) -> None:
            now = clock()
            for n, name in places:
                values[name] = read[n]
                stamps[name] = timestamp_ms
                at[name] = now
            changed(points)

        return row

    def evaluate(self) -> None:
        """Each derived point whose inputs changed, in declared order; the readings of one
        call go to `emit` together, per bucket."""
        pending = self._pending
        if not pending:
            return
        readings: dict[str, list[bytes]] = {}
        now = self._clock()
        points = self._points
        while pending:
            point = points[heappop(pending)]
            point.dirty = False
            self._evaluate(point, now, readings)
        for bucket, parts in readings.items():
            self._emit(bucket, parts)

    def _evaluate(self, point: _Point, now: float, readings: dict[str, list[bytes]]) -> None:
        config, values, at, stamps = point.config, self._values, self._at, self._stamps
        newest = 0
        max_age = config.max_input_age
        for name in config.expression.inputs:
            # (missing, or None from a failed read: neither type is an input's)
            if type(values.get(name)) not in _INPUT_TYPES or now - at[name] > max_age:
                self._skip(config, self._unusable(name, now))
                return
            stamp = stamps[name]
            if stamp > newest:
                newest = stamp
        try:
            raw = config.expression(values)  # type: ignore[arg-type]  # checked above
            # (a float result is finite: it is its own float value)
            floated = type(raw) is float and config.shape == "float"
            value = raw if floated else to_shape(raw, config.shape)
        except (EvaluationError, ValueError) as exc:
            self.failed += 1
            self._result(config.id, None, newest, now)
            if self._throttle.allow(("failed", config.id)):
                log.warning("derived_failed", point=config.id, error=str(exc))
            return
        self._result(config.id, value, newest, now)
        stats = self.stats
        stats.cycles += 1
        stats.last_ok_at = now
        if point.tap is not None:
            point.tap(value, newest)
        if config.publish:
            self._publish(point, value, newest, now, readings)

    def _publish(
        self,
        point: _Point,
        value: Value,
        timestamp_ms: int,
        now: float,
        readings: dict[str, list[bytes]],
    ) -> None:
        """A value worked out, as a reading, unless its deadband holds it back."""
        if point.filter is None:
            point.last, point.last_at = value, now
        elif not point.filter.admit(value, now):
            return
        self.stats.readings += 1
        text = repr(value).encode() if type(value) in _NUMBERS else encode_value(value)
        if self._suffix[0] != timestamp_ms:  # (the points of a cycle share their inputs' time)
            self._suffix = (timestamp_ms, timestamp_suffix(timestamp_ms))
        bucket = point.config.bucket
        readings.setdefault(bucket, []).append(point.prefix + text + self._suffix[1])

    def _result(self, point_id: str, value: Value | None, timestamp_ms: int, now: float) -> None:
        """A derived point's value, as an input of the derived points declared after it
        (not kept when none uses it)."""
        users = self._users.get(point_id)
        if users is None:
            return
        self._values[point_id] = value
        self._stamps[point_id] = timestamp_ms
        self._at[point_id] = now
        self._changed(users)

    def _changed(self, users: Iterable[_Point]) -> None:
        """These points' inputs changed: they are worked out at the next `evaluate`."""
        for user in users:
            if not user.dirty:
                user.dirty = True
                heappush(self._pending, user.index)

    def _unusable(self, name: str, now: float) -> str:
        """Why input `name` cannot be used now."""
        if name not in self._values:
            return f"no value of {name!r} yet"
        value = self._values[name]
        if value is None:
            return f"the last read of {name!r} failed"
        if type(value) not in _INPUT_TYPES:
            return f"{name!r} is not a number or a boolean"
        return f"{name!r} is {now - self._at[name]:.0f} s old"

    def _skip(self, config: Derived, why: str) -> None:
        self.skipped += 1
        self.stats.read_errors += 1
        if self._throttle.allow(("skipped", config.id)):
            log.info("derived_skipped", point=config.id, reason=why)
