"""Live latency while a ten-minute outage's backlog is replayed.

    python -m bench.livebacklog [--backlog 6000] [--replay-rate 50]

A queue file is filled with `--backlog` old messages (a ten-minute outage at 10
messages/s leaves 6,000), then the agent (a real process) starts with it and the broker
up, polling one simulated unit every 0.1 s. The cloud side records when each live
reading arrives; the run lasts until the whole backlog has been replayed at
`--replay-rate`. Prints the live readings' latency (arrival minus the reading's own
timestamp: median, p95, max, over the whole replay) and how long the replay took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agent.clock import Clock
from agent.outbox.disk import DiskOutbox, QueueSettings
from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import SimUnit, serve_tcp

BUCKET = "b"
WAIT = 60.0


async def fill(path: Path, thing_id: str, messages: int, made_ms: int) -> None:
    settings = QueueSettings(
        path=path, max_bytes=256 * 1024 * 1024, max_age=7 * 86400, replay_rate=0.0
    )
    queue = DiskOutbox(settings, clock=Clock(wall_ms=lambda: made_ms))
    for n in range(messages):
        queue.put(
            f"$thing/{thing_id}/$data/{BUCKET}",
            json.dumps([{"id": "old", "value": n, "timestamp": str(made_ms)}]).encode(),
        )
    await queue.aclose()


def config(broker: Broker, modbus_port: int, queue: Path, rate: float) -> str:
    return f"""
[thing]
id = "{broker.thing_id}"
secret = "{broker.thing_secret}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
tls = false
[queue]
path = "{queue}"
replay_rate = {rate}
[batch]
max_delay = 0.2
[[modbus]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {modbus_port}
  [[modbus.devices]]
  name = "meter"
  unit = 1
  interval = 0.1
  bucket = "{BUCKET}"
  points = [ {{ id = "n0", table = "holding", address = 0 }} ]
"""


async def run(backlog: int, rate: float, directory: Path) -> dict[str, object]:
    broker = Broker(directory / "broker").start()
    unit = SimUnit(1)
    unit.count_reads("holding", 0)
    plant = await serve_tcp([unit])
    cloud = CloudClient.for_broker(broker)
    await cloud.connect()
    queue = directory / "queue.db"
    await fill(queue, broker.thing_id, backlog, int(time.time() * 1000) - 600_000)
    (directory / "agent.toml").write_text(config(broker, plant.port, queue, rate))
    started = time.monotonic()
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        str(directory / "agent.toml"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        replay_time = backlog / rate if rate else 0
        await cloud.wait_for(
            lambda _: sum(1 for r in cloud.readings(BUCKET) if r["id"] == "old") >= backlog,
            timeout=replay_time * 2 + WAIT,
        )
        replayed_in = time.monotonic() - started
    finally:
        agent.terminate()
        await agent.wait()
        await cloud.disconnect()
        await plant.stop()
        broker.stop()
    latencies = sorted(
        arrived - int(reading["timestamp"]) / 1000
        for message, arrived in zip(cloud.messages, cloud.arrivals, strict=True)
        for reading in json.loads(message.payload)
        if reading["id"] == "n0"
    )

    def at(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3)

    return {
        "backlog_messages": backlog,
        "replay_rate": rate,
        "replayed_in_s": round(replayed_in, 1),
        "live_readings": len(latencies),
        "live_latency_p50_s": at(0.5),
        "live_latency_p95_s": at(0.95),
        "live_latency_max_s": round(latencies[-1], 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=6000)
    parser.add_argument("--replay-rate", type=float, default=50.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orio-livebacklog-") as tmp:
        print(json.dumps(asyncio.run(run(args.backlog, args.replay_rate, Path(tmp)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
