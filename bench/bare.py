"""The bare reference poller: ``python -m bench.bare --config CONFIG``.

The "bare 80-line poller" the project's figures are compared with, run by
:mod:`bench.compare` on the plant orio-agent polls. It uses the agent's own libraries,
pymodbus' async TCP client and gmqtt, and nothing else: every `interval` seconds each unit's
holding registers are read in one request, the response's float32 values decoded with one
``struct.unpack`` and published at once, one JSON message per response at QoS 1, on the
agent's data topic (``$thing/{id}/$data/{bucket}``) and in its payload format:
``[{"id":…,"value":…,"timestamp":"ms"}, …]``, the timestamp taken when the response
arrived. No queue, no validation, no batching: a failed read is skipped until the next
cycle, and a message the broker never acknowledged is lost at exit. SIGTERM or SIGINT
stops it: the polls end, the MQTT session is closed, exit status 0.

CONFIG is a JSON file, or the JSON itself: ``{"mqtt": {"host", "port", "client_id",
"username", "password"}, "topic", "interval", "units": [{"host", "port", "unit",
"address", "ids"}]}``; each id is a float32 point, two registers from `address` on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

from gmqtt import Client as MQTTClient
from gmqtt.mqtt.constants import MQTTv311
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

READ_TIMEOUT = 1.0  # seconds, as the bench's agent config sets


async def poll(unit: dict[str, Any], config: dict[str, Any], mqtt: Any) -> None:
    """Read one unit every interval and publish each response, until cancelled."""
    ids: list[str] = unit["ids"]
    registers = struct.Struct(f">{2 * len(ids)}H")
    floats = struct.Struct(f">{len(ids)}f")
    client = AsyncModbusTcpClient(
        unit["host"], port=unit["port"], timeout=READ_TIMEOUT, retries=0, reconnect_delay=0
    )
    loop = asyncio.get_running_loop()
    due = loop.time()
    try:
        while True:
            try:
                if not client.connected:
                    await client.connect()
                response = await client.read_holding_registers(
                    unit["address"], count=2 * len(ids), device_id=unit["unit"]
                )
            except ModbusException as exc:
                print(f"bare: unit at port {unit['port']}: {exc}", file=sys.stderr)
            else:
                stamp = str(time.time_ns() // 1_000_000)
                if not response.isError():
                    values = floats.unpack(registers.pack(*response.registers))
                    readings = [
                        {"id": i, "value": v, "timestamp": stamp}
                        for i, v in zip(ids, values, strict=True)
                    ]
                    payload = json.dumps(readings, separators=(",", ":"))
                    mqtt.publish(config["topic"], payload, qos=1)
            due += config["interval"]
            if due < loop.time():  # overran: the missed cycles are skipped
                due = loop.time()
            await asyncio.sleep(due - loop.time())
    finally:
        client.close()


async def run(config: dict[str, Any]) -> None:
    """Connect to the broker, poll every unit until SIGTERM or SIGINT, disconnect."""
    broker = config["mqtt"]
    mqtt = MQTTClient(broker["client_id"], clean_session=True)
    mqtt.set_auth_credentials(broker["username"], broker["password"])
    await mqtt.connect(broker["host"], broker["port"], version=MQTTv311)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.TaskGroup() as group:  # a poll cancelled by a signal is no error
            polls = [group.create_task(poll(unit, config, mqtt)) for unit in config["units"]]

            def stop() -> None:
                for task in polls:
                    task.cancel()

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop)
    finally:
        await mqtt.disconnect()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--config", required=True, help="a JSON file, or the JSON itself")
    text = parser.parse_args(argv).config
    asyncio.run(run(json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())))


if __name__ == "__main__":
    main()
