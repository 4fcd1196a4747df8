"""agent.config.tomlpos: the TOML line behind a pydantic key path."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config.tomlpos import locate

# The example configuration from SPEC.md, verbatim.
SPEC_EXAMPLE = """\
[thing]
id = "xY6Eie5hv"
secret = "vjn6u1.~EQrKuOP4"        # or secret_file = "/etc/orio-agent/secret"
                                   # or the systemd credential "thing-secret"
[mqtt]
host = "mqtt.paas.oringnet.cloud"
port = 8083
tls = true                         # verify the server certificate by default
# ca_file = "/etc/orio-agent/ca.pem"   cert_file / key_file for mutual TLS
keepalive = 60

[queue]
path = "/var/lib/orio-agent/queue.db"
max_bytes = 268435456              # oldest batches are dropped beyond this
max_age = 604800                   # and beyond this age (seconds)
replay_rate = 50                   # backlog messages per second after a reconnect

[batch]
max_readings = 100                 # per message
max_bytes = 65536
max_delay = 1.0

[log]
level = "info"
format = "logfmt"                  # or "json"

[[modbus]]                         # one connection: a TCP endpoint or a serial line
name = "plc"
transport = "tcp"                  # "tcp" | "rtu"
host = "192.168.10.20"
port = 502
timeout = 1.0
# rtu: device = "/dev/ttyS1", baudrate = 9600, parity = "N", bytesize = 8, stopbits = 1

  [[modbus.devices]]               # one unit on that connection
  name = "meter1"
  unit = 1
  interval = 1.0
  bucket = "sensorData"
  byte_order = "ABCD"              # ABCD | DCBA | BADC | CDAB
  points = [
    { id = "temperature", address = "30001", type = "float32" },
    { id = "humidity",    address = "30003", type = "uint16", scale = 0.01, deadband = 0.5 },
    { id = "running",     address = "00017", type = "bool" },
    { id = "serial",      table = "holding", address = 100, type = "string", length = 8 },
    { id = "alarm_word",  table = "holding", address = 120, type = "hex" },
  ]

[[serial]]                         # a plain serial instrument
name = "gps"
device = "/dev/ttyUSB0"
baudrate = 4800
bucket = "position"
format = "nmea"                    # "nmea" | "regex"
# pattern = '^T=(?P<temperature>[-\\d.]+) H=(?P<humidity>[\\d.]+)$'
# request = "READ\\r\\n"             # polled instruments: sent every interval
points = [ { id = "location", field = "coordinate" }, { id = "satellites", field = "satellites" } ]

[[config_groups]]                  # what the cloud may change, and nothing else
name = "gw-1-setting"
settings = [
  { id = "GW1_40807", device = "meter1", address = "40807", type = "uint16", min = 0, max = 3600 },
  { id = "GW1_00800", device = "meter1", address = "00800", type = "bool" },
]
"""


def line_of(text: str, marker: str) -> int:
    """1-based line of the only line of `text` that contains `marker`."""
    found = [number for number, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(found) == 1, f"{marker!r} is on lines {found}"
    return found[0]


def test_spec_example_is_valid_toml() -> None:
    """The fixture is the SPEC's example, which tomllib accepts."""
    assert tomllib.loads(SPEC_EXAMPLE)["modbus"][0]["devices"][0]["points"][3]["type"] == "string"


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        (("thing",), "[thing]"),
        (("thing", "id"), 'id = "xY6Eie5hv"'),
        (("thing", "secret"), 'secret = "vjn6u1'),
        (("mqtt",), "[mqtt]"),
        (("mqtt", "port"), "port = 8083"),
        (("mqtt", "keepalive"), "keepalive = 60"),
        (("queue", "max_bytes"), "max_bytes = 268435456"),
        (("batch", "max_bytes"), "max_bytes = 65536"),
        (("log", "format"), 'format = "logfmt"'),
        (("modbus",), "[[modbus]]"),
        (("modbus", 0), "[[modbus]]"),
        (("modbus", 0, "port"), "port = 502"),
        (("modbus", 0, "devices"), "[[modbus.devices]]"),
        (("modbus", 0, "devices", 0), "[[modbus.devices]]"),
        (("modbus", 0, "devices", 0, "byte_order"), 'byte_order = "ABCD"'),
        (("modbus", 0, "devices", 0, "points"), "  points = ["),
        (("modbus", 0, "devices", 0, "points", 0), '{ id = "temperature"'),
        (("modbus", 0, "devices", 0, "points", 1), '{ id = "humidity"'),
        (("modbus", 0, "devices", 0, "points", 1, "deadband"), '{ id = "humidity"'),
        (("modbus", 0, "devices", 0, "points", 3, "type"), '{ id = "serial"'),
        (("modbus", 0, "devices", 0, "points", 4), '{ id = "alarm_word"'),
        (("serial", 0), "[[serial]]"),
        (("serial", 0, "format"), 'format = "nmea"'),
        (("serial", 0, "points", 0, "field"), '{ id = "location"'),
        (("serial", 0, "points", 1), '{ id = "location"'),
        (("config_groups", 0, "name"), 'name = "gw-1-setting"'),
        (("config_groups", 0, "settings"), "settings = ["),
        (("config_groups", 0, "settings", 0, "max"), '{ id = "GW1_40807"'),
        (("config_groups", 0, "settings", 1, "address"), '{ id = "GW1_00800"'),
    ],
)
def test_existing_path_is_located_on_the_line_that_writes_it(
    path: tuple[str | int, ...], marker: str
) -> None:
    assert line_of(SPEC_EXAMPLE, marker) == locate(SPEC_EXAMPLE, path)


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every key path in a parsed TOML document."""
    if isinstance(value, dict):
        children: Iterable[tuple[str | int, Any]] = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def test_every_key_of_the_spec_example_is_located_on_a_line_naming_it() -> None:
    lines = SPEC_EXAMPLE.splitlines()
    for path in _paths(tomllib.loads(SPEC_EXAMPLE)):
        line = locate(SPEC_EXAMPLE, path)
        assert line is not None, path
        written = lines[line - 1]
        if isinstance(path[-1], str):
            assert path[-1] in written, (path, line)
        else:  # an element: an [[array]] header naming it, or an inline table's start
            assert f".{path[-2]}]]" in written or f"[[{path[-2]}]]" in written or "{" in written


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        (("thing", "secret_file"), "[thing]"),
        (("modbus", 0, "device"), "[[modbus]]"),
        (("modbus", 0, "devices", 0, "max_gap"), "[[modbus.devices]]"),
        (("modbus", 0, "devices", 2, "name"), "[[modbus.devices]]"),
        (("modbus", 0, "devices", 0, "points", 2, "scale"), '{ id = "running"'),
        (("modbus", 0, "devices", 0, "points", 9, "id"), "  points = ["),
        (("modbus", 0, "port", "extra"), "port = 502"),
        (("serial", 0, "points", 1, "pattern"), '{ id = "location"'),
    ],
)
def test_missing_key_is_located_on_its_deepest_existing_parent(
    path: tuple[str | int, ...], marker: str
) -> None:
    assert line_of(SPEC_EXAMPLE, marker) == locate(SPEC_EXAMPLE, path)


@pytest.mark.parametrize("path", [(), ("nope",), ("nope", "id"), ("nope", 0, "x")])
def test_empty_path_or_unknown_top_level_key_is_none(path: tuple[str | int, ...]) -> None:
    assert locate(SPEC_EXAMPLE, path) is None


TWO_CONNECTIONS = """\
[[modbus]]
name = "plc"
  [[modbus.devices]]
  name = "meter1"

[[modbus]]
name = "rtu"
  [modbus.serial]
  baudrate = 9600
  [[modbus.devices]]
  name = "meter2"
  [[modbus.devices]]
  name = "meter3"
  unit = 3
"""


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        (("modbus", 0, "devices", 0, "name"), 'name = "meter1"'),
        (("modbus", 1, "name"), 'name = "rtu"'),
        (("modbus", 1, "serial", "baudrate"), "baudrate = 9600"),
        (("modbus", 1, "devices", 0, "name"), 'name = "meter2"'),
        (("modbus", 1, "devices", 1, "unit"), "unit = 3"),
        (("modbus", 1, "devices", 1, "name"), 'name = "meter3"'),
    ],
)
def test_arrays_of_tables_count_from_their_latest_parent_element(
    path: tuple[str | int, ...], marker: str
) -> None:
    assert line_of(TWO_CONNECTIONS, marker) == locate(TWO_CONNECTIONS, path)


def test_array_of_tables_headers_are_the_lines_of_their_elements() -> None:
    assert [locate(TWO_CONNECTIONS, ("modbus", i)) for i in (0, 1)] == [1, 6]
    assert [
        locate(TWO_CONNECTIONS, path)
        for path in (
            ("modbus", 0, "devices", 0),
            ("modbus", 1, "devices", 0),
            ("modbus", 1, "devices", 1),
        )
    ] == [3, 10, 12]


def test_missing_key_in_second_device_is_located_on_its_header() -> None:
    assert locate(TWO_CONNECTIONS, ("modbus", 1, "devices", 1, "bucket")) == 12


def test_absent_array_element_falls_back_to_the_array_header() -> None:
    assert locate(TWO_CONNECTIONS, ("modbus", 0, "devices", 1, "name")) == 3


KEYS = """\
"a.b" = 1
'x' = 2
site."floor 2".temp = 3
"esc\\u0041ped" = 4
dotted.b = 5
[a.c]
d = 6
[a]
e = 7
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("a.b",), 1),
        (("x",), 2),
        (("site", "floor 2", "temp"), 3),
        (("site", "floor 2"), 3),
        (("escAped",), 4),
        (("dotted", "b"), 5),
        (("dotted", "c"), 5),
        (("a", "missing"), 8),
        (("a", "c", "d"), 7),
        (("a", "c"), 6),
        (("a", "e"), 9),
    ],
)
def test_dotted_and_quoted_keys_are_split_and_unquoted(
    path: tuple[str | int, ...], line: int
) -> None:
    assert tomllib.loads(KEYS)  # the fixture is valid TOML
    assert line == locate(KEYS, path)


def test_implicit_table_is_located_on_the_first_line_that_creates_it() -> None:
    assert locate("[a.b.c]\nx = 1\n", ("a", "b", "missing")) == 1


TRICKY = '''\
[thing]
id = "a\\"]"           # [not.a.table]
secret = '['
note = """
[mqtt]
port = { not = "a table" }
# still inside the string \\"""
"""
raw = \'\'\'
[[modbus]]
points = [
\'\'\'
ends = """quote""""
# [mqtt]
    [mqtt]   # indented, with a comment
  port = 1883
'''


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("thing", "secret"), 3),
        (("thing", "note"), 4),
        (("thing", "raw"), 9),
        (("thing", "ends"), 13),
        (("mqtt",), 15),
        (("mqtt", "port"), 16),
    ],
)
def test_brackets_and_hashes_in_strings_and_comments_are_not_structure(
    path: tuple[str | int, ...], line: int
) -> None:
    assert tomllib.loads(TRICKY)["thing"]["ends"] == 'quote"'
    assert line == locate(TRICKY, path)


def test_text_in_strings_and_comments_creates_no_path() -> None:
    assert locate(TRICKY, ("modbus",)) is None
    assert locate(TRICKY, ("not",)) is None


# The last inline table spans lines, as TOML 1.1 allows.
NESTED = """\
a = { b = { c = [ { d = 1 },
                  { e = [1,
                         2] } ] } }
m = [[1, 2],
     [3, 4]]
points = [
  # a comment between elements
  { id = "x" },

  {
    id = "y" },
]
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("a", "b", "c", 0, "d"), 1),
        (("a", "b", "c", 1), 2),
        (("a", "b", "c", 1, "e", 1), 3),
        (("a", "b", "c", 1, "e", 2), 2),
        (("m", 1), 5),
        (("m", 1, 0), 5),
        (("points", 0), 8),
        (("points", 1), 10),
        (("points", 1, "id"), 11),
        (("points", 1, "type"), 10),
    ],
)
def test_nested_inline_containers_and_multiline_arrays_keep_their_lines(
    path: tuple[str | int, ...], line: int
) -> None:
    assert line == locate(NESTED, path)


@pytest.mark.parametrize(
    "path",
    [
        ("mqtt", "port"),
        ("modbus", 0, "devices", 0, "points", 3, "type"),
        ("serial", 0, "points", 1),
        ("config_groups", 0, "settings", 1, "address"),
    ],
)
def test_crlf_line_endings_give_the_same_lines(path: tuple[str | int, ...]) -> None:
    crlf = SPEC_EXAMPLE.replace("\n", "\r\n")
    assert locate(SPEC_EXAMPLE, path) == locate(crlf, path)


@pytest.mark.parametrize(
    ("source", "path", "line"),
    [
        ("[mqtt]\nport = [1, 2\n[thing]\nid = 1\n", ("mqtt", "port"), 2),
        ('[thing]\nid = "unterminated\nsecret = 1\n', ("thing", "secret"), 3),
        ("[thing\nid = 1\n[mqtt]\nport = 1\n", ("mqtt", "port"), 4),
        ("a = { b = [1, 2 }\nc = 3\n", ("c",), 2),
        ("a = }\nb = ]\nc = 3\n", ("c",), 3),
    ],
)
def test_invalid_toml_gets_a_best_guess(
    source: str, path: tuple[str | int, ...], line: int
) -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(source)
    assert line == locate(source, path)


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    source = "a = " + "[" * 3000 + "1" + "]" * 3000 + "\nb = 2\n"
    assert locate(source, ("b",)) == 2


paths = st.lists(st.one_of(st.text(max_size=8), st.integers(-2, 5)), max_size=8)


@given(source=st.text(), path=paths)
def test_never_raises_on_arbitrary_text(source: str, path: list[str | int]) -> None:
    line = locate(source, path)
    assert line is None or 1 <= line <= source.count("\n") + 1


@given(
    source=st.text(alphabet="[]{}=,.\"'#\\\n\r\t abc01", max_size=200),
    path=st.lists(st.sampled_from(["a", "b", "c", 0, 1]), max_size=5),
)
def test_never_raises_on_toml_like_text(source: str, path: list[str | int]) -> None:
    line = locate(source, path)
    assert line is None or 1 <= line <= source.count("\n") + 1


@given(cut=st.integers(0, len(SPEC_EXAMPLE)), path=paths)
def test_never_raises_on_a_truncated_config(cut: int, path: list[str | int]) -> None:
    source = SPEC_EXAMPLE[:cut]
    line = locate(source, path)
    assert line is None or 1 <= line <= source.count("\n") + 1
