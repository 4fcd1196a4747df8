"""Windowed aggregates of a point: an average, minimum, maximum... a window, not every sample.

A point polled every second over a metered cellular link costs sixty readings a minute; its
1-minute average, minimum and maximum cost three. An `Aggregator` folds one point's samples
into the open window and hands back the window's results when it closes. It is pure: no I/O,
no clock of its own, no asyncio. The caller feeds it samples with their own timestamps, calls
`close_due` from a timer, and keeps `state()` somewhere durable to `restore` after a restart.

Windows. A window of W milliseconds (a whole number, at least 1000) is aligned to the epoch:
window k covers [k*W, (k+1)*W). A 60 s window closes at every full minute; one that divides a
day (60, 300, 900, 3600 s...) falls on the UTC clock. A sample belongs to the window of its
own timestamp, not of its arrival, and every result is stamped with its window's end.

Closing. A sample of a later window closes the open window first (a gap of several windows
publishes nothing for the empty ones). `close_due(now_ms)` closes the open window once its end
is at or before `now_ms`: from the caller's timer, and at start-up after a restore, when a
window that ended while the agent was down is closed with what it had (its `count` says how
much that was). A window without samples publishes nothing.

Late samples. Samples are folded in timestamp order. One older than the newest sample taken,
or than the end of a window already closed, is dropped and counted in `late`: after the clock
is stepped back, or from a backlog. Closed windows are published and never reopened, and an
earlier sample cannot be fitted into a running trapezoid. Equal timestamps are not late: both
samples count.

Functions. `count` is an int; `avg` is the float sum/count; `sum` is an int when every sample
of the window was one and a float otherwise; `min`, `max`, `first` and `last` are samples, of
their own type (the first of equal ones for `min` and `max`). Sums of ints are exact (Python
ints). Floats are summed with Neumaier's compensated summation (a float and the rounding error
it has lost so far, joined by `math.fsum` at the end): without keeping the samples, the error is
at most about 2 ulps of the sum plus n*2**-106 of the sum of magnitudes, so the result is the
`math.fsum` of the samples, or next to it, unless they cancel to almost nothing.

Integral. Value times seconds (kW in, kW·s out; scale afterwards for kWh): the integral over
the window of one continuous piecewise-linear function f of time, computed in floats (exactly,
in ints, while the samples are ints and no empty window is crossed). f is built so that every
window can be closed at its end, without waiting for the next sample:
  - between two samples of a window, f is the straight line between them (the trapezoid rule);
  - after a window's last sample, f holds that sample's value to the window's end;
  - a window that follows an earlier sample starts with the straight line from the value held
    at the end of that sample's window to its own first sample, cut at the window's start
    (for adjacent windows that is the line from the held value at the boundary);
  - the first window after a start without state begins at its first sample.
The integrals of successive windows therefore add up to the integral of f, and a constant
value c gives c*W/1000 for every window but the first. Windows without samples publish
nothing, so their share of a gap is not published.

State. `state()` is a JSON-able dict (plain ints, floats, strings, lists, None) with a version
field; `Aggregator.restore(spec, state)` continues exactly as if never stopped: the same
results, to the bit, for the same samples and calls. `packed()` is the same state as a flat
tuple of plain values (no keys, a third of the bytes under marshal, five times quicker to
make), and `unpacked_state(point_id, packed)` the dict again, for `restore`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from types import MappingProxyType
from typing import Any, Protocol

FUNCTIONS: tuple[str, ...] = ("avg", "min", "max", "sum", "count", "first", "last", "integral")
STATE_VERSION = 1  # bump when the layout of `Aggregator.state()` changes
MIN_WINDOW_MS = 1_000
_WINDOW_TOLERANCE_MS = 1e-6  # how far window_s * 1000 may stray from a whole number (float noise)
_TWICE_MS_PER_S = 2_000  # the area is kept doubled, in value·ms: halve and rescale at the end

Number = int | float
NO_NAMES: Mapping[str, str] = MappingProxyType({})  # a spec's names when none are given


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """What to aggregate for one point: the window length and the functions to publish.

    Raises ValueError for a window that is not a whole number of milliseconds of at least
    one second, an unknown or repeated function, a name for a function not chosen, or two
    functions that would publish under one id.
    """

    point_id: str
    window_s: float
    functions: tuple[str, ...]
    names: Mapping[str, str] = field(default_factory=lambda: NO_NAMES)  # function -> own id

    def __post_init__(self) -> None:
        _check_window(self.window_s)
        _check_functions(self.functions, self.names)
        ids = list(self.output_ids().values())
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.point_id}: two aggregates would publish as one id: {ids}")

    @property
    def window_ms(self) -> int:
        return round(self.window_s * 1000)

    def output_ids(self) -> dict[str, str]:
        """The id each function publishes as: `<point id>_<function>` unless `names` says."""
        return {
            function: self.names.get(function, f"{self.point_id}_{function}")
            for function in self.functions
        }


_SHARED: dict[int, int] = {}  # see `shared`
_SHARED_MAX = 256


def shared(number: int) -> int:
    """`number`, as the one int object that stands for it: the window ends and times that
    a thousand aggregators hold at once take 32 bytes, not 32 KB (a few hundred kept)."""
    kept = _SHARED.get(number)
    if kept is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        kept = _SHARED[number] = number
    return kept


class Settles(Protocol):
    """What buffers samples of an aggregator (agent.pipeline.aggregation's `Rows`): told to
    fold them in before anything else is done to the aggregator."""

    def settle(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    value: int | float
    timestamp_ms: int  # the window's end


# What `Aggregator.on_close` is given: the spec, each function's value in its order, and
# the window's end (ms).
Closed = Callable[[WindowSpec, Sequence[Number], int], None]


class Aggregator:
    """One point's open window; see the module docstring for the exact semantics.

    The window's accumulators are the aggregator's own fields (no object per window), so
    that a sample of the open window, the hot path, is one method call on one object.
    `journal`, when set, is given `(index, timestamp_ms, value)` for every sample taken;
    `on_close`, when set, is given the values of every window closed (`Closed`; no
    `Result` is made or returned then), and `on_open` the end of every window opened (all
    three are for agent.pipeline.aggregation, which keeps them durable, publishes them
    and knows when the next window closes). `rows`, when set, holds samples of this
    aggregator not folded in yet (`fold`): settled before the aggregator is fed or closed
    by anyone else.
    """

    __slots__ = (
        "_area",
        "_count",
        "_end_ms",
        "_first",
        "_float_error",
        "_float_sum",
        "_floor_ms",
        "_has_float",
        "_held",
        "_int_sum",
        "_integral",
        "_last",
        "_last_ms",
        "_maximum",
        "_minimum",
        "_width",
        "index",
        "journal",
        "late",
        "on_close",
        "on_open",
        "rows",
        "spec",
    )

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.late = 0  # samples dropped as older than one already taken or a closed window
        self.journal: list[tuple[Any, ...]] | None = None
        self.index = 0  # what this aggregator is called in `journal`
        self.rows: Settles | None = None
        self.on_close: Closed | None = None
        self.on_open: Callable[[int], None] | None = None  # given each new window's end
        self._width = shared(spec.window_ms)
        # The area (the integral's) is kept only when asked for: a sample costs 13 % less.
        self._integral = "integral" in spec.functions
        # The open window: [end - width, end), or no window while `_end_ms` is -1 (then
        # every sample takes the slow path, which opens one).
        self._end_ms = -1
        self._count = 0
        self._int_sum = 0
        self._float_sum = 0.0  # Neumaier: the running sum of the float samples...
        self._float_error = 0.0  # ...and the rounding error it has lost so far
        self._has_float = False
        self._minimum: Number = 0
        self._maximum: Number = 0
        self._first: Number = 0
        self._last: Number = 0
        self._last_ms = 0
        # Twice the integral so far, in value·ms: exact in ints while every sample is one.
        self._area: Number = 0
        # While no window is open, `_last_ms` and `_last` are the newest sample of the last
        # window closed, if one was (`_held`): where the next window's integral starts.
        self._held = False
        self._floor_ms: float = -math.inf  # a sample before this is late

    def add(self, value: Number | None, timestamp_ms: int) -> Sequence[Result]:
        """Fold in one sample; return the results of the window it closed, if it closed one
        (none when `on_close` is set: it is given them).

        None (no value: a failed read) is ignored. Raises TypeError for anything else but
        an int or a float (booleans included) and ValueError for NaN or an infinity: those
        are the caller's to filter out.
        """
        sample: Any = value  # the checks below narrow it; mypy cannot follow them
        kind = type(sample)
        if (
            self._last_ms <= timestamp_ms < self._end_ms
            and (kind is float or kind is int)
            and sample - sample == 0  # finite: inf - inf is NaN
        ):
            # The hot path: a sample of the open window, no older than the last one.
            self._count += 1
            if kind is int:
                self._int_sum += sample
            else:  # `_compensate`, written out: a call would cost a tenth of the path
                running = self._float_sum
                total = running + sample
                if abs(running) >= abs(sample):
                    self._float_error += (running - total) + sample
                else:
                    self._float_error += (sample - total) + running
                self._float_sum = total
                self._has_float = True
            if sample < self._minimum:
                self._minimum = sample
            elif sample > self._maximum:
                self._maximum = sample
            if self._integral:
                self._area += (self._last + sample) * (timestamp_ms - self._last_ms)
            self._last = sample
            self._last_ms = timestamp_ms
            if self.journal is not None:
                self.journal.append((self.index, timestamp_ms, sample))
            return ()
        return self._add_otherwise(value, timestamp_ms)

    def add_unjournalled(self, value: Number | None, timestamp_ms: int) -> Sequence[Result]:
        """`add`, the sample left out of the journal (the caller journals it otherwise)."""
        journal, self.journal = self.journal, None
        try:
            return self.add(value, timestamp_ms)
        finally:
            self.journal = journal

    def fold(self, stamps: Sequence[int], samples: Sequence[Number]) -> None:
        """Fold in samples of the open window at once: what as many `add`s would do, except
        that nothing is journalled (the caller keeps them) and that float samples are added
        to the compensated sum as two numbers, their correctly rounded sum and its rounding
        error (math.fsum twice: as exact as one sample at a time, a fraction of the cost).

        The caller vouches for the samples (an aggregation's `Rows` takes only those): a
        window is open, and they are finite numbers of one type, no older than the newest
        sample taken and in timestamp order, all inside it; `stamps` are their timestamps.
        """
        if not samples:
            return
        self._count += len(samples)
        if type(samples[0]) is int:
            self._int_sum += sum(samples)  # type: ignore[assignment]  # ints, as vouched
        else:
            try:
                total = math.fsum(samples)
                pieces: Sequence[Number] = (total, math.fsum(chain(samples, (-total,))))
            except OverflowError:  # a partial sum beyond the largest float: one at a time
                pieces = samples
            for piece in pieces:
                self._compensate(piece)
            self._has_float = True
        low, high = min(samples), max(samples)
        if low < self._minimum:
            self._minimum = low
        if high > self._maximum:
            self._maximum = high
        if self._integral:
            area, last, last_ms = self._area, self._last, self._last_ms
            for timestamp_ms, sample in zip(stamps, samples, strict=True):
                area += (last + sample) * (timestamp_ms - last_ms)
                last, last_ms = sample, timestamp_ms
            self._area = area
        self._last = samples[-1]
        self._last_ms = stamps[-1]

    def _compensate(self, sample: float) -> None:
        """Neumaier's step: `sample` into the running float sum and its lost error."""
        running = self._float_sum
        total = running + sample
        if abs(running) >= abs(sample):
            self._float_error += (running - total) + sample
        else:
            self._float_error += (sample - total) + running
        self._float_sum = total

    @property
    def newest_ms(self) -> int:
        """The timestamp of the newest sample taken (0 before the first)."""
        return self._last_ms

    def close_due(self, now_ms: int) -> Sequence[Result]:
        """Close the open window if it ended at or before `now_ms`; return its results (or
        give them to `on_close`, when set)."""
        if self._end_ms < 0 or self._end_ms > now_ms:
            return ()
        return self._close()

    def next_close_ms(self) -> int | None:
        """The end of the open window (when `close_due` will close it), None if none is open."""
        return None if self._end_ms < 0 else self._end_ms

    def state(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, as plain JSON-able data."""
        is_open = self._end_ms >= 0
        last = (self._last_ms, self._last) if is_open or self._held else None
        return {
            "version": STATE_VERSION,
            "point_id": self.spec.point_id,
            "window_ms": self._width,
            "late": self.late,
            "last": None if last is None else list(last),  # the newest sample taken
            "window": self._window_state() if is_open else None,
        }

    def packed(self) -> tuple[Any, ...]:
        """`state()` as a flat tuple: (window_ms, late), then the newest sample taken
        (timestamp, value), then the open window's fields (see `unpacked_state`)."""
        if self._end_ms < 0:
            if not self._held:
                return (self._width, self.late)
            return (self._width, self.late, self._last_ms, self._last)
        has_float = self._has_float
        return (
            self._width,
            self.late,
            self._last_ms,
            self._last,
            self._end_ms - self._width,
            self._count,
            self._int_sum,
            self._float_sum if has_float else None,
            self._float_error if has_float else None,
            self._minimum,
            self._maximum,
            self._first,
            self._area if self._integral else None,
        )

    @classmethod
    def restore(cls, spec: WindowSpec, state: Mapping[str, Any]) -> Aggregator:
        """An aggregator that continues from `state` as if it had never stopped.

        Raises ValueError on a state it cannot use: another version, point or window size,
        or data that is not what `state()` writes.
        """
        _check_state_matches(spec, state)
        aggregator = cls(spec)
        aggregator.late = _read_count(state, "late")
        last = _read_sample(state.get("last"))
        window_state = state.get("window")
        if window_state is None:
            if last is not None:
                aggregator._last_ms, aggregator._last = last
                aggregator._held = True
                aggregator._floor_ms = _window_end(last[0], aggregator._width)
            return aggregator
        if last is None:
            raise ValueError("aggregate state: an open window without its last sample")
        aggregator._restore_window(window_state, last)
        return aggregator

    # -- the slow path: everything but a sample of the open window ---------------------------

    def _add_otherwise(self, value: Number | None, timestamp_ms: int) -> Sequence[Result]:
        if value is None:
            return ()
        floor_ms = self._last_ms if self._end_ms >= 0 else self._floor_ms
        if timestamp_ms < floor_ms:
            self.late += 1
            return ()
        kind = type(value)
        if kind is not int and (kind is not float or not math.isfinite(value)):
            raise _not_a_sample(value)
        closed = self._close() if self._end_ms >= 0 else ()
        self._open(value, timestamp_ms)
        if self.journal is not None:
            self.journal.append((self.index, timestamp_ms, value))
        return closed

    def _open(self, value: Number, timestamp_ms: int) -> None:
        start_ms = timestamp_ms - timestamp_ms % self._width
        held_ms, held = self._last_ms, self._last  # (the last window's, if `_held`)
        self._end_ms = shared(start_ms + self._width)
        self._count = 1
        self._has_float = type(value) is not int
        self._int_sum = 0
        self._float_sum = 0.0
        if self._has_float:
            self._float_sum = value
        else:
            self._int_sum = int(value)
        self._float_error = 0.0
        self._minimum = self._maximum = self._first = self._last = value
        self._last_ms = timestamp_ms
        self._floor_ms = timestamp_ms
        self._area = 0
        if self.on_open is not None:
            self.on_open(self._end_ms)
        if self._integral and self._held:
            held_until_ms = _window_end(held_ms, self._width)
            self._area = _lead_in_area(held_until_ms, held, start_ms, value, timestamp_ms)

    def _close(self) -> Sequence[Result]:
        end_ms = self._end_ms
        self._end_ms = -1
        self._held = True
        self._floor_ms = end_ms
        values = self._results(end_ms)
        if self.on_close is not None:
            self.on_close(self.spec, values, end_ms)
            return ()
        return [
            Result(output_id, value, end_ms)
            for output_id, value in zip(self.spec.output_ids().values(), values, strict=True)
        ]

    def _results(self, end_ms: int) -> list[Number]:
        """The open window's value of each function, in the spec's order (the last sample
        held to the window's end)."""
        functions = self.spec.functions
        total = self._total() if "avg" in functions or "sum" in functions else 0
        values: list[Number] = []
        for function in functions:
            if function == "avg":
                values.append(total / self._count)
            elif function == "min":
                values.append(self._minimum)
            elif function == "max":
                values.append(self._maximum)
            elif function == "sum":
                values.append(total)
            elif function == "count":
                values.append(self._count)
            elif function == "first":
                values.append(self._first)
            elif function == "last":
                values.append(self._last)
            else:  # "integral"
                area = self._area + 2 * self._last * (end_ms - self._last_ms)
                values.append(area / _TWICE_MS_PER_S)
        return values

    def _total(self) -> Number:
        """The sum of the samples: exact for ints, correctly rounded from the float parts."""
        if not self._has_float:
            return self._int_sum
        # The int part, split into two floats that hold it exactly (below 2**106), and the
        # compensated float sum, added by fsum, which rounds only once.
        high = float(self._int_sum)
        low = float(self._int_sum - int(high))
        return math.fsum((self._float_sum, self._float_error, high, low))

    def _window_state(self) -> dict[str, Any]:
        return {
            "start_ms": self._end_ms - self._width,
            "count": self._count,
            "int_sum": self._int_sum,
            "float_sum": [self._float_sum, self._float_error] if self._has_float else None,
            "min": self._minimum,
            "max": self._maximum,
            "first": self._first,
            "area": self._area if self._integral else None,  # None: not kept
        }

    def _restore_window(self, state: object, last: tuple[int, Number]) -> None:
        """The window `state()` wrote, `last` its newest sample; ValueError if malformed."""
        if not isinstance(state, Mapping):
            raise ValueError(f"aggregate state: the window is not a mapping: {state!r}")
        start_ms = _read_int(state, "start_ms")
        last_ms, last_value = last
        if start_ms % self._width or not start_ms <= last_ms < start_ms + self._width:
            raise ValueError(f"aggregate state: a window at {start_ms} with a sample at {last_ms}")
        count = _read_count(state, "count")
        if not count:
            raise ValueError("aggregate state: an open window without samples")
        self._end_ms = start_ms + self._width
        self._count = count
        self._int_sum = _read_int(state, "int_sum")
        self._minimum = _read_number(state, "min")
        self._maximum = _read_number(state, "max")
        self._first = _read_number(state, "first")
        if state.get("area") is not None:
            self._area = _read_number(state, "area")
        elif self._integral:  # kept by a config that did not ask for it
            raise ValueError("aggregate state: a window kept without its integral")
        self._last, self._last_ms = last_value, last_ms
        self._floor_ms = last_ms
        self._has_float = state.get("float_sum") is not None
        if self._has_float:
            self._float_sum, self._float_error = _read_pair(state, "float_sum")


_PACKED_CLOSED = (2, 4)  # the lengths of a packed state without an open window
_PACKED_OPEN = 13


def unpacked_state(point_id: str, packed: object) -> dict[str, Any]:
    """The `state()` that `Aggregator.packed()` gave `packed` (for `Aggregator.restore`, which
    checks the values); ValueError if it is not the shape `packed()` makes."""
    if not isinstance(packed, tuple) or len(packed) not in (*_PACKED_CLOSED, _PACKED_OPEN):
        raise ValueError(f"aggregate state: not a packed state: {packed!r}")
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "point_id": point_id,
        "window_ms": packed[0],
        "late": packed[1],
        "last": list(packed[2:4]) if len(packed) > 2 else None,
        "window": None,
    }
    if len(packed) == _PACKED_OPEN:
        start_ms, count, int_sum, float_sum, float_error, minimum, maximum, first, area = packed[4:]
        state["window"] = {
            "start_ms": start_ms,
            "count": count,
            "int_sum": int_sum,
            "float_sum": None if float_sum is None else [float_sum, float_error],
            "min": minimum,
            "max": maximum,
            "first": first,
            "area": area,
        }
    return state


def _lead_in_area(
    held_until_ms: int, held: Number, start_ms: int, first: Number, first_ms: int
) -> Number:
    """Twice the integral from a new window's start to its first sample, in value·ms.

    f runs straight from the value `held` at the end of the previous sample's window to the
    first sample; the part of that line inside the new window is its lead-in.
    """
    if held_until_ms == start_ms:  # the previous sample is in the window just before
        return (held + first) * (first_ms - start_ms)
    # Windows without samples lie between: f crosses them on its way to the first sample.
    at_start = held + (first - held) * (start_ms - held_until_ms) / (first_ms - held_until_ms)
    return (at_start + first) * (first_ms - start_ms)


def _window_end(timestamp_ms: int, width_ms: int) -> int:
    return timestamp_ms - timestamp_ms % width_ms + width_ms


def _not_a_sample(value: object) -> Exception:
    if isinstance(value, float):
        return ValueError(f"cannot aggregate a non-finite value: {value!r}")
    return TypeError(f"only ints and floats are aggregated, not {value!r}")


def _check_window(window_s: float) -> None:
    window_ms = window_s * 1000
    if (
        not math.isfinite(window_ms)
        or window_ms < MIN_WINDOW_MS
        or abs(window_ms - round(window_ms)) > _WINDOW_TOLERANCE_MS
    ):
        raise ValueError(
            f"an aggregate window is a whole number of milliseconds, at least 1 s: {window_s!r}"
        )


def _check_functions(functions: tuple[str, ...], names: Mapping[str, str]) -> None:
    if not functions:
        raise ValueError(f"an aggregate needs at least one of {', '.join(FUNCTIONS)}")
    unknown = [function for function in functions if function not in FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown aggregate functions {unknown}; known: {', '.join(FUNCTIONS)}")
    if len(set(functions)) != len(functions):
        raise ValueError(f"an aggregate function is listed twice: {list(functions)}")
    unused = [function for function in names if function not in functions]
    if unused:
        raise ValueError(f"names given for aggregate functions not chosen: {unused}")


def _check_state_matches(spec: WindowSpec, state: Mapping[str, Any]) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"aggregate state is not a mapping: {state!r}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"aggregate state of version {state.get('version')!r}, not {STATE_VERSION}"
        )
    if state.get("point_id") != spec.point_id:
        raise ValueError(
            f"aggregate state of point {state.get('point_id')!r}, not {spec.point_id!r}"
        )
    if state.get("window_ms") != spec.window_ms:
        raise ValueError(
            f"aggregate state of a {state.get('window_ms')!r} ms window, not {spec.window_ms} ms"
        )


def _read_int(state: Mapping[str, Any], key: str) -> int:
    value = state.get(key)
    if type(value) is not int:  # JSON true and false load as bools: not counts
        raise ValueError(f"aggregate state: {key} is not an integer: {value!r}")
    return value


def _read_count(state: Mapping[str, Any], key: str) -> int:
    value = _read_int(state, key)
    if value < 0:
        raise ValueError(f"aggregate state: {key} is negative: {value!r}")
    return value


def _read_number(state: Mapping[str, Any], key: str) -> Number:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"aggregate state: {key} is not a number: {value!r}")
    return value


def _read_pair(state: Mapping[str, Any], key: str) -> tuple[float, float]:
    pair = state.get(key)
    if not (isinstance(pair, list) and len(pair) == 2 and all(type(x) is float for x in pair)):
        raise ValueError(f"aggregate state: {key} is not two floats: {pair!r}")
    return pair[0], pair[1]


def _read_sample(sample: object) -> tuple[int, Number] | None:
    if sample is None:
        return None
    if not (isinstance(sample, list) and len(sample) == 2):
        raise ValueError(f"aggregate state: a sample is a [timestamp, value] pair: {sample!r}")
    timestamp_ms, value = sample
    if type(timestamp_ms) is not int or (type(value) is not int and type(value) is not float):
        raise ValueError(f"aggregate state: a sample is a [timestamp, value] pair: {sample!r}")
    return timestamp_ms, value
