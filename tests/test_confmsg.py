"""Cloud config messages: the parser and the configurator against arbitrary input.

The configurator is driven here with an in-memory register bus (a fake of the Modbus
port, not of pymodbus) so that hypothesis can throw thousands of inputs at it quickly.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.clock import Clock
from agent.cloud.configurator import SHOWN_IDS, Configurator, DeviceRoute
from agent.cloud.messages import Entry, RejectedMessage, latest_per_id, parse_expected
from agent.cloud.remembered import SettingsState
from agent.cloud.settings import JsonScalar
from agent.config import load_config
from agent.errors import RejectedInput
from agent.outbox.port import MemoryOutbox
from agent.sources.modbus.points import Table
from agent.testing import FakeDelays, FakeLogLevel

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


@pytest.mark.parametrize(
    "group", ["", "a/b", "a+", "#", "tab\there", "nul\x00", "del\x7f", "x" * 129]
)
def test_group_names_with_wildcards_control_characters_or_no_name_are_refused(
    group: str,
) -> None:
    with pytest.raises(RejectedMessage, match="group name") as caught:
        parse(group, b"[]")
    assert "group" == caught.value.kind


@pytest.mark.parametrize(
    ("payload", "reason", "kind"),
    [
        (b"\xff", "not UTF-8", "encoding"),
        (b"{", "not JSON", "json"),
        (b"[NaN]", "not JSON", "json"),
        (b'[{"id": "a", "value": -Infinity}]', "not JSON", "json"),
        (b"[" * 100_000 + b"]" * 100_000, "over the", "size"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply", "nesting"),
        (b"42", "array", "shape"),
        (b'[{"id": 5, "value": 1}]', "usable", "entry"),
        (b'[{"value": 1}]', "entry 0", "entry"),
        (b'[{"id": "a", "value": {"b": 1}}]', "value must be", "entry"),
        (b'[{"id": "a", "value": null}]', "value must be", "entry"),
        (json.dumps([{"id": "a", "value": 1}] * 1001).encode(), "limit", "entries"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason_and_a_kind(
    payload: bytes,
    reason: str,
    kind: str,
) -> None:
    with pytest.raises(RejectedMessage, match=reason) as caught:
        parse("g", payload)
    assert kind == caught.value.kind


def test_a_topic_of_another_thing_is_refused_as_a_topic() -> None:
    with pytest.raises(RejectedMessage, match="not an expected-config topic") as caught:
        parse_expected("$thing/other/$conf/$expected/g", b"[]", thing_id=THING, max_bytes=LIMIT)
    assert "topic" == caught.value.kind


def test_entries_are_reduced_to_the_last_value_per_id_in_the_order_the_last_came() -> None:
    entries = [Entry("a", 1), Entry("b", 2), Entry("a", 3), Entry("c", 4), Entry("b", 5)]

    assert [Entry("a", 3), Entry("c", 4), Entry("b", 5)] == latest_per_id(entries)


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

    async def read(self, unit: int, table: Table, start: int, count: int) -> list[int] | list[bool]:
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


def make(tmp: Path) -> tuple[Configurator, MemoryBus, MemoryOutbox]:
    path = tmp / "agent.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    bus = MemoryBus()
    clock = Clock(wall_ms=lambda: 1_800_000_000_000, boot_ms=lambda: 0, boot_id="b")
    outbox = MemoryOutbox(max_bytes=10_000_000, clock=clock)
    configurator = Configurator(
        config=config,
        routes={"meter1": DeviceRoute(bus, 1)},
        sources={},  # no agent settings in this config
        batcher=FakeDelays(),
        log_level=FakeLogLevel(),
        outbox=outbox,
        state=SettingsState(None),
    )
    return configurator, bus, outbox


def valid_writes(group: str, payload: bytes) -> int:
    """How many entries of a message the declarations allow (what may be written)."""
    try:
        _, entries = parse(group, payload)
    except RejectedInput:
        return 0
    rules: dict[str, dict[str, Callable[[JsonScalar], bool]]] = {
        "gw-1-setting": {
            "GW1_40807": lambda v: (
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and float(v).is_integer()
                and 0 <= v <= 3600
            ),
            "mode": lambda v: type(v) in (int, float) and v in (1, 2, 3),
            "label": lambda v: (
                isinstance(v, str) and v.isascii() and v.isalpha() and v.isupper() and len(v) <= 8
            ),
        },
        "gw-1-mode": {"GW1_00800": lambda v: v in (True, False) and type(v) in (bool, int)},
    }
    allowed = rules.get(group, {})
    return sum(1 for e in entries if e.id in allowed and allowed[e.id](e.value))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
entries = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["GW1_40807", "mode", "label", "GW1_00800", "nope", ""]),
        "value": json_values,
    }
)
payloads = (
    st.binary(max_size=200)
    | st.lists(entries, max_size=5).map(lambda e: json.dumps(e).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)
groups = st.sampled_from(["gw-1-setting", "gw-1-mode", "other", "a/b", "x\x01"])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(group=groups, payload=payloads)
def test_arbitrary_input_never_raises_and_writes_only_what_is_valid(
    tmp_path: Path,
    group: str,
    payload: bytes,
) -> None:
    async def scenario() -> tuple[list[tuple[str, int, Any]], int]:
        configurator, bus, _ = make(tmp_path)
        configurator.on_message(PREFIX + group, payload)
        await configurator.process_pending()
        return bus.writes, valid_writes(group, payload)

    writes, allowed = asyncio.run(scenario())

    assert len(writes) <= allowed
    if allowed == 0:
        assert writes == []
    per_address = Counter((table, address) for table, address, _ in writes)
    assert all(count == 1 for count in per_address.values()), "one write per setting"


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


# -- hostile input bounded in effect --------------------------------------------------------------


async def test_a_thousand_alternating_values_of_one_setting_write_it_once(tmp_path: Path) -> None:
    configurator, bus, _ = make(tmp_path)
    entries = [Entry("GW1_40807", 7 if n % 2 == 0 else 8) for n in range(1000)]

    await configurator.apply("gw-1-setting", entries)

    assert [("registers", 806, [8])] == bus.writes


async def test_unknown_and_refused_entries_are_summed_up_in_one_line_each_per_message(
    tmp_path: Path,
) -> None:
    configurator, bus, _ = make(tmp_path)
    unknown = [Entry(f"nope{n}", 1) for n in range(1000)]
    refused = [Entry("GW1_40807", 5000), Entry("mode", 9), Entry("label", "lower")]

    with capture_logs() as logs:
        await configurator.apply("gw-1-setting", [*unknown, *refused, Entry("mode", 2)])

    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [
        {
            "event": "config_settings_unknown",
            "log_level": "warning",
            "group": "gw-1-setting",
            "count": 1000,
            "ids": [f"nope{n}" for n in range(SHOWN_IDS)],
        },
        {
            "event": "config_settings_rejected",
            "log_level": "warning",
            "group": "gw-1-setting",
            "count": 2,
            "ids": ["GW1_40807", "label"],
            "reason": "GW1_40807: 5000 is above the maximum 3600",
        },
    ] == warnings, "mode's last value, 2, is valid: only the last value per id counts"
    assert 1002 == configurator.rejected
    assert [("registers", 899, [2])] == bus.writes


async def test_summaries_are_rate_limited_per_group_and_say_how_many_were_held(
    tmp_path: Path,
) -> None:
    configurator, _, _ = make(tmp_path)

    with capture_logs() as logs:
        for _ in range(50):
            await configurator.apply("gw-1-setting", [Entry("nope", 1)])
            await configurator.apply("gw-1-mode", [Entry("nope", 1)])

    assert [
        ("config_settings_unknown", "gw-1-setting"),
        ("config_settings_unknown", "gw-1-mode"),
    ] == [(e["event"], e["group"]) for e in logs if e["log_level"] == "warning"]


def test_a_flood_of_made_up_groups_and_broken_messages_keeps_logs_and_memory_bounded(
    tmp_path: Path,
) -> None:
    configurator, _, _ = make(tmp_path)
    flood = [
        *[(f"{PREFIX}made-up-{n}", b"[]") for n in range(50_000)],
        *[(f"{PREFIX}gw-1-setting/{n}", b"[]") for n in range(5_000)],  # unusable names
        *[(f"{PREFIX}{'x' * (200 + n)}", b"[]") for n in range(1_000)],
        *[
            (f"{PREFIX}gw-1-setting", f'[{{"id": "k{n}", "value": [{n}]}}]'.encode())
            for n in range(5_000)
        ],  # a different reason every time
        *[(f"$thing/other{n}/$conf/$expected/g", b"[]") for n in range(5_000)],
    ]

    with capture_logs() as logs:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for topic, payload in flood:
                configurator.on_message(topic, payload)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    assert len(flood) == configurator.rejected
    assert [
        ("config_group_unknown", None),
        ("config_message_rejected", "group"),
        ("config_message_rejected", "entry"),
        ("config_message_rejected", "topic"),
    ] == [(e["event"], e.get("kind")) for e in logs]
    assert 4 == configurator.throttled_keys
    assert grown < 64 * 1024, f"{grown} bytes kept after {len(flood)} messages"
