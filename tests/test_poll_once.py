"""`orio-agent poll-once`: the register map tried against the real units, before going live.

The command runs as a process, as an engineer would run it: alone (it opens the
connections itself) and through a running agent's control channel (the agent holds the
ports). What it prints is compared with what the simulated units hold.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import SimUnit, registers_from_bytes, serve_rtu, serve_tcp
from sim.pty import PtyPair
from tests.helpers import agent_toml, poll_until, running_agent
from tests.test_control import WAIT, orio_agent

POINTS = """[
    { id = "temperature", address = "40001", type = "float32" },
    { id = "count",       address = "40003" },
    { id = "total",       address = "30101", type = "uint32", interval = 2 },
  ]"""


def plant_body(port: int, *, units: tuple[int, ...] = (1,)) -> str:
    devices = "".join(
        f"""
  [[modbus.devices]]
  name = "m{unit}"
  unit = {unit}
  interval = 1
  bucket = "b"
  backoff_max = 1
  points = {POINTS.replace('id = "', f'id = "m{unit}_')}
"""
        for unit in units
    )
    return f"""
[[modbus]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.3
{devices}"""


def meter(unit_id: int) -> SimUnit:
    unit = SimUnit(unit_id)
    unit.set_registers("holding", 0, registers_from_bytes(struct.pack(">f", 12.5)))
    unit.set_registers("holding", 2, [7])
    unit.set_registers("input", 100, [0x0001, 0x0002])
    return unit


async def test_poll_once_alone_prints_raw_registers_and_what_would_be_published(
    tmp_path: Path, broker: Broker
) -> None:
    plant = await serve_tcp([meter(1)])
    config = tmp_path / "plant.toml"
    config.write_text(
        agent_toml(broker, plant_body(plant.port), control=f'socket = "{tmp_path}/none.sock"')
    )
    try:
        code, out, err = await orio_agent("poll-once", "--config", str(config))
        json_code, json_out, _ = await orio_agent("poll-once", "--config", str(config), "--json")
    finally:
        await plant.stop()

    assert (0, "") == (code, err), out
    lines = out.splitlines()
    assert "poll-once on its own connections" == lines[0]
    assert "device 'm1' on 'plc' unit 1: OK" == lines[1]
    assert lines[2].startswith("  holding 0+3 (function 3): ")
    assert "    raw 4148 0000 0007" == lines[3]
    assert lines[4].split() == ["m1_temperature", "float32", "ABCD", "12.5", "->", "b"]
    assert lines[5].strip().startswith('{"id":"m1_temperature","value":12.5,"timestamp":"')
    assert lines[8].startswith("  input 100+2 (function 4) every 2 s: ")
    assert "    raw 0001 0002" == lines[9]
    assert lines[10].split()[:4] == ["m1_total", "uint32", "ABCD", "65538"]
    assert 0 == json_code
    answer = json.loads(json_out)
    assert [[3, 0, 3], [4, 100, 2]] == [
        [r["function"], r["start"], r["count"]] for r in answer["devices"][0]["requests"]
    ]


async def test_poll_once_exits_1_naming_the_dead_unit_and_2_for_an_unknown_device(
    tmp_path: Path, broker: Broker
) -> None:
    dead = meter(2)
    dead.dead = True
    plant = await serve_tcp([meter(1), dead])
    config = tmp_path / "plant.toml"
    config.write_text(
        agent_toml(
            broker, plant_body(plant.port, units=(1, 2)), control=f'socket = "{tmp_path}/x.sock"'
        )
    )
    try:
        code, out, _ = await orio_agent("poll-once", "--config", str(config))
        unknown = await orio_agent("poll-once", "--config", str(config), "--device", "m9")
    finally:
        await plant.stop()

    assert 1 == code
    assert "device 'm1' on 'plc' unit 1: OK" in out.splitlines()
    assert "device 'm2' on 'plc' unit 2: FAILED" in out.splitlines()
    assert "FAILED: unit 2 did not answer function 3 at 0 within 0.3s" in out
    assert (2, "") == unknown[:2]
    assert "no Modbus device named 'm9' (devices: m1, m2)" in unknown[2]


async def test_poll_once_alone_publishes_and_waits_for_the_puback(
    tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    plant = await serve_tcp([meter(1)])
    config = tmp_path / "plant.toml"
    config.write_text(
        agent_toml(broker, plant_body(plant.port), control=f'socket = "{tmp_path}/none.sock"')
    )
    try:
        code, out, _ = await orio_agent("poll-once", "--config", str(config), "--publish")
        await cloud.wait_for(lambda m: len(cloud.readings("b")) >= 3, timeout=WAIT)
    finally:
        await plant.stop()

    assert 0 == code, out
    assert "published: 3 readings, PUBACK received (b)" == out.splitlines()[-1]
    assert {"m1_temperature": 12.5, "m1_count": 7, "m1_total": 65538} == {
        r["id"]: r["value"] for r in cloud.readings("b")
    }


async def test_poll_once_and_read_through_a_busy_agent_never_garble_a_shared_rtu_line(
    tmp_path: Path, broker: Broker, pty_pair: PtyPair
) -> None:
    units = [meter(1), meter(2)]
    plant = await serve_rtu(units, str(pty_pair.device_b), baudrate=115200)
    control = tmp_path / "control.sock"
    body = plant_body(0, units=(1, 2)).replace(
        'transport = "tcp"\nhost = "127.0.0.1"\nport = 0',
        f'transport = "rtu"\ndevice = "{pty_pair.device_a}"\nbaudrate = 115200',
    )
    body = body.replace("interval = 1\n", "interval = 0.05\n").replace(
        "interval = 2 }", "interval = 0.1 }"
    )
    try:
        async with running_agent(
            tmp_path, agent_toml(broker, body, control=f'socket = "{control}"')
        ) as agent:
            await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
            runs, reads = await asyncio.gather(
                asyncio.gather(
                    *(
                        orio_agent("poll-once", "--control", str(control), "--json")
                        for _ in range(6)
                    )
                ),
                asyncio.gather(
                    *(
                        orio_agent(
                            "read",
                            "plc",
                            "40001",
                            "--unit",
                            "2",
                            "--count",
                            "3",
                            "--json",
                            "--control",
                            str(control),
                        )
                        for _ in range(6)
                    )
                ),
            )
            errors = sum(poller.stats.read_errors for poller in agent.pollers)
            cycles = sum(poller.stats.cycles for poller in agent.pollers)
    finally:
        await plant.stop()

    assert [0] * 6 == [code for code, _, _ in runs], [out for _, out, _ in runs]
    for _, out, _ in runs:
        devices = json.loads(out)["devices"]
        assert [True, True] == [device["ok"] for device in devices]
        assert [12.5, 12.5] == [device["requests"][0]["points"][0]["value"] for device in devices]
    for code, out, _ in reads:
        assert 0 == code
        answer = json.loads(out)
        assert ("the running agent", [0x4148, 0, 7]) == (answer["through"], answer["values"])
    assert (0, True) == (errors, cycles > 20)
