"""Configuration from the cloud: $conf/$expected → the device → $conf/$reported.

The simulated unit proves what was written (its registers and its write count); the
cloud client proves what was reported; the agent's log, rendered to stdout, proves what
an operator reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.cloud.configurator import LOG_INTERVAL, SHOWN_IDS
from agent.service import logs
from sim.broker import Broker, BrokerFactory
from sim.cloud import CloudClient, Message, expected_topic, reported_topic
from sim.plant import PlantServer, SimUnit
from tests.helpers import agent_toml, poll_until, running_agent
from tests.test_logs import restored_logging

WAIT = 30.0
THING = "xY6Eie5hv"

DEVICE_AND_GROUPS = """
[[modbus]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.5

  [[modbus.devices]]
  name = "meter1"
  unit = 1
  interval = {interval}
  bucket = "b"
  points = [ {{ id = "counter", address = "40001" }} ]

[[config_groups]]
name = "gw-1-setting"
settings = [
  {{ id = "GW1_40806", device = "meter1", address = "40806", type = "uint16", min = 0, max = 3600 }},
  {{ id = "GW1_40807", device = "meter1", address = "40807", type = "uint16", min = 0, max = 3600 }},
]

[[config_groups]]
name = "gw-1-mode"
settings = [
  {{ id = "GW1_00800", device = "meter1", address = "00800", type = "bool" }},
]

[[config_groups]]
name = "agent"
settings = [
  {{ id = "meter1_interval", agent = "device.meter1.interval", min = 0.05, max = 3600 }},
  {{ id = "log_level", agent = "log.level" }},
]
"""


def config_text(
    broker: Broker, plant: PlantServer, tmp_path: Path, *, interval: float = 5.0
) -> str:
    body = DEVICE_AND_GROUPS.format(port=plant.port, interval=interval)
    return agent_toml(broker, body, queue_path=tmp_path / "state" / "queue.db")


def reported_with(group: str, expected: dict[str, object]) -> Callable[[Message], bool]:
    """A report of `group` that carries at least these values."""

    def match(message: Message) -> bool:
        if message.topic != reported_topic(THING, group):
            return False
        values = {entry["id"]: entry["value"] for entry in message.json()}
        return all(key in values and values[key] == value for key, value in expected.items())

    return match


async def test_the_documents_example_round_trips_to_the_registers_and_back(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)):
        await cloud.publish_expected(
            "gw-1-setting", [{"id": "GW1_40806", "value": 0}, {"id": "GW1_40807", "value": 600}]
        )
        await cloud.publish_expected("gw-1-mode", [{"id": "GW1_00800", "value": 1}])
        await cloud.wait_for(
            reported_with("gw-1-setting", {"GW1_40806": 0, "GW1_40807": 600}), timeout=WAIT
        )
        await cloud.wait_for(reported_with("gw-1-mode", {"GW1_00800": 1}), timeout=WAIT)

    assert [0, 600] == sim_unit.get_registers("holding", 805, 2)
    assert [True] == sim_unit.get_bits("coil", 799)
    last_mode = cloud.on_topic(reported_topic(THING, "gw-1-mode"))[-1].json()
    assert [{"id": "GW1_00800", "value": 1}] == last_mode, (
        "1 comes back as 1, as the cloud wrote it"
    )


async def test_a_refused_write_is_reported_with_what_the_device_holds(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    sim_unit.set_registers("holding", 806, [42])
    sim_unit.refuse_writes = True
    with capture_logs() as logs:
        async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)):
            await cloud.publish_expected("gw-1-setting", [{"id": "GW1_40807", "value": 600}])
            await poll_until(
                lambda: any(e["event"] == "setting_write_failed" for e in logs),
                timeout=WAIT,
                what="setting_write_failed logged",
            )
            await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 42}), timeout=WAIT)

    assert [42] == sim_unit.get_registers("holding", 806)


@pytest.mark.parametrize(
    ("entry", "event"),
    [
        ({"id": "GW1_40807", "value": 3601}, "config_settings_rejected"),
        ({"id": "GW1_40807", "value": -1}, "config_settings_rejected"),
        ({"id": "GW1_40807", "value": "600"}, "config_settings_rejected"),
        ({"id": "GW1_40807", "value": 60.5}, "config_settings_rejected"),
        ({"id": "GW1_40899", "value": 1}, "config_settings_unknown"),
        ({"id": "GW1_00800", "value": 1}, "config_settings_unknown"),  # another group's id
    ],
)
async def test_a_value_out_of_bounds_or_undeclared_leaves_the_device_untouched(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    entry: dict[str, object],
    event: str,
) -> None:
    with capture_logs() as logs:
        async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)):
            await cloud.publish_expected("gw-1-setting", [entry])
            await poll_until(
                lambda: any(e["event"] == event for e in logs), timeout=WAIT, what=f"{event} logged"
            )
            await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 0}), timeout=WAIT)

    assert 0 == sim_unit.write_count


async def test_reconnects_and_restarts_write_nothing_twice_and_drift_is_corrected(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    broker = broker_factory(persistence=True)
    cloud = CloudClient.for_broker(broker)
    await cloud.connect()
    text = config_text(broker, tcp_plant, tmp_path)
    try:
        async with running_agent(tmp_path, text) as agent:
            await cloud.publish_expected("gw-1-setting", [{"id": "GW1_40807", "value": 600}])
            await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 600}), timeout=WAIT)
            assert 1 == sim_unit.write_count
            reports = len(cloud.on_topic(reported_topic(THING, "gw-1-setting")))
            await broker.restart_async()
            await cloud.wait_connected(timeout=WAIT)
            # The retained message arrives again; the agent reports and writes nothing.
            await cloud.wait_for(
                lambda m: len(cloud.on_topic(reported_topic(THING, "gw-1-setting"))) > reports,
                timeout=WAIT,
            )
            assert agent.session.reconnects >= 1
        assert 1 == sim_unit.write_count

        async with running_agent(tmp_path, text):  # a restart: same state directory
            await sim_unit.wait_until(lambda u: u.read_count >= 3, timeout=WAIT)
        assert 1 == sim_unit.write_count

        sim_unit.set_registers("holding", 806, [7])  # someone at the panel
        with capture_logs() as logs:
            async with running_agent(tmp_path, text):
                await sim_unit.wait_until(lambda u: u.write_count >= 2, timeout=WAIT)
        assert [600] == sim_unit.get_registers("holding", 806)
        assert any(e["event"] == "setting_drift_corrected" for e in logs)
    finally:
        await cloud.disconnect()


async def test_an_agent_setting_changes_the_poll_interval_seen_by_the_device(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    def polls(unit: SimUnit) -> int:
        """Reads of the polled point (the configurator reads the settings too)."""
        return sum(1 for r in unit.requests if (r.function_code, r.address) == (3, 0))

    loop = asyncio.get_running_loop()
    async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path, interval=3.0)):
        await sim_unit.wait_until(lambda u: polls(u) >= 1, timeout=WAIT)
        await cloud.publish_expected("agent", [{"id": "meter1_interval", "value": 0.1}])
        await cloud.wait_for(reported_with("agent", {"meter1_interval": 0.1}), timeout=WAIT)
        # The 3 s cycle in progress ends first; then reads come every 0.1 s.
        await sim_unit.wait_until(lambda u: polls(u) >= 2, timeout=WAIT)
        start, reads = loop.time(), polls(sim_unit)
        await sim_unit.wait_until(lambda u: polls(u) >= reads + 10, timeout=WAIT)
        elapsed = loop.time() - start

    assert elapsed < 5.0, f"10 reads took {elapsed:.1f} s: the interval did not change"


HOSTILE: list[tuple[str, bytes, str]] = [  # group, payload, kind of rejection
    ("gw-1-setting", b"\xff\xfe not utf-8", "encoding"),
    ("gw-1-setting", b"{not json", "json"),
    ("gw-1-setting", b'{"id": "GW1_40807"}', "entry"),
    ("gw-1-setting", b'"a string"', "shape"),
    ("gw-1-setting", b"[" * 50_000 + b"]" * 50_000, "size"),
    ("gw-1-setting", b'[{"id": "GW1_40807", "value": NaN}]', "json"),
    ("gw-1-setting", b'[{"id": "GW1_40807", "value": Infinity}]', "json"),
    ("gw-1-setting", b'[{"id": "GW1_40807", "value": [600]}]', "entry"),
    ("gw-1-setting", json.dumps([{"id": "GW1_40807", "value": 1}] * 5000).encode(), "size"),
    ("gw-1-setting", b"[" + b" " * 70_000 + b"]", "size"),
    ("gw-1-setting", json.dumps([{"id": "GW1_40807", "value": 1}] * 1001).encode(), "entries"),
    ("gw-1-setting/sub", b"[]", "group"),
    ("no-such-group", b'[{"id": "GW1_40807", "value": 600}]', "config_group_unknown"),
]
# Topics with control or wildcard characters never get past the broker (it disconnects the
# publisher): tests/test_confmsg.py feeds them to the parser directly.


async def test_hostile_messages_are_rejected_logged_once_per_kind_and_never_written(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    with capture_logs() as logs:
        async with running_agent(
            tmp_path, config_text(broker, tcp_plant, tmp_path, interval=0.2)
        ) as agent:
            # Subscribed once it reports its groups; from then on every message reaches it.
            await cloud.wait_for(reported_with("agent", {}), timeout=WAIT)
            for group, payload, _ in HOSTILE:
                await cloud.publish(f"$thing/{THING}/$conf/$expected/{group}", payload)
            # A valid message behind them is still applied: nothing stalled.
            await cloud.publish_expected("gw-1-setting", [{"id": "GW1_40806", "value": 5}])
            await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40806": 5}), timeout=WAIT)
            readings = len(cloud.readings("b"))
            await cloud.wait_for(lambda m: len(cloud.readings("b")) > readings, timeout=WAIT)
            rejected = agent.configurator.rejected

    assert 1 == sim_unit.write_count
    assert [5] == sim_unit.get_registers("holding", 805)
    assert len(HOSTILE) == rejected
    kinds = [
        e.get("kind", e["event"])
        for e in logs
        if e["event"]
        in ("config_message_rejected", "config_group_unknown", "config_settings_rejected")
    ]
    # Within LOG_INTERVAL, one line per kind of rejection (repeats of a kind are held).
    assert list(dict.fromkeys(kind for _, _, kind in HOSTILE)) == kinds


async def test_a_report_made_offline_arrives_after_the_reconnect(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    broker = broker_factory(persistence=True)
    cloud = CloudClient.for_broker(broker)
    await cloud.connect()
    try:
        await cloud.publish_expected("gw-1-setting", [{"id": "GW1_40807", "value": 300}])
        async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)) as agent:
            await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 300}), timeout=WAIT)
            await broker.stop_async()
            await agent.configurator.report("gw-1-setting")  # made while offline
            assert agent.outbox.stats().depth >= 1
            before = len(cloud.on_topic(reported_topic(THING, "gw-1-setting")))
            await broker.start_async()
            await cloud.wait_connected(timeout=WAIT)
            await cloud.wait_for(
                lambda m: len(cloud.on_topic(reported_topic(THING, "gw-1-setting"))) > before,
                timeout=WAIT,
            )
    finally:
        await cloud.disconnect()


# -- hostile input bounded in effect --------------------------------------------------------------


@pytest.fixture
def rendered_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], None]]:
    """`configure(fmt)`: the agent's real log pipeline, printing to the captured stdout."""
    with restored_logging():
        yield lambda fmt: logs.configure(level="info", fmt=fmt)


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


async def test_a_thousand_alternating_values_of_one_setting_write_the_device_once(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    entries = [{"id": "GW1_40807", "value": 7 if n % 2 == 0 else 8} for n in range(1000)]

    async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)):
        await cloud.publish_expected("gw-1-setting", entries)
        await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 8}), timeout=WAIT)

    assert 1 == sim_unit.write_count
    assert [8] == sim_unit.get_registers("holding", 806)


async def test_a_thousand_unknown_ids_make_one_log_line_however_often_they_come(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    rendered_log: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rendered_log("json")
    entries = [{"id": f"GW1_9{n:04d}", "value": n} for n in range(1000)]
    topic = reported_topic(THING, "gw-1-setting")

    async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)):
        await cloud.wait_for(reported_with("gw-1-setting", {}), timeout=WAIT)
        for _ in range(3):
            reports = len(cloud.on_topic(topic))
            await cloud.publish_expected("gw-1-setting", entries)
            await cloud.wait_for_topic(topic, count=reports + 1, timeout=WAIT)

    warnings = [line for line in json_lines(capsys) if line["level"] != "info"]
    assert [
        (
            "config_settings_unknown",
            "gw-1-setting",
            1000,
            [f"GW1_9{n:04d}" for n in range(SHOWN_IDS)],
        )
    ] == [(w["event"], w["group"], w["count"], w["ids"]) for w in warnings]
    assert 0 == sim_unit.write_count


async def test_fifty_thousand_made_up_groups_make_a_bounded_number_of_log_lines(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    rendered_log: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rendered_log("json")
    loop = asyncio.get_running_loop()
    flood = 50_000

    async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)) as agent:
        await cloud.wait_for(reported_with("agent", {}), timeout=WAIT)
        started = loop.time()
        for number in range(flood):
            await cloud.publish(
                expected_topic(THING, f"made-up-{number}"), b"[]", qos=0, retain=False
            )
        await poll_until(
            lambda: agent.configurator.rejected >= flood,
            timeout=4 * WAIT,
            what=f"{flood} made-up groups seen by the agent",
        )
        elapsed = loop.time() - started
        await cloud.publish_expected("gw-1-setting", [{"id": "GW1_40806", "value": 5}])
        await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40806": 5}), timeout=WAIT)
        keys = agent.configurator.throttled_keys

    unknown = [line for line in json_lines(capsys) if line["event"] == "config_group_unknown"]
    assert 1 <= len(unknown) <= 1 + elapsed / LOG_INTERVAL, f"{len(unknown)} lines"
    assert "made-up-0" == unknown[0]["group"]
    assert 1 == keys, "one rate-limit key for every undeclared group"
    assert flood == agent.configurator.rejected
    assert 1 == sim_unit.write_count, "the valid message behind the flood was applied"


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
async def test_a_nul_and_a_bidi_override_from_the_cloud_reach_the_log_escaped(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    rendered_log: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    rendered_log(fmt)

    async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)) as agent:
        await cloud.wait_for(reported_with("gw-1-setting", {}), timeout=WAIT)
        await cloud.publish_expected(
            "gw-1-setting", [{"id": "evil\x00id\u202etxt.exe", "value": 1}]
        )
        await cloud.publish_expected("gw\u202e-evil", [{"id": "x", "value": 1}])
        await poll_until(
            lambda: agent.configurator.rejected >= 2,
            timeout=WAIT,
            what="both messages rejected",
        )
        await cloud.wait_for_topic(reported_topic(THING, "gw-1-setting"), count=2, timeout=WAIT)

    out = capsys.readouterr().out
    assert "\x00" not in out
    assert "\u202e" not in out
    if fmt == "json":
        events = {line["event"]: line for line in map(json.loads, out.splitlines())}
        assert ["evil\\x00id\\u202etxt.exe"] == events["config_settings_unknown"]["ids"]
        assert "gw\\u202e-evil" == events["config_group_unknown"]["group"]
    else:
        assert " ids=['evil\\x00id\\u202etxt.exe']" in out
        assert " group=gw\\u202e-evil " in out
