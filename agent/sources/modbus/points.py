"""Where a value lives in a Modbus device, and how many registers it spans.

Plain data and pure functions: no protocol library is imported here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

from agent.pipeline.readings import ValueType

PointType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "bool",
    "string",
    "hex",
]
POINT_TYPES: tuple[str, ...] = get_args(PointType)

ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

MAX_READ_REGISTERS = 125  # Modbus limit for function codes 3 and 4
MAX_READ_BITS = 2000  # Modbus limit for function codes 1 and 2

_WIDTH = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
    "bool": 1,
}


class Table(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE = "discrete"
    INPUT = "input"
    HOLDING = "holding"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING)


_CLASSIC_PREFIX = {"0": Table.COIL, "1": Table.DISCRETE, "3": Table.INPUT, "4": Table.HOLDING}


def parse_classic_address(text: str) -> tuple[Table, int]:
    """Classic Modicon notation → (table, 0-based offset).

    "40001" is holding register 0, "00800" coil 799, "400201" (6 digits) holding 200.
    """
    if not text.isdigit() or len(text) not in (5, 6):
        raise ValueError(
            f"address {text!r} is not classic Modicon notation: 5 or 6 digits, "
            'first digit 0, 1, 3 or 4 (e.g. "40001"), or give table and a 0-based address'
        )
    table = _CLASSIC_PREFIX.get(text[0])
    if table is None:
        raise ValueError(
            f"address {text!r}: first digit must be 0 (coil), 1 (discrete input), "
            "3 (input register) or 4 (holding register)"
        )
    number = int(text[1:])
    if number < 1:
        raise ValueError(f"address {text!r}: classic addresses are 1-based, the smallest is 1")
    if number > 65536:
        raise ValueError(f"address {text!r}: beyond the 65536 addresses of a table")
    return table, number - 1


def register_count(point_type: PointType, length: int | None) -> int:
    """How many registers (or bits, in a bit table) a value of this type occupies."""
    if point_type in ("string", "hex"):
        return length or 1
    return _WIDTH[point_type]


def natural_value_type(point_type: PointType, *, scaled: bool) -> ValueType:
    """The data shape type a point reports when the config does not say otherwise."""
    if point_type == "bool":
        return "boolean"
    if point_type == "string":
        return "string"
    if point_type == "hex":
        return "hex"
    if point_type.startswith("float") or scaled:
        return "float"
    return "integer"
