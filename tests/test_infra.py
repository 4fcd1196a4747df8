"""The test infrastructure works, and shows a failure when there is one.

A broker that let everything through, or a simulator that answered for a dead
unit, would make every agent test pass for the wrong reason: these tests pin
the behaviour the others rely on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gmqtt.mqtt.handler import MQTTConnectError
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException

from sim.broker import Broker, BrokerFactory, find_binary, free_port
from sim.cloud import (
    CloudClient,
    Message,
    _quiet_cancelled,
    data_topic,
    expected_topic,
    thing_client,
)
from sim.plant import PlantServer, SimUnit, serve_rtu, serve_tcp
from sim.pty import PtyPair

OTHER_THING = "otherThing1"
OTHER_SECRET = "other-secret"
DEAD_UNIT_TIMEOUT = 0.3  # the client's time-out: a dead unit is expected to hit it
BAUDRATE = 38400


@pytest.fixture
async def modbus_client(tcp_plant: PlantServer) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(
        tcp_plant.host or "127.0.0.1", port=tcp_plant.port, timeout=5, retries=0
    )
    assert await client.connect()
    yield client
    client.close()


# -- broker and cloud ---------------------------------------------------------------


async def test_thing_data_reaches_the_cloud(broker: Broker, cloud: CloudClient) -> None:
    reading = [{"id": "temperature", "value": 25.5, "timestamp": "1590128899000"}]
    async with thing_client(broker) as thing:
        await thing.publish(data_topic(broker.thing_id, "sensorData"), reading)

    received = await cloud.wait_for_topic(data_topic(broker.thing_id, "sensorData"))

    assert [
        Message(
            data_topic(broker.thing_id, "sensorData"),
            json.dumps(reading, separators=(",", ":")).encode(),
            False,
        )
    ] == received
    assert reading == cloud.readings("sensorData")


async def test_application_cannot_publish_data(broker: Broker, cloud: CloudClient) -> None:
    forged = data_topic(broker.thing_id, "sensorData")
    marker = expected_topic(broker.thing_id, "marker")

    await cloud.publish(forged, [{"id": "temperature", "value": -1}], retain=False)
    await cloud.publish(marker, [{"id": "marker", "value": 1}], retain=False)
    await cloud.wait_for_topic(marker)

    # The broker handles one client's messages in order: had the data topic
    # been allowed, it would have arrived before the marker.
    assert [marker] == [message.topic for message in cloud.messages]


async def test_thing_cannot_read_or_write_another_things_topics(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory(extra_things={OTHER_THING: OTHER_SECRET})
    own_expected = expected_topic(broker.thing_id, "gw-1-setting")
    other_expected = expected_topic(OTHER_THING, "gw-1-setting")
    snoop = thing_client(broker, subscriptions=[f"$thing/{OTHER_THING}/#", own_expected])
    async with CloudClient.for_broker(broker) as cloud, snoop:
        await cloud.publish(other_expected, [{"id": "GW1_40807", "value": 1}])
        await cloud.publish(own_expected, [{"id": "GW1_40807", "value": 2}])
        await snoop.wait_for_topic(own_expected)

        forged = data_topic(OTHER_THING, "sensorData")
        own_data = data_topic(broker.thing_id, "sensorData")
        await snoop.publish(forged, [{"id": "temperature", "value": -1}])
        await snoop.publish(own_data, [{"id": "temperature", "value": 1}])
        await cloud.wait_for_topic(own_data)

    # mosquitto 2.0 grants the subscription (SUBACK QoS 1) and filters on delivery.
    assert [own_expected] == [message.topic for message in snoop.messages]
    assert forged not in [message.topic for message in cloud.messages]


async def test_thing_cannot_publish_expected_config(broker: Broker, cloud: CloudClient) -> None:
    expected = expected_topic(broker.thing_id, "gw-1-setting")
    reported = f"$thing/{broker.thing_id}/$conf/$reported/gw-1-setting"
    async with thing_client(broker) as thing:
        await thing.publish(expected, [{"id": "GW1_40807", "value": 9}])
        await thing.publish(reported, [{"id": "GW1_40807", "value": 9}])
    await cloud.wait_for_topic(reported)

    assert [reported] == [message.topic for message in cloud.messages]


async def test_wrong_password_is_refused(broker: Broker) -> None:
    intruder = thing_client(broker, thing_secret="not-the-secret")

    with pytest.raises(MQTTConnectError):
        await intruder.connect()


async def test_wait_for_times_out_when_nothing_arrives(cloud: CloudClient) -> None:
    with pytest.raises(TimeoutError, match="fewer than 1 matching"):
        await cloud.wait_for(lambda message: message.topic == "$thing/nobody/$data/x", timeout=0.2)


async def test_broker_restart_keeps_port_and_cloud_resubscribes(
    broker: Broker, cloud: CloudClient
) -> None:
    port = broker.port

    await broker.restart_async()
    await cloud.wait_connected()
    async with thing_client(broker) as thing:
        await thing.publish(data_topic(broker.thing_id, "after"), [{"id": "n", "value": 1}])

    assert port == broker.port
    assert (await cloud.wait_for_topic(data_topic(broker.thing_id, "after")))[0].json() == [
        {"id": "n", "value": 1}
    ]


async def test_persistent_broker_keeps_retained_config_across_restart(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory(persistence=True)
    topic = expected_topic(broker.thing_id, "gw-1-mode")
    async with CloudClient.for_broker(broker) as cloud:
        await cloud.publish(topic, [{"id": "GW1_00800", "value": True}])

    await broker.restart_async()
    async with thing_client(broker) as thing:
        retained = await thing.wait_for_topic(topic)

    assert [Message(topic, b'[{"id":"GW1_00800","value":true}]', True)] == retained


def test_broker_stop_then_start_serves_the_same_port(tmp_path: Path) -> None:
    port = free_port()
    with Broker(tmp_path / "b", port=port) as broker:
        broker.stop()
        assert not broker.running
        broker.start()
        assert port == broker.port
        assert broker.running
    assert "mosquitto version" in broker.log_text()


def test_missing_binary_is_an_error_not_a_skip() -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        find_binary("mosquitto-that-does-not-exist")


# -- Modbus TCP --------------------------------------------------------------------------


async def test_tcp_reads_unit_values_and_counts_each_request(
    sim_unit: SimUnit, modbus_client: AsyncModbusTcpClient
) -> None:
    sim_unit.set_registers("holding", 0, [1, 2, 3])
    sim_unit.set_float32("input", 0, 21.5)
    sim_unit.set_bits("coil", 16, [True])
    sim_unit.set_string("holding", 100, "ORIO-DEMO", length=8)

    holding = await modbus_client.read_holding_registers(0, count=3, device_id=1)
    inputs = await modbus_client.read_input_registers(0, count=2, device_id=1)
    coils = await modbus_client.read_coils(15, count=3, device_id=1)
    text = await modbus_client.read_holding_registers(100, count=8, device_id=1)

    decode = modbus_client.convert_from_registers
    assert holding.registers == [1, 2, 3]
    assert decode(inputs.registers, modbus_client.DATATYPE.FLOAT32) == 21.5
    assert coils.bits[:3] == [False, True, False]
    assert decode(text.registers, modbus_client.DATATYPE.STRING) == "ORIO-DEMO"
    assert dict(sim_unit.read_counts) == {3: 2, 4: 1, 1: 1}
    assert sim_unit.requests == [(3, 0, 3), (4, 0, 2), (1, 15, 3), (3, 100, 8)]


async def test_tcp_writes_reach_the_unit(
    sim_unit: SimUnit, modbus_client: AsyncModbusTcpClient
) -> None:
    await modbus_client.write_register(806, 60, device_id=1)
    await modbus_client.write_coils(797, [True, False, True], device_id=1)

    assert sim_unit.get_registers("holding", 806) == [60]
    assert sim_unit.get_bits("coil", 797, 3) == [True, False, True]
    assert sim_unit.write_count == 2


async def test_invalid_address_answers_illegal_address(
    sim_unit: SimUnit, modbus_client: AsyncModbusTcpClient
) -> None:
    sim_unit.invalid["holding"].add(120)
    sim_unit.invalid["coil"].add(40)

    touching = await modbus_client.read_holding_registers(118, count=3, device_id=1)
    beside = await modbus_client.read_holding_registers(121, count=3, device_id=1)
    coil_touching = await modbus_client.read_coils(30, count=11, device_id=1)
    coil_beside = await modbus_client.read_coils(30, count=10, device_id=1)
    beyond_table = await modbus_client.read_holding_registers(
        sim_unit.max_address, count=2, device_id=1
    )

    assert touching.exception_code == ExcCodes.ILLEGAL_ADDRESS
    assert not beside.isError()
    assert coil_touching.exception_code == ExcCodes.ILLEGAL_ADDRESS
    assert not coil_beside.isError()
    assert beyond_table.isError()


async def test_refused_write_answers_an_exception_and_changes_nothing(
    sim_unit: SimUnit, modbus_client: AsyncModbusTcpClient
) -> None:
    sim_unit.set_registers("holding", 806, [5])
    sim_unit.refuse_writes = True

    response = await modbus_client.write_register(806, 60, device_id=1)

    assert response.exception_code == ExcCodes.DEVICE_FAILURE
    assert sim_unit.get_registers("holding", 806) == [5]


async def test_dead_tcp_unit_times_out_while_another_answers() -> None:
    alive, dead = SimUnit(1), SimUnit(2)
    alive.set_registers("holding", 0, [7])
    dead.dead = True
    async with await serve_tcp([alive, dead]) as server:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=server.port, timeout=DEAD_UNIT_TIMEOUT, retries=0
        )
        assert await client.connect()
        try:
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=1, device_id=2)
            answer = await client.read_holding_registers(0, count=1, device_id=1)
        finally:
            client.close()

    assert answer.registers == [7]
    assert dead.requests == [(3, 0, 1)]


async def test_wait_for_requests_wakes_on_arrival(
    sim_unit: SimUnit, modbus_client: AsyncModbusTcpClient
) -> None:
    async with asyncio.TaskGroup() as group:
        waiter = group.create_task(sim_unit.wait_for_requests(2), name="wait_for_requests")
        await modbus_client.read_holding_registers(0, count=1, device_id=1)
        assert not waiter.done()
        await modbus_client.read_holding_registers(0, count=1, device_id=1)

    with pytest.raises(TimeoutError, match="condition not met"):
        await sim_unit.wait_for_requests(3, timeout=0.1)


# -- Modbus RTU over a socat pty pair ---------------------------------------------------------


async def test_rtu_two_units_share_a_line_and_a_dead_one_stays_silent(pty_pair: PtyPair) -> None:
    meter, drive = SimUnit(1), SimUnit(2)
    meter.set_registers("input", 0, [101])
    drive.set_registers("input", 0, [202])
    server = await serve_rtu([meter, drive], pty_pair.device_a, BAUDRATE)
    client = AsyncModbusSerialClient(
        pty_pair.device_b, baudrate=BAUDRATE, timeout=DEAD_UNIT_TIMEOUT, retries=0
    )
    try:
        assert await client.connect()
        first = await client.read_input_registers(0, count=1, device_id=1)
        second = await client.read_input_registers(0, count=1, device_id=2)
        drive.dead = True
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=1, device_id=2)
        after = await client.read_input_registers(0, count=1, device_id=1)
    finally:
        client.close()
        await server.stop()

    assert (first.registers, second.registers, after.registers) == ([101], [202], [101])
    assert meter.requests == [(4, 0, 1), (4, 0, 1)]
    assert drive.requests == [(4, 0, 1), (4, 0, 1)]


async def test_the_demo_cloud_stopping_is_quiet_only_about_a_cancelled_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _quiet_cancelled(loop, {"message": "gmqtt", "exception": asyncio.CancelledError()})
        _quiet_cancelled(loop, {"message": "a real one", "exception": ValueError("bad")})

    assert ["a real one"] == [record.getMessage() for record in caplog.records]
