"""Retained configuration reaches the agent on every broker: one subscription per group.

The cloud retains each group's expected config. mosquitto sends a retained message to
every subscription that matches it, a wildcard one included; RabbitMQ's MQTT plugin sends
it to none with a wildcard. So the agent subscribes to each declared group's own topic,
and to `$conf/$expected/#` as well, which brings messages for undeclared groups to be
rejected and logged. Where both match, mosquitto sends the retained message twice: the
device is written once all the same.

Every broker test runs against a mosquitto of its own and against the session's RabbitMQ
(`tests/rabbitmq_fixture.py`); the cloud client clears what it left retained there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.service.agent import Agent
from agent.testing import captured_logs
from sim.broker import Broker, BrokerFactory
from sim.cloud import CloudClient, Message, thing_client
from sim.cloud import expected_topic as topic_of
from sim.plant import PlantServer, SimUnit
from sim.rabbitmq import RabbitMqBroker
from tests.helpers import running_agent
from tests.test_cloudconfig import THING, WAIT, config_text, reported_with
from tests.test_configurator_unit import Rig

GROUPS = ("gw-1-setting", "gw-1-mode", "agent")  # tests/test_cloudconfig.py declares them
WILDCARD = f"$thing/{THING}/$conf/$expected/#"
SETPOINT = b'[{"id":"GW1_40807","value":600}]'
MARKER = b'[{"id":"GW1_40807","value":600,"marker":true}]'  # the same, live: what came before


async def clear_expected(cloud: CloudClient) -> None:
    """Delete the expected config published while `cloud` listened: an empty retained
    message deletes a topic's. RabbitMQ is shared by the session's tests."""
    for topic in sorted({m.topic for m in cloud.messages if "/$conf/$expected/" in m.topic}):
        await cloud.publish(topic, b"")


@pytest.fixture(params=["mosquitto", "rabbitmq"])
def any_broker(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> Broker:
    """Each broker the agent must work with; RabbitMQ is the session's, shared."""
    if request.param == "rabbitmq":
        node: RabbitMqBroker = request.getfixturevalue("rabbitmq")
        return node
    return broker_factory()


@pytest.fixture
async def tidy_cloud(any_broker: Broker) -> AsyncIterator[CloudClient]:
    """The application; a clean session, so a shared broker queues nothing for the next test."""
    cloud = CloudClient.for_broker(any_broker, clean_session=True)
    await cloud.connect()
    try:
        yield cloud
        await clear_expected(cloud)
    finally:
        await cloud.disconnect()


async def received_on_subscribing(
    broker: Broker, cloud: CloudClient, topics: list[str]
) -> list[Message]:
    """What a thing subscribing to `topics` receives up to a live marker sent after its SUBACK.

    A broker sends the retained messages of a subscription before anything published
    after it: what is not there before the marker is not sent at all.
    """
    thing = thing_client(broker, subscriptions=topics)
    await thing.connect()
    try:
        await cloud.publish(topic_of(THING, "gw-1-setting"), MARKER, retain=False)
        await thing.wait_for(lambda m: m.payload == MARKER, timeout=WAIT)
    finally:
        await thing.disconnect()
    return thing.messages


async def test_a_wildcard_subscription_gets_the_retained_config_from_mosquitto_only(
    any_broker: Broker, tidy_cloud: CloudClient
) -> None:
    """Why the agent subscribes per group: RabbitMQ sends a wildcard none (its known limit)."""
    topic = topic_of(THING, "gw-1-setting")
    await tidy_cloud.publish(topic, SETPOINT)

    by_wildcard = await received_on_subscribing(any_broker, tidy_cloud, [WILDCARD])
    by_topic = await received_on_subscribing(any_broker, tidy_cloud, [topic])

    retained, marker = (topic, SETPOINT, True), (topic, MARKER, False)
    wildcard_gets_it = not isinstance(any_broker, RabbitMqBroker)
    assert ([retained] if wildcard_gets_it else []) + [marker] == by_wildcard
    assert [retained, marker] == by_topic


async def test_config_the_cloud_set_while_the_agent_was_away_is_applied_when_it_starts(
    tmp_path: Path,
    any_broker: Broker,
    tidy_cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    await tidy_cloud.publish_expected("gw-1-setting", [{"id": "GW1_40807", "value": 600}])
    await tidy_cloud.publish_expected("gw-1-mode", [{"id": "GW1_00800", "value": 1}])

    async with running_agent(tmp_path, config_text(any_broker, tcp_plant, tmp_path)):
        await tidy_cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 600}), timeout=WAIT)
        await tidy_cloud.wait_for(reported_with("gw-1-mode", {"GW1_00800": 1}), timeout=WAIT)

    assert [600] == sim_unit.get_registers("holding", 806)
    assert [True] == sim_unit.get_bits("coil", 799)
    assert 2 == sim_unit.write_count  # each setting once


async def test_a_retained_message_that_mosquitto_sends_twice_writes_the_device_once(
    tmp_path: Path,
    broker: Broker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    cloud = CloudClient.for_broker(broker)
    await cloud.connect()
    subscriptions = [*(topic_of(THING, group) for group in GROUPS), WILDCARD]
    topic = topic_of(THING, "gw-1-setting")
    try:
        await cloud.publish(topic, SETPOINT)
        copies = await received_on_subscribing(broker, cloud, subscriptions)
        assert [(topic, SETPOINT, True)] * 2 + [(topic, MARKER, False)] == copies

        async with running_agent(tmp_path, config_text(broker, tcp_plant, tmp_path)) as agent:
            assert subscriptions == agent.session.subscriptions
            await cloud.wait_for(reported_with("gw-1-setting", {"GW1_40807": 600}), timeout=WAIT)
            # Handled in order: once gw-1-mode answers a message sent now, both copies of
            # gw-1-setting's have been applied.
            reports = len(cloud.reported("gw-1-mode"))
            await cloud.publish_expected("gw-1-mode", [{"id": "GW1_00800", "value": 0}])
            await cloud.wait_for(lambda m: len(cloud.reported("gw-1-mode")) > reports, timeout=WAIT)
    finally:
        await cloud.disconnect()

    assert [600] == sim_unit.get_registers("holding", 806)
    assert 1 == sim_unit.write_count


async def test_a_group_added_by_a_reload_gets_its_retained_config_at_once(
    tmp_path: Path,
    rabbitmq: RabbitMqBroker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    """The session is kept by the reload; the new group is subscribed there and then."""
    cloud = CloudClient.for_broker(rabbitmq, clean_session=True)
    await cloud.connect()
    full = config_text(rabbitmq, tcp_plant, tmp_path)
    mode = full.index('[[config_groups]]\nname = "gw-1-mode"')
    without_mode = full[:mode] + full[full.index('[[config_groups]]\nname = "agent"') :]
    path = tmp_path / "agent.toml"
    path.write_text(without_mode)
    agent = Agent(load_config(path), config_path=path)
    stop, reload = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(stop, reload), name="agent")
    try:
        await cloud.wait_for(reported_with("gw-1-setting", {}), timeout=WAIT)
        await cloud.publish_expected("gw-1-mode", [{"id": "GW1_00800", "value": 1}])
        path.write_text(full)
        reload.set()
        await cloud.wait_for(reported_with("gw-1-mode", {"GW1_00800": 1}), timeout=WAIT)
        connects = agent.session.reconnects
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT)
        await clear_expected(cloud)
        await cloud.disconnect()

    assert [True] == sim_unit.get_bits("coil", 799)
    assert 0 == connects


# -- the configurator, given the same message twice ---------------------------------------

TOPIC = "$thing/gw/$conf/$expected/gw-1-setting"  # tests/test_configurator_unit.py's thing
PAYLOAD = json.dumps([{"id": "GW1_40807", "value": 600}]).encode()


def setpoint_reports(reports: list[tuple[str, Any]]) -> list[Any]:
    return [values for group, values in reports if group == "gw-1-setting"]


async def test_a_copy_arriving_before_the_message_is_applied_replaces_it() -> None:
    rig = Rig()

    rig.configurator.on_message(TOPIC, PAYLOAD)
    rig.configurator.on_message(TOPIC, PAYLOAD)
    await rig.configurator.process_pending()

    assert 1 == len(rig.writes())
    assert [[{"id": "GW1_40807", "value": 600}, {"id": "GW1_40808", "value": 0}]] == (
        setpoint_reports(await rig.reports())
    )


async def test_a_copy_arriving_after_the_message_was_applied_writes_nothing() -> None:
    """It is answered with a report, which replaces the first one if that is still queued."""
    rig = Rig()

    with captured_logs() as logs:
        rig.configurator.on_message(TOPIC, PAYLOAD)
        await rig.configurator.process_pending()
        rig.configurator.on_message(TOPIC, PAYLOAD)
        await rig.configurator.process_pending()

    assert 1 == len(rig.writes())
    assert ["setting_written", "config_reported", "config_reported"] == [e["event"] for e in logs]
    assert [[{"id": "GW1_40807", "value": 600}, {"id": "GW1_40808", "value": 0}]] == (
        setpoint_reports(await rig.reports())
    )
