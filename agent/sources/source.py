"""What every source of readings has in common, whatever it talks to.

A Modbus device (`agent.sources.modbus.poller.DevicePoller`) and a serial instrument
(`agent.sources.serial.instrument.Instrument`) both are a `Source`: a name, one
`SourceStats` record, an interval the cloud may change (`set_interval`), and `run()`.
They share the back-off after a failure (`backoff`), the way an outage is logged
(`Outage`: once when it starts, quietly while it lasts, once when it ends) and the way
a raw number is scaled (`scale`: one rounding rule).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import structlog

from agent.pipeline.readings import ChangeFilter, Value


@dataclass(frozen=True, slots=True)
class PointView:
    """A point's last report, as the agent's state shows it."""

    id: str
    bucket: str
    value: Value | None  # None before the first report
    age_s: float | None  # seconds since it


@dataclass(slots=True)
class SourceStats:
    """Counters of one source since the agent started; the agent's state reads them.

    A counter a kind of source cannot have stays 0 (an instrument is never refused).
    """

    cycles: int = 0  # polls of a device; requests or samples of an instrument
    readings: int = 0  # readings handed on (after the deadband)
    read_errors: int = 0  # requests that got no usable answer
    timeouts: int = 0  # of which: no answer within the time-out
    refused: int = 0  # requests the device refused (a Modbus exception response)
    decode_errors: int = 0  # values that could not be decoded or typed
    skipped_cycles: int = 0  # cycles missed because an earlier one overran
    consecutive_failures: int = 0  # cycles that failed in a row, now
    requests_ok: int = 0  # Modbus requests answered
    reopened: int = 0  # times the port was opened again after it was lost
    lines: int = 0  # serial lines received
    unmatched: int = 0  # serial lines that gave no fields
    bad_checksum: int = 0  # NMEA sentences whose checksum was wrong
    overlong: int = 0  # serial lines cut at max_line
    last_ok_at: float | None = None  # monotonic: the last cycle the source answered in
    last_error: str | None = None  # of the last failed cycle, as logged
    last_error_code: int | None = None  # its Modbus exception code, if it was one

    @property
    def failing(self) -> bool:
        return self.consecutive_failures > 0


class Cadence:
    """When a source's cycles started and when its next one is due, for the agent's state:
    the interval achieved (median and 95th percentile of the last CADENCE_SAMPLES) and,
    while it is backed off, how long until it tries again. Two stores a cycle: cheap."""

    __slots__ = ("next_at", "starts")

    def __init__(self) -> None:
        self.starts: deque[float] = deque(maxlen=CADENCE_SAMPLES + 1)  # monotonic
        self.next_at: float | None = None  # monotonic: the next cycle, when one is waited for

    def started(self, at: float) -> None:
        self.starts.append(at)
        self.next_at = None

    def waits_until(self, at: float) -> None:
        self.next_at = at

    def achieved(self) -> tuple[float, float] | None:
        """(median, 95th percentile) of the intervals between the last cycles' starts."""
        if len(self.starts) < 2:
            return None
        gaps = sorted(b - a for a, b in itertools.pairwise(self.starts))
        return gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, math.ceil(0.95 * len(gaps)) - 1)]


CADENCE_SAMPLES = 32


class Reported(Protocol):
    """A point as a source keeps it: its id, bucket and deadband filter."""

    id: str
    bucket: str
    filter: ChangeFilter


def point_views(points: Iterable[Reported], now: float) -> Iterator[PointView]:
    """Each point's last report and its age at monotonic `now`, for the agent's state."""
    for point in points:
        last, at = point.filter.last()
        yield PointView(point.id, point.bucket, last, None if last is None else now - at)


class Source(Protocol):
    """A device or an instrument, as the service and the cloud settings see it."""

    name: str
    stats: SourceStats

    @property
    def interval(self) -> float: ...

    def set_interval(self, interval: float) -> None:
        """A new interval, from the next cycle on."""

    async def run(self) -> None:
        """Read until cancelled."""


def backoff(
    interval: float,
    failures: int,
    ceiling: float,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait after `failures` failures in a row: interval * 2^failures, capped at
    `ceiling`, then a random point in its upper half so that sources do not retry in step."""
    top = min(ceiling, interval * 2 ** min(failures, 16))
    return uniform(top / 2, top)


class Outage:
    """How a source logs that it cannot reach what it reads: a warning when an outage
    starts, a debug line for each further failure, an info line when it ends.

    `kind` names the events: "device" gives device_unreachable, device_still_unreachable
    and device_recovered.
    """

    def __init__(self, log: structlog.typing.FilteringBoundLogger, stats: SourceStats, kind: str):
        self._log = log
        self._stats = stats
        self._kind = kind

    def failed(self, error: object, **context: Any) -> None:
        """One more failed cycle."""
        stats = self._stats
        stats.consecutive_failures += 1
        stats.last_error = str(error)
        code = context.get("code")
        stats.last_error_code = code if isinstance(code, int) else None
        if stats.consecutive_failures == 1:
            self._log.warning(f"{self._kind}_unreachable", error=str(error), **context)
        else:
            self._log.debug(
                f"{self._kind}_still_unreachable",
                error=str(error),
                failed_cycles=stats.consecutive_failures,
                **context,
            )

    def answered(self) -> None:
        """A cycle that got an answer: ends the outage, if there was one."""
        stats = self._stats
        stats.last_ok_at = time.monotonic()
        if stats.consecutive_failures:
            self._log.info(f"{self._kind}_recovered", failed_cycles=stats.consecutive_failures)
            stats.consecutive_failures = 0


def places(number: str | float | None) -> int:
    """Decimal places of a number as written ("21.50" → 2, 0.01 → 2, 1e-3 → 3, 5 → 0)."""
    if number is None:
        return 0
    exponent = Decimal(number if isinstance(number, str) else repr(number)).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def scale(
    raw: int | float, *, scale: float | None, offset: float | None, raw_places: int | None
) -> int | float:
    """raw * scale + offset, rounded to the places its inputs carry.

    `raw_places` is how many decimal places `raw` has: 0 for a register's integer, the
    digits after the point of a number read as text; None for a binary float, which is
    not rounded. The result is rounded to raw_places + the places of `scale`, or those of
    `offset` if more: 5448 * 0.01 is 54.48 (not 54.480000000000004), "21.5" * 0.1 is 2.15.
    Without scale and offset, raw is returned as it is.
    """
    if scale is None and offset is None:
        return raw
    value = raw * (scale if scale is not None else 1.0) + (offset or 0.0)
    if raw_places is None or not math.isfinite(value):
        return value
    return round(value, max(raw_places + _places_of(scale), _places_of(offset)))


@functools.lru_cache(maxsize=1024)
def _places_of(factor: float | None) -> int:
    """`places` of a scale or an offset: a point's few factors, parsed once each."""
    return places(factor)
