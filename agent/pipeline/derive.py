"""Derived points: each `[[derived]]` expression worked out from its inputs' latest values.

The pollers give every value they read of an input (`update`; None when the read
failed), and call `evaluate` after each cycle: a derived point whose inputs changed
since it was last worked out is worked out again then, so the inputs of one device come
from one cycle. Each input's value must be no older than the point's `max_input_age`
(inputs on other devices); a missing, failed or stale input gives no value, never a
made-up one: counted (`skipped`) and logged at most once a minute per point
(`derived_skipped`). The result carries the newest input's timestamp and goes through
its own deadband, as a polled point's reading does. Derived points are worked out in
the order they are declared, so one may use an earlier one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from agent.sources.source import Cadence, PointView, SourceStats, point_views

log = structlog.get_logger("agent.derived")

Tap = Callable[[Value | None, int], None]
_NUMBERS = (int, float)  # a value of these types (not bool) is its own repr in JSON
_INPUT_TYPES = frozenset({int, float, bool})  # what an expression may be given


@dataclass(slots=True)
class _Shown:
    """A derived point as agent.sources.source.point_views reads it."""

    id: str
    bucket: str
    filter: ChangeFilter


class _Point:
    __slots__ = ("config", "dirty", "filter", "index", "prefix", "tap")

    def __init__(self, config: Derived, index: int) -> None:
        self.config = config
        self.index = index  # its place in declared order
        self.filter = ChangeFilter(config.deadband, config.max_silence)
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
        self._throttle = Throttle(interval=60.0)
        self.skipped = 0  # evaluations that gave no value (an input missing, failed, stale)
        self.failed = 0  # evaluations that raised (a division by zero, an overflow)
        # As the agent's state shows a source: the derived points together.
        self.name, self.kind, self.where = "derived", "derived", "-"
        self.stats = SourceStats()
        self.cadence = Cadence()
        self.interval = 0.0

    def point_views(self, now: float) -> Iterator[PointView]:
        return point_views(
            (_Shown(p.config.id, p.config.bucket, p.filter) for p in self._points), now
        )

    @property
    def inputs(self) -> set[str]:
        """The ids the pollers should tap."""
        return set(self._users)

    def set_tap(self, point_id: str, tap: Tap) -> None:
        """`tap` is given every value of that derived point worked out (its aggregate)."""
        for point in self._points:
            if point.config.id == point_id:
                point.tap = tap

    def tap(self, point_id: str) -> Tap:
        """What a source calls with each value of input `point_id` (None: its read failed),
        with what it updates bound once (a poller calls it for every value of every input)."""
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
        for name in config.expression.inputs:
            value = values.get(name)
            if (
                value is None
                or type(value) not in _INPUT_TYPES
                or now - at[name] > config.max_input_age
            ):
                self._skip(config, self._unusable(name, now))
                return
            stamp = stamps[name]
            if stamp > newest:
                newest = stamp
        try:
            raw = config.expression(values)  # type: ignore[arg-type]  # checked above
            value = to_shape(raw, config.shape)
        except (EvaluationError, ValueError) as exc:
            self.failed += 1
            self._result(config.id, None, newest, now)
            if self._throttle.allow(("failed", config.id)):
                log.warning("derived_failed", point=config.id, error=str(exc))
            return
        self._result(config.id, value, newest, now)
        self.stats.cycles += 1
        self.stats.last_ok_at = now
        if point.tap is not None:
            point.tap(value, newest)
        if config.publish and point.filter.admit(value, now):
            self.stats.readings += 1
            text = repr(value).encode() if type(value) in _NUMBERS else encode_value(value)
            fragment = point.prefix + text + timestamp_suffix(newest)
            readings.setdefault(config.bucket, []).append(fragment)

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
