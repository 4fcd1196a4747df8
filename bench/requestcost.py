"""CPU per Modbus read through `ModbusLine`, against `sim.rogue`'s TCP device in the same
process: ``python -m bench.requestcost [--reads N]``.

With ``PYTHONPATH=<another tree>`` it measures that tree's agent (and this tree's sim).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from agent.config import resolve
from agent.config.schema import ModbusConfig
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.points import Table
from sim.rogue import RogueTcpDevice

WARM_UP = 200


async def measure(reads: int) -> float:
    """Microseconds of CPU per read of 10 holding registers."""
    async with RogueTcpDevice("ok") as device:
        config = ModbusConfig.model_validate(
            {
                "name": "bench",
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": device.port,
                "devices": [
                    {
                        "name": "m",
                        "bucket": "b",
                        "points": [{"id": "v", "table": "holding", "address": 0}],
                    }
                ],
            }
        )
        line = ModbusLine(resolve.connection(config))
        for _ in range(WARM_UP):
            await line.read(1, Table.HOLDING, 0, 10)
        started = time.process_time()
        for _ in range(reads):
            await line.read(1, Table.HOLDING, 0, 10)
        spent = time.process_time() - started
        await line.close()
    return spent / reads * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=3000)
    args = parser.parse_args()
    print(f"CPU per request: {asyncio.run(measure(args.reads)):.1f} µs ({args.reads} reads)")


if __name__ == "__main__":
    main()
