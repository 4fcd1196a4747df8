"""Readings: typed, timestamped values on their way to a bucket.

A reading is encoded to its JSON fragment once, when it is made; batches only join
fragments. Timestamps are milliseconds since the epoch, written as a string the way the
ORing PaaS document's example writes them ("1590128899000").
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Literal

Value = int | float | bool | str | list[float]

# What the ORing PaaS calls a data shape's type.
ValueType = Literal["string", "integer", "float", "hex", "boolean", "coordinate"]

_encode_str = json.JSONEncoder(ensure_ascii=False).encode


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the time a response arrived."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Reading:
    bucket: str
    id: str
    value: Value
    timestamp_ms: int

    def fragment(self) -> bytes:
        """This reading as the JSON object the platform takes: {"id","value","timestamp"}."""
        return id_prefix(self.id) + encode_value(self.value) + timestamp_suffix(self.timestamp_ms)


def id_prefix(point_id: str) -> bytes:
    """The constant start of a point's fragment, worked out once per point."""
    return f'{{"id":{_encode_str(point_id)},"value":'.encode()


def timestamp_suffix(timestamp_ms: int) -> bytes:
    """The end of a fragment, shared by every reading of one response."""
    return b',"timestamp":"%d"}' % timestamp_ms


def encode_value(value: Value) -> bytes:
    return _encode_value(value).encode()


def _encode_value(value: Value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _encode_str(value)
    if isinstance(value, list):
        return "[" + ",".join(repr(float(v)) for v in value) + "]"
    return repr(value)


def to_shape(raw: int | float | bool | str, shape: ValueType, *, width: int = 1) -> Value:
    """Type a decoded value to its data shape; raise ValueError when it cannot be.

    NaN and infinities have no JSON form and are refused rather than sent as invalid JSON.
    """
    if shape == "boolean":
        return bool(raw) if not isinstance(raw, str) else raw.strip().lower() in ("1", "true", "on")
    if shape == "string":
        return raw if isinstance(raw, str) else _plain(raw)
    if shape == "hex":
        if isinstance(raw, str):
            return raw.upper()
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"cannot show {raw!r} as hex")
        return f"{raw & ((1 << (16 * width)) - 1):0{4 * width}X}"
    if isinstance(raw, str):
        raise ValueError(f"cannot type {raw!r} as {shape}")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError(f"non-finite value {raw!r}")
    if shape == "integer":
        return round(raw)
    if shape == "float":
        return float(raw)
    raise ValueError(f"a register value cannot be typed as {shape}")


def _plain(raw: int | float | bool) -> str:
    return str(raw).lower() if isinstance(raw, bool) else str(raw)


@dataclass(slots=True)
class ChangeFilter:
    """Report-by-exception for one point.

    Without a deadband every value is reported. With one, a value is reported when it
    differs from the last reported value by at least the deadband (any change for
    non-numbers, and for a deadband of 0), or when `max_silence` seconds have passed
    since the last report.
    """

    deadband: float | None
    max_silence: float | None
    _last: Value | None = field(default=None, init=False)
    _last_at: float = field(default=-math.inf, init=False)

    def admit(self, value: Value, now: float) -> bool:
        """Whether to report `value`, seen at monotonic time `now`; records it if so."""
        if self._should_report(value, now):
            self._last, self._last_at = value, now
            return True
        return False

    def last(self) -> tuple[Value | None, float]:
        """The last value reported and when (monotonic); (None, -inf) before the first."""
        return self._last, self._last_at

    def _should_report(self, value: Value, now: float) -> bool:
        if self.deadband is None or self._last is None:
            return True
        if self.max_silence is not None and now - self._last_at >= self.max_silence:
            return True
        last = self._last
        if isinstance(value, list) and isinstance(last, list):
            # A coordinate: the deadband is a distance in metres.
            return value != last and _metres(value, last) >= self.deadband
        numeric = (int, float)
        if (
            isinstance(value, numeric)
            and isinstance(last, numeric)
            and not isinstance(value, bool)
            and not isinstance(last, bool)
        ):
            change = abs(value - last)
            # Decimal readings: 0.3 - 0.2 is a hair under 0.1 in binary floating point.
            tolerance = 1e-9 * max(abs(value), abs(last), self.deadband)
            return change > 0 and change + tolerance >= self.deadband
        return value != last


EARTH_RADIUS_M = 6_371_000.0


def _metres(a: list[float], b: list[float]) -> float:
    """Distance between two [lat, lng] points; equirectangular, fine at deadband scales."""
    lat = math.radians((a[0] + b[0]) / 2)
    dx = math.radians(a[1] - b[1]) * math.cos(lat)
    dy = math.radians(a[0] - b[0])
    return EARTH_RADIUS_M * math.hypot(dx, dy)
