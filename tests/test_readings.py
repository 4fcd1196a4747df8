"""agent.pipeline.readings: JSON fragments, data shape typing and report-by-exception."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.pipeline.readings import ChangeFilter, Reading, Value, now_ms, to_shape

# --- the JSON the platform receives ----------------------------------------------------------


def test_fragment_is_the_platform_object_with_a_string_timestamp() -> None:
    reading = Reading("sensorData", "temperature", 21.5, 1590128899000)

    assert reading.fragment() == (b'{"id":"temperature","value":21.5,"timestamp":"1590128899000"}')


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (42, "42"),
        (-7, "-7"),
        (18446744073709551615, "18446744073709551615"),
        (0.1, "0.1"),
        (1e16, "1e+16"),
        (-0.0, "-0.0"),
        (True, "true"),
        (False, "false"),
        ("BEEF", '"BEEF"'),
        ("SN-0042", '"SN-0042"'),
        ('quote " and \\ and \n', '"quote \\" and \\\\ and \\n"'),
        ([24.99, 121.5], "[24.99,121.5]"),
        ([25, 121], "[25.0,121.0]"),
    ],
)
def test_each_value_type_is_encoded_as_json(value: object, encoded: str) -> None:
    fragment = Reading("b", "p", value, 1).fragment()  # type: ignore[arg-type]

    assert fragment == f'{{"id":"p","value":{encoded},"timestamp":"1"}}'.encode()
    assert json.loads(fragment)["value"] == value


def test_non_ascii_id_is_utf8_not_escaped() -> None:
    fragment = Reading("b", "température", "Zürich", 1).fragment()

    assert fragment == '{"id":"température","value":"Zürich","timestamp":"1"}'.encode()


@given(
    ident=st.text(min_size=1, max_size=20),
    value=st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    ),
    timestamp=st.integers(min_value=0, max_value=2**45),
)
def test_fragment_is_valid_json_with_the_same_content(
    ident: str, value: bool | int | float | str, timestamp: int
) -> None:
    decoded = json.loads(Reading("b", ident, value, timestamp).fragment())

    assert decoded == {"id": ident, "value": value, "timestamp": str(timestamp)}
    assert type(decoded["value"]) is type(value)


def test_now_ms_is_wall_clock_milliseconds() -> None:
    before = time.time() * 1000
    stamp = now_ms()
    after = time.time() * 1000

    assert isinstance(stamp, int)
    assert before - 1 <= stamp <= after + 1


# --- typing a decoded value to its data shape -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shape", "expected"),
    [
        (17, "integer", 17),
        (-32768, "integer", -32768),
        (21.7, "integer", 22),
        (21.2, "integer", 21),
        (True, "integer", 1),
        (17, "float", 17.0),
        (54.48, "float", 54.48),
        (True, "boolean", True),
        (0, "boolean", False),
        (3, "boolean", True),
        ("on", "boolean", True),
        ("TRUE", "boolean", True),
        ("0", "boolean", False),
        ("off", "boolean", False),
        ("SN-0042", "string", "SN-0042"),
        (42, "string", "42"),
        (1.5, "string", "1.5"),
        (True, "string", "true"),
        (0xBEEF, "hex", "BEEF"),
        (0x00FF, "hex", "00FF"),
        ("beef", "hex", "BEEF"),
    ],
)
def test_value_is_typed_to_its_data_shape(raw: object, shape: str, expected: object) -> None:
    value = to_shape(raw, shape)  # type: ignore[arg-type]

    assert value == expected
    assert type(value) is type(expected)


def test_hex_pads_to_the_width_in_registers() -> None:
    assert to_shape(0x1, "hex", width=2) == "00000001"
    assert to_shape(0x0001ABCD, "hex", width=2) == "0001ABCD"
    assert to_shape(0xABCD, "hex", width=3) == "00000000ABCD"


def test_negative_integer_as_hex_is_its_twos_complement() -> None:
    assert to_shape(-1, "hex") == "FFFF"
    assert to_shape(-2, "hex", width=2) == "FFFFFFFE"


@pytest.mark.parametrize(
    ("raw", "shape"),
    [
        (math.nan, "float"),
        (math.inf, "float"),
        (-math.inf, "integer"),
        (1.5, "hex"),
        (True, "hex"),
        ("twelve", "integer"),
        ("12.5", "float"),
        (12, "coordinate"),
    ],
)
def test_values_without_a_form_in_that_shape_are_refused(raw: object, shape: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is for the log only
        to_shape(raw, shape)  # type: ignore[arg-type]


# --- report by exception --------------------------------------------------------------------


def admitted(changes: ChangeFilter, values: Sequence[tuple[float, Value]]) -> list[Value]:
    """The values, seen at the given monotonic times, that are reported."""
    return [value for now, value in values if changes.admit(value, now)]


def test_without_deadband_every_value_is_reported() -> None:
    changes = ChangeFilter(deadband=None, max_silence=None)

    assert admitted(changes, [(0, 20.0), (1, 20.0), (2, 20.0), (3, 20.1)]) == [
        20.0,
        20.0,
        20.0,
        20.1,
    ]


def test_deadband_reports_a_change_of_at_least_the_deadband() -> None:
    changes = ChangeFilter(deadband=0.5, max_silence=None)

    seen = [(0, 20.0), (1, 20.4), (2, 19.6), (3, 20.5), (4, 20.9), (5, 21.0), (6, 20.6)]

    assert admitted(changes, seen) == [20.0, 20.5, 21.0]


def test_deadband_compares_with_the_last_reported_value_so_drift_is_reported() -> None:
    changes = ChangeFilter(deadband=1.0, max_silence=None)

    seen = [(0, 10.0), (1, 10.4), (2, 10.8), (3, 11.2), (4, 11.6), (5, 12.0)]

    assert admitted(changes, seen) == [10.0, 11.2]


def test_a_change_of_exactly_the_deadband_is_reported_for_decimal_readings() -> None:
    """0.3 - 0.2 is a hair under 0.1 in binary floating point; the user wrote 0.1."""
    changes = ChangeFilter(deadband=0.1, max_silence=None)

    assert admitted(changes, [(0, 0.2), (1, 0.3), (2, 0.4)]) == [0.2, 0.3, 0.4]


def test_a_change_just_under_the_deadband_is_held_back() -> None:
    changes = ChangeFilter(deadband=0.1, max_silence=None)

    assert admitted(changes, [(0, 0.2), (1, 0.2999), (2, 0.1001)]) == [0.2]


def test_integer_readings_with_a_deadband() -> None:
    changes = ChangeFilter(deadband=5, max_silence=None)

    assert admitted(changes, [(0, 100), (1, 104), (2, 96), (3, 95), (4, 100)]) == [100, 95, 100]


def test_deadband_zero_reports_any_change_but_no_repeat() -> None:
    changes = ChangeFilter(deadband=0.0, max_silence=None)

    assert admitted(changes, [(0, 1), (1, 1), (2, 2), (3, 2), (4, 1)]) == [1, 2, 1]


def test_max_silence_repeats_an_unchanged_value() -> None:
    changes = ChangeFilter(deadband=0.5, max_silence=60)

    seen = [(0, 20.0), (30, 20.1), (59.9, 20.1), (60, 20.1), (90, 20.2), (120, 20.2)]

    assert admitted(changes, seen) == [20.0, 20.1, 20.2]


def test_max_silence_counts_from_the_last_report_not_the_last_change() -> None:
    changes = ChangeFilter(deadband=0.5, max_silence=10)

    seen = [(0, 1.0), (5, 2.0), (14, 2.0), (15, 2.0), (24, 2.0), (25, 2.0)]

    assert admitted(changes, seen) == [1.0, 2.0, 2.0, 2.0]


def test_non_numbers_are_reported_when_they_change() -> None:
    changes = ChangeFilter(deadband=1.0, max_silence=None)

    seen = [(0, "IDLE"), (1, "IDLE"), (2, "RUN"), (3, "RUN"), (4, "IDLE")]

    assert admitted(changes, seen) == ["IDLE", "RUN", "IDLE"]


def test_booleans_are_reported_when_they_change_not_by_deadband() -> None:
    changes = ChangeFilter(deadband=5.0, max_silence=None)

    seen = [(0, False), (1, False), (2, True), (3, True), (4, False)]

    assert admitted(changes, seen) == [False, True, False]


def test_coordinates_are_reported_when_they_change() -> None:
    changes = ChangeFilter(deadband=0.001, max_silence=None)

    seen = [(0, [24.1, 121.5]), (1, [24.1, 121.5]), (2, [24.2, 121.5])]

    assert admitted(changes, seen) == [[24.1, 121.5], [24.2, 121.5]]


def test_a_value_held_back_is_not_recorded() -> None:
    """A filtered value does not become the new reference: only reports do."""
    changes = ChangeFilter(deadband=1.0, max_silence=None)

    assert admitted(changes, [(0, 0.0), (1, 0.9), (2, 1.8)]) == [0.0, 1.8]
