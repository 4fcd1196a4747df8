"""The configurator through an in-memory register bus: requests sent, reports queued, logs.

What a cloud message makes the agent do to a device (reads, writes, function codes,
byte order), what it reports back, and how refusals, silence and drift show.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.clock import Clock
from agent.cloud.configurator import Configurator, DeviceRoute
from agent.cloud.messages import Entry
from agent.cloud.remembered import SettingsState
from agent.config import resolve
from agent.config.schema import AgentSettings
from agent.errors import DeviceRefused
from agent.outbox.port import MemoryOutbox
from agent.sources.modbus.points import Table
from agent.testing import (
    WRITE_COIL,
    WRITE_REGISTER,
    WRITE_REGISTERS,
    BusRequest,
    FakeDelays,
    FakeLogLevel,
    FakeRegisterBus,
    FakeTunable,
    captured_logs,
)

THING = "gw"
UNIT = 1
READ_HOLDING, READ_COILS = 3, 1
SETPOINT, DELAY = 806, 807  # 0-based offsets of "40807" and "40808"

GROUPS: list[dict[str, Any]] = [
    {
        "name": "gw-1-setting",
        "settings": [
            {
                "id": "GW1_40807",
                "device": "meter1",
                "address": "40807",
                "type": "uint16",
                "min": 0,
                "max": 3600,
            },
            {
                "id": "GW1_40808",
                "device": "meter1",
                "address": "40808",
                "type": "uint16",
                "min": 0,
                "max": 3600,
            },
        ],
    },
    {
        "name": "gw-1-mode",
        "settings": [
            {"id": "GW1_00800", "device": "meter1", "address": "00800", "type": "bool"},
        ],
    },
    {
        "name": "wide",
        "settings": [
            {"id": "total", "device": "meter1", "address": "40011", "type": "int32"},
            {"id": "ratio", "device": "meter1", "address": "40021", "type": "float32"},
        ],
    },
    {
        "name": "agent",
        "settings": [
            {"id": "meter1_interval", "agent": "device.meter1.interval", "min": 0.05, "max": 3600},
        ],
    },
]


class Rig:
    """A configurator wired to fakes: the unit's registers, the agent's knobs, the outbox."""

    def __init__(self, *, byte_order: str = "ABCD") -> None:
        config = resolve.resolve(
            AgentSettings.model_validate(
                {
                    "thing": {"id": THING, "secret": "s"},
                    "mqtt": {"host": "broker"},
                    "modbus": [
                        {
                            "name": "plc",
                            "transport": "tcp",
                            "host": "127.0.0.1",
                            "devices": [
                                {
                                    "name": "meter1",
                                    "unit": UNIT,
                                    "bucket": "b",
                                    "byte_order": byte_order,
                                    "points": [{"id": "v", "address": "40001"}],
                                }
                            ],
                        }
                    ],
                    "config_groups": GROUPS,
                }
            )
        )
        self.bus = FakeRegisterBus(name="plc")
        self.meter1 = FakeTunable(interval=5.0)
        clock = Clock(wall_ms=lambda: 1_800_000_000_000, boot_ms=lambda: 0, boot_id="b")
        self.outbox = MemoryOutbox(max_bytes=10_000_000, clock=clock)
        self.configurator = Configurator(
            config=config,
            routes={"meter1": DeviceRoute(self.bus, UNIT)},
            sources={"meter1": self.meter1},
            batcher=FakeDelays(),
            log_level=FakeLogLevel(),
            outbox=self.outbox,
            state=SettingsState(None),
        )

    async def apply(self, group: str, **values: Any) -> None:
        await self.configurator.apply(group, [Entry(k, v) for k, v in values.items()])

    async def reports(self) -> list[tuple[str, Any]]:
        """Every report queued since the last call: (group, [{"id", "value"}, ...])."""
        found = []
        while self.outbox.stats().depth > self.outbox.stats().in_flight:
            message = await self.outbox.take()
            self.outbox.ack(message)
            group = message.topic.removeprefix(f"$thing/{THING}/$conf/$reported/")
            found.append((group, json.loads(message.payload)))
        return found

    def writes(self) -> list[BusRequest]:
        return [
            r
            for r in self.bus.requests
            if r.function in (WRITE_COIL, WRITE_REGISTER, WRITE_REGISTERS)
        ]


def events(logs: list[Any], name: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "event"} for e in logs if e["event"] == name]


async def test_a_setting_is_read_written_once_and_every_setting_of_its_group_reported() -> None:
    rig = Rig()

    await rig.apply("gw-1-setting", GW1_40807=600)

    assert [
        BusRequest(UNIT, READ_HOLDING, SETPOINT, 1),  # what does it hold?
        BusRequest(UNIT, WRITE_REGISTER, SETPOINT, 1, (600,)),
        BusRequest(UNIT, READ_HOLDING, SETPOINT, 1),  # the report: read back
        BusRequest(UNIT, READ_HOLDING, DELAY, 1),
    ] == rig.bus.requests
    assert [
        ("gw-1-setting", [{"id": "GW1_40807", "value": 600}, {"id": "GW1_40808", "value": 0}])
    ] == await rig.reports()
    assert 1 == rig.configurator.writes


async def test_a_value_the_device_holds_already_is_not_written() -> None:
    rig = Rig()
    rig.bus.set_registers(UNIT, Table.HOLDING, SETPOINT, [600])

    await rig.apply("gw-1-setting", GW1_40807=600)

    assert [] == rig.writes()
    assert [
        ("gw-1-setting", [{"id": "GW1_40807", "value": 600}, {"id": "GW1_40808", "value": 0}])
    ] == await rig.reports()


@pytest.mark.parametrize(
    ("byte_order", "registers"), [("ABCD", (0x1234, 0x5678)), ("CDAB", (0x5678, 0x1234))]
)
async def test_a_wide_setting_is_written_in_one_request_in_the_devices_byte_order(
    byte_order: str,
    registers: tuple[int, int],
) -> None:
    rig = Rig(byte_order=byte_order)

    await rig.apply("wide", total=0x12345678)

    assert [BusRequest(UNIT, WRITE_REGISTERS, 10, 2, registers)] == rig.writes()
    assert list(registers) == rig.bus.registers(UNIT, Table.HOLDING, 10, 2)
    assert [
        ("wide", [{"id": "total", "value": 0x12345678}, {"id": "ratio", "value": 0.0}])
    ] == await rig.reports()


@pytest.mark.parametrize("value", [1, True, 0, False])
async def test_a_coil_is_written_and_reported_in_the_form_the_cloud_used(
    value: bool | int,
) -> None:
    rig = Rig()
    rig.bus.set_bits(UNIT, Table.COIL, 799, [not value])

    await rig.apply("gw-1-mode", GW1_00800=value)

    assert [BusRequest(UNIT, WRITE_COIL, 799, 1, (bool(value),))] == rig.writes()
    reported = (await rig.reports())[0][1][0]["value"]
    assert (value, type(value)) == (reported, type(reported))


async def test_a_refused_write_is_logged_and_what_the_device_holds_is_reported() -> None:
    rig = Rig()
    rig.bus.set_registers(UNIT, Table.HOLDING, SETPOINT, [30])
    rig.bus.refuse(
        UNIT,
        Table.HOLDING,
        range(SETPOINT, SETPOINT + 1),
        code=DeviceRefused.ILLEGAL_DATA_VALUE,
        functions=[WRITE_REGISTER],
    )
    with captured_logs() as logs:
        await rig.apply("gw-1-setting", GW1_40807=600)

    assert 0 == rig.configurator.writes
    assert [
        {
            "log_level": "warning",
            "group": "gw-1-setting",
            "setting": "GW1_40807",
            "value": 600,
            "error": "unit 1 refused function 6 at 806 (count 1): exception code 3",
        }
    ] == events(logs, "setting_write_failed")
    assert [
        ("gw-1-setting", [{"id": "GW1_40807", "value": 30}, {"id": "GW1_40808", "value": 0}])
    ] == await rig.reports()


async def test_unknown_and_rejected_entries_write_nothing_and_are_summed_up_in_one_line_each() -> (
    None
):
    rig = Rig()
    with captured_logs() as logs:
        await rig.apply("gw-1-setting", nope=1, GW1_40807=5000, GW1_40808=-1)

    assert [] == rig.writes()
    assert [
        {"log_level": "warning", "group": "gw-1-setting", "count": 1, "ids": ["nope"]}
    ] == events(logs, "config_settings_unknown")
    assert [
        {
            "log_level": "warning",
            "group": "gw-1-setting",
            "count": 2,
            "ids": ["GW1_40807", "GW1_40808"],
            "reason": "GW1_40807: 5000 is above the maximum 3600",
        }
    ] == events(logs, "config_settings_rejected")
    assert 3 == rig.configurator.rejected
    assert 1 == len(await rig.reports())  # the group is reported all the same


async def test_a_thousand_made_up_ids_keep_a_bounded_list_of_refusals() -> None:
    rig = Rig()
    with captured_logs():
        for n in range(10):
            await rig.apply("gw-1-setting", **{f"junk{n}_{i}": 1 for i in range(100)})

    said = rig.configurator.refusals["gw-1-setting"]
    assert 100 == len(said)
    assert "junk9_99" in said  # the newest kept
    assert "junk0_0" not in said
    assert 1000 == rig.configurator.rejected
    assert [] == rig.writes()


async def test_an_agent_setting_goes_to_its_source_and_is_reported_from_it() -> None:
    rig = Rig()

    await rig.apply("agent", meter1_interval=0.5)

    assert [0.5] == rig.meter1.changes
    assert [] == rig.bus.requests
    assert [("agent", [{"id": "meter1_interval", "value": 0.5}])] == await rig.reports()


async def test_settings_of_a_silent_device_are_left_out_of_the_report() -> None:
    rig = Rig()
    rig.bus.time_out(UNIT)
    with captured_logs() as logs:
        await rig.configurator.report("gw-1-setting")

    assert ["GW1_40807", "GW1_40808"] == [
        e["setting"] for e in events(logs, "config_readback_failed")
    ]
    assert [("gw-1-setting", [])] == await rig.reports()


async def test_a_repeated_message_writes_nothing_until_the_device_drifts() -> None:
    rig = Rig()
    await rig.apply("gw-1-setting", GW1_40807=600)
    await rig.apply("gw-1-setting", GW1_40807=600)  # a retained message, again
    assert 1 == len(rig.writes())

    rig.bus.set_registers(UNIT, Table.HOLDING, SETPOINT, [5])  # changed at the panel
    with captured_logs() as logs:
        await rig.apply("gw-1-setting", GW1_40807=600)

    assert 2 == len(rig.writes())
    assert [600] == rig.bus.registers(UNIT, Table.HOLDING, SETPOINT, 1)
    assert [
        {
            "log_level": "warning",
            "group": "gw-1-setting",
            "setting": "GW1_40807",
            "expected": 600,
            "device_held": 5,
        }
    ] == events(logs, "setting_drift_corrected")


async def test_a_nan_held_by_the_device_is_left_out_of_the_report() -> None:
    rig = Rig()
    rig.bus.set_registers(UNIT, Table.HOLDING, 20, [0x7FC0, 0x0000])
    with captured_logs() as logs:
        await rig.configurator.report("wide")

    assert ["ratio"] == [e["setting"] for e in events(logs, "config_readback_failed")]
    assert [("wide", [{"id": "total", "value": 0}])] == await rig.reports()


async def test_a_400_digit_value_is_rejected_like_any_value_out_of_range() -> None:
    rig = Rig()
    with captured_logs() as logs:
        await rig.apply("gw-1-setting", GW1_40807=10**400)

    assert [] == rig.writes()
    assert ["GW1_40807"] == events(logs, "config_settings_rejected")[0]["ids"]
