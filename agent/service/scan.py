"""`orio-agent scan rtu:/dev/ttyS1`: find the units on an RS-485 line.

Each address is asked for one holding register (function 3) at each baud rate and
parity given; any reply counts as present, an exception response included (a unit that
has no holding register 0 still answers). Bytes that make no reply (a bad CRC, a frame
cut short) are flagged: two units at one address answering together, or a unit at
another speed or parity. The time-out per address comes from the baud rate: the
request and the longest reply on the wire, the silences around them, and `turnaround`,
the time a unit takes to answer.

The line is used alone. When the running agent polls it, the scan runs inside the agent
through its control socket, with that connection paused (its pollers wait, the port is
closed and lent to the scan, then reopened), and says so; otherwise `scan` opens the
port itself. At the end it prints a TOML stub of `[[modbus]]` and
`[[modbus.devices]]` for what it found, which `check-config` accepts once the points
are filled in.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.config.model import RTU_CHAR_BITS, Connection, SerialSettings, rtu_silence
from agent.service.adhoc import UsageError, parse_target
from agent.service.control_client import NotRunning, Refused, Unreachable, ask
from agent.service.status import control_socket

EXIT_FAILED = 1
EXIT_USAGE = 2
REQUEST_CHARS = 8  # unit, function, start, count, CRC
REPLY_CHARS = 7  # the longest reply to it: unit, function, byte count, one register, CRC
DEFAULT_TURNAROUND = 0.05  # seconds a unit may take to answer


@dataclass
class Found:
    unit: int
    baudrate: int
    parity: str
    answer: str  # "answers function 3" or "exception <code> (<meaning>)"
    identity: dict[str, str] = field(default_factory=dict)  # server_id, vendor, product, ...


@dataclass
class Scan:
    found: list[Found] = field(default_factory=list)
    garbled: list[tuple[int, int, str, str]] = field(default_factory=list)  # unit, baud, parity
    seconds: float = 0.0


def per_address(baudrate: int, turnaround: float) -> float:
    """Seconds to give one address: request and reply on the wire, with the silences."""
    chars = (REQUEST_CHARS + REPLY_CHARS) * RTU_CHAR_BITS / baudrate
    return chars + 2 * rtu_silence(baudrate) + turnaround


def physical_minimum(baudrate: int, units: int) -> float:
    """The least a scan of `units` addresses can take: each request on the wire and its
    silence, with no time at all waited for a reply."""
    return units * (REQUEST_CHARS * RTU_CHAR_BITS / baudrate + rtu_silence(baudrate))


def parse_units(text: str) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise UsageError(f"--units {text}: give ranges like 1-247,250") from None
        if not 1 <= first <= last <= 255:
            raise UsageError(f"--units {text}: unit ids are 1..255")
        units += range(first, last + 1)
    return sorted(set(units))


def scan(
    target: str,
    *,
    baudrates: str | None,
    parities: str | None,
    units: str,
    turnaround: float,
    config: Path,
    control: Path | None,
    out: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
) -> int:
    try:
        line = _serial_target(target, config)
        endpoint = line.endpoint
        assert isinstance(endpoint, SerialSettings)
        speeds = _numbers(baudrates) if baudrates else [endpoint.baudrate]
        checks = (parities or endpoint.parity).upper().split(",")
        if any(p not in ("N", "E", "O") for p in checks):
            raise UsageError("--parity takes N, E and O, comma-separated")
        addresses = parse_units(units)
    except UsageError as exc:
        print(f"orio-agent scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    expected = sum(per_address(b, turnaround) for b in speeds) * len(checks) * len(addresses)
    print(
        f"scanning {endpoint.device}: {len(addresses)} addresses at {len(speeds)} speed(s) and "
        f"{len(checks)} parity(ies), about {expected:.0f} s",
        file=progress,
    )
    socket = control_socket(control, config)
    held = _held_by_agent(endpoint.device, socket)
    try:
        if held is not None:
            print(
                f"WARNING: the running agent polls {endpoint.device} (connection {held!r}): "
                f"its devices there are paused for the scan (about {expected:.0f} s)",
                file=progress,
            )
            args = {
                "connection": held,
                "baudrates": speeds,
                "parities": checks,
                "units": addresses,
                "turnaround": turnaround,
            }
            found = from_json(ask(socket, "scan", args, timeout=2 * expected + 30))
        else:
            found = _alone(line, speeds, checks, addresses, turnaround, progress)
    except (Refused, Unreachable) as exc:
        print(f"orio-agent scan: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out.write("\n".join(render(found, endpoint, turnaround)) + "\n")
    return 0 if found.found else EXIT_FAILED


def _alone(
    line: Connection,
    speeds: list[int],
    checks: list[str],
    addresses: list[int],
    turnaround: float,
    progress: TextIO,
) -> Scan:
    from agent.service.probing import scan_line  # the adapters: deferred

    bar = _progress_bar(progress)
    return asyncio.run(scan_line(line, speeds, checks, addresses, turnaround, bar))


def _serial_target(text: str, config: Path) -> Connection:
    target = parse_target(text, config)
    if target.connection is None or not isinstance(target.connection.endpoint, SerialSettings):
        raise UsageError(f"{text}: scan takes a serial line (rtu:/dev/ttyS1?baudrate=9600)")
    if target.connection.framing != "rtu":
        raise UsageError("scan speaks RTU")
    return target.connection


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--baudrates {text}: numbers, comma-separated") from None


def _held_by_agent(device: str, control: Path) -> str | None:
    """The running agent's connection on `device`, if it polls it."""
    try:
        status = ask(control, "status", {"points": False}, timeout=10.0)
    except (NotRunning, Unreachable, Refused):
        return None
    held = [c["name"] for c in status["connections"] if c["endpoint"] == device]
    return held[0] if held else None


def _progress_bar(stream: TextIO) -> Callable[[int, int], None]:
    """A progress bar on a terminal; nothing on a pipe."""
    if not stream.isatty():
        return lambda done, total: None
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        width = 40
        filled = width * done // total
        elapsed = time.monotonic() - started
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:.0f} s")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def render(result: Scan, endpoint: SerialSettings, turnaround: float) -> list[str]:
    lines = [f"scanned {endpoint.device} in {result.seconds:.1f} s"]
    if not result.found:
        lines.append(
            f"no unit answered (a unit slower than {turnaround * 1000:.0f} ms to answer would "
            "be missed: --turnaround 0.2)"
        )
    for found in result.found:
        lines.append(
            f"  unit {found.unit:>3} at {found.baudrate} baud, parity {found.parity}: "
            f"{found.answer}"
        )
        if found.identity:
            said = ", ".join(f"{key} {value!r}" for key, value in found.identity.items())
            lines.append(f"           {said}")
    for unit, baudrate, parity, received in result.garbled:
        lines.append(
            f"  unit {unit:>3} at {baudrate} baud, parity {parity}: GARBLED reply ({received}): "
            "two units at this address, or one at another speed or parity"
        )
    if result.found:
        lines += ["", *stub(result.found, endpoint)]
    return lines


def stub(found: Sequence[Found], endpoint: SerialSettings) -> list[str]:
    """`[[modbus]]` per speed and parity found, a `[[modbus.devices]]` per unit."""
    lines = ["# A start for the config file: fill in each device's points."]
    lines_of: dict[tuple[int, str], list[Found]] = {}
    for unit in found:
        lines_of.setdefault((unit.baudrate, unit.parity), []).append(unit)
    for index, ((baudrate, parity), units) in enumerate(lines_of.items()):
        lines += [
            "[[modbus]]",
            f'name = "rs485{"" if index == 0 else f"_{index}"}"',
            'transport = "rtu"',
            f'device = "{endpoint.device}"',
            f"baudrate = {baudrate}",
            f'parity = "{parity}"',
            "",
        ]
        for unit in units:
            product = unit.identity.get("product")
            lines += [
                "  [[modbus.devices]]",
                *([f"  # {unit.identity.get('vendor', '')} {product}".rstrip()] if product else []),
                f'  name = "unit{unit.unit}"',
                f"  unit = {unit.unit}",
                '  bucket = "sensorData"',
                f'  points = [ {{ id = "unit{unit.unit}_register_1", address = "40001" }} ]',
                "",
            ]
    return lines


def to_json(result: Scan) -> dict[str, Any]:
    """A scan's result as the control channel carries it."""
    return {
        "found": [vars(f) for f in result.found],
        "garbled": result.garbled,
        "seconds": result.seconds,
    }


def from_json(data: dict[str, Any]) -> Scan:
    return Scan(
        found=[Found(**f) for f in data["found"]],
        garbled=[(int(u), int(b), str(p), str(r)) for u, b, p, r in data["garbled"]],
        seconds=float(data["seconds"]),
    )
