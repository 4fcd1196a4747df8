"""Registers ⇄ values: every type and byte order against literal byte patterns."""

from __future__ import annotations

import math
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.modbus.decode import (
    FLOAT32_MAX,
    INTEGER_RANGES,
    RawValue,
    block_decoder,
    decode_registers,
    encode_registers,
    unscale_value,
)
from agent.sources.modbus.points import ByteOrder, PointType, register_count

BYTE_ORDERS: tuple[ByteOrder, ...] = get_args(ByteOrder)

# (type, value, registers per byte order), each pattern written out by hand.
KNOWN_PATTERNS: list[tuple[PointType, int | float, dict[ByteOrder, list[int]]]] = [
    (
        "uint16",
        0x1234,
        {
            "ABCD": [0x1234],
            "CDAB": [0x1234],
            "BADC": [0x3412],
            "DCBA": [0x3412],
        },
    ),
    (
        "int16",
        -2,
        {  # 0xFFFE
            "ABCD": [0xFFFE],
            "CDAB": [0xFFFE],
            "BADC": [0xFEFF],
            "DCBA": [0xFEFF],
        },
    ),
    (
        "int16",
        -32768,
        {  # 0x8000
            "ABCD": [0x8000],
            "CDAB": [0x8000],
            "BADC": [0x0080],
            "DCBA": [0x0080],
        },
    ),
    (
        "int16",
        32767,
        {  # 0x7FFF
            "ABCD": [0x7FFF],
            "CDAB": [0x7FFF],
            "BADC": [0xFF7F],
            "DCBA": [0xFF7F],
        },
    ),
    (
        "uint16",
        65535,
        {
            "ABCD": [0xFFFF],
            "CDAB": [0xFFFF],
            "BADC": [0xFFFF],
            "DCBA": [0xFFFF],
        },
    ),
    (
        "uint32",
        0x12345678,
        {
            "ABCD": [0x1234, 0x5678],
            "CDAB": [0x5678, 0x1234],
            "BADC": [0x3412, 0x7856],
            "DCBA": [0x7856, 0x3412],
        },
    ),
    (
        "int32",
        0x12345678,
        {
            "ABCD": [0x1234, 0x5678],
            "CDAB": [0x5678, 0x1234],
            "BADC": [0x3412, 0x7856],
            "DCBA": [0x7856, 0x3412],
        },
    ),
    (
        "int32",
        -123456789,
        {  # 0xF8A432EB
            "ABCD": [0xF8A4, 0x32EB],
            "CDAB": [0x32EB, 0xF8A4],
            "BADC": [0xA4F8, 0xEB32],
            "DCBA": [0xEB32, 0xA4F8],
        },
    ),
    (
        "uint32",
        4171510507,
        {  # 0xF8A432EB
            "ABCD": [0xF8A4, 0x32EB],
            "CDAB": [0x32EB, 0xF8A4],
            "BADC": [0xA4F8, 0xEB32],
            "DCBA": [0xEB32, 0xA4F8],
        },
    ),
    (
        "int64",
        0x0102030405060708,
        {
            "ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
            "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
            "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
            "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
        },
    ),
    (
        "uint64",
        0x0102030405060708,
        {
            "ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
            "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
            "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
            "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
        },
    ),
    (
        "int64",
        -2,
        {  # 0xFFFFFFFFFFFFFFFE
            "ABCD": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
            "CDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            "BADC": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF],
            "DCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        },
    ),
    (
        "uint64",
        18446744073709551614,
        {  # 0xFFFFFFFFFFFFFFFE
            "ABCD": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
            "CDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            "BADC": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF],
            "DCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        },
    ),
    (
        "float32",
        123.45600128173828,
        {  # 123.456 as float32: 0x42F6E979
            "ABCD": [0x42F6, 0xE979],
            "CDAB": [0xE979, 0x42F6],
            "BADC": [0xF642, 0x79E9],
            "DCBA": [0x79E9, 0xF642],
        },
    ),
    (
        "float32",
        25.5,
        {  # 0x41CC0000
            "ABCD": [0x41CC, 0x0000],
            "CDAB": [0x0000, 0x41CC],
            "BADC": [0xCC41, 0x0000],
            "DCBA": [0x0000, 0xCC41],
        },
    ),
    (
        "float32",
        -1.5,
        {  # 0xBFC00000
            "ABCD": [0xBFC0, 0x0000],
            "CDAB": [0x0000, 0xBFC0],
            "BADC": [0xC0BF, 0x0000],
            "DCBA": [0x0000, 0xC0BF],
        },
    ),
    (
        "float64",
        123.456,
        {  # 0x405EDD2F1A9FBE77
            "ABCD": [0x405E, 0xDD2F, 0x1A9F, 0xBE77],
            "CDAB": [0xBE77, 0x1A9F, 0xDD2F, 0x405E],
            "BADC": [0x5E40, 0x2FDD, 0x9F1A, 0x77BE],
            "DCBA": [0x77BE, 0x9F1A, 0x2FDD, 0x5E40],
        },
    ),
    (
        "float64",
        -2.5,
        {  # 0xC004000000000000
            "ABCD": [0xC004, 0x0000, 0x0000, 0x0000],
            "CDAB": [0x0000, 0x0000, 0x0000, 0xC004],
            "BADC": [0x04C0, 0x0000, 0x0000, 0x0000],
            "DCBA": [0x0000, 0x0000, 0x0000, 0x04C0],
        },
    ),
]

KNOWN_CASES = [
    pytest.param(point_type, byte_order, registers, value, id=f"{point_type}-{value}-{byte_order}")
    for point_type, value, by_order in KNOWN_PATTERNS
    for byte_order, registers in by_order.items()
]


def test_known_patterns_cover_every_fixed_width_type_in_every_byte_order() -> None:
    covered = {(case.values[0], case.values[1]) for case in KNOWN_CASES}
    types = {point_type for point_type, _, _ in KNOWN_PATTERNS}

    assert {(t, o) for t in types for o in BYTE_ORDERS} == covered
    assert set(INTEGER_RANGES) | {"float32", "float64"} == types


@pytest.mark.parametrize(("point_type", "byte_order", "registers", "value"), KNOWN_CASES)
def test_decode_reads_the_value_of_a_known_byte_pattern(
    point_type: PointType, byte_order: ByteOrder, registers: list[int], value: float
) -> None:
    decoded = decode_registers(registers, point_type, byte_order=byte_order)

    assert value == decoded
    assert type(value) is type(decoded)


@pytest.mark.parametrize(("point_type", "byte_order", "registers", "value"), KNOWN_CASES)
def test_encode_writes_the_known_byte_pattern_of_a_value(
    point_type: PointType, byte_order: ByteOrder, registers: list[int], value: float
) -> None:
    assert registers == encode_registers(value, point_type, byte_order=byte_order)


def test_byte_order_defaults_to_big_endian_abcd() -> None:
    assert decode_registers([0x1234, 0x5678], "uint32") == 0x12345678
    assert encode_registers(0x12345678, "uint32") == [0x1234, 0x5678]


def test_decode_accepts_any_sequence_of_registers() -> None:
    assert decode_registers((0x1234, 0x5678), "uint32") == 0x12345678


# float32 --------------------------------------------------------------------


def test_float32_is_returned_exactly_as_stored_not_rounded() -> None:
    assert decode_registers([0x3DCC, 0xCCCD], "float32") == 0.10000000149011612


def test_float32_nan_and_infinities_decode() -> None:
    assert math.isnan(decode_registers([0x7FC0, 0x0000], "float32"))  # type: ignore[arg-type]
    assert math.inf == decode_registers([0x7F80, 0x0000], "float32")
    assert -math.inf == decode_registers([0xFF80, 0x0000], "float32")


@pytest.mark.parametrize("point_type", ["float32", "float64"])
def test_float_nan_and_infinities_encode(point_type: PointType) -> None:
    nan = decode_registers(encode_registers(math.nan, point_type), point_type)
    inf = decode_registers(encode_registers(math.inf, point_type), point_type)
    minus_inf = decode_registers(encode_registers(-math.inf, point_type), point_type)

    assert math.isnan(nan)  # type: ignore[arg-type]
    assert (math.inf, -math.inf) == (inf, minus_inf)


def test_float32_encodes_its_largest_value_and_rejects_beyond() -> None:
    assert encode_registers(FLOAT32_MAX, "float32") == [0x7F7F, 0xFFFF]
    with pytest.raises(ValueError, match=r"float32 holds .*3\.4028234663852886e\+38"):
        encode_registers(1e39, "float32")


def test_float64_rejects_an_integer_beyond_float_range() -> None:
    with pytest.raises(ValueError, match="float64 holds"):
        encode_registers(10**400, "float64")


def test_float_types_accept_an_integer() -> None:
    assert encode_registers(2, "float32") == [0x4000, 0x0000]


# bool and bits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "expected"), [(0x0000, False), (0x0001, True), (0x8000, True), (0xFFFF, True)]
)
def test_bool_is_whether_the_register_is_not_zero(register: int, expected: bool) -> None:
    assert expected is decode_registers([register], "bool")


@pytest.mark.parametrize("point_type", ["bool", "uint16", "int16"])
@pytest.mark.parametrize(
    ("register", "bit", "expected"),
    [
        (0x0001, 0, True),
        (0xFFFE, 0, False),
        (0x8000, 15, True),
        (0x7FFF, 15, False),
        (0x0100, 8, True),
        (0x0100, 7, False),
    ],
)
def test_bit_reads_one_bit_of_the_register_counting_from_least_significant(
    point_type: PointType, register: int, bit: int, expected: bool
) -> None:
    assert expected is decode_registers([register], point_type, bit=bit)


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
def test_bit_of_a_register_ignores_byte_order(byte_order: ByteOrder) -> None:
    assert decode_registers([0x0001], "uint16", byte_order=byte_order, bit=0) is True
    assert decode_registers([0x0001], "bool", byte_order=byte_order, bit=8) is False


@pytest.mark.parametrize(
    ("point_type", "byte_order", "registers", "bit"),
    [
        ("uint32", "ABCD", [0x0000, 0x0001], 0),
        ("uint32", "CDAB", [0x0001, 0x0000], 0),
        ("int32", "ABCD", [0x8000, 0x0000], 31),
        ("int32", "DCBA", [0x0000, 0x0080], 31),
        ("uint64", "ABCD", [0x0001, 0x0000, 0x0000, 0x0000], 48),
        ("int64", "CDAB", [0x0000, 0x0000, 0x0000, 0x8000], 63),
    ],
)
def test_bit_of_a_wide_integer_counts_over_the_value_decoded_with_byte_order(
    point_type: PointType, byte_order: ByteOrder, registers: list[int], bit: int
) -> None:
    assert decode_registers(registers, point_type, byte_order=byte_order, bit=bit) is True
    assert decode_registers(registers, point_type, byte_order=byte_order, bit=bit ^ 1) is False


@pytest.mark.parametrize(
    ("point_type", "registers", "bit"),
    [("uint16", [1], 16), ("bool", [1], -1), ("int32", [0, 1], 32), ("uint64", [0, 0, 0, 1], 64)],
)
def test_bit_outside_the_type_is_rejected(
    point_type: PointType, registers: list[int], bit: int
) -> None:
    with pytest.raises(ValueError, match=f"bit {bit} is outside {point_type}'s bits"):
        decode_registers(registers, point_type, bit=bit)


@pytest.mark.parametrize(
    ("point_type", "registers"),
    [("float32", [0, 0]), ("float64", [0, 0, 0, 0]), ("string", [0x4100]), ("hex", [0xBEEF])],
)
def test_bit_is_rejected_for_float_string_and_hex(
    point_type: PointType, registers: list[int]
) -> None:
    message = f"bit applies to bool and integer types, not {point_type}"
    with pytest.raises(ValueError, match=message):
        decode_registers(registers, point_type, bit=0)


def test_bool_encodes_as_one_or_zero() -> None:
    assert (encode_registers(True, "bool"), encode_registers(False, "bool")) == ([1], [0])


def test_bool_rejects_a_string_that_would_be_truthy() -> None:
    with pytest.raises(ValueError, match="bool takes true or false"):
        encode_registers("false", "bool")


# string --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registers", "byte_order", "expected"),
    [
        ([0x4142, 0x4344], "ABCD", "ABCD"),
        ([0x4142, 0x4300, 0x0000], "ABCD", "ABC"),
        ([0x4142, 0x2020], "ABCD", "AB"),
        ([0x4142, 0x4320, 0x0000], "ABCD", "ABC"),
        ([0x2041], "ABCD", " A"),
        ([0x4100, 0x4243], "ABCD", "A"),
        ([0x0000], "ABCD", ""),
        ([0x4241, 0x0043], "BADC", "ABC"),
        ([0x4241, 0x0043], "DCBA", "ABC"),
        ([0x4142, 0x4344], "CDAB", "ABCD"),
        ([0xC3A9], "ABCD", "é"),
        ([0xFF41], "ABCD", "\ufffdA"),
    ],
    ids=[
        "plain",
        "trailing-nuls",
        "trailing-spaces",
        "space-then-nul",
        "leading-space-kept",
        "stops-at-first-nul",
        "empty",
        "badc-swaps-bytes",
        "dcba-swaps-bytes",
        "cdab-ignores-word-order",
        "utf8",
        "invalid-utf8-replaced",
    ],
)
def test_string_reads_register_bytes_in_address_order(
    registers: list[int], byte_order: ByteOrder, expected: str
) -> None:
    assert expected == decode_registers(registers, "string", byte_order=byte_order)


def test_string_encode_pads_with_nuls_to_length() -> None:
    assert encode_registers("ABC", "string", length=3) == [0x4142, 0x4300, 0x0000]


@pytest.mark.parametrize("byte_order", ["BADC", "DCBA"])
def test_string_encode_swaps_bytes_inside_registers_for_badc_and_dcba(
    byte_order: ByteOrder,
) -> None:
    assert encode_registers("ABC", "string", byte_order=byte_order, length=2) == [0x4241, 0x0043]


def test_string_encode_without_length_takes_the_registers_it_needs() -> None:
    assert encode_registers("ABC", "string") == [0x4142, 0x4300]
    assert encode_registers("", "string") == [0x0000]


def test_string_encode_rejects_text_longer_than_length() -> None:
    with pytest.raises(ValueError, match=r"string of 5 UTF-8 bytes does not fit in 2 registers"):
        encode_registers("ABCDE", "string", length=2)


def test_string_encode_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(ValueError, match="string of 4 UTF-8 bytes"):
        encode_registers("éé", "string", length=1)


def test_string_encode_rejects_a_non_string() -> None:
    with pytest.raises(ValueError, match="string takes text"):
        encode_registers(12, "string", length=2)


# hex -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registers", "byte_order", "expected"),
    [
        ([0xBEEF], "ABCD", "BEEF"),
        ([0x0001, 0xABCD], "ABCD", "0001ABCD"),
        ([0x0001, 0xABCD], "CDAB", "0001ABCD"),
        ([0xEFBE], "BADC", "BEEF"),
        ([0x0100, 0xCDAB], "DCBA", "0001ABCD"),
        ([0x0000], "ABCD", "0000"),
    ],
)
def test_hex_is_the_register_bytes_as_uppercase_digits(
    registers: list[int], byte_order: ByteOrder, expected: str
) -> None:
    assert expected == decode_registers(registers, "hex", byte_order=byte_order)


def test_hex_encode_is_case_insensitive() -> None:
    assert encode_registers("0001abCD", "hex", length=2) == [0x0001, 0xABCD]


def test_hex_encode_swaps_bytes_for_badc() -> None:
    assert encode_registers("BEEF", "hex", byte_order="BADC", length=1) == [0xEFBE]


def test_hex_encode_without_length_takes_whole_registers() -> None:
    assert encode_registers("0001ABCD", "hex") == [0x0001, 0xABCD]


@pytest.mark.parametrize(
    ("value", "length", "message"),
    [
        ("BEEF", 2, "hex needs 8 digits"),
        ("BEEF00", 1, "hex needs 4 digits"),
        ("BEE", None, "hex needs a multiple of 4 digits"),
        ("0xBEEF", None, "hex takes hex digits without prefix"),
        ("BE EF", None, "hex takes hex digits without prefix"),
        ("WXYZ", 1, "hex takes hex digits without prefix"),
        ("", None, "hex takes hex digits without prefix"),
        (48879, 1, "hex takes hex digits without prefix"),
    ],
)
def test_hex_encode_rejects_anything_but_exactly_four_digits_per_register(
    value: RawValue, length: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_registers(value, "hex", length=length)


# errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point_type", "registers", "message"),
    [
        ("uint16", [1, 2], "uint16 takes 1 register, got 2"),
        ("int16", [], "int16 takes 1 register, got 0"),
        ("float32", [0x41CC], "float32 takes 2 registers, got 1"),
        ("int32", [1, 2, 3], "int32 takes 2 registers, got 3"),
        ("float64", [1, 2], "float64 takes 4 registers, got 2"),
        ("uint64", [1, 2, 3, 4, 5], "uint64 takes 4 registers, got 5"),
        ("bool", [1, 0], "bool takes 1 register, got 2"),
        ("string", [], "string needs at least 1 register, got none"),
        ("hex", [], "hex needs at least 1 register, got none"),
    ],
)
def test_wrong_register_count_is_rejected(
    point_type: PointType, registers: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode_registers(registers, point_type)


@pytest.mark.parametrize(
    ("point_type", "registers"),
    [
        ("uint16", [0x10000]),
        ("int16", [-1]),
        ("float32", [0, 70000]),
        ("bool", [0x10000]),
        ("string", [0x4142, -1]),
        ("hex", [0x10000]),
    ],
)
def test_registers_outside_0_to_65535_are_rejected(
    point_type: PointType, registers: list[int]
) -> None:
    with pytest.raises(ValueError, match=r"registers are integers 0\.\.65535"):
        decode_registers(registers, point_type)


def test_unknown_byte_order_is_rejected() -> None:
    with pytest.raises(ValueError, match="byte order 'BACD' is not one of ABCD, DCBA, BADC, CDAB"):
        decode_registers([0, 0], "float32", byte_order="BACD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="byte order 'BACD'"):
        encode_registers(1.0, "float32", byte_order="BACD")  # type: ignore[arg-type]


def test_unknown_point_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown point type 'int8'"):
        decode_registers([0], "int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown point type 'int8'"):
        encode_registers(0, "int8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("point_type", "value", "message"),
    [
        ("int16", 32768, "int16 holds -32768..32767, got 32768"),
        ("int16", -32769, "int16 holds -32768..32767, got -32769"),
        ("uint16", -1, "uint16 holds 0..65535, got -1"),
        ("uint16", 65536, "uint16 holds 0..65535, got 65536"),
        ("int32", 2**31, "int32 holds -2147483648..2147483647"),
        ("uint32", 2**32, "uint32 holds 0..4294967295"),
        ("int64", -(2**63) - 1, "int64 holds -9223372036854775808..9223372036854775807"),
        ("uint64", 2**64, "uint64 holds 0..18446744073709551615"),
    ],
)
def test_integer_out_of_range_is_rejected_naming_type_and_range(
    point_type: PointType, value: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_registers(value, point_type)


def test_integer_types_accept_a_whole_float_and_reject_a_fraction() -> None:
    assert encode_registers(5.0, "uint16") == [5]
    with pytest.raises(ValueError, match=r"uint16 takes a whole number, got 2\.5"):
        encode_registers(2.5, "uint16")
    with pytest.raises(ValueError, match="int32 takes a whole number, got nan"):
        encode_registers(math.nan, "int32")


@pytest.mark.parametrize("point_type", ["uint16", "float32"])
def test_numeric_types_reject_a_string(point_type: PointType) -> None:
    with pytest.raises(ValueError, match=f"{point_type} takes a number, got the string '12'"):
        encode_registers("12", point_type)


def test_length_is_ignored_for_fixed_width_types() -> None:
    assert encode_registers(25.5, "float32", length=1) == [0x41CC, 0x0000]


# scale and offset ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "scale", "offset", "point_type", "expected"),
    [
        (25.5, 0.01, None, "uint16", 2550),
        (21.5, 0.1, None, "int16", 215),
        (490.0, 0.5, -10.0, "uint32", 1000),
        (6.5, None, 1.5, "int16", 5),
        (-20.0, 0.1, None, "int16", -200),
        (2.5, 1.0, None, "int16", 2),  # Python's round: half to even
        (3.5, 1.0, None, "int16", 4),
        (2**62 + 1, None, None, "int64", 2**62 + 1),  # no detour through float
        (7.6, None, None, "uint16", 8),
    ],
)
def test_unscale_value_inverts_scaling_and_rounds(
    value: float, scale: float | None, offset: float | None, point_type: PointType, expected: int
) -> None:
    raw = unscale_value(value, scale=scale, offset=offset, point_type=point_type)

    assert expected == raw
    assert type(raw) is int


@pytest.mark.parametrize(
    ("value", "scale", "offset", "point_type", "message"),
    [
        (655.36, 0.01, None, "uint16", "uint16 holds 0..65535, got 655.36"),
        (-0.5, 0.1, None, "uint16", "uint16 holds 0..65535, got -0.5"),
        (40000, None, None, "int16", "int16 holds -32768..32767, got 40000"),
        (1.0, 0.0, None, "uint16", "scale 0 cannot be inverted"),
        (math.nan, 0.1, None, "uint16", "nan cannot be written as uint16"),
        (math.inf, None, None, "int32", "inf cannot be written as int32"),
        (1.5, 1.0, None, "float32", "float32 is not one"),
        (1, None, None, "bool", "bool is not one"),
    ],
)
def test_unscale_value_rejects_what_the_type_cannot_hold(
    value: float, scale: float | None, offset: float | None, point_type: PointType, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        unscale_value(value, scale=scale, offset=offset, point_type=point_type)


# round trips -----------------------------------------------------------------------

_NUMBERS: dict[str, st.SearchStrategy[int] | st.SearchStrategy[float]] = {
    point_type: st.integers(low, high) for point_type, (low, high) in INTEGER_RANGES.items()
}
_NUMBERS["float32"] = st.floats(width=32)
_NUMBERS["float64"] = st.floats()

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0")).filter(
    lambda text: not text.endswith(" ")
)
_HEX = st.binary(min_size=2, max_size=250).filter(lambda data: len(data) % 2 == 0)


@st.composite
def _points(draw: st.DrawFn) -> tuple[PointType, ByteOrder, RawValue, int | None]:
    """A type, a byte order, a value of that type and the length it needs."""
    point_type: PointType = draw(st.sampled_from(get_args(PointType)))
    byte_order = draw(st.sampled_from(BYTE_ORDERS))
    if point_type == "bool":
        return point_type, byte_order, draw(st.booleans()), None
    if point_type == "string":
        text = draw(_TEXT)
        needed = max(1, -(-len(text.encode()) // 2))
        return point_type, byte_order, text, needed + draw(st.integers(0, 3))
    if point_type == "hex":
        digits = draw(_HEX).hex()
        return point_type, byte_order, digits.upper(), len(digits) // 4
    return point_type, byte_order, draw(_NUMBERS[point_type]), None


@given(_points())
def test_decode_reads_back_what_encode_wrote_for_every_type_and_byte_order(
    point: tuple[PointType, ByteOrder, RawValue, int | None],
) -> None:
    point_type, byte_order, value, length = point

    registers = encode_registers(value, point_type, byte_order=byte_order, length=length)
    decoded = decode_registers(registers, point_type, byte_order=byte_order)

    assert all(0 <= register <= 0xFFFF for register in registers)
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(decoded)  # type: ignore[arg-type]
    else:
        assert value == decoded
        assert type(value) is type(decoded)


_WIDTHS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4}
_INTEGER_REGISTERS = st.sampled_from(sorted(_WIDTHS)).flatmap(
    lambda point_type: st.tuples(
        st.just(point_type),
        st.lists(
            st.integers(0, 0xFFFF), min_size=_WIDTHS[point_type], max_size=_WIDTHS[point_type]
        ),
    )
)


@given(_INTEGER_REGISTERS, st.sampled_from(BYTE_ORDERS))
def test_every_register_pattern_of_an_integer_type_encodes_back_unchanged(
    case: tuple[PointType, list[int]], byte_order: ByteOrder
) -> None:
    point_type, registers = case

    value = decode_registers(registers, point_type, byte_order=byte_order)

    assert registers == encode_registers(value, point_type, byte_order=byte_order)


# -- a whole read at once (the poller's hot path) -------------------------------------------

# Every fixed-width type: those a whole read decodes at once.
_FIXED_TYPES: list[PointType] = [
    t for t in get_args(PointType) if t not in ("bool", "string", "hex")
]


@st.composite
def _blocks(draw: st.DrawFn) -> tuple[list[tuple[int, PointType]], ByteOrder, list[int]]:
    """Fixed-width points at increasing offsets with gaps, one byte order, and registers."""
    byte_order = draw(st.sampled_from(BYTE_ORDERS))
    fields: list[tuple[int, PointType]] = []
    position = 0
    for point_type in draw(st.lists(st.sampled_from(_FIXED_TYPES), min_size=1, max_size=12)):
        position += draw(st.integers(0, 3))  # a gap
        fields.append((position, point_type))
        position += register_count(point_type, None)
    count = position + draw(st.integers(0, 3))
    registers = draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    return fields, byte_order, registers


def _same(a: object, b: object) -> bool:
    return a == b or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )


@given(_blocks())
def test_a_whole_read_decodes_to_what_each_point_decodes_to(
    block: tuple[list[tuple[int, PointType]], ByteOrder, list[int]],
) -> None:
    fields, byte_order, registers = block
    decoder = block_decoder(len(registers), [(o, t, byte_order, None) for o, t in fields])
    assert decoder is not None

    each = [
        decode_registers(
            registers[offset : offset + register_count(t, None)],
            t,
            byte_order=byte_order,
        )
        for offset, t in fields
    ]
    at_once = decoder(registers)
    assert at_once is not None
    assert all(_same(a, b) for a, b in zip(each, at_once, strict=True))


@pytest.mark.parametrize(
    "fields",
    [
        [(0, "uint16", "ABCD", 3)],  # a bit of a register
        [(0, "string", "ABCD", None)],
        [(0, "uint16", "ABCD", None), (0, "int16", "ABCD", None)],  # overlapping
        [(0, "uint16", "ABCD", None), (1, "uint16", "CDAB", None)],  # two byte orders
        [(0, "float32", "ABCD", None), (1, "uint16", "ABCD", None)],  # inside the float
    ],
)
def test_a_read_that_cannot_be_decoded_at_once_has_no_block_decoder(
    fields: list[tuple[int, PointType, ByteOrder, int | None]],
) -> None:
    assert block_decoder(4, fields) is None


def test_a_short_answer_is_left_to_the_points_to_report() -> None:
    decoder = block_decoder(2, [(0, "float32", "ABCD", None)])
    assert decoder is not None

    assert decoder([1]) is None
    assert decoder([1, 70000]) is None
