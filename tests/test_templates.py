"""Device templates: one register map for many units, in the file or in included files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.service.cli import main
from agent.sources.modbus.points import Table
from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import SimUnit, registers_from_bytes, serve_tcp
from tests.helpers import agent_toml, running_agent, tcp_connection

WAIT = 20.0

HEAD = """\
[thing]
id = "gw-01"
secret = "s3cr3t-Pa55word"

[mqtt]
host = "broker.local"
"""

METER = """
[templates.pm]
description = "a three-phase meter"
byte_order = "CDAB"
max_gap = 2
points = [
  { id = "{device}_voltage", address = "30001", type = "float32" },
  { id = "{device}_current", address = "30003", type = "float32" },
  { id = "{device}_energy", address = "30101", type = "uint32", scale = 0.1 },
]
"""


def connection(devices: str) -> str:
    return f"""
[[modbus]]
name = "bus"
transport = "tcp"
host = "10.0.0.9"
{devices}"""


def meters(count: int, *, extra: str = "") -> str:
    return "".join(
        f"""
  [[modbus.devices]]
  name = "m{unit:02d}"
  unit = {unit}
  template = "pm"
  bucket = "energy"
{extra}"""
        for unit in range(1, count + 1)
    )


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ORIO_AGENT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def rendered(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).replace(str(path.parent), "DIR").splitlines()


def line_of(text: str, fragment: str) -> int:
    found = [n for n, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(found) == 1, f"{fragment!r} is on lines {found}"
    return found[0]


def test_twenty_devices_take_one_templates_points_and_workarounds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HEAD + METER + connection(meters(20))))

    devices = config.connections[0].devices
    assert [f"m{unit:02d}" for unit in range(1, 21)] == [device.name for device in devices]
    assert [list(range(1, 21))] == [[device.unit for device in devices]]
    for device in devices:
        assert [f"{device.name}_voltage", f"{device.name}_current", f"{device.name}_energy"] == [
            point.id for point in device.points
        ]
        assert [(Table.INPUT, 0), (Table.INPUT, 2), (Table.INPUT, 100)] == [
            point.location for point in device.points
        ]
        assert {"CDAB"} == {point.byte_order for point in device.points}
        assert (2, "pm") == (device.limits.max_gap, device.template)
        assert 0.1 == device.points[2].scale


def test_a_device_changes_a_template_point_by_id_and_adds_its_own(tmp_path: Path) -> None:
    device = """
  [[modbus.devices]]
  name = "main"
  template = "pm"
  bucket = "energy"
  byte_order = "ABCD"
  points = [
    { id = "main_energy", bucket = "billing", deadband = 0.5, interval = 60 },
    { id = "{device}_current", address = "30011", type = "float32" },
    { id = "frequency", address = "30021", type = "float32" },
  ]
"""
    config = load_config(write(tmp_path, HEAD + METER + connection(device)))

    points = {point.id: point for point in config.connections[0].devices[0].points}
    assert ["main_voltage", "main_current", "main_energy", "frequency"] == list(points)
    energy = points["main_energy"]
    assert ("billing", 0.5, 60.0, (Table.INPUT, 100), 0.1) == (
        energy.bucket,
        energy.deadband,
        energy.interval,
        energy.location,
        energy.scale,
    )
    assert (Table.INPUT, 10) == points["main_current"].location  # replaced whole
    assert {"ABCD"} == {point.byte_order for point in points.values()}  # the device's own


def test_changing_how_a_template_point_is_read_without_its_address_is_refused(
    tmp_path: Path,
) -> None:
    device = """
  [[modbus.devices]]
  name = "main"
  template = "pm"
  bucket = "energy"
  points = [ { id = "main_energy", type = "uint16" }, { id = "nothing", deadband = 1 } ]
"""
    text = HEAD + METER + connection(device)
    line = line_of(text, "main_energy")

    assert rendered(write(tmp_path, text)) == [
        f"DIR/config.toml:{line}: modbus[0].devices[0].points[0].type: changes how template "
        "point 'main_energy' is read: give its `address` to replace it, or change only "
        "`alias`, `bucket`, `deadband`, `interval`, `max_silence`, `unit`",
        f"DIR/config.toml:{line}: modbus[0].devices[0].points[1].address: required key is "
        "missing (template 'pm' has no point 'nothing' to change)",
    ]


def test_an_unknown_template_and_a_device_with_no_points_are_refused(tmp_path: Path) -> None:
    devices = '\n  [[modbus.devices]]\n  name = "a"\n  template = "pn"\n  bucket = "b"\n'
    devices += '\n  [[modbus.devices]]\n  name = "b"\n  unit = 2\n  bucket = "b"\n'
    text = HEAD + METER + connection(devices)
    unknown, empty = line_of(text, '"pn"'), line_of(text, 'name = "b"') - 1  # its header

    assert rendered(write(tmp_path, text)) == [
        f"DIR/config.toml:{unknown}: modbus[0].devices[0].template: "
        "no template named 'pn' (templates: pm)",
        f"DIR/config.toml:{empty}: modbus[0].devices[1].points: "
        "a device needs `points` or a `template`",
    ]


def test_template_ids_shared_by_devices_in_one_bucket_are_refused_with_the_way_out(
    tmp_path: Path,
) -> None:
    plain = METER.replace("{device}_", "")
    text = HEAD + plain + connection(meters(2))
    second = [n for n, line in enumerate(text.splitlines(), 1) if 'template = "pm"' in line][1]

    problems = rendered(write(tmp_path, text))

    assert 3 == len(problems)
    assert problems[0] == (
        f"DIR/config.toml:{second}: modbus[0].devices[1].template: template point 'voltage': "
        "point id 'voltage' is already used in bucket 'energy' at modbus[0].devices[0].template; "
        "put {device} in the template's id, or give each device a bucket of its own"
    )


def test_a_bad_template_point_is_reported_once_at_the_template(tmp_path: Path) -> None:
    text = HEAD + METER.replace('"30003", type = "float32"', '"30003", type = "float31"')
    text += connection(meters(3))

    problems = rendered(write(tmp_path, text))

    assert [f"DIR/config.toml:{line_of(text, 'float31')}: templates.pm.points[1].type"] == [
        problem.split(": Input")[0] for problem in problems
    ]


def test_an_unused_template_is_checked_too(tmp_path: Path) -> None:
    text = HEAD + METER.replace('address = "30101"', 'address = "30004"')
    text += connection(
        '\n  [[modbus.devices]]\n  name = "x"\n  bucket = "b"\n  points = [{ id = "v", address = "40001" }]\n'
    )

    assert rendered(write(tmp_path, text)) == [
        f"DIR/config.toml:{line_of(text, '30004')}: templates.pm.points[2].address: "
        "overlaps templates.pm.points[1] ('{device}_current') with a different type or byte order"
    ]


def test_a_point_interval_from_a_template_must_fit_each_devices_interval(
    tmp_path: Path,
) -> None:
    template = METER.replace("scale = 0.1 }", "scale = 0.1, interval = 60 }")
    devices = meters(1) + "  interval = 7\n"
    text = HEAD + template + connection(devices)

    assert rendered(write(tmp_path, text)) == [
        f"DIR/config.toml:{line_of(text, 'template = ')}: modbus[0].devices[0].template: "
        "template point 'm01_energy': 60 s is not a whole multiple of the device's interval (7 s)"
    ]


# --- templates in files of their own ---------------------------------------------------------


def test_templates_are_included_from_a_library_of_files(tmp_path: Path) -> None:
    write(tmp_path, METER, "templates/pm.toml")
    write(tmp_path, METER.replace("[templates.pm]", "[templates.pq]"), "templates/pq.toml")
    devices = (
        meters(2)
        + '\n  [[modbus.devices]]\n  name = "q"\n  unit = 9\n  template = "pq"\n  bucket = "b"\n'
    )
    path = write(tmp_path, 'include = ["templates/*.toml"]\n' + HEAD + connection(devices))

    config = load_config(path)

    assert [("m01", "pm"), ("m02", "pm"), ("q", "pq")] == [
        (device.name, device.template) for device in config.connections[0].devices
    ]
    assert 3 == len(config.connections[0].devices[2].points)


def test_a_problem_in_an_included_template_names_its_own_file_and_line(tmp_path: Path) -> None:
    library = METER.replace('"30003", type = "float32"', '"30003", type = "float31"')
    write(tmp_path, library, "templates/pm.toml")
    path = write(
        tmp_path, f'include = ["{tmp_path}/templates/*.toml"]\n' + HEAD + connection(meters(1))
    )

    problems = rendered(path)

    assert [
        f"DIR/templates/pm.toml:{line_of(library, 'float31')}: templates.pm.points[1].type"
    ] == [problem.split(": Input")[0] for problem in problems]


def test_an_included_file_holds_templates_only_and_names_each_template_once(
    tmp_path: Path,
) -> None:
    write(tmp_path, METER, "lib/a.toml")
    other = '[mqtt]\nhost = "x"\n' + METER
    write(tmp_path, other, "lib/b.toml")
    path = write(
        tmp_path,
        'include = ["lib/*.toml", "lib/missing.toml"]\n' + HEAD + connection(meters(1)),
    )

    assert rendered(path) == [
        "DIR/config.toml:1: include[1]: no such file: DIR/lib/missing.toml",
        "DIR/lib/b.toml:1: mqtt: an included file holds only [templates.<name>] tables",
        f"DIR/lib/b.toml:{line_of(other, '[templates.pm]')}: templates.pm: template 'pm' is "
        f"already declared in DIR/lib/a.toml:{line_of(METER, '[templates.pm]')}",
    ]


def test_a_template_in_the_config_and_in_a_library_is_declared_twice(tmp_path: Path) -> None:
    write(tmp_path, METER, "lib/a.toml")
    text = 'include = ["lib/a.toml"]\n' + HEAD + METER + connection(meters(1))
    path = write(tmp_path, text)

    assert rendered(path) == [
        f"DIR/lib/a.toml:{line_of(METER, '[templates.pm]')}: templates.pm: template 'pm' is "
        f"already declared in DIR/config.toml:{line_of(text, '[templates.pm]')}",
    ]


def test_a_glob_that_matches_nothing_is_no_problem(tmp_path: Path) -> None:
    path = write(tmp_path, 'include = ["lib/*.toml"]\n' + HEAD + METER + connection(meters(1)))

    assert 1 == len(load_config(path).connections[0].devices)


def test_check_config_prints_each_devices_expanded_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, METER, "lib/pm.toml")
    path = write(tmp_path, 'include = ["lib/*.toml"]\n' + HEAD + connection(meters(2)))

    assert 0 == main(["check-config", str(path)])

    out = capsys.readouterr().out.splitlines()
    assert out[1:7] == [
        "  device 'm01' on 'bus' unit 1: 3 points in 2 requests every 1 s (template 'pm')",
        "    input 0-3 (4 registers): m01_voltage, m01_current",
        "    input 100-101 (2 registers): m01_energy",
        "  device 'm02' on 'bus' unit 2: 3 points in 2 requests every 1 s (template 'pm')",
        "    input 0-3 (4 registers): m02_voltage, m02_current",
        "    input 100-101 (2 registers): m02_energy",
    ]


# --- twenty meters from one template, against a real plant ----------------------------------


async def test_twenty_meters_from_one_template_each_publish_their_own_values(
    tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    units = [SimUnit(unit) for unit in range(1, 21)]
    for unit in units:
        # voltage and current as float32 (CDAB), the energy total as uint32 (CDAB) x 0.1
        unit.set_registers(
            "input", 0, registers_from_bytes(struct.pack(">f", 230.0 + unit.unit_id), "CDAB")
        )
        unit.set_registers(
            "input", 2, registers_from_bytes(struct.pack(">f", float(unit.unit_id)), "CDAB")
        )
        unit.set_registers(
            "input", 100, registers_from_bytes(struct.pack(">I", 1000 * unit.unit_id), "CDAB")
        )
    plant = await serve_tcp(units)
    body = tcp_connection(plant, meters(20, extra="  interval = 0.5\n"))
    wanted = {
        f"m{unit:02d}_{name}" for unit in range(1, 21) for name in ("voltage", "current", "energy")
    }
    try:
        async with running_agent(tmp_path, agent_toml(broker, METER + body)):
            await cloud.wait_for(
                lambda m: wanted <= {r["id"] for r in cloud.readings("energy")}, timeout=WAIT
            )
    finally:
        await plant.stop()

    values = {r["id"]: r["value"] for r in cloud.readings("energy")}
    for number in range(1, 21):
        assert (230.0 + number, float(number), 100.0 * number) == (
            values[f"m{number:02d}_voltage"],
            values[f"m{number:02d}_current"],
            values[f"m{number:02d}_energy"],
        )
    # Each unit was asked for its two blocks, coalesced as the template's max_gap allows.
    for unit in units:
        assert {(0, 4), (100, 2)} == {(r.address, r.count) for r in unit.requests}


def test_a_template_id_that_comes_out_like_another_is_refused(tmp_path: Path) -> None:
    template = METER.replace('"{device}_voltage"', '"{device}"').replace(
        '"{device}_current"', '"m01"'
    )
    problems = rendered(write(tmp_path, HEAD + template + connection(meters(1))))

    assert any("point id 'm01' comes twice out of the template" in p for p in problems), problems
