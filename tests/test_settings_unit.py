"""Settings the cloud may change: what is accepted, the registers written, the value reported.

`Setting.accept` is the only gate between a cloud message and the hardware, so every
branch is here: agent targets, coils, strings and hex, numbers with bounds, enums,
whole-number and type-range checks, scaling. Then `encode` (each register type and byte
order) and `decode` (forms of coils, scaling), and round trips as properties.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.cloud.settings import (
    JsonScalar,
    RegisterSetting,
    RejectedSetting,
    Setting,
    UnreportableValue,
    form_of,
    setting_for,
)
from agent.config import resolve
from agent.config.schema import SettingConfig
from agent.sources.modbus.decode import BYTE_ORDERS, INTEGER_RANGES
from agent.sources.modbus.points import ByteOrder, Table

INTEGER_TYPES = sorted(INTEGER_RANGES)
BEYOND_FLOAT = 10**400  # JSON integers have no size limit; float() overflows on this


def setting(*, device_byte_order: ByteOrder = "ABCD", **declared: Any) -> Setting:
    if "agent" not in declared:
        declared = {"device": "meter1", "address": "40001", **declared}
    return setting_for(
        resolve.setting(
            "gw-1-setting",
            SettingConfig.model_validate({"id": "sp", **declared}),
            {"meter1": device_byte_order},
        )
    )


def register_setting(*, device_byte_order: ByteOrder = "ABCD", **declared: Any) -> RegisterSetting:
    """A setting of meter1's coils or registers: only these have `encode` and `decode`."""
    built = setting(device_byte_order=device_byte_order, **declared)
    assert isinstance(built, RegisterSetting)
    return built


def rejection(target: Setting, value: object) -> str:
    with pytest.raises(RejectedSetting) as caught:
        target.accept(value)
    return str(caught.value)


# -- agent targets --------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_a_log_level_is_one_of_four_words(level: str) -> None:
    assert level == setting(agent="log.level").accept(level)


@pytest.mark.parametrize("value", ["verbose", "INFO", 3, True, ""])
def test_any_other_log_level_is_rejected_with_the_choices(value: object) -> None:
    assert "sp: expected one of debug, info, warning, error" == rejection(
        setting(agent="log.level"), value
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "sp: an interval must be above 0"),
        (-1, "sp: an interval must be above 0"),
        ("5", "sp: expected a number of seconds, got '5'"),
        (True, "sp: expected a number of seconds, got True"),
        (math.nan, "sp: expected a number of seconds, got nan"),
        (math.inf, "sp: expected a number of seconds, got inf"),
        (0.01, "sp: 0.01 is below the minimum 0.05"),
        (3601, "sp: 3601 is above the maximum 3600"),
    ],
)
def test_a_poll_interval_is_a_positive_number_of_seconds_within_bounds(
    value: object,
    message: str,
) -> None:
    interval = setting(agent="device.meter1.interval", min=0.05, max=3600)

    assert message == rejection(interval, value)
    assert 0.05 == interval.accept(0.05)
    assert 2 == interval.accept(2)


def test_a_batch_delay_may_be_zero_but_not_negative() -> None:
    delay = setting(agent="bucket.b.max_delay")

    assert 0 == delay.accept(0)
    assert "sp: must not be negative" == rejection(delay, -0.5)


def test_an_agent_setting_with_an_enum_takes_only_its_values() -> None:
    interval = setting(agent="device.meter1.interval", enum=[1, 5, 60])

    assert 5 == interval.accept(5)
    assert "sp: 2 is not one of [1, 5, 60]" == rejection(interval, 2)


def test_an_agent_interval_beyond_float_range_is_rejected() -> None:
    with pytest.raises(RejectedSetting):
        setting(agent="device.meter1.interval").accept(BEYOND_FLOAT)


# -- coils and bool registers ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["00001", "40001"])
@pytest.mark.parametrize(
    ("value", "accepted"), [(True, True), (False, False), (1, True), (0, False)]
)
def test_a_bool_takes_true_false_1_and_0(address: str, value: object, accepted: bool) -> None:
    target = register_setting(address=address, type="bool")

    assert accepted is target.accept(value)


@pytest.mark.parametrize("value", [2, -1, 1.0, 0.0, "true", "1"])
def test_a_bool_takes_nothing_else(value: object) -> None:
    assert f"sp: expected true/false or 1/0, got {value!r}" == rejection(
        register_setting(address="00001"), value
    )


def test_a_coil_is_written_as_a_state_and_a_bool_register_as_1_or_0() -> None:
    coil = register_setting(address="00001")
    register = register_setting(address="40001", type="bool")

    assert (True, False) == (coil.encode(True), coil.encode(False))
    assert ([1], [0]) == (register.encode(True), register.encode(False))
    assert coil.target is not None
    assert (Table.COIL, 1) == (coil.target.table, coil.count)


@pytest.mark.parametrize("address", ["00001", "40001"])
@pytest.mark.parametrize(
    ("value_type", "form", "reported"),
    [
        (None, None, 1),  # the document's example reports coils as 1/0
        (None, "integer", 1),
        (None, "boolean", True),
        ("boolean", None, True),
        ("boolean", "integer", 1),  # how the cloud wrote it wins
        ("integer", "boolean", True),
    ],
)
def test_a_bool_is_reported_in_the_form_the_cloud_wrote_it(
    address: str,
    value_type: str | None,
    form: str | None,
    reported: JsonScalar,
) -> None:
    declared: dict[str, Any] = {"address": address, "type": "bool"}
    if value_type is not None:
        declared["value_type"] = value_type
    target = register_setting(**declared)

    assert reported == target.decode([True], form=form)
    assert type(reported) is type(target.decode([True], form=form))
    assert (not reported) == target.decode([False], form=form)


@pytest.mark.parametrize(
    ("value", "form"),
    [
        (True, "boolean"),
        (False, "boolean"),
        (1, "integer"),
        (0, "integer"),
        (1.5, None),
        ("on", None),
    ],
)
def test_form_of_tells_how_the_cloud_wrote_a_value(value: object, form: str | None) -> None:
    assert form == form_of(value)


@pytest.mark.parametrize("value", [True, False, 1, 0])
def test_a_coil_written_in_either_form_is_reported_back_equal(value: bool | int) -> None:
    coil = register_setting(address="00001")
    written = coil.encode(coil.accept(value))

    reported = coil.decode([written is True], form=form_of(value))

    assert (value, type(value)) == (reported, type(reported))


# -- strings and hex ------------------------------------------------------------------------


def test_a_string_setting_takes_text_that_fits_its_registers_and_matches_its_pattern() -> None:
    name = register_setting(type="string", length=2, pattern="[a-z]+")

    assert "abcd" == name.accept("abcd")
    assert "sp: expected a string, got 3" == rejection(name, 3)
    assert "sp: 'ab1' does not match the pattern" == rejection(name, "ab1")
    assert "sp: 'xabcd1' does not match the pattern" == rejection(name, "xabcd1")  # fullmatch
    assert "sp: string of 5 UTF-8 bytes does not fit in 2 registers (4 bytes)" == rejection(
        name, "abcde"
    )


def test_a_string_with_an_enum_takes_only_its_values() -> None:
    mode = register_setting(type="string", length=4, enum=["auto", "manual"])

    assert "auto" == mode.accept("auto")
    assert "sp: 'off' is not one of ['auto', 'manual']" == rejection(mode, "off")


def test_a_string_is_padded_with_nuls_to_its_length_and_read_back_without_them() -> None:
    name = register_setting(type="string", length=3)

    assert [0x6162, 0x6300, 0x0000] == name.encode("abc")
    assert "abc" == name.decode([0x6162, 0x6300, 0x0000])


def test_a_string_in_a_byte_swapped_device_has_its_bytes_swapped_per_register() -> None:
    name = register_setting(type="string", length=2, device_byte_order="BADC")

    assert [0x6261, 0x0063] == name.encode("abc")
    assert "abc" == name.decode([0x6261, 0x0063])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0xBEEF", "sp: hex takes hex digits without prefix (e.g. \"BEEF\"), got '0xBEEF'"),
        ("BEEFBEEF", "sp: hex needs 4 digits (4 per register), got 8"),
        ("BEE", "sp: hex needs 4 digits (4 per register), got 3"),
        ("WXYZ", "sp: hex takes hex digits without prefix (e.g. \"BEEF\"), got 'WXYZ'"),
        (48879, "sp: expected a string, got 48879"),
    ],
)
def test_a_hex_setting_takes_exactly_four_digits_per_register(value: object, message: str) -> None:
    status = register_setting(type="hex", length=1)

    assert message == rejection(status, value)
    assert "beef" == status.accept("beef")
    assert ([0xBEEF], "BEEF") == (status.encode("beef"), status.decode([0xBEEF]))


def test_a_hex_setting_without_length_takes_one_register() -> None:
    status = register_setting(type="hex")
    assert status.target is not None

    assert 1 == status.count
    assert "sp: hex needs 4 digits (4 per register), got 8" == rejection(status, "BEEFBEEF")


# -- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "sp: expected a number, got '5'"),
        (True, "sp: expected a number, got True"),
        (math.nan, "sp: expected a number, got nan"),
        (-math.inf, "sp: expected a number, got -inf"),
        (1.5, "sp: expected a whole number, got 1.5"),
        (-6, "sp: -6 is below the minimum -5"),
        (5.000001, "sp: expected a whole number, got 5.000001"),
        (6, "sp: 6 is above the maximum 5"),
    ],
)
def test_an_integer_setting_takes_whole_numbers_within_its_bounds(
    value: object,
    message: str,
) -> None:
    level = register_setting(type="int16", min=-5, max=5)

    assert message == rejection(level, value)
    assert (-5, 5, 3.0) == (level.accept(-5), level.accept(5), level.accept(3.0))
    assert [0xFFFB] == level.encode(-5)


@pytest.mark.parametrize("point_type", INTEGER_TYPES)
def test_an_integer_setting_takes_exactly_its_types_range(point_type: str) -> None:
    low, high = INTEGER_RANGES[point_type]
    target = register_setting(type=point_type)

    assert (low, high) == (target.accept(low), target.accept(high))
    assert f"sp: {low - 1} does not fit {point_type}" == rejection(target, low - 1)
    assert f"sp: {high + 1} does not fit {point_type}" == rejection(target, high + 1)


@pytest.mark.parametrize("point_type", ["uint16", "int64"])
def test_an_integer_beyond_float_range_is_rejected(point_type: str) -> None:
    assert f"sp: {BEYOND_FLOAT} does not fit {point_type}" == rejection(
        register_setting(type=point_type), BEYOND_FLOAT
    )


def test_a_numeric_enum_takes_only_its_values() -> None:
    mode = register_setting(type="uint16", enum=[1, 2, 4])

    assert 4 == mode.accept(4)
    assert "sp: 3 is not one of [1, 2, 4]" == rejection(mode, 3)


@pytest.mark.parametrize(
    ("point_type", "value", "message"),
    [
        (
            "float32",
            1e39,
            "sp: float32 holds -3.4028234663852886e+38..3.4028234663852886e+38, got 1e+39",
        ),
        ("float32", BEYOND_FLOAT, None),
        ("float64", BEYOND_FLOAT, None),
    ],
)
def test_a_float_setting_rejects_what_its_type_cannot_hold(
    point_type: str,
    value: object,
    message: str | None,
) -> None:
    shown = rejection(register_setting(type=point_type), value)

    assert shown.startswith(f"sp: {point_type} holds")
    if message is not None:
        assert message == shown


def test_a_float_setting_takes_fractions() -> None:
    assert 1.5 == register_setting(type="float32").accept(1.5)


def test_a_scaled_integer_takes_fractions_and_is_written_rounded_half_to_even() -> None:
    level = register_setting(type="uint16", scale=0.5)

    assert 1.25 == level.accept(1.25)
    assert ([2], [4], [3]) == (level.encode(1.25), level.encode(1.75), level.encode(1.5))
    assert "sp: uint16 holds 0..65535, got 40000" == rejection(level, 40000)
    assert "sp: uint16 holds 0..65535, got -1" == rejection(level, -1)


def test_a_scaled_value_is_reported_without_binary_noise() -> None:
    tenths = register_setting(type="uint16", scale=0.1)
    celsius = register_setting(type="int16", scale=0.5, offset=-40)

    assert (0.3, 230.1) == (tenths.decode([3]), tenths.decode([2301]))
    assert (-40.0, 10.0) == (celsius.decode([0]), celsius.decode([100]))
    assert [100] == celsius.encode(10)


def test_a_scaled_float_is_written_unscaled() -> None:
    target = register_setting(type="float32", scale=2, offset=1)

    assert [0x4000, 0x0000] == target.encode(5)  # (5 - 1) / 2 = 2.0
    assert 5.0 == target.decode([0x4000, 0x0000])


# -- byte orders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point_type", "value", "registers"),
    [
        ("int16", -2, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
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
            "float32",
            1.0,
            {
                "ABCD": [0x3F80, 0x0000],
                "CDAB": [0x0000, 0x3F80],
                "BADC": [0x803F, 0x0000],
                "DCBA": [0x0000, 0x803F],
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
    ],
)
@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
def test_a_setting_is_written_in_its_devices_byte_order_unless_it_has_its_own(
    point_type: str,
    value: int | float,
    registers: dict[str, list[int]],
    byte_order: ByteOrder,
) -> None:
    from_device = register_setting(type=point_type, device_byte_order=byte_order)
    own = register_setting(type=point_type, byte_order=byte_order, device_byte_order="CDAB")

    assert registers[byte_order] == from_device.encode(value) == own.encode(value)
    assert value == from_device.decode(registers[byte_order])


def test_a_float32_setting_is_reported_as_the_value_written() -> None:
    target = register_setting(type="float32")
    registers = target.encode(target.accept(0.1))
    assert isinstance(registers, list)

    assert 0.1 == target.decode(registers)


# -- properties -----------------------------------------------------------------------------

byte_orders = st.sampled_from(BYTE_ORDERS)


@st.composite
def integer_values(draw: st.DrawFn) -> tuple[str, int]:
    point_type = draw(st.sampled_from(INTEGER_TYPES))
    low, high = INTEGER_RANGES[point_type]
    return point_type, draw(st.integers(low, high))


@given(integer_values(), byte_orders)
def test_every_integer_in_range_is_accepted_and_reported_back_unchanged(
    typed: tuple[str, int],
    byte_order: ByteOrder,
) -> None:
    point_type, value = typed
    target = register_setting(type=point_type, byte_order=byte_order)
    assert target.target is not None

    registers = target.encode(target.accept(value))

    assert isinstance(registers, list)
    assert target.count == len(registers)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert value == target.decode(registers)


@given(st.floats(allow_nan=False, allow_infinity=False), byte_orders)
def test_every_finite_float64_is_reported_back_unchanged(
    value: float, byte_order: ByteOrder
) -> None:
    target = register_setting(type="float64", byte_order=byte_order)

    registers = target.encode(target.accept(value))

    assert isinstance(registers, list)
    assert value == target.decode(registers)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), byte_orders)
def test_every_float32_value_is_reported_back_as_the_same_float32(
    value: float, byte_order: ByteOrder
) -> None:
    """Reported as the shortest decimal that is the same float32 (0.1, not 0.100000001)."""
    target = register_setting(type="float32", byte_order=byte_order)

    registers = target.encode(target.accept(value))
    assert isinstance(registers, list)
    reported = target.decode(registers)

    assert isinstance(reported, float)
    assert struct.pack(">f", value) == struct.pack(">f", reported)
    assert len(repr(reported)) <= len(repr(value))
    assert registers == target.encode(target.accept(reported))


@st.composite
def held_registers(draw: st.DrawFn) -> tuple[str, list[int]]:
    point_type = draw(st.sampled_from([*INTEGER_TYPES, "float32", "float64"]))
    width = {"16": 1, "32": 2, "64": 4}[point_type[-2:]]
    registers = draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width))
    return point_type, registers


@given(held_registers(), byte_orders)
def test_what_a_device_holds_written_back_as_reported_writes_the_same_registers(
    held: tuple[str, list[int]],
    byte_order: ByteOrder,
) -> None:
    """The report of a value, sent back by the cloud, changes nothing on the device."""
    point_type, registers = held
    target = register_setting(type=point_type, byte_order=byte_order)
    try:
        reported = target.decode(registers)
    except UnreportableValue:  # NaN and the infinities have no JSON form: never reported
        assume(False)
        return

    assert registers == target.encode(target.accept(reported))


@given(
    st.sampled_from(["uint16", "int16", "uint32", "int32"]),
    st.sampled_from([0.1, 0.01, 0.5, 2.0]),
    st.integers(0, 0x7FFF),
    byte_orders,
)
def test_a_scaled_reading_written_back_gives_the_same_raw_value(
    point_type: str,
    scale: float,
    raw: int,
    byte_order: ByteOrder,
) -> None:
    target = register_setting(type=point_type, scale=scale, byte_order=byte_order)
    registers = register_setting(type=point_type, byte_order=byte_order).encode(raw)
    assert isinstance(registers, list)

    assert registers == target.encode(target.accept(target.decode(registers)))


text_without_nul = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8
)


@given(text_without_nul, byte_orders)
def test_every_string_that_fits_is_reported_back_unchanged(
    text: str, byte_order: ByteOrder
) -> None:
    length = 8
    target = register_setting(type="string", length=length, byte_order=byte_order)
    fits = len(text.encode()) <= 2 * length
    if not fits:
        assert rejection(target, text).startswith("sp: string of ")
        return

    registers = target.encode(target.accept(text))

    assert isinstance(registers, list)
    assert length == len(registers)
    assert text.rstrip(" ") == target.decode(registers)  # trailing spaces are not kept


@given(st.binary(min_size=4, max_size=4), byte_orders, st.booleans())
def test_every_hex_value_of_its_length_is_reported_back_in_capitals(
    data: bytes,
    byte_order: ByteOrder,
    lower: bool,
) -> None:
    target = register_setting(type="hex", length=2, byte_order=byte_order)
    digits = data.hex() if lower else data.hex().upper()

    registers = target.encode(target.accept(digits))

    assert isinstance(registers, list)
    assert digits.upper() == target.decode(registers)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_registers_are_ieee754(value: float) -> None:
    registers = register_setting(type="float32").encode(value)
    assert isinstance(registers, list)

    assert struct.pack(">f", value) == struct.pack(">2H", *registers)
