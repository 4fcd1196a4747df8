"""Cloud config messages: the parser and the configurator against arbitrary input.

The configurator is driven here with an in-memory register bus (a fake of the Modbus
port, not of pymodbus) so that hypothesis can throw thousands of inputs at it quickly.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import Clock
from agent.config import load_config
from agent.configurator import Configurator, DeviceRoute, SettingsState
from agent.confmsg import Entry, parse_expected
from agent.errors import RejectedInput
from agent.outbox import MemoryOutbox
from agent.points import Table
from agent.settings import JsonScalar

THING = "gw"
PREFIX = f"$thing/{THING}/$conf/$expected/"
LIMIT = 65536


def parse(group: str, payload: bytes) -> tuple[str, list[Entry]]:
    return parse_expected(PREFIX + group, payload, thing_id=THING, max_bytes=LIMIT)


def test_the_documents_example_parses() -> None:
    payload = b'[{"id": "config1", "value": 60}, {"id": "config2", "value": "test"}]'

    assert ("g", [Entry("config1", 60), Entry("config2", "test")]) == parse("g", payload)


def test_a_single_object_is_taken_as_an_array_of_one() -> None:
    assert ("g", [Entry("a", True)]) == parse("g", b'{"id": "a", "value": true}')


@pytest.mark.parametrize("group", ["", "a/b", "a+", "#", "tab\there", "nul\x00", "del\x7f",
                                   "x" * 129])
def test_group_names_with_wildcards_control_characters_or_no_name_are_refused(
    group: str,
) -> None:
    with pytest.raises(RejectedInput, match="group name"):
        parse(group, b"[]")


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff", "not UTF-8"),
    (b"{", "not JSON"),
    (b"[NaN]", "not JSON"),
    (b'[{"id": "a", "value": -Infinity}]', "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "over the"),
    (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
    (b"42", "array"),
    (b'[{"id": 5, "value": 1}]', "usable"),
    (b'[{"value": 1}]', "entry 0"),
    (b'[{"id": "a", "value": {"b": 1}}]', "value must be"),
    (b'[{"id": "a", "value": null}]', "value must be"),
    (json.dumps([{"id": "a", "value": 1}] * 1001).encode(), "limit"),
])
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(RejectedInput, match=reason):
        parse("g", payload)


# -- the configurator under arbitrary input ---------------------------------------------------

CONFIG = """
[thing]
id = "gw"
secret = "s3cret"
[mqtt]
host = "localhost"
[[modbus]]
name = "plc"
transport = "tcp"
host = "localhost"
  [[modbus.devices]]
  name = "meter1"
  bucket = "b"
  points = [ { id = "p", address = "40001" } ]
[[config_groups]]
name = "gw-1-setting"
settings = [
  { id = "GW1_40807", device = "meter1", address = "40807", type = "uint16", min = 0, max = 3600 },
  { id = "mode", device = "meter1", address = "40900", type = "uint16", enum = [1, 2, 3] },
  { id = "label", device = "meter1", address = "40901", type = "string", length = 4, pattern = "[A-Z]+" },
]
[[config_groups]]
name = "gw-1-mode"
settings = [ { id = "GW1_00800", device = "meter1", address = "00800", type = "bool" } ]
"""


class MemoryBus:
    """An in-memory register map standing in for a Modbus connection."""

    def __init__(self) -> None:
        self.registers: dict[int, int] = {}
        self.coils: dict[int, bool] = {}
        self.writes: list[tuple[str, int, Any]] = []

    async def read(self, unit: int, table: Table, start: int,
                   count: int) -> list[int] | list[bool]:
        if table.is_bits:
            return [self.coils.get(start + i, False) for i in range(count)]
        return [self.registers.get(start + i, 0) for i in range(count)]

    async def write_registers(self, unit: int, start: int, values: list[int]) -> None:
        self.writes.append(("registers", start, list(values)))
        for i, value in enumerate(values):
            self.registers[start + i] = value

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        self.writes.append(("coil", address, value))
        self.coils[address] = value


class NoKnobs:
    def get(self, target: str) -> JsonScalar:
        raise AssertionError("no agent settings in this config")

    def set(self, target: str, value: JsonScalar) -> None:
        raise AssertionError("no agent settings in this config")


def make(tmp: Path) -> tuple[Configurator, MemoryBus, MemoryOutbox]:
    path = tmp / "agent.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    bus = MemoryBus()
    clock = Clock(wall_ms=lambda: 1_800_000_000_000, boot_ms=lambda: 0, boot_id="b")
    outbox = MemoryOutbox(max_bytes=10_000_000, clock=clock)
    configurator = Configurator(config=config, routes={"meter1": DeviceRoute(bus, 1)},
                                knobs=NoKnobs(), outbox=outbox, state=SettingsState(None))
    return configurator, bus, outbox


def valid_writes(group: str, payload: bytes) -> int:
    """How many entries of a message the declarations allow (what may be written)."""
    try:
        _, entries = parse(group, payload)
    except RejectedInput:
        return 0
    allowed = {
        "gw-1-setting": {
            "GW1_40807": lambda v: type(v) in (int, float) and float(v).is_integer()
            and 0 <= v <= 3600,
            "mode": lambda v: type(v) in (int, float) and v in (1, 2, 3),
            "label": lambda v: isinstance(v, str) and v.isascii() and v.isalpha()
            and v.isupper() and len(v) <= 8,
        },
        "gw-1-mode": {"GW1_00800": lambda v: v in (True, False) and type(v) in (bool, int)},
    }.get(group, {})
    return sum(1 for e in entries if e.id in allowed and allowed[e.id](e.value))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)
entries = st.fixed_dictionaries(
    {"id": st.sampled_from(["GW1_40807", "mode", "label", "GW1_00800", "nope", ""]),
     "value": json_values})
payloads = (
    st.binary(max_size=200)
    | st.lists(entries, max_size=5).map(lambda e: json.dumps(e).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)
groups = st.sampled_from(["gw-1-setting", "gw-1-mode", "other", "a/b", "x\x01"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=groups, payload=payloads)
def test_arbitrary_input_never_raises_and_writes_only_what_is_valid(
    tmp_path: Path, group: str, payload: bytes,
) -> None:
    async def scenario() -> tuple[int, int]:
        configurator, bus, _ = make(tmp_path)
        configurator.on_message(PREFIX + group, payload)
        await configurator.process_pending()
        return len(bus.writes), valid_writes(group, payload)

    writes, allowed = asyncio.run(scenario())

    assert writes <= allowed
    if allowed == 0:
        assert writes == 0


async def test_a_valid_message_is_written_once_and_reported_as_the_device_holds_it(
    tmp_path: Path,
) -> None:
    configurator, bus, outbox = make(tmp_path)

    await configurator.apply("gw-1-setting", [Entry("GW1_40807", 600), Entry("label", "ABC")])
    await configurator.apply("gw-1-setting", [Entry("GW1_40807", 600)])

    assert [("registers", 806, [600]), ("registers", 900, [0x4142, 0x4300, 0, 0])] == bus.writes
    report = json.loads((await outbox.take()).payload)
    assert {"GW1_40807": 600, "mode": 0, "label": "ABC"} == {e["id"]: e["value"] for e in report}
    assert 0 == outbox.stats().depth - 1, "the second report replaced the first"
