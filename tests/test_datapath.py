"""The data path end to end: simulated Modbus units → agent → real mosquitto → the cloud.

Each test asserts on what the cloud received and on the requests the simulated unit saw.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from sim.broker import Broker
from sim.cloud import CloudClient, data_topic
from sim.plant import PlantServer, SimUnit, serve_rtu, serve_tcp
from sim.pty import PtyPair
from tests.helpers import agent_toml, running_agent, tcp_connection

WAIT = 30.0


async def test_every_value_type_arrives_with_the_documented_payload_shape(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    sim_unit.set_float32("input", 0, 25.5)
    sim_unit.set_registers("input", 2, [4321])  # humidity x 0.01
    sim_unit.set_struct("holding", 10, "i", -70000)
    sim_unit.set_bits("coil", 16, [True])
    sim_unit.set_string("holding", 100, "ORIO-7", length=4)
    sim_unit.set_registers("holding", 120, [0xBEEF])
    sim_unit.set_registers("holding", 121, [0b1000])
    devices = """
  [[modbus.devices]]
  name = "meter1"
  unit = 1
  interval = 0.5
  bucket = "sensorData"
  points = [
    { id = "temperature", address = "30001", type = "float32" },
    { id = "humidity", address = "30003", type = "uint16", scale = 0.01 },
    { id = "energy", table = "holding", address = 10, type = "int32" },
    { id = "running", address = "00017" },
    { id = "serial", table = "holding", address = 100, type = "string", length = 4 },
    { id = "alarm_word", table = "holding", address = 120, type = "hex" },
    { id = "pump_fault", table = "holding", address = 121, type = "bool", bit = 3 },
  ]
"""
    async with running_agent(tmp_path, agent_toml(broker, tcp_connection(tcp_plant, devices))):
        messages = await cloud.wait_for_topic(
            data_topic(broker.thing_id, "sensorData"), timeout=WAIT
        )

    payload = json.loads(messages[0].payload)
    assert isinstance(payload, list)
    by_id = {reading["id"]: reading for reading in payload}
    expected_values = {
        "temperature": 25.5,
        "humidity": 43.21,
        "energy": -70000,
        "running": True,
        "serial": "ORIO-7",
        "alarm_word": "BEEF",
        "pump_fault": True,
    }
    assert expected_values == {key: r["value"] for key, r in by_id.items()}
    for reading in payload:
        assert ["id", "value", "timestamp"] == list(reading)
        assert isinstance(reading["timestamp"], str)
        assert reading["timestamp"].isdigit()
    assert isinstance(by_id["energy"]["value"], int)
    assert isinstance(by_id["temperature"]["value"], float)


async def test_coalescing_reads_each_table_with_the_fewest_requests(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    # Holding 0..9 (gap 3 ≤ max_gap 8) and 40..41 (gap 30 > 8); input 0..1; coils 0 and 7.
    devices = """
  [[modbus.devices]]
  name = "meter1"
  unit = 1
  interval = 60
  bucket = "b"
  points = [
    { id = "h0", address = "40001" },
    { id = "h1", address = "40002" },
    { id = "h5", address = "40006", type = "float32" },
    { id = "h10", address = "40011" },
    { id = "h40", address = "40041", type = "uint32" },
    { id = "i0", address = "30001", type = "float32" },
    { id = "c0", address = "00001" },
    { id = "c7", address = "00008" },
  ]
"""
    async with running_agent(tmp_path, agent_toml(broker, tcp_connection(tcp_plant, devices))):
        readings = await cloud.wait_for(count=1, timeout=WAIT)
        assert readings

    reads = [r for r in sim_unit.requests if r.function_code in (1, 2, 3, 4)]
    expected = [(1, 0, 8), (4, 0, 2), (3, 0, 11), (3, 40, 2)]
    assert sorted(expected) == sorted((r.function_code, r.address, r.count) for r in reads)


async def test_batches_are_cut_at_max_readings(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    points = ",\n".join(f'{{ id = "p{i}", table = "holding", address = {i} }}' for i in range(7))
    devices = f"""
  [[modbus.devices]]
  name = "meter1"
  interval = 60
  bucket = "b"
  points = [ {points} ]
"""
    config = agent_toml(
        broker, tcp_connection(tcp_plant, devices), batch="max_readings = 3\nmax_delay = 0.3"
    )
    async with running_agent(tmp_path, config):
        messages = await cloud.wait_for_topic(
            data_topic(broker.thing_id, "b"), count=3, timeout=WAIT
        )
    assert [3, 3, 1] == [len(json.loads(m.payload)) for m in messages]
    ids = [r["id"] for m in messages for r in json.loads(m.payload)]
    assert [f"p{i}" for i in range(7)] == ids


async def test_a_cycles_readings_leave_when_it_ends_not_max_delay_later(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    """flush_at_cycle_end (the default): a batch no more readings can join before its
    max_delay goes when the cycle ends; one the next cycle can join waits, as before."""
    devices = """
  [[modbus.devices]]
  name = "meter1"
  interval = {interval}
  bucket = "b"
  points = [ {{ id = "p0", table = "holding", address = 0 }}, {{ id = "p1", table = "holding", address = 1 }} ]
"""
    topic = data_topic(broker.thing_id, "b")
    slow = tcp_connection(tcp_plant, devices.format(interval=3))
    (tmp_path / "slow").mkdir()
    async with running_agent(tmp_path / "slow", agent_toml(broker, slow, batch="max_delay = 3")):
        ages = []
        for count in (1, 2):
            messages = await cloud.wait_for_topic(topic, count=count, timeout=WAIT)
            arrived = time.time()
            ages.append(arrived - int(json.loads(messages[-1].payload)[0]["timestamp"]) / 1000)
    assert [2, 2] == [len(json.loads(m.payload)) for m in messages]
    # Gone at the cycle's end (plus the queue's 0.5 s commit), not max_delay's 3 s later.
    assert max(ages) < 1.5, ages

    cloud.clear()
    fast = tcp_connection(tcp_plant, devices.format(interval=0.2))
    (tmp_path / "fast").mkdir()
    async with running_agent(tmp_path / "fast", agent_toml(broker, fast, batch="max_delay = 1")):
        messages = await cloud.wait_for_topic(topic, count=2, timeout=WAIT)
    assert len(json.loads(messages[1].payload)) >= 4, "the next cycles join the batch"


async def test_a_dead_device_does_not_delay_a_live_one_on_another_connection(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
) -> None:
    live, dead = SimUnit(1), SimUnit(1)
    dead.dead = True
    live_plant, dead_plant = await serve_tcp([live]), await serve_tcp([dead])
    try:
        device = """
  [[modbus.devices]]
  name = "{name}"
  interval = 0.2
  bucket = "{name}"
  points = [ {{ id = "v", address = "40001" }} ]
"""
        body = tcp_connection(
            live_plant, device.format(name="live"), name="live_line"
        ) + tcp_connection(
            dead_plant, device.format(name="dead"), name="dead_line", extra="timeout = 1.5"
        )
        body = body.replace("timeout = 0.5\ntimeout = 1.5", "timeout = 1.5")
        async with running_agent(tmp_path, agent_toml(broker, body)):
            await live.wait_until(lambda unit: unit.read_count >= 1, timeout=WAIT)
            start = asyncio.get_running_loop().time()
            await live.wait_until(lambda unit: unit.read_count >= 11, timeout=WAIT)
            elapsed = asyncio.get_running_loop().time() - start
            assert dead.requests, "the dead unit was polled"
        # 10 cycles at 0.2 s: 2 s if the dead line (1.5 s time-outs) never holds it up.
        assert elapsed < 4.0, f"10 live cycles took {elapsed:.1f} s"
        assert not cloud.readings("dead")
    finally:
        await live_plant.stop()
        await dead_plant.stop()


async def test_rtu_line_with_two_units_and_a_dead_third(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    pty_pair: PtyPair,
) -> None:
    first, second, silent = SimUnit(1), SimUnit(2), SimUnit(3)
    silent.dead = True
    first.set_registers("holding", 0, [111])
    second.set_registers("holding", 0, [222])
    plant = await serve_rtu([first, second, silent], str(pty_pair.device_b), baudrate=38400)
    body = f"""
[[modbus]]
name = "rs485"
transport = "rtu"
device = "{pty_pair.device_a}"
baudrate = 38400
timeout = 0.3
{
        "".join(
            f'''
  [[modbus.devices]]
  name = "u{unit}"
  unit = {unit}
  interval = 0.3
  bucket = "line"
  points = [ {{ id = "u{unit}", address = "40001" }} ]
'''
            for unit in (1, 2, 3)
        )
    }
"""
    try:
        async with running_agent(tmp_path, agent_toml(broker, body)):
            await cloud.wait_for(
                lambda m: {"u1", "u2"} <= {r["id"] for r in cloud.readings("line")},
                timeout=WAIT,
            )
            # The other units keep their interval while unit 3 is backed off.
            await first.wait_until(lambda unit: unit.read_count >= 8, timeout=WAIT)
        values = {r["id"]: r["value"] for r in cloud.readings("line")}
        assert {"u1": 111, "u2": 222} == values
        assert len(silent.requests) < first.read_count
    finally:
        await plant.stop()


async def test_a_refused_coalesced_read_is_split_and_the_layout_remembered(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    # Register 3 does not exist in this device: a read of 0..6 is refused as a whole.
    sim_unit.invalid["holding"].add(3)
    sim_unit.set_registers("holding", 0, [10, 11, 12, 0, 14, 15, 16])
    points = ",\n".join(
        f'{{ id = "h{i}", table = "holding", address = {i} }}' for i in (0, 1, 2, 4, 5, 6)
    )
    devices = f"""
  [[modbus.devices]]
  name = "meter1"
  interval = 0.3
  bucket = "b"
  points = [ {points} ]
"""
    async with running_agent(tmp_path, agent_toml(broker, tcp_connection(tcp_plant, devices))):
        await cloud.wait_for(lambda m: len(cloud.readings("b")) >= 12, timeout=WAIT)
        reads_after_learning = len(sim_unit.requests)
        await sim_unit.wait_until(
            lambda u: len(u.requests) >= reads_after_learning + 4, timeout=WAIT
        )

    first_cycle = [(r.address, r.count) for r in sim_unit.requests[:3]]
    assert [(0, 7), (0, 3), (4, 3)] == first_cycle
    later = {(r.address, r.count) for r in sim_unit.requests[3:]}
    assert {(0, 3), (4, 3)} == later
    values = {r["id"]: r["value"] for r in cloud.readings("b")}
    assert {"h0": 10, "h1": 11, "h2": 12, "h4": 14, "h5": 15, "h6": 16} == values


async def test_readings_resume_after_the_device_connection_drops(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
) -> None:
    unit = SimUnit(1)
    unit.set_registers("holding", 0, [1])
    plant = await serve_tcp([unit])
    port = plant.port
    devices = """
  [[modbus.devices]]
  name = "meter1"
  interval = 0.2
  backoff_max = 0.5
  bucket = "b"
  points = [ { id = "v", address = "40001" } ]
"""
    async with running_agent(tmp_path, agent_toml(broker, tcp_connection(plant, devices))):
        await cloud.wait_for(lambda m: bool(cloud.readings("b")), timeout=WAIT)
        await plant.stop()
        unit.set_registers("holding", 0, [2])
        plant = await serve_tcp([unit], port=port)
        await cloud.wait_for(
            lambda m: any(r["value"] == 2 for r in cloud.readings("b")), timeout=WAIT
        )
    await plant.stop()


async def test_readings_resume_after_the_broker_restarts(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    devices = """
  [[modbus.devices]]
  name = "meter1"
  interval = 0.2
  bucket = "b"
  points = [ { id = "v", address = "40001" } ]
"""
    async with running_agent(
        tmp_path, agent_toml(broker, tcp_connection(tcp_plant, devices))
    ) as agent:
        await cloud.wait_for(lambda m: bool(cloud.readings("b")), timeout=WAIT)
        await broker.restart_async()
        await cloud.wait_connected(timeout=WAIT)
        sim_unit.set_registers("holding", 0, [77])
        await cloud.wait_for(
            lambda m: any(r["value"] == 77 for r in cloud.readings("b")), timeout=WAIT
        )
        assert agent.session.reconnects >= 1


async def test_readings_resume_after_the_serial_line_vanishes_and_returns(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
) -> None:
    unit = SimUnit(1)
    unit.set_registers("holding", 0, [1])
    pair = PtyPair(tmp_path / "pty").start()
    plant = await serve_rtu([unit], str(pair.device_b), baudrate=38400)
    body = f"""
[[modbus]]
name = "rs485"
transport = "rtu"
device = "{pair.device_a}"
baudrate = 38400
timeout = 0.3
  [[modbus.devices]]
  name = "u1"
  interval = 0.2
  backoff_max = 0.5
  bucket = "b"
  points = [ {{ id = "v", address = "40001" }} ]
"""
    try:
        async with running_agent(tmp_path, agent_toml(broker, body)):
            await cloud.wait_for(lambda m: bool(cloud.readings("b")), timeout=WAIT)
            await plant.stop()
            pair.stop()  # the USB adapter is pulled
            pair.start()  # and plugged back in: a new pty behind the same path
            unit.set_registers("holding", 0, [2])
            plant = await serve_rtu([unit], str(pair.device_b), baudrate=38400)
            await cloud.wait_for(
                lambda m: any(r["value"] == 2 for r in cloud.readings("b")), timeout=WAIT
            )
    finally:
        await plant.stop()
        pair.stop()
