"""The resolved config holds what points have alike once: their specs and locations.

A config of 20,000 points is mostly the same few registers on many devices. Each point
holds its id, location and alias, and one `PointSpec` shared with every point alike
(agent.config.model.Point); the confined loader's pickle keeps the sharing. None of it
may change a value the agent reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Point, confined, load_config
from agent.config.model import Config, Device, PointSpec
from agent.sources.modbus.plan import Limits
from agent.sources.modbus.points import Table

# Every attribute a point had as a dataclass, in its constructor's order.
FIELDS = (
    "id",
    "bucket",
    "table",
    "address",
    "type",
    "length",
    "width",
    "bit",
    "byte_order",
    "scale",
    "offset",
    "shape",
    "deadband",
    "max_silence",
    "interval",
    "alias",
    "unit",
    "publish",
    "aggregate",
)

HEAD = """\
[thing]
id = "xY6Eie5hv"
secret = "vjn6u1.~EQrKuOP4"

[mqtt]
host = "mqtt.paas.oringnet.cloud"

[templates.pm]
byte_order = "CDAB"
points = [
  { id = "{device}_voltage", address = "30001", type = "float32", unit = "V" },
  { id = "{device}_energy", address = "30101", type = "uint32", scale = 0.1, deadband = 0.5 },
]
"""

# Points of every kind: a bit, a string, scaled and offset, an alias, an aggregate, a
# point interval, an unpublished input, another bucket, another byte order.
POINTS = """\
    {{ id = "{d}_t", table = "holding", address = 0, type = "float32" }},
    {{ id = "{d}_t2", table = "holding", address = 2, type = "float32" }},
    {{ id = "{d}_h", table = "holding", address = 300, type = "uint16", scale = 0.01, offset = -40.0 }},
    {{ id = "{d}_f", table = "holding", address = 301, bit = 3 }},
    {{ id = "{d}_s", table = "holding", address = 302, type = "string", length = 4 }},
    {{ id = "{d}_c", address = "00001" }},
    {{ id = "{d}_a", address = "30010", type = "int32", byte_order = "DCBA", alias = "Flow {d}" }},
    {{ id = "{d}_g", address = "30012", type = "float64", aggregate = {{ window = 60, functions = ["avg", "max"] }} }},
    {{ id = "{d}_slow", address = "30020", interval = 10.0, max_silence = 600.0 }},
    {{ id = "{d}_in", address = "30021", publish = false, bucket = "inputs", value_type = "integer" }},
"""


def device(name: str, unit: int) -> str:
    return (
        f'\n  [[modbus.devices]]\n  name = "{name}"\n  unit = {unit}\n  bucket = "plant"\n'
        f"  points = [\n{POINTS.format(d=name)}  ]\n"
    )


def connection(n: int, *devices: str) -> str:
    head = f'\n[[modbus]]\nname = "c{n}"\ntransport = "tcp"\nhost = "10.0.0.{n}"\n'
    return head + "".join(devices)


def metered(name: str, unit: int) -> str:
    return f'\n  [[modbus.devices]]\n  name = "{name}"\n  unit = {unit}\n  template = "pm"\n  bucket = "plant"\n'


TEXT = (
    HEAD
    + connection(1, device("m1", 1), device("m2", 2), metered("pm1", 5))
    + connection(2, device("m3", 1), metered("pm2", 2))
)


@pytest.fixture(autouse=True, scope="module")
def clean_environment() -> Iterator[None]:
    """No ORIO_AGENT_* override or systemd credential directory leaks in from the shell."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith("ORIO_AGENT_") or name == "CREDENTIALS_DIRECTORY":
                patch.delenv(name)
        yield


@pytest.fixture
def path(tmp_path: Path) -> Path:
    written = tmp_path / "config.toml"
    written.write_text(TEXT, encoding="utf-8")
    return written


def devices(config: Config) -> dict[str, Device]:
    return {device.name: device for _, device in config.all_devices()}


def unshared(point: Point) -> Point:
    """The same point built field by field: a spec and a location of its own."""
    return Point(*(getattr(point, name) for name in FIELDS))


@pytest.fixture(params=[True, False], ids=["forked", "spawned"])
def received(path: Path, request: pytest.FixtureRequest) -> Config:
    return confined.Pending(path, fork=request.param).result()


def test_points_alike_on_other_devices_share_their_spec_and_location(received: Config) -> None:
    found = devices(received)
    first, second, third = found["m1"].points, found["m2"].points, found["m3"].points

    for a, b, c in zip(first, second, third, strict=True):
        assert a.spec is b.spec is c.spec
        assert a.location is b.location is c.location
    # The point type, byte order, shape and bucket strings are one object each.
    assert first[0].type is found["pm1"].points[0].type
    assert first[0].byte_order is first[1].byte_order
    assert first[0].shape is found["pm2"].points[0].shape
    assert first[0].bucket is found["pm1"].points[1].bucket
    # The points of a template are alike on every device that uses it.
    assert found["pm1"].points[1].spec is found["pm2"].points[1].spec
    # Points of one device at other addresses but otherwise alike: one spec.
    assert first[0].spec is first[1].spec
    assert first[0].location is not first[1].location
    # Specs that differ stay apart; specs equal are one object.
    assert len({point.spec for point in first}) == len({id(point.spec) for point in first}) == 9


def test_the_confined_config_is_the_one_load_config_gives(path: Path, received: Config) -> None:
    assert load_config(path) == received


def test_sharing_changes_no_value_a_point_gives(path: Path) -> None:
    """Each point equals the point built field by field, down to each value's type."""
    config = load_config(path)
    points = [point for _, device in config.all_devices() for point in device.points]
    assert len(points) == 3 * 10 + 2 * 2

    for point in points:
        rebuilt = unshared(point)
        assert rebuilt == point
        assert hash(rebuilt) == hash(point)
        assert repr(rebuilt) == repr(point)
        for name in FIELDS:
            assert type(getattr(rebuilt, name)) is type(getattr(point, name)), name
        assert (point.table, point.address) == point.location


def test_every_value_of_a_point_is_its_own(path: Path) -> None:
    found = devices(load_config(path))
    by_id = {point.id: point for point in found["m2"].points}
    h, f, s, a = by_id["m2_h"], by_id["m2_f"], by_id["m2_s"], by_id["m2_a"]

    assert (Table.HOLDING, 300, "uint16", 0.01, -40.0) == (
        h.table,
        h.address,
        h.type,
        h.scale,
        h.offset,
    )
    assert (3, "boolean") == (f.bit, f.shape)
    assert (4, 4, "string") == (s.length, s.width, s.type)
    assert ("Flow m2", "DCBA", Table.INPUT, 9) == (a.alias, a.byte_order, a.table, a.address)
    assert by_id["m2_g"].aggregate is not None
    assert ("inputs", False, "integer") == (
        by_id["m2_in"].bucket,
        by_id["m2_in"].publish,
        by_id["m2_in"].shape,
    )
    assert (10.0, 600.0) == (by_id["m2_slow"].interval, by_id["m2_slow"].max_silence)
    assert by_id["m2_t"].interval is None
    energy = found["pm2"].points[1]
    assert ("pm2_energy", "CDAB", 0.5, 0.1) == (
        energy.id,
        energy.byte_order,
        energy.deadband,
        energy.scale,
    )


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_point_and_a_device_come_back_whole_from_a_pickle(path: Path, protocol: int) -> None:
    config = load_config(path)
    device = devices(config)["pm1"]
    point = devices(config)["m1"].points[6]

    assert device == pickle.loads(pickle.dumps(device, protocol=protocol))
    assert device.template == "pm"
    assert point == pickle.loads(pickle.dumps(point, protocol=protocol))
    assert unshared(point) == pickle.loads(pickle.dumps(unshared(point), protocol=protocol))
    assert config == pickle.loads(pickle.dumps(config, protocol=protocol))


def test_a_device_pickles_every_field_it_has() -> None:
    """Device.__reduce__ writes its points by column and its other fields by name."""
    spec = PointSpec("b", "uint16", None, 1, None, "ABCD", None, None, "float", None, None, None)
    points = (Point.sharing("p", (Table.HOLDING, 7), spec, "P"),)
    limits = Limits(max_gap=0, max_registers=125, max_bits=2000, one_per_point=False)
    device = Device("d", 3, 2.0, "CDAB", limits, 30.0, points, template="t")

    back = pickle.loads(pickle.dumps(device))

    assert device == back
    for field in dataclasses.fields(Device):
        assert getattr(device, field.name) == getattr(back, field.name), field.name
    assert back.points[0].alias == "P"


def test_a_point_is_frozen_and_equal_by_value(path: Path) -> None:
    point = devices(load_config(path))["m1"].points[0]

    with pytest.raises(dataclasses.FrozenInstanceError):
        point.id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del point.alias
    with pytest.raises(AttributeError):
        point.bucket = "elsewhere"  # type: ignore[misc]
    assert 1 == len({point, unshared(point)})
    assert point != devices(load_config(path))["m2"].points[0]  # another id
    assert point != object()


# One point's optional keys, each from a few values: points alike come up often.
KEYS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["uint16", "int16", "int32", "float32", "float64"]),
        "scale": st.sampled_from([0.1, 0.01, 2.0]),
        "offset": st.sampled_from([-40.0, 1.5]),
        "deadband": st.sampled_from([0.0, 0.5]),
        "byte_order": st.sampled_from(["ABCD", "CDAB"]),
        "bucket": st.sampled_from(["plant", "other"]),
        "unit": st.sampled_from(["V", "A"]),
        "alias": st.sampled_from(["Voltage", "Current"]),
        "publish": st.booleans(),
        "interval": st.sampled_from([2.0, 4.0]),
    },
)


def point_line(point_id: str, address: int, keys: dict[str, object]) -> str:
    written = "".join(f", {key} = {json.dumps(value)}" for key, value in keys.items())
    return f'    {{ id = "{point_id}", table = "holding", address = {address}{written} }},\n'


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(KEYS, min_size=1, max_size=6), min_size=1, max_size=4))
def test_any_config_resolves_to_the_points_it_would_without_sharing(
    layouts: list[list[dict[str, object]]],
) -> None:
    text = HEAD + '\n[[modbus]]\nname = "c"\ntransport = "tcp"\nhost = "10.0.0.1"\n'
    for n, layout in enumerate(layouts, start=1):
        lines = "".join(point_line(f"d{n}_{i}", 4 * i, keys) for i, keys in enumerate(layout))
        text += f'\n  [[modbus.devices]]\n  name = "d{n}"\n  unit = {n}\n  bucket = "plant"\n'
        text += f"  points = [\n{lines}  ]\n"
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_text(text, encoding="utf-8")
        config = load_config(path)
    points = [point for _, device in config.all_devices() for point in device.points]

    specs: dict[PointSpec, PointSpec] = {}
    for point in points:
        rebuilt = unshared(point)
        assert rebuilt == point
        assert [type(getattr(point, name)) for name in FIELDS] == [
            type(getattr(rebuilt, name)) for name in FIELDS
        ]
        assert specs.setdefault(point.spec, point.spec) is point.spec  # equal ones are one
    assert config == pickle.loads(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))
