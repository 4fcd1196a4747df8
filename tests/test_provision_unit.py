"""agent.cloud.provision: the buckets and shapes a config publishes into, and the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cloud.provision import Shape, compare, have, render, wanted
from agent.config import Config, load_config
from agent.errors import PaasError
from agent.service.health import health_shapes

CONFIG = """
[thing]
id = "xY6Eie5hv"
secret = "s"

[mqtt]
host = "broker.local"

[health]
bucket = "gatewayHealth"

[[modbus]]
name = "plc"
transport = "tcp"
host = "10.0.0.2"

  [[modbus.devices]]
  name = "meter1"
  bucket = "sensorData"
  points = [
    { id = "temperature", address = "30001", type = "float32", alias = "Temperature", unit = "°C" },
    { id = "count", address = "40001" },
    { id = "running", address = "00017" },
    { id = "serial", address = "40101", type = "string", length = 4 },
    { id = "word", address = "40201", type = "hex" },
    { id = "level", address = "40301", scale = 0.1 },
  ]

[[serial]]
name = "gps"
device = "/dev/ttyUSB0"
format = "nmea"
bucket = "position"
points = [
  { id = "location", field = "coordinate" },
  { id = "satellites", field = "satellites" },
]
"""


def config(tmp_path: Path) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    return load_config(path)


def buckets(tmp_path: Path) -> dict[str, dict[str, Shape]]:
    loaded = config(tmp_path)
    return wanted(loaded, health_shapes(["meter1", "gps"]))


def test_every_point_type_has_its_value_type(tmp_path: Path) -> None:
    found = buckets(tmp_path)

    assert {
        "temperature": Shape("float", "Temperature", "°C"),
        "count": Shape("integer"),
        "running": Shape("boolean"),
        "serial": Shape("string"),
        "word": Shape("hex"),
        "level": Shape("float"),
    } == found["sensorData"]
    assert {"location": Shape("coordinate"), "satellites": Shape("integer")} == found["position"]
    assert Shape("boolean") == found["gatewayHealth"]["agent_connected"]
    assert Shape("integer") == found["gatewayHealth"]["agent_read_errors_gps"]


def test_a_thing_with_nothing_gets_every_bucket_created(tmp_path: Path) -> None:
    changes = compare(buckets(tmp_path), {})

    assert [("create", "sensorData"), ("create", "position"), ("create", "gatewayHealth")] == [
        (c.action, c.bucket) for c in changes
    ]
    lines = render(changes, {})
    assert "  + bucket sensorData (6 shapes)" in lines
    assert "      + temperature  float (alias 'Temperature', unit '°C')" in lines
    assert lines[-1] == "Plan: 3 to create, 0 to replace (--force), 0 to delete (--prune)."


def test_a_shape_of_another_type_is_a_replacement_and_extras_are_deletions(
    tmp_path: Path,
) -> None:
    want = buckets(tmp_path)
    got = have(
        [
            {
                "id": "sensorData",
                "dataShapes": [
                    {"id": s, "valueType": v.value_type, "alias": v.alias, "unit": v.unit}
                    for s, v in want["sensorData"].items()
                    if s != "count"
                ]
                + [{"id": "count", "valueType": "float"}, {"id": "old", "valueType": "string"}],
            },
            {
                "id": "position",
                "dataShapes": [
                    {"id": "location", "valueType": "coordinate"},
                    {"id": "satellites", "valueType": "integer"},
                ],
            },
            {
                "id": "gatewayHealth",
                "dataShapes": [
                    {"id": s, "valueType": v.value_type} for s, v in want["gatewayHealth"].items()
                ],
            },
            {"id": "retired", "dataShapes": []},
        ]
    )

    changes = compare(want, got)

    assert [
        ("replace", "sensorData", "count"),
        ("delete", "sensorData", "old"),
        ("delete", "retired", None),
    ] == [(c.action, c.bucket, c.shape) for c in changes]
    lines = render(changes, got)
    assert "  ~ bucket sensorData" in lines
    assert any("-/+ count  valueType float → integer" in line for line in lines)
    assert "  - bucket retired (0 shapes) (not in the config: apply --prune deletes it)" in lines


def test_the_same_on_both_sides_is_nothing_to_do(tmp_path: Path) -> None:
    want = buckets(tmp_path)
    got = have(
        [
            {"id": b, "dataShapes": [s.body(i) for i, s in shapes.items()]}
            for b, shapes in want.items()
        ]
    )

    assert [] == compare(want, got)
    assert ["The thing's data buckets and shapes match the config: nothing to do."] == render(
        [], got
    )


@pytest.mark.parametrize(
    "listed",
    [[{"dataShapes": []}], ["sensorData"], [{"id": "b", "dataShapes": [{"valueType": "float"}]}]],
)
def test_a_listing_that_is_not_buckets_and_shapes_is_a_paas_error(listed: list[object]) -> None:
    with pytest.raises(PaasError, match="the platform listed"):
        have(listed)
