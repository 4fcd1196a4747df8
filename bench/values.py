"""The values the bench plant serves, and how the subscriber checks a reading against them.

Every point has an index (unit-major, from 0) and the plant changes every value at each
wall-clock second k:

- a float32 point holds ``(k mod 4096) * 4096 + (index mod 4096)``, exact in a float32
  (below 2**24);
- a uint16 point holds ``(k + index) mod 65536``.

So a reading says which point it came from and which second's value it carries: its age is
the reading's timestamp second minus that second. 0 is the usual age, 1 happens around the
second boundary (the plant updates a moment after it); 2 or more means a stale value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

Kind = Literal["float32", "uint16"]

WIDTH: dict[Kind, int] = {"float32": 2, "uint16": 1}  # registers per point
_FLOAT_MOD = 4096
_UINT16_MOD = 65536
_MODULUS: dict[Kind, int] = {"float32": _FLOAT_MOD, "uint16": _UINT16_MOD}
MAX_FRESH_AGE = 1  # seconds: the value of the second before is fine at the boundary


def registers(kind: Kind, tick: int, indexes: Sequence[int]) -> list[int]:
    """The registers of consecutive points `indexes` at second `tick`, big-endian words."""
    if kind == "uint16":
        return [(tick + index) % _UINT16_MOD for index in indexes]
    values = [(tick % _FLOAT_MOD) * _FLOAT_MOD + index % _FLOAT_MOD for index in indexes]
    data = struct.pack(f">{len(values)}f", *values)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def age(kind: Kind, index: int, value: object, timestamp_ms: int) -> int | None:
    """Seconds between the value's second and the reading's; None if no such value exists."""
    if isinstance(value, bool):
        return None
    if kind == "uint16":
        if not isinstance(value, int) or not 0 <= value < _UINT16_MOD:
            return None
        tick = value - index
    else:
        if not isinstance(value, float) or not value.is_integer():
            return None
        whole = int(value)
        if not 0 <= whole < _FLOAT_MOD * _FLOAT_MOD or whole % _FLOAT_MOD != index % _FLOAT_MOD:
            return None
        tick = whole // _FLOAT_MOD
    modulus = _MODULUS[kind]
    seconds = (timestamp_ms // 1000 - tick) % modulus
    # A value from a later second than its timestamp cannot have been served.
    return seconds if seconds < modulus // 2 else None
