"""agent.config: the TOML file as typed models, every problem named by file, key and line."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import (
    MASK,
    AgentTarget,
    RegisterTarget,
    SerialSettings,
    confined,
    load_config,
    load_settings,
    masked,
)
from agent.errors import ConfigError, ConfigProblem
from agent.sources.modbus.points import Table, parse_classic_address

REPO = Path(__file__).resolve().parent.parent
SECRET = "vjn6u1.~EQrKuOP4"

# A small valid file. Tests derive broken variants with `edit`; line numbers below are
# what a user sees in an editor (the first line is 1).
BASE = f"""\
[thing]
id = "xY6Eie5hv"
secret = "{SECRET}"

[mqtt]
host = "mqtt.paas.oringnet.cloud"
port = 8083

[[modbus]]
name = "plc"
transport = "tcp"
host = "192.168.10.20"

  [[modbus.devices]]
  name = "meter1"
  unit = 1
  bucket = "sensorData"
  points = [
    {{ id = "temperature", address = "30001", type = "float32" }},
    {{ id = "humidity",    address = "30003", type = "uint16", scale = 0.01 }},
  ]

  [[modbus.devices]]
  name = "meter2"
  unit = 2
  bucket = "sensorData"
  points = [
    {{ id = "m2_a", address = "40001" }},
    {{ id = "m2_b", address = "40002" }},
    {{ id = "m2_c", address = "00001" }},
    {{ id = "m2_d", address = "40010", type = "uint16" }},
  ]

[[config_groups]]
name = "gw-1-setting"
settings = [
  {{ id = "GW1_40807", device = "meter1", address = "40807", type = "uint16", max = 3600 }},
  {{ id = "GW1_00800", device = "meter1", address = "00800", type = "bool" }},
]
"""

# The points of device meter1, for tests that replace them.
METER1_POINTS = """\
    { id = "temperature", address = "30001", type = "float32" },
    { id = "humidity",    address = "30003", type = "uint16", scale = 0.01 },
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    """`text` with the one occurrence of `old` replaced by `new`."""
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    """1-based line of the one line of `text` holding `fragment`."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(found) == 1, f"{fragment!r} is on lines {found}"
    return found[0]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ORIO_AGENT_* override or systemd credential directory leaks in from the shell."""
    for name in list(os.environ):
        if name.upper().startswith("ORIO_AGENT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a config text to a file in tmp_path and return its path."""

    def _write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def problems_of(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    return caught.value.problems


def rendered(path: Path) -> list[str]:
    """The error's lines as the user reads them, with the file shown as FILE."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).replace(str(path), "FILE").splitlines()


# --- a valid file --------------------------------------------------------------------------


def test_base_config_loads_into_typed_models(write: Write) -> None:
    config = load_config(write(BASE))

    assert config.thing_id == "xY6Eie5hv"
    assert config.secret.get_secret_value() == SECRET
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == (
        "mqtt.paas.oringnet.cloud",
        8083,
        True,
    )
    assert [device.name for _, device in config.all_devices()] == ["meter1", "meter2"]
    meter1 = config.connections[0].devices[0]
    assert [p.location for p in meter1.points] == [(Table.INPUT, 0), (Table.INPUT, 2)]
    assert [p.width for p in meter1.points] == [2, 1]


def test_sections_left_out_take_documented_defaults(write: Write) -> None:
    config = load_config(write(BASE))

    assert (
        config.queue.path,
        config.queue.max_bytes,
        config.queue.max_age,
        config.queue.replay_rate,
    ) == ("/var/lib/orio-agent/queue.db", 268435456, 604800.0, 50.0)
    assert (config.batch.max_readings, config.batch.max_bytes, config.batch.max_delay) == (
        100,
        65536,
        1.0,
    )
    assert (config.log.level, config.log.format) == ("info", "logfmt")
    assert config.connections[0].devices[0].limits.max_gap == 8
    assert (1.0, 0.0, 0.0, False) == (
        config.connections[0].timeout,
        config.connections[0].connect_delay,
        config.connections[0].request_delay,
        config.connections[0].close_after_cycle,
    )
    meter1 = config.connections[0].devices[0]
    assert (meter1.byte_order, meter1.interval) == ("ABCD", 1.0)


def test_type_defaults_to_bool_in_bit_tables_and_uint16_in_register_tables(write: Write) -> None:
    config = load_config(write(BASE))

    types = [p.type for p in config.connections[0].devices[1].points]
    assert types == ["uint16", "uint16", "bool", "uint16"]


def test_example_config_loads() -> None:
    """config.example.toml, shipped as the conffile, is valid as it stands."""
    example = Path(__file__).parents[1] / "config.example.toml"

    config = load_config(example)

    assert config.thing_id == "xY6Eie5hv"
    assert [device.name for _, device in config.all_devices()] == ["meter1", "flowmeter"]


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40807", (Table.HOLDING, 806)),
        ("00800", (Table.COIL, 799)),
        ("400201", (Table.HOLDING, 200)),
        ("30001", (Table.INPUT, 0)),
        ("40001", (Table.HOLDING, 0)),
        ("10001", (Table.DISCRETE, 0)),
        ("00001", (Table.COIL, 0)),
        ("49999", (Table.HOLDING, 9998)),
        ("465536", (Table.HOLDING, 65535)),
        ("300017", (Table.INPUT, 16)),
    ],
)
def test_classic_modicon_address_gives_table_and_zero_based_offset(
    text: str,
    expected: tuple[Table, int],
) -> None:
    assert expected == parse_classic_address(text)


@pytest.mark.parametrize(
    "text", ["50001", "20001", "40000", "4001", "4000001", "4000a", "", "465537", "-4001"]
)
def test_malformed_classic_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_classic_address(text)


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ('{ id = "p", address = "40807" }', (Table.HOLDING, 806)),
        ('{ id = "p", table = "holding", address = 806 }', (Table.HOLDING, 806)),
        ('{ id = "p", address = "00800" }', (Table.COIL, 799)),
        ('{ id = "p", table = "coil", address = 799 }', (Table.COIL, 799)),
        ('{ id = "p", address = "400201" }', (Table.HOLDING, 200)),
        ('{ id = "p", table = "input", address = 0 }', (Table.INPUT, 0)),
        ('{ id = "p", table = "discrete", address = 65535 }', (Table.DISCRETE, 65535)),
    ],
)
def test_point_address_in_classic_notation_or_table_and_offset(
    write: Write,
    point: str,
    expected: tuple[Table, int],
) -> None:
    config = load_config(write(edit(METER1_POINTS, f"    {point},\n")))

    assert expected == config.connections[0].devices[0].points[0].location


def test_boolean_address_is_refused(write: Write) -> None:
    text = edit(METER1_POINTS, '    { id = "p", table = "holding", address = true },\n')
    path = write(text)

    [problem] = problems_of(path)

    assert (problem.key, problem.line) == ("modbus[0].devices[0].points[0].address", 19)


@pytest.mark.parametrize(
    ("point", "key", "message"),
    [
        (
            '{ id = "p", address = "50001" }',
            "address",
            "address '50001': first digit must be 0 (coil), 1 (discrete input), "
            "3 (input register) or 4 (holding register)",
        ),
        (
            '{ id = "p", address = "40000" }',
            "address",
            "address '40000': classic addresses are 1-based, the smallest is 1",
        ),
        (
            '{ id = "p", address = 806 }',
            "table",
            "an integer address needs `table` (coil, discrete, input or holding)",
        ),
        (
            '{ id = "p", table = "holding", address = "40807" }',
            "address",
            "with `table`, give a 0-based integer address; a string address is classic "
            'notation ("40001")',
        ),
        (
            '{ id = "p", table = "holding", address = 65536 }',
            "address",
            "65536 is outside 0..65535",
        ),
        (
            '{ id = "p", table = "holding", address = 65535, type = "uint32" }',
            "address",
            "the value runs past the end of the table",
        ),
    ],
)
def test_bad_point_address_names_key_and_line(
    write: Write, point: str, key: str, message: str
) -> None:
    text = edit(METER1_POINTS, f"    {point},\n")
    path = write(text)

    assert rendered(path) == [
        f"FILE:{line_of(text, point)}: modbus[0].devices[0].points[0].{key}: {message}"
    ]


# --- problems located by key path and line ------------------------------------------------


def test_bad_type_in_second_device_names_file_key_path_and_line(write: Write) -> None:
    """The issue's example: modbus[0].devices[1].points[3].type, on line 31."""
    text = edit('address = "40010", type = "uint16"', 'address = "40010", type = "uint17"')
    path = write(text)

    assert problems_of(path) == [
        ConfigProblem(
            "modbus[0].devices[1].points[3].type",
            "Input should be 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', "
            "'float32', 'float64', 'bool', 'string' or 'hex' (got 'uint17')",
            31,
        )
    ]


def test_error_in_points_written_as_array_of_tables_names_the_line_of_the_key(
    write: Write,
) -> None:
    text = edit(
        "  points = [\n"
        '    { id = "m2_a", address = "40001" },\n'
        '    { id = "m2_b", address = "40002" },\n'
        '    { id = "m2_c", address = "00001" },\n'
        '    { id = "m2_d", address = "40010", type = "uint16" },\n'
        "  ]\n",
        "    [[modbus.devices.points]]\n"
        '    id = "m2_a"\n'
        '    address = "40001"\n'
        "\n"
        "    [[modbus.devices.points]]\n"
        '    id = "m2_b"\n'
        '    address = "40002"\n'
        '    scale = "ten"\n',
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:34: modbus[0].devices[1].points[1].scale: Input should be a valid number, "
        "unable to parse string as a number (got 'ten')"
    ]


def test_unknown_key_in_inline_point_is_refused_on_its_line(write: Write) -> None:
    text = edit(
        '{ id = "m2_b", address = "40002" }', '{ id = "m2_b", address = "40002", typ = "uint16" }'
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:29: modbus[0].devices[1].points[1].typ: unknown key (check its spelling and section)"
    ]


def test_unknown_key_in_a_table_is_refused_on_its_line(write: Write) -> None:
    text = edit("port = 8083\n", "port = 8083\nkeep_alive = 30\n")
    path = write(text)

    assert (rendered(path)) == [
        "FILE:8: mqtt.keep_alive: unknown key (check its spelling and section)"
    ]


def test_unknown_section_is_refused(write: Write) -> None:
    text = BASE + '\n[loging]\nlevel = "debug"\n'
    path = write(text)

    assert rendered(path) == [
        f"FILE:{line_of(text, '[loging]')}: loging: unknown key (check its spelling and section)"
    ]


def test_missing_required_key_points_at_its_table_header(write: Write) -> None:
    text = edit('host = "mqtt.paas.oringnet.cloud"\n', "")
    path = write(text)

    assert rendered(path) == ["FILE:5: mqtt.host: required key is missing"]


def test_missing_required_key_in_array_of_tables_points_at_that_element(write: Write) -> None:
    text = edit('transport = "tcp"\n', "")
    path = write(text)

    assert rendered(path) == ["FILE:9: modbus[0].transport: required key is missing"]


def test_missing_section_is_named_without_a_line(write: Write) -> None:
    text = edit('[mqtt]\nhost = "mqtt.paas.oringnet.cloud"\nport = 8083\n', "")
    path = write(text)

    assert rendered(path) == ["FILE: mqtt: required key is missing"]


def test_toml_syntax_error_names_its_line(write: Write) -> None:
    text = edit("port = 8083\n", "port = \n")
    path = write(text)

    assert rendered(path) == ["FILE:7: TOML syntax: Invalid value"]


def test_toml_syntax_error_in_inline_point_array_names_its_line(write: Write) -> None:
    text = edit('{ id = "m2_c", address = "00001" }', '{ id = "m2_c" address = "00001" }')
    path = write(text)

    [problem] = problems_of(path)

    assert (problem.key, problem.line) == ("", 30)
    assert problem.message.startswith("TOML syntax: ")


def test_every_problem_in_a_file_is_listed(write: Write) -> None:
    text = edit("port = 8083\n", 'port = "eighty"\n')
    text = edit("  unit = 2\n", "  unit = 300\n", text)
    text = edit('address = "40010", type = "uint16"', 'address = "40010", type = "uint17"', text)
    text = edit('name = "gw-1-setting"\n', 'name = "gw-1-setting"\ncolour = "red"\n', text)
    path = write(text)

    expected = [
        (7, "mqtt.port"),
        (25, "modbus[0].devices[1].unit"),
        (31, "modbus[0].devices[1].points[3].type"),
        (36, "config_groups[0].colour"),
    ]
    assert expected == sorted((p.line, p.key) for p in problems_of(path))


def test_every_cross_check_problem_is_listed(write: Write) -> None:
    text = edit('{ id = "m2_b", address = "40002" }', '{ id = "m2_a", address = "40002" }')
    text = edit(
        'device = "meter1", address = "00800"', 'device = "meter9", address = "00800"', text
    )
    text = edit(
        '{ id = "m2_c", address = "00001" }', '{ id = "m2_c", address = "00001", bit = 3 }', text
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:29: modbus[0].devices[1].points[1].id: point id 'm2_a' is already used in "
        "bucket 'sensorData' at modbus[0].devices[1].points[0]",
        "FILE:30: modbus[0].devices[1].points[2].bit: `bit` selects a bit of a register; "
        "the coil table already holds single bits",
        "FILE:38: config_groups[0].settings[1].device: no device named 'meter9' "
        "(devices: meter1, meter2)",
    ]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    assert rendered(path) == ["FILE: cannot read: No such file or directory"]


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.replace("meter1", "m\xe8ter1").encode("latin-1"))

    assert rendered(path) == ["FILE: not UTF-8 text"]


def test_config_error_exits_78() -> None:
    assert ConfigError.exit_code == 78


# --- cross-checks ---------------------------------------------------------------------------


def test_duplicate_point_id_within_a_bucket_is_refused(write: Write) -> None:
    text = edit(
        '{ id = "m2_d", address = "40010", type = "uint16" }',
        '{ id = "humidity", address = "40010", type = "uint16" }',
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:31: modbus[0].devices[1].points[3].id: point id 'humidity' is already used in "
        "bucket 'sensorData' at modbus[0].devices[0].points[1]"
    ]


def test_same_point_id_in_different_buckets_is_accepted(write: Write) -> None:
    text = edit(
        '{ id = "m2_d", address = "40010", type = "uint16" }',
        '{ id = "humidity", address = "40010", type = "uint16", bucket = "other" }',
    )

    config = load_config(write(text))

    assert config.connections[0].devices[1].points[3].bucket == "other"


def test_point_without_any_bucket_is_refused(write: Write) -> None:
    text = edit(
        '  bucket = "sensorData"\n  points = [\n    { id = "temperature"',
        '  points = [\n    { id = "temperature"',
    )
    path = write(text)

    no_bucket = "no bucket: set `bucket` on the device or the point"
    assert rendered(path) == [
        f"FILE:18: modbus[0].devices[0].points[0].bucket: {no_bucket}",
        f"FILE:19: modbus[0].devices[0].points[1].bucket: {no_bucket}",
    ]


@pytest.mark.parametrize(
    "second",
    [
        '{ id = "h", address = "30002", type = "uint16" }',  # inside the float32
        '{ id = "h", address = "30001", type = "int32" }',  # same start, other type
        '{ id = "h", address = "30001", type = "float32", byte_order = "CDAB" }',
        '{ id = "h", address = "30002", type = "float64" }',  # starts inside, runs past
    ],
)
def test_overlapping_points_with_conflicting_types_are_refused(write: Write, second: str) -> None:
    text = edit(
        METER1_POINTS, f'    {{ id = "t", address = "30001", type = "float32" }},\n    {second},\n'
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:20: modbus[0].devices[0].points[1].address: overlaps "
        "modbus[0].devices[0].points[0] ('t') with a different type or byte order"
    ]


@pytest.mark.parametrize(
    "second",
    [
        '{ id = "h", address = "30001", type = "float32" }',  # read the same way
        '{ id = "h", address = "30001", type = "float32", scale = 10.0 }',  # scaled copy
        '{ id = "h", address = "30003", type = "uint16" }',  # adjacent, no overlap
    ],
)
def test_points_sharing_registers_the_same_way_are_accepted(write: Write, second: str) -> None:
    text = edit(
        METER1_POINTS, f'    {{ id = "t", address = "30001", type = "float32" }},\n    {second},\n'
    )

    config = load_config(write(text))

    assert len(config.connections[0].devices[0].points) == 2


def test_separate_bits_of_one_register_are_accepted(write: Write) -> None:
    text = edit(
        METER1_POINTS,
        '    { id = "b0", address = "40001", type = "bool", bit = 0 },\n'
        '    { id = "b1", address = "40001", type = "bool", bit = 1 },\n',
    )

    config = load_config(write(text))

    assert [p.bit for p in config.connections[0].devices[0].points] == [0, 1]


def test_register_and_a_bit_of_it_are_accepted(write: Write) -> None:
    """A status word and an alarm bit within it are read the same way, not a conflict."""
    text = edit(
        METER1_POINTS,
        '    { id = "status", address = "40001", type = "uint16" },\n'
        '    { id = "alarm", address = "40001", type = "bool", bit = 3 },\n',
    )

    config = load_config(write(text))

    assert [p.id for p in config.connections[0].devices[0].points] == ["status", "alarm"]


def test_config_group_naming_an_unknown_device_is_refused(write: Write) -> None:
    text = edit('device = "meter1", address = "40807"', 'device = "meter3", address = "40807"')
    path = write(text)

    assert rendered(path) == [
        "FILE:37: config_groups[0].settings[0].device: no device named 'meter3' "
        "(devices: meter1, meter2)"
    ]


def test_setting_on_a_read_only_table_is_refused(write: Write) -> None:
    text = edit('address = "00800", type = "bool"', 'address = "10800", type = "bool"')
    path = write(text)

    assert rendered(path) == [
        "FILE:38: config_groups[0].settings[1].address: the discrete table is read-only; "
        "settings need a coil or holding register"
    ]


def test_setting_id_declared_twice_is_refused(write: Write) -> None:
    text = edit('{ id = "GW1_00800"', '{ id = "GW1_40807"')
    path = write(text)

    assert rendered(path) == [
        "FILE:38: config_groups[0].settings[1].id: setting id 'GW1_40807' is already "
        "declared at config_groups[0].settings[0]"
    ]


@pytest.mark.parametrize(
    "table_address", ['address = "00001"', 'address = "10001"', 'table = "coil", address = 0']
)
def test_bit_on_a_bit_table_is_refused(write: Write, table_address: str) -> None:
    point = f'{{ id = "m2_c", {table_address}, bit = 3 }}'
    text = edit('{ id = "m2_c", address = "00001" }', point)
    table = "discrete" if "10001" in table_address else "coil"
    path = write(text)

    assert rendered(path) == [
        f"FILE:30: modbus[0].devices[1].points[2].bit: `bit` selects a bit of a register; "
        f"the {table} table already holds single bits"
    ]


def test_non_bool_type_on_a_bit_table_is_refused(write: Write) -> None:
    text = edit(
        '{ id = "m2_c", address = "00001" }', '{ id = "m2_c", address = "00001", type = "uint16" }'
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:30: modbus[0].devices[1].points[2].type: the coil table holds bits: type must be bool"
    ]


def test_string_without_length_is_refused(write: Write) -> None:
    text = edit(
        '{ id = "m2_d", address = "40010", type = "uint16" }',
        '{ id = "m2_d", address = "40010", type = "string" }',
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:31: modbus[0].devices[1].points[3].length: type string needs `length` in registers"
    ]


def test_string_and_hex_take_their_length_in_registers(write: Write) -> None:
    text = edit(
        '{ id = "m2_d", address = "40010", type = "uint16" }',
        '{ id = "m2_d", address = "40010", type = "string", length = 8 },\n'
        '    { id = "m2_e", address = "40020", type = "hex" },\n'
        '    { id = "m2_f", address = "40030", type = "hex", length = 3 }',
    )

    config = load_config(write(text))

    assert [p.width for p in config.connections[0].devices[1].points[3:]] == [8, 1, 3]


def test_length_on_a_number_is_refused(write: Write) -> None:
    text = edit(
        '{ id = "m2_d", address = "40010", type = "uint16" }',
        '{ id = "m2_d", address = "40010", type = "uint16", length = 2 }',
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:31: modbus[0].devices[1].points[3].length: `length` applies to string and hex only"
    ]


def test_duplicate_device_name_and_unit_are_refused(write: Write) -> None:
    text = edit('  name = "meter2"\n  unit = 2\n', '  name = "meter1"\n  unit = 1\n')
    path = write(text)

    assert rendered(path) == [
        "FILE:24: modbus[0].devices[1].name: device name 'meter1' is already used at "
        "modbus[0].devices[0]",
        "FILE:25: modbus[0].devices[1].unit: unit 1 appears twice on connection 'plc'",
    ]


def test_tcp_connection_without_host_is_refused(write: Write) -> None:
    text = edit('host = "192.168.10.20"\n', "")
    path = write(text)

    assert rendered(path) == ["FILE:9: modbus[0].host: a tcp connection needs `host`"]


def test_rtu_connection_without_device_is_refused(write: Write) -> None:
    text = edit('transport = "tcp"\nhost = "192.168.10.20"\n', 'transport = "rtu"\n')
    path = write(text)

    assert (rendered(path)) == [
        "FILE:9: modbus[0].device: an rtu connection needs `device` (e.g. /dev/ttyS1)"
    ]


# --- data shape types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "shape"),
    [
        ('type = "float32"', "float"),
        ('type = "float64"', "float"),
        ('type = "uint16"', "integer"),
        ('type = "int32"', "integer"),
        ('type = "uint64"', "integer"),
        ('type = "uint16", scale = 0.01', "float"),
        ('type = "int16", offset = -40.0', "float"),
        ('type = "bool"', "boolean"),
        ('type = "string", length = 4', "string"),
        ('type = "hex"', "hex"),
        ('type = "uint32", scale = 0.1, value_type = "integer"', "integer"),
        ('type = "uint16", value_type = "string"', "string"),
        ('type = "bool", bit = 3', "boolean"),
    ],
)
def test_data_shape_type_follows_the_point_type(write: Write, point: str, shape: str) -> None:
    text = edit(METER1_POINTS, f'    {{ id = "p", address = "40001", {point} }},\n')

    config = load_config(write(text))

    assert shape == config.connections[0].devices[0].points[0].shape


@pytest.mark.parametrize("point_type", ["uint16", "int16", None])
def test_bit_of_an_integer_register_is_a_boolean(write: Write, point_type: str | None) -> None:
    """A bit decodes to true or false whatever the register's type; not 0/1 integers."""
    type_key = f', type = "{point_type}"' if point_type else ""
    text = edit(METER1_POINTS, f'    {{ id = "p", address = "40001"{type_key}, bit = 3 }},\n')

    config = load_config(write(text))

    assert config.connections[0].devices[0].points[0].shape == "boolean"


@pytest.mark.parametrize("point_type", ["float32", "uint32", "string", "hex"])
def test_bit_of_a_multi_register_or_text_value_is_refused(write: Write, point_type: str) -> None:
    length = ", length = 2" if point_type == "string" else ""
    text = edit(
        METER1_POINTS,
        f'    {{ id = "p", address = "40001", type = "{point_type}"{length}, bit = 3 }},\n',
    )
    path = write(text)

    keys = [problem.key for problem in problems_of(path)]

    assert keys == ["modbus[0].devices[0].points[0].bit"]


@pytest.mark.parametrize(
    ("point", "value_type"),
    [
        ('type = "uint16"', "coordinate"),
        ('type = "float32"', "hex"),
        ('type = "string", length = 2', "integer"),
        ('type = "hex"', "float"),
    ],
)
def test_value_type_the_point_can_never_take_is_refused(
    write: Write, point: str, value_type: str
) -> None:
    text = edit(
        METER1_POINTS,
        f'    {{ id = "p", address = "40001", {point}, value_type = "{value_type}" }},\n',
    )
    path = write(text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["modbus[0].devices[0].points[0].value_type"]


# --- environment overrides ----------------------------------------------------------------


def test_environment_overrides_a_scalar_in_the_file(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORIO_AGENT_MQTT__PORT", "1883")
    monkeypatch.setenv("ORIO_AGENT_MQTT__TLS", "false")

    config = load_config(write(BASE))

    assert (config.mqtt.port, config.mqtt.tls, config.mqtt.host) == (
        1883,
        False,
        "mqtt.paas.oringnet.cloud",
    )


def test_environment_overrides_a_key_of_a_section_absent_from_the_file(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORIO_AGENT_LOG__LEVEL", "debug")
    monkeypatch.setenv("ORIO_AGENT_BATCH__MAX_DELAY", "2.5")

    config = load_config(write(BASE))

    assert (
        config.log.level,
        config.log.format,
        config.batch.max_delay,
        config.batch.max_readings,
    ) == ("debug", "logfmt", 2.5, 100)


def test_bad_environment_override_names_the_variable_and_the_line(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORIO_AGENT_MQTT__PORT", "eighty")
    path = write(BASE)

    assert rendered(path) == [
        "FILE:7: mqtt.port: Input should be a valid integer, unable to parse string as an "
        "integer (got 'eighty') (set by environment variable ORIO_AGENT_MQTT__PORT)"
    ]


def test_bad_environment_override_of_a_section_absent_from_the_file(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORIO_AGENT_LOG__LEVEL", "verbose")
    path = write(BASE)

    assert rendered(path) == [
        "FILE: log.level: Input should be 'debug', 'info', 'warning' or 'error' "
        "(got 'verbose') (set by environment variable ORIO_AGENT_LOG__LEVEL)"
    ]


def test_misspelt_environment_override_is_an_unknown_key(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORIO_AGENT_MQTT__HOSTNAME", "10.0.0.5")
    path = write(BASE)

    assert rendered(path) == [
        "FILE:5: mqtt.hostname: unknown key (check its spelling and section) "
        "(set by environment variable ORIO_AGENT_MQTT__HOSTNAME)"
    ]


def test_section_override_that_is_not_json_is_a_config_error(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIO_AGENT_THING", "{not json")
    path = write(BASE)

    assert rendered(path) == ["FILE: environment variable ORIO_AGENT_THING is not a JSON object"]


def test_array_of_tables_cannot_be_overridden_from_the_environment(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIO_AGENT_MODBUS", "{not json")
    path = write(BASE)

    assert rendered(path) == [
        "FILE: arrays of tables ([[modbus]], [[serial]], [[config_groups]]) cannot be overridden from the "
        "environment; unset ORIO_AGENT_MODBUS"
    ]


def test_section_override_that_is_not_json_does_not_show_its_value(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIO_AGENT_THING", f'{{"id": "gw", "secret": "{SECRET}"')
    path = write(BASE)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert SECRET not in str(caught.value)


def test_override_into_an_array_of_tables_names_the_variable(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIO_AGENT_MODBUS__0__HOST", "10.0.0.9")
    path = write(BASE)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert "ORIO_AGENT_MODBUS__0__HOST" in str(caught.value)


# --- the secret -----------------------------------------------------------------------------


def test_masked_config_replaces_the_secret(write: Write) -> None:
    path = write(BASE)
    config = load_config(path)

    shown = masked(load_settings(path))

    assert shown["thing"] == {"id": "xY6Eie5hv", "secret": MASK}
    assert SECRET not in repr(shown)
    assert SECRET not in repr(config)
    assert SECRET not in str(config.secret)


def test_secret_from_secret_file_without_its_newline(write: Write, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"{SECRET}\n")
    text = edit(f'secret = "{SECRET}"', f'secret_file = "{secret_file}"')

    path = write(text)
    config = load_config(path)

    assert config.secret.get_secret_value() == SECRET
    assert masked(load_settings(path))["thing"] == {
        "id": "xY6Eie5hv",
        "secret": MASK,
        "secret_file": str(secret_file),
    }


def test_secret_from_systemd_credential(
    write: Write,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "thing-secret").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    text = edit(f'secret = "{SECRET}"\n', "")

    config = load_config(write(text))

    assert config.secret.get_secret_value() == SECRET


def test_secret_from_environment_is_masked(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORIO_AGENT_THING__SECRET", "from-the-environment")

    path = write(BASE)
    config = load_config(path)

    assert config.secret.get_secret_value() == "from-the-environment"
    assert masked(load_settings(path))["thing"]["secret"] == MASK
    assert "from-the-environment" not in repr(masked(load_settings(path)))


def test_no_secret_at_all_is_refused(write: Write) -> None:
    text = edit(f'secret = "{SECRET}"\n', "")
    path = write(text)

    assert rendered(path) == [
        "FILE:1: thing.secret: no secret: set `secret`, `secret_file`, or the systemd "
        "credential 'thing-secret' (LoadCredential=)"
    ]


def test_secret_and_secret_file_together_are_refused(write: Write, tmp_path: Path) -> None:
    text = edit(
        f'secret = "{SECRET}"\n', f'secret = "{SECRET}"\nsecret_file = "{tmp_path / "secret"}"\n'
    )
    path = write(text)

    lines = rendered(path)

    assert lines == ["FILE:1: thing.secret: give either `secret` or `secret_file`, not both"]


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_secret_file_is_refused(write: Write, tmp_path: Path, content: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(content)
    text = edit(f'secret = "{SECRET}"', f'secret_file = "{secret_file}"')
    path = write(text)

    assert rendered(path) == [f"FILE:1: thing.secret: secret file {secret_file} is empty"]


def test_unreadable_secret_file_is_refused_without_revealing_anything(
    write: Write,
    tmp_path: Path,
) -> None:
    secret_dir = tmp_path / "secret.d"
    secret_dir.mkdir()
    text = edit(f'secret = "{SECRET}"', f'secret_file = "{secret_dir}"')
    path = write(text)

    assert rendered(path) == [
        f"FILE:1: thing.secret: cannot read secret file {secret_dir}: Is a directory"
    ]


def test_secret_file_that_is_not_text_does_not_show_its_bytes(write: Write, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET.encode() + b"\xff\xfe")
    text = edit(f'secret = "{SECRET}"', f'secret_file = "{secret_file}"')
    path = write(text)

    lines = rendered(path)

    assert lines == [f"FILE:1: thing.secret: cannot read secret file {secret_file}: not UTF-8 text"]
    assert SECRET not in "\n".join(lines)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a config error elsewhere in a file that holds the secret
        ("port = 8083", 'port = "eighty"'),
        # the secret's own value has the wrong type, or the wrong shape
        (f'secret = "{SECRET}"', f'secret = ["{SECRET}"]'),
        (f'secret = "{SECRET}"', f'secret = {{ value = "{SECRET}" }}'),
        # the secret under a misspelt or misplaced key
        (f'secret = "{SECRET}"', f'secrett = "{SECRET}"'),
        ("port = 8083", f'port = 8083\npassword = "{SECRET}"'),
        # the secret's line is not valid TOML
        (f'secret = "{SECRET}"', f"secret = {SECRET}"),
        (f'secret = "{SECRET}"', f'secret = "{SECRET}'),
        # a cross-check fails
        ('device = "meter1", address = "40807"', 'device = "meter9", address = "40807"'),
    ],
)
def test_config_errors_never_contain_the_secret(write: Write, old: str, new: str) -> None:
    path = write(edit(old, new))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert SECRET not in str(caught.value)
    assert all(SECRET not in problem.message for problem in caught.value.problems)


def test_secret_from_environment_never_in_errors(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORIO_AGENT_THING__SECRET", SECRET + "-env")
    path = write(edit("port = 8083", 'port = "eighty"'))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert SECRET not in str(caught.value)


# --- one run reports the whole file ---------------------------------------------------------


def test_a_type_error_does_not_hide_the_cross_check_problems_elsewhere(write: Write) -> None:
    text = edit("port = 8083", 'port = "eighty"')
    text = edit(
        'device = "meter1", address = "00800"', 'device = "meter9", address = "00800"', text
    )
    path = write(text)

    assert rendered(path) == [
        "FILE:7: mqtt.port: Input should be a valid integer, unable to parse string as an "
        "integer (got 'eighty')",
        "FILE:38: config_groups[0].settings[1].device: no device named 'meter9' "
        "(devices: meter1, meter2)",
    ]


def test_a_connection_that_fails_validation_still_names_its_devices(write: Write) -> None:
    path = write(edit("  unit = 1\n", '  unit = "one"\n'))

    # The settings on meter1 are not also "no device named 'meter1'".
    assert [(16, "modbus[0].devices[0].unit")] == [(p.line, p.key) for p in problems_of(path)]


def test_cross_checks_run_on_the_connections_that_validate(write: Write) -> None:
    second = """
[[modbus]]
name = "plc"
transport = "tcp"

  [[modbus.devices]]
  name = "meter3"
  unit = "three"
  bucket = "sensorData"
  points = [{ id = "x", address = "40001" }]

[[modbus]]
name = "plc"
transport = "rtu"
device = "/dev/ttyS1"

  [[modbus.devices]]
  name = "meter4"
  bucket = "sensorData"
  points = [{ id = "temperature", address = "40001" }]
"""
    text = edit("[[config_groups]]", second.lstrip() + "\n[[config_groups]]")
    path = write(text)

    assert [
        "modbus[1].devices[0].unit",  # the type error of the first added connection
        "modbus[2].name",  # the second is checked: its name is taken
        "modbus[2].devices[0].points[0].id",  # and its point id is used in the bucket
    ] == [p.key for p in problems_of(path)]


def test_an_instrument_cannot_be_addressed_from_the_environment(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIO_AGENT_SERIAL__0__DEVICE", "/dev/ttyUSB1")

    assert rendered(write(BASE)) == [
        "FILE: arrays of tables ([[modbus]], [[serial]], [[config_groups]]) cannot be "
        "overridden from the environment; unset ORIO_AGENT_SERIAL__0__DEVICE"
    ]


def test_environment_names_are_case_insensitive(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("orio_agent_mqtt__port", "1883")

    assert 1883 == load_config(write(BASE)).mqtt.port


# --- resolved once -------------------------------------------------------------------------


def test_a_point_takes_what_it_does_not_say_from_its_device(write: Write) -> None:
    text = edit(
        '  name = "meter2"\n  unit = 2\n',
        '  name = "meter2"\n  unit = 2\n  byte_order = "CDAB"\n  deadband = 0.5\n'
        "  max_silence = 300\n",
    )
    text = edit(
        '{ id = "m2_d", address = "40010", type = "uint16" }',
        '{ id = "m2_d", '
        'address = "40010", type = "int32", byte_order = "ABCD", deadband = 0, '
        'bucket = "other" }',
        text,
    )
    config = load_config(write(text))

    points = {p.id: p for p in config.connections[0].devices[1].points}
    assert ("sensorData", "CDAB", 0.5, 300.0) == (
        points["m2_a"].bucket,
        points["m2_a"].byte_order,
        points["m2_a"].deadband,
        points["m2_a"].max_silence,
    )
    assert ("other", "ABCD", 0.0, 300.0) == (
        points["m2_d"].bucket,
        points["m2_d"].byte_order,
        points["m2_d"].deadband,
        points["m2_d"].max_silence,
    )
    assert (Table.HOLDING, 9, 2) == (
        points["m2_d"].table,
        points["m2_d"].address,
        points["m2_d"].width,
    )


def test_a_setting_knows_its_target_and_the_device_byte_order(write: Write) -> None:
    text = edit(
        '  name = "meter1"\n  unit = 1\n', '  name = "meter1"\n  unit = 1\n  byte_order = "DCBA"\n'
    )
    text += (
        '\n[[config_groups]]\nname = "agent"\nsettings = [\n'
        '  { id = "poll", agent = "device.meter2.interval", min = 1 },\n'
        '  { id = "level", agent = "log.level" },\n]\n'
    )
    config = load_config(write(text))

    targets = {s.id: s.target for s in config.settings}
    assert (
        RegisterTarget("meter1", Table.HOLDING, 806, "uint16", None, "DCBA") == targets["GW1_40807"]
    )
    assert AgentTarget("device.interval", "meter2") == targets["poll"]
    assert "device.meter2.interval" == str(targets["poll"])
    assert AgentTarget("log.level", "") == targets["level"]
    assert {"gw-1-setting": ["GW1_40807", "GW1_00800"], "agent": ["poll", "level"]} == {
        group: [s.id for s in settings] for group, settings in config.groups().items()
    }


def test_the_resolved_config_cannot_be_changed(write: Write) -> None:
    config = load_config(write(BASE))

    with pytest.raises(AttributeError):
        config.connections[0].devices[0].points[0].bucket = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mqtt.port = 1  # type: ignore[misc]


def test_the_config_the_agent_receives_holds_no_pydantic_and_comes_back_whole() -> None:
    """Validated by a child (agent.config.confined): the agent's process unpickles plain
    objects, secret and compiled expressions included, and never imports pydantic."""
    probe = (
        "import sys; from agent.config import confined; "
        "config = confined.start('config.example.toml').result(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('pydantic'))); "
        "print(config.secret.get_secret_value() != '', repr(config.secret)); "
        "d = config.derived[0]; print(d.expression({'temperature': 10.0}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "ORIO_AGENT_THING__SECRET": "s3cr3t-value"},
    )

    modules, secret, derived = result.stdout.splitlines()
    assert "[]" == modules
    assert "True Secret('**********')" == secret
    assert "50.0" == derived  # temperature * 1.8 + 32
    assert "s3cr3t-value" not in result.stdout + result.stderr


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])
def test_the_confined_loader_gives_the_config_load_config_gives(write: Write, fork: bool) -> None:
    path = write(BASE)

    received = confined.Pending(path, fork=fork).result()

    assert load_config(path) == received


def test_a_bad_file_is_the_same_config_error_from_the_confined_loader(write: Write) -> None:
    path = write(BASE.replace("port = 8083", 'port = "five"', 1))
    with pytest.raises(ConfigError) as in_process:
        load_config(path)
    with pytest.raises(ConfigError) as confined_error:
        confined.start(path).result()

    assert str(in_process.value) == str(confined_error.value)
    assert in_process.value.problems == confined_error.value.problems


def test_importlib_metadata_stays_out_of_the_agent() -> None:
    """pydantic's plugin loader would import it, and 1.6 MB with it (agent.config.no_plugins)."""
    probe = (
        "import sys, agent.service.cli, agent.service.agent; "
        "from agent.config import load_config; "
        "load_config('config.example.toml'); "
        "print('importlib.metadata' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )

    assert "False" == result.stdout.strip()


@pytest.mark.parametrize(
    ("baudrate", "silence_ms"),
    [(9600, 4.010), (19200, 2.005), (38400, 1.75), (115200, 1.75)],
)
def test_an_rtu_line_keeps_the_specifications_silence(
    write: Write, baudrate: int, silence_ms: float
) -> None:
    rtu = f'[[modbus]]\nname = "rs485"\ntransport = "rtu"\ndevice = "/dev/ttyS1"\nbaudrate = {baudrate}\n'
    rtu += '  [[modbus.devices]]\n  name = "m3"\n  bucket = "b"\n  points = [{ id = "v", address = "40001" }]\n'
    config = load_config(write(edit("[[config_groups]]", rtu + "\n[[config_groups]]")))

    endpoint = config.connections[1].endpoint
    assert isinstance(endpoint, SerialSettings)
    assert silence_ms == pytest.approx(endpoint.silence * 1000, abs=0.001)


def test_an_rtu_line_may_keep_a_silence_of_its_own(write: Write) -> None:
    rtu = '[[modbus]]\nname = "rs485"\ntransport = "rtu"\ndevice = "/dev/ttyS1"\nbaudrate = 115200\ninter_frame = 0.005\n'
    rtu += '  [[modbus.devices]]\n  name = "m3"\n  bucket = "b"\n  points = [{ id = "v", address = "40001" }]\n'
    config = load_config(write(edit("[[config_groups]]", rtu + "\n[[config_groups]]")))

    endpoint = config.connections[1].endpoint
    assert isinstance(endpoint, SerialSettings)
    assert 0.005 == endpoint.silence


# --- transports and per-point intervals ----------------------------------------------------

SERIAL_DEVICE = '  [[modbus.devices]]\n  name = "m3"\n  bucket = "b"\n  points = [{ id = "v", address = "40001" }]\n'


@pytest.mark.parametrize(
    ("transport", "framing", "silence"),
    [("rtu", "rtu", 0.00401), ("ascii", "ascii", 0.0)],
)
def test_a_serial_transport_takes_its_framing_and_silence(
    write: Write, transport: str, framing: str, silence: float
) -> None:
    line = f'[[modbus]]\nname = "line"\ntransport = "{transport}"\ndevice = "/dev/ttyS1"\nlow_latency = true\nrs485 = true\n'
    config = load_config(
        write(edit("[[config_groups]]", line + SERIAL_DEVICE + "\n[[config_groups]]"))
    )

    connection = config.connections[1]
    assert isinstance(connection.endpoint, SerialSettings)
    assert (framing, True, True) == (
        connection.framing,
        connection.endpoint.low_latency,
        connection.endpoint.rs485,
    )
    assert silence == pytest.approx(connection.endpoint.silence, abs=1e-5)


def test_rtu_over_tcp_is_a_tcp_endpoint_with_rtu_framing(write: Write) -> None:
    config = load_config(
        write(edit('transport = "tcp"', 'transport = "rtu-over-tcp"\nport = 4001'))
    )

    connection = config.connections[0]
    assert ("rtu", "192.168.10.20:4001") == (connection.framing, str(connection.endpoint))


def test_serial_keys_on_a_tcp_transport_are_refused(write: Write) -> None:
    text = edit(
        'host = "192.168.10.20"\n', 'host = "192.168.10.20"\nlow_latency = true\nrs485 = false\n'
    )

    assert rendered(write(text)) == [
        "FILE:13: modbus[0].low_latency: `low_latency` applies to a serial line, not to tcp",
        "FILE:14: modbus[0].rs485: `rs485` applies to a serial line, not to tcp",
    ]


def test_rtu_over_tcp_without_host_is_refused(write: Write) -> None:
    text = edit('transport = "tcp"\nhost = "192.168.10.20"\n', 'transport = "rtu-over-tcp"\n')

    assert rendered(write(text)) == [
        "FILE:9: modbus[0].host: an rtu-over-tcp connection needs `host`"
    ]


def test_a_point_interval_is_kept_when_it_differs_from_its_devices(write: Write) -> None:
    text = edit(
        '{ id = "m2_b", address = "40002" }', '{ id = "m2_b", address = "40002", interval = 60 }'
    )
    text = edit(
        '{ id = "m2_a", address = "40001" }',
        '{ id = "m2_a", address = "40001", interval = 1 }',
        text,
    )
    device = load_config(write(text)).connections[0].devices[1]

    assert [None, 60.0, None, None] == [point.interval for point in device.points]


@pytest.mark.parametrize("interval", ["2.5", "0.5"])
def test_a_point_interval_that_is_not_a_multiple_of_its_devices_is_refused(
    write: Write, interval: str
) -> None:
    text = edit("  unit = 2\n", "  unit = 2\n  interval = 2\n")
    text = edit(
        '{ id = "m2_b", address = "40002" }',
        f'{{ id = "m2_b", address = "40002", interval = {interval} }}',
        text,
    )

    assert rendered(write(text)) == [
        f"FILE:{line_of(text, 'm2_b')}: modbus[0].devices[1].points[1].interval: {interval} s "
        "is not a whole multiple of the device's interval (2 s)"
    ]


@pytest.mark.parametrize(
    ("returncode", "output", "said"),
    [
        (0, b"", "exited 0"),
        (3, b"", "exited 3"),
        (0, b"not a pickle", "an unreadable answer"),
        (0, pickle.dumps(42), "an answer of int"),
    ],
)
def test_a_confined_child_that_answers_otherwise_is_a_load_failure_not_a_traceback(
    returncode: int, output: bytes, said: str
) -> None:
    with pytest.raises(confined.ConfinedLoadFailed, match=said):
        confined.received(Path("agent.toml"), returncode, output)


@pytest.mark.parametrize(
    "child",
    [["/nonexistent/python"], [sys.executable, "-c", "import sys; sys.exit(3)"]],
    ids=["no_process", "dies"],
)
async def test_a_reload_whose_child_fails_is_a_load_failure(
    write: Write, monkeypatch: pytest.MonkeyPatch, child: list[str]
) -> None:
    monkeypatch.setattr(confined, "CHILD", child)
    with pytest.raises(confined.ConfinedLoadFailed, match="validating"):
        await confined.load_async(write(BASE))
