"""A Modbus RTU line's physical limit: bits on the wire per read request and response.

Each character is 11 bits (start, 8 data, parity or a second stop bit, stop: the spec's
frame), a read request is 8 bytes (unit, function, address, count, CRC), its response
5 + 2 x count bytes (unit, function, byte count, data, CRC), and each frame is followed
by the specification's silence: 3.5 characters up to 19,200 baud, 1.75 ms above
(`agent.config.model.rtu_silence`, which the agent keeps too).

``python -m bench.line [BAUD ...]`` measures, besides, what the test rig itself carries
(`rig_requests_per_second`): a pty pair has no baud rate, and the bench's `-line` runs
emulate one, on a rig that has its own latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tty
from pathlib import Path

from agent.config.model import RTU_CHAR_BITS as BITS_PER_CHAR
from agent.config.model import rtu_silence
from sim.pty import PtyPair

REQUEST_BYTES = 8
RESPONSE_OVERHEAD_BYTES = 5


def response_bytes(registers: int) -> int:
    return RESPONSE_OVERHEAD_BYTES + 2 * registers


def transaction_seconds(baudrate: int, registers: int) -> float:
    """Seconds a read of `registers` registers occupies the line: both frames and silences."""
    frames = BITS_PER_CHAR * (REQUEST_BYTES + response_bytes(registers)) / baudrate
    return frames + 2 * rtu_silence(baudrate)


def transaction_bits(baudrate: int, registers: int) -> float:
    """The same in bit times of the line."""
    return transaction_seconds(baudrate, registers) * baudrate


def max_requests_per_second(baudrate: int, registers: int) -> float:
    """The most reads per second the line can carry, back to back."""
    return 1 / transaction_seconds(baudrate, registers)


def unit_turnaround(baudrate: int, registers: int) -> float:
    """Seconds from a request's first byte to its response's last on a real line.

    The request, the silence before the unit answers, and the response; the silence after
    the response is the master's to keep (the agent's inter-frame silence).
    """
    frames = BITS_PER_CHAR * (REQUEST_BYTES + response_bytes(registers)) / baudrate
    return frames + rtu_silence(baudrate)


# -- the test rig's own limit ---------------------------------------------------------------

RIG_SECONDS = 3.0  # measured per baud rate
RIG_MIN_REQUESTS = 30
_QUIT = b"q"


def rig_requests_per_second(
    baudrate: int, registers: int, directory: Path, *, seconds: float = RIG_SECONDS
) -> float:
    """The most reads per second a socat pty pair carries with the line's times kept.

    A master and a slave that do nothing else, in two processes, blocking, no asyncio and
    no pymodbus: the slave answers each 8-byte request `unit_turnaround` after it came in,
    the master sends the next `rtu_silence` after the reply came in, each waiting with
    `time.sleep` (nanosleep: the kernel's timer slack, no spinning). What they lose to the
    line's limit is the rig's (the pty, socat, the processes' wake-ups), not the agent's.
    """
    turnaround, silence = unit_turnaround(baudrate, registers), rtu_silence(baudrate)
    requests = max(RIG_MIN_REQUESTS, round(seconds / transaction_seconds(baudrate, registers)))
    reply = bytes(response_bytes(registers))
    with PtyPair(directory) as pair:
        master, slave = _raw(pair.device_b), _raw(pair.device_a)
        child = os.fork()
        if child == 0:  # the slave
            while os.read(slave, 64) != _QUIT:
                _sleep_until(time.monotonic() + turnaround)
                os.write(slave, reply)
            os._exit(0)
        started = time.monotonic()
        for _ in range(requests):
            os.write(master, bytes(REQUEST_BYTES))
            received = 0
            while received < len(reply):
                received += len(os.read(master, 64))
            _sleep_until(time.monotonic() + silence)
        elapsed = time.monotonic() - started
        os.write(master, _QUIT)
        os.waitpid(child, 0)
        os.close(master)
        os.close(slave)
    return requests / elapsed


def _raw(device: str) -> int:
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.line [--registers N] [--seconds S] [--json] [BAUD ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.line",
        description="Each baud rate's limit for reads of N registers, and the test rig's.",
    )
    parser.add_argument("baud", type=int, nargs="*", default=[9600, 19200, 115200])
    parser.add_argument("--registers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=RIG_SECONDS)
    parser.add_argument("--json", action="store_true", help="one JSON object per baud rate")
    args = parser.parse_args(argv)
    if not args.json:
        print("baud     limit req/s   rig req/s   rig % of limit   rig's loss per request")
    with tempfile.TemporaryDirectory() as directory:
        for baudrate in args.baud:
            limit = max_requests_per_second(baudrate, args.registers)
            rig = rig_requests_per_second(
                baudrate, args.registers, Path(directory) / str(baudrate), seconds=args.seconds
            )
            loss = 1 / rig - 1 / limit
            if args.json:
                print(json.dumps({"baudrate": baudrate, "limit": limit, "rig": rig}), flush=True)
            else:
                print(
                    f"{baudrate:<8} {limit:11.1f} {rig:11.1f} {100 * rig / limit:14.1f} %"
                    f" {loss * 1e6:15.0f} µs"
                )


if __name__ == "__main__":
    main()
