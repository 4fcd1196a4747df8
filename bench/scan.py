"""How long `orio-agent scan` takes for 247 addresses on a socat pty, beside the physical
minimum (each request on the wire and its silence, nothing waited for a reply).

    python -m bench.scan [--baudrates 9600,115200]

Three simulated RTU units answer (at 3, 17 and 200); the other 244 addresses are silent.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.service.scan import DEFAULT_TURNAROUND, per_address, physical_minimum
from sim.plant import SimUnit, serve_rtu
from sim.pty import PtyPair

ADDRESSES = 247


async def measure(baudrate: int, directory: Path) -> tuple[float, str]:
    with PtyPair(directory / f"pty{baudrate}") as pair:
        plant = await serve_rtu(
            [SimUnit(u) for u in (3, 17, 200)], pair.device_b, baudrate=baudrate
        )
        try:
            began = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent",
                "scan",
                f"rtu:{pair.device_a}?baudrate={baudrate}",
                "--control",
                str(directory / "none.sock"),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            out, _ = await process.communicate()
            seconds = time.monotonic() - began
        finally:
            await plant.stop()
    found = [line.split()[1] for line in out.decode().splitlines() if " baud, parity " in line]
    return seconds, ",".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baudrates", default="9600,115200")
    args = parser.parse_args()
    print(f"{'baud':>7} {'scan s':>8} {'expected s':>10} {'minimum s':>9}  found")
    with tempfile.TemporaryDirectory() as directory:
        for baudrate in (int(b) for b in args.baudrates.split(",")):
            seconds, found = asyncio.run(measure(baudrate, Path(directory)))
            expected = ADDRESSES * per_address(baudrate, DEFAULT_TURNAROUND)
            minimum = physical_minimum(baudrate, ADDRESSES)
            print(f"{baudrate:>7} {seconds:>8.1f} {expected:>10.1f} {minimum:>9.2f}  {found}")


if __name__ == "__main__":
    main()
