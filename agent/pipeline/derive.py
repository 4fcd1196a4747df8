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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import structlog

from agent.config.model import Derived
from agent.pipeline.expressions import EvaluationError
from agent.pipeline.readings import ChangeFilter, Reading, Value, to_shape
from agent.service.logs import Throttle
from agent.sources.source import Cadence, PointView, SourceStats, point_views

log = structlog.get_logger("agent.derived")


@dataclass(slots=True)
class _Latest:
    value: Value | None  # None: the last read of it failed
    timestamp_ms: int
    at: float  # monotonic, when it came


@dataclass(slots=True)
class _Shown:
    """A derived point as agent.sources.source.point_views reads it."""

    id: str
    bucket: str
    filter: ChangeFilter


class _Point:
    __slots__ = ("config", "dirty", "filter")

    def __init__(self, config: Derived) -> None:
        self.config = config
        self.filter = ChangeFilter(config.deadband, config.max_silence)
        self.dirty = False


class Calculator:
    """Every derived point of the config, fed by the pollers' taps."""

    def __init__(
        self,
        derived: Sequence[Derived],
        *,
        emit: Callable[[Reading], None],
        tap: Callable[[Derived, Value | None, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._points = [_Point(d) for d in derived]
        self._emit = emit
        self._tap = tap  # for the aggregates of derived points
        self._clock = clock
        self._latest: dict[str, _Latest] = {}
        self._users: dict[str, list[_Point]] = {}
        for point in self._points:
            for name in point.config.expression.inputs:
                self._users.setdefault(name, []).append(point)
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

    def update(self, point_id: str, value: Value | None, timestamp_ms: int) -> None:
        latest = self._latest.get(point_id)
        if latest is None:
            self._latest[point_id] = _Latest(value, timestamp_ms, self._clock())
        else:  # in place: no object per reading
            latest.value, latest.timestamp_ms, latest.at = value, timestamp_ms, self._clock()
        for point in self._users.get(point_id, ()):
            point.dirty = True

    def evaluate(self) -> None:
        """Each derived point whose inputs changed, in declared order."""
        for point in self._points:
            if point.dirty:
                point.dirty = False
                self._evaluate(point)

    def _evaluate(self, point: _Point) -> None:
        config = point.config
        values, newest, missing = self._inputs(config)
        if missing is not None:
            self._skip(config, missing)
            return
        try:
            raw = config.expression(values)
            value = to_shape(raw, config.shape)
        except (EvaluationError, ValueError) as exc:
            self.failed += 1
            self.update(config.id, None, newest)
            if self._throttle.allow(("failed", config.id)):
                log.warning("derived_failed", point=config.id, error=str(exc))
            return
        self.update(config.id, value, newest)
        self.stats.cycles += 1
        self.stats.last_ok_at = self._clock()
        if self._tap is not None:
            self._tap(config, value, newest)
        if config.publish and point.filter.admit(value, self._clock()):
            self.stats.readings += 1
            self._emit(Reading(config.bucket, config.id, value, newest))

    def _inputs(self, config: Derived) -> tuple[dict[str, int | float | bool], int, str | None]:
        """The inputs' values, the newest timestamp, and what is wrong if one is unusable."""
        now = self._clock()
        values: dict[str, int | float | bool] = {}
        newest = 0
        for name in config.expression.inputs:
            latest = self._latest.get(name)
            if latest is None:
                return values, newest, f"no value of {name!r} yet"
            if latest.value is None:
                return values, newest, f"the last read of {name!r} failed"
            if now - latest.at > config.max_input_age:
                return values, newest, f"{name!r} is {now - latest.at:.0f} s old"
            if not isinstance(latest.value, int | float):  # bool is an int: kept
                return values, newest, f"{name!r} is not a number or a boolean"
            values[name] = latest.value
            newest = max(newest, latest.timestamp_ms)
        return values, newest, None

    def _skip(self, config: Derived, why: str) -> None:
        self.skipped += 1
        self.stats.read_errors += 1
        if self._throttle.allow(("skipped", config.id)):
            log.info("derived_skipped", point=config.id, reason=why)
