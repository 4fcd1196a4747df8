"""Modbus registers ⇄ point values, and scaling.

Pure functions on plain data: no protocol library is imported here. They sit on
the hot path, so every fixed-width type and byte order has precompiled
``struct.Struct`` objects.

Registers are 16-bit integers 0..65535 as Modbus transmits them; each register
is two bytes, high byte first on the wire.

Byte order names the order of the value's bytes, A (most significant) to D,
over the registers in address order:

- ABCD: big-endian (standard Modbus).
- DCBA: fully little-endian.
- BADC: bytes swapped inside each register, word order big.
- CDAB: registers (words) in reverse order, bytes big inside each.

64-bit types generalise the names: ABCD is bytes 1..8 in order, CDAB reverses
the word order, BADC swaps the bytes within each word, DCBA reverses all 8
bytes. 16-bit types: ABCD and CDAB read the register as-is, BADC and DCBA swap
its two bytes.

Types:

- int16, uint16 (1 register), int32, uint32 (2), int64, uint64 (4): signed
  types are two's complement.
- float32 (2 registers), float64 (4): IEEE 754. A float32 is returned exactly
  as stored, never rounded: 0.1 reads back as 0.10000000149011612. NaN and
  the infinities decode and encode.
- bool (1 register): the register is not 0.
- ``bit`` (0 = least significant) turns bool, int16 and uint16 into that bit
  (0..15) of the register value as transmitted; byte order is ignored for
  bits. With int32, uint32, int64 and uint64 it is that bit (0..31 or 0..63)
  of the value decoded with the byte order. The result is a bool. ``bit``
  with a float, string or hex point is an error.
- string (any number of registers): the registers' bytes in address order,
  two bytes per register, high byte first; with BADC or DCBA the two bytes
  inside each register are swapped; word order is ignored. Decoded as UTF-8
  with errors="replace", stopping at the first NUL, trailing spaces dropped.
- hex (any number of registers): the registers' bytes, by the same byte rule
  as string, as uppercase hex digits without prefix: [0xBEEF] is "BEEF",
  [0x0001, 0xABCD] is "0001ABCD".

A register count that does not fit the type (any count but 1, 2 or 4 as
listed; none at all for string and hex) or a register outside 0..65535 raises
ValueError.

``encode_registers`` is the exact inverse, for writes. An integer outside its
type's range raises ValueError naming the type and range (a float with a whole
value is accepted); bool writes [1] or [0]; string pads with NULs to
``length`` registers and raises ValueError if the UTF-8 text is longer; hex
takes exactly ``length`` * 4 hex digits, either case. Without ``length``,
string and hex take as many registers as the value needs. ``length`` is
ignored for fixed-width types.

Scaling: value = raw * scale + offset (``agent.sources.source.scale``); ``unscale_value``
inverts it for writes, rounding with Python's ``round`` (half to even).
"""

from __future__ import annotations

import functools
import string
import struct
import sys
from collections.abc import Sequence
from typing import Final, NamedTuple

from agent.sources.modbus.points import ByteOrder, PointType

RawValue = int | float | bool | str

_REGISTER_BITS: Final = 16
_REGISTER_MAX: Final = 0xFFFF
_BYTES_PER_REGISTER: Final = 2
_HEX_DIGITS_PER_REGISTER: Final = 4

BYTE_ORDERS: Final[tuple[ByteOrder, ...]] = ("ABCD", "DCBA", "BADC", "CDAB")
FLOAT32_MAX: Final = 3.4028234663852886e38  # the largest finite float32, 0x7F7FFFFF

# A byte order is two independent choices. Registers are packed into bytes
# big-endian (as on the wire) or little-endian (swapping the two bytes of each
# register); those bytes are then read as a big- or little-endian value.
# ABCD: big, big. DCBA: big, little. BADC: little, big. CDAB: little, little
# (swapping bytes in every register and reading the result backwards is the
# same as reversing the word order).
_REGISTERS_LITTLE: Final = frozenset({"BADC", "CDAB"})
_VALUE_LITTLE: Final = frozenset({"DCBA", "CDAB"})
# For string and hex only the bytes inside a register are swapped.
_TEXT_SWAPPED: Final = frozenset({"BADC", "DCBA"})

# Point type → (struct format character, registers).
_FIXED_WIDTH: Final = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
_INTEGER_TYPES: Final = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_FLOAT_TYPES: Final = frozenset({"float32", "float64"})
_ONE_REGISTER_BIT_TYPES: Final = frozenset({"bool", "int16", "uint16"})
_HEX_CHARACTERS: Final = frozenset(string.hexdigits)
_UNSIGNED_OF: Final = {"int32": "uint32", "uint32": "uint32", "int64": "uint64", "uint64": "uint64"}


def _integer_range(point_type: str) -> tuple[int, int]:
    bits = _FIXED_WIDTH[point_type][1] * _REGISTER_BITS
    if point_type.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    point_type: _integer_range(point_type) for point_type in sorted(_INTEGER_TYPES)
}


class _Codec(NamedTuple):
    width: int  # registers
    registers: struct.Struct  # width * uint16, packed as the byte order says
    value: struct.Struct  # the value, read from those bytes


def _codec(format_char: str, count: int, byte_order: str) -> _Codec:
    register_end = "<" if byte_order in _REGISTERS_LITTLE else ">"
    value_end = "<" if byte_order in _VALUE_LITTLE else ">"
    return _Codec(
        count,
        struct.Struct(f"{register_end}{count}H"),
        struct.Struct(f"{value_end}{format_char}"),
    )


_CODECS: Final[dict[tuple[str, str], _Codec]] = {
    (point_type, byte_order): _codec(format_char, count, byte_order)
    for point_type, (format_char, count) in _FIXED_WIDTH.items()
    for byte_order in BYTE_ORDERS
}


class BlockDecoder:
    """Every value of one read at once: one pack of its registers, one unpack of its
    fields (the hot path of a read of many fixed-width points: a struct call per
    response, not two per point). Made by `block_decoder`."""

    __slots__ = ("_registers", "_values")

    def __init__(self, registers: struct.Struct, values: struct.Struct) -> None:
        self._registers = registers
        self._values = values

    def __call__(self, registers: Sequence[int]) -> tuple[RawValue, ...] | None:
        """The fields' values in order; None when the registers are not what the read
        asked for (too few or out of range): the caller decodes point by point, where
        each such problem is reported."""
        try:
            values: tuple[RawValue, ...] = self._values.unpack(self._registers.pack(*registers))
        except struct.error:
            return None
        return values


def decodes_as_shown(point_type: str, shape: str) -> bool:
    """Whether a point of `point_type` shown as `shape`, without a bit or a scale, is
    published as its registers decode: a float type as a float, an integer type as an
    integer (a finite float, for a float: an infinity or NaN is refused)."""
    if shape == "float":
        return point_type in _FLOAT_TYPES
    return shape == "integer" and point_type in _INTEGER_TYPES


def block_decoder(
    count: int, fields: Sequence[tuple[int, PointType, ByteOrder, int | None]]
) -> BlockDecoder | None:
    """A decoder of `count` registers into `fields` (offset in registers, type, byte order,
    bit), each giving what `decode_registers` gives for its registers; None unless every
    field is a fixed-width type without a bit, in address order without overlap, all
    with the same byte order."""
    layout = []
    position = 0
    orders = {order for _, _, order, _ in fields}
    if len(orders) != 1:
        return None
    for offset, point_type, _, bit in fields:
        codec = _FIXED_WIDTH.get(point_type)
        if codec is None or bit is not None or offset < position:
            return None
        format_char, width = codec
        layout.append("x" * (2 * (offset - position)) + format_char)
        position = offset + width
    if position > count:
        return None
    (byte_order,) = orders
    register_end = "<" if byte_order in _REGISTERS_LITTLE else ">"
    value_end = "<" if byte_order in _VALUE_LITTLE else ">"
    tail = "x" * (2 * (count - position))
    return BlockDecoder(
        struct.Struct(f"{register_end}{count}H"),
        struct.Struct(value_end + "".join(layout) + tail),
    )


def decode_registers(
    registers: Sequence[int],
    point_type: PointType,
    *,
    byte_order: ByteOrder = "ABCD",
    bit: int | None = None,
) -> RawValue:
    """The value a point's registers hold (see the module docstring)."""
    codec = _CODECS.get((point_type, byte_order))
    if codec is None or bit is not None:
        return _decode_other(registers, point_type, byte_order, bit)
    if len(registers) != codec.width:
        raise _count_error(point_type, codec.width, registers)
    try:
        value: RawValue = codec.value.unpack(codec.registers.pack(*registers))[0]
    except struct.error as exc:
        raise _register_error(registers) from exc
    return value


def encode_registers(
    value: RawValue,
    point_type: PointType,
    *,
    byte_order: ByteOrder = "ABCD",
    length: int | None = None,
) -> list[int]:
    """The registers to write so that ``decode_registers`` reads ``value`` back."""
    codec = _CODECS.get((point_type, byte_order))
    if codec is not None:
        try:
            number = _checked_number(value, point_type)
            return list(codec.registers.unpack(codec.value.pack(number)))
        except OverflowError as exc:  # a finite number beyond the float type
            limit = FLOAT32_MAX if point_type == "float32" else sys.float_info.max
            raise ValueError(f"{point_type} holds -{limit}..{limit}, got {value!r}") from exc
    _check_byte_order(byte_order)
    if point_type == "bool":
        if isinstance(value, str):
            raise ValueError(f"bool takes true or false, got the string {value!r}")
        return [1] if value else [0]
    if point_type == "string":
        return _encode_string(value, byte_order, length)
    if point_type == "hex":
        return _encode_hex(value, byte_order, length)
    raise ValueError(f"unknown point type {point_type!r}")


def unscale_value(
    value: int | float,
    *,
    scale: float | None,
    offset: float | None,
    point_type: PointType,
) -> int:
    """The raw integer to write for a scaled ``value``: round((value - offset) / scale).

    Raises ValueError for a non-integer type, a zero scale, or a result outside
    the type's range.
    """
    limits = INTEGER_RANGES.get(point_type)
    if limits is None:
        raise ValueError(f"unscale_value gives an integer register value; {point_type} is not one")
    if scale == 0:
        raise ValueError("scale 0 cannot be inverted")
    try:
        if scale is None and offset is None:
            raw = value if isinstance(value, int) else round(value)
        else:
            scaled = (value - (0.0 if offset is None else offset)) / (
                1.0 if scale is None else scale
            )
            raw = round(scaled)
    except (OverflowError, ValueError) as exc:  # inf, NaN, or beyond float
        raise ValueError(f"{value!r} cannot be written as {point_type}") from exc
    return _check_range(raw, point_type, limits, shown=value)


def _decode_other(
    registers: Sequence[int], point_type: str, byte_order: str, bit: int | None
) -> RawValue:
    """Everything but a fixed-width type without a bit: the cold path."""
    _check_byte_order(byte_order)
    if bit is not None:
        return _decode_bit(registers, point_type, byte_order, bit)
    if point_type == "bool":
        return _single_register(registers, point_type) != 0
    if point_type in ("string", "hex"):
        data = _registers_to_bytes(registers, point_type, swap=byte_order in _TEXT_SWAPPED)
        if point_type == "hex":
            return data.hex().upper()
        return data.split(b"\0", 1)[0].rstrip(b" ").decode("utf-8", errors="replace")
    raise ValueError(f"unknown point type {point_type!r}")


def _decode_bit(registers: Sequence[int], point_type: str, byte_order: str, bit: int) -> bool:
    if point_type in _ONE_REGISTER_BIT_TYPES:
        word, bits = _single_register(registers, point_type), _REGISTER_BITS
    elif point_type in _UNSIGNED_OF:
        unsigned = _UNSIGNED_OF[point_type]
        codec = _CODECS[(unsigned, byte_order)]
        if len(registers) != codec.width:
            raise _count_error(point_type, codec.width, registers)
        try:
            word = codec.value.unpack(codec.registers.pack(*registers))[0]
        except struct.error as exc:
            raise _register_error(registers) from exc
        bits = codec.width * _REGISTER_BITS
    else:
        raise ValueError(f"bit applies to bool and integer types, not {point_type}")
    if not 0 <= bit < bits:
        raise ValueError(f"bit {bit} is outside {point_type}'s bits 0..{bits - 1}")
    return bool(word >> bit & 1)


def _single_register(registers: Sequence[int], point_type: str) -> int:
    if len(registers) != 1:
        raise _count_error(point_type, 1, registers)
    register = registers[0]
    if not 0 <= register <= _REGISTER_MAX:
        raise _register_error(registers)
    return register


@functools.lru_cache(maxsize=256)
def _register_struct(count: int, *, swap: bool) -> struct.Struct:
    return struct.Struct(f"{'<' if swap else '>'}{count}H")


def _registers_to_bytes(registers: Sequence[int], point_type: str, *, swap: bool) -> bytes:
    if not registers:
        raise ValueError(f"{point_type} needs at least 1 register, got none")
    try:
        return _register_struct(len(registers), swap=swap).pack(*registers)
    except struct.error as exc:
        raise _register_error(registers) from exc


def _bytes_to_registers(data: bytes, *, swap: bool) -> list[int]:
    return list(_register_struct(len(data) // _BYTES_PER_REGISTER, swap=swap).unpack(data))


def _encode_string(value: RawValue, byte_order: str, length: int | None) -> list[int]:
    if not isinstance(value, str):
        raise ValueError(f"string takes text, got {value!r}")
    data = value.encode("utf-8")
    needed = max(1, -(-len(data) // _BYTES_PER_REGISTER))
    count = needed if length is None else length
    if count < 1:
        raise ValueError(f"string needs at least 1 register, got length {count}")
    if needed > count:
        raise ValueError(
            f"string of {len(data)} UTF-8 bytes does not fit in {count} registers "
            f"({count * _BYTES_PER_REGISTER} bytes)"
        )
    padded = data.ljust(count * _BYTES_PER_REGISTER, b"\0")
    return _bytes_to_registers(padded, swap=byte_order in _TEXT_SWAPPED)


def _encode_hex(value: RawValue, byte_order: str, length: int | None) -> list[int]:
    if not isinstance(value, str) or not value or not set(value) <= _HEX_CHARACTERS:
        raise ValueError(f'hex takes hex digits without prefix (e.g. "BEEF"), got {value!r}')
    count = len(value) // _HEX_DIGITS_PER_REGISTER if length is None else length
    if count < 1 or len(value) != count * _HEX_DIGITS_PER_REGISTER:
        expected = "a multiple of 4" if length is None else str(length * _HEX_DIGITS_PER_REGISTER)
        raise ValueError(f"hex needs {expected} digits (4 per register), got {len(value)}")
    return _bytes_to_registers(bytes.fromhex(value), swap=byte_order in _TEXT_SWAPPED)


def _checked_number(value: RawValue, point_type: str) -> int | float:
    if isinstance(value, str):
        raise ValueError(f"{point_type} takes a number, got the string {value!r}")
    if point_type in _FLOAT_TYPES:
        return float(value)  # an int beyond float range raises OverflowError here
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{point_type} takes a whole number, got {value!r}")
        value = int(value)
    return _check_range(value, point_type, INTEGER_RANGES[point_type], shown=value)


def _check_range(raw: int, point_type: str, limits: tuple[int, int], *, shown: object) -> int:
    low, high = limits
    if not low <= raw <= high:
        raise ValueError(f"{point_type} holds {low}..{high}, got {shown!r}")
    return raw


def _check_byte_order(byte_order: str) -> None:
    if byte_order not in BYTE_ORDERS:
        raise ValueError(f"byte order {byte_order!r} is not one of {', '.join(BYTE_ORDERS)}")


def _count_error(point_type: str, expected: int, registers: Sequence[int]) -> ValueError:
    plural = "register" if expected == 1 else "registers"
    return ValueError(f"{point_type} takes {expected} {plural}, got {len(registers)}")


def _register_error(registers: Sequence[int]) -> ValueError:
    return ValueError(f"registers are integers 0..{_REGISTER_MAX}, got {list(registers)!r}")
