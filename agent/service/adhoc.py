"""`orio-agent read` and `orio-agent write`: one Modbus request by hand, in the spirit of
mbpoll, with every reading of the registers side by side.

A target is a connection named in the config, or written out:

    tcp://10.0.0.5[:502]            Modbus TCP
    rtu-over-tcp://10.0.0.9:4001    RTU frames through a serial device server
    rtu:/dev/ttyS1?baudrate=9600&parity=E&stopbits=1&bytesize=8
    ascii:/dev/ttyS2?baudrate=9600&parity=E&bytesize=7

When the agent is running and holds that connection (by name, endpoint or serial
device) the request goes through its control socket and is asked on the agent's own
connection between its pollers' requests; otherwise the command opens it itself.

`read` shows each register in hex, unsigned and signed, and, for 2 and 4 registers, the
value decoded as every type of that width in all four byte orders, so that the right
type and order can be picked by eye. `write` sends one coil (function 5), one register
(6) or several (16), refused unless `--yes` is given, then reads them back.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, cast
from urllib.parse import parse_qs, urlsplit

from agent.config import load_config
from agent.config.model import Connection, Framing, SerialSettings, TcpEndpoint, rtu_silence
from agent.errors import ConfigError
from agent.service.control_client import NotRunning, Refused, Unreachable, ask
from agent.service.status import control_socket
from agent.sources.modbus.decode import decode_registers, encode_registers
from agent.sources.modbus.points import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    ByteOrder,
    PointType,
    Table,
    parse_classic_address,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
ORDERS: tuple[ByteOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
WIDE_TYPES: dict[int, tuple[PointType, ...]] = {
    2: ("int32", "uint32", "float32"),
    4: ("int64", "uint64", "float64"),
}
_TIMEOUT = 1.0  # seconds, a written-out target's


class UsageError(Exception):
    """A target, address or value the command cannot use (exit 2)."""


@dataclass(frozen=True)
class Target:
    """Where to ask: a connection of the config (`name`), or one written out."""

    name: str | None
    connection: Connection | None  # None: `name`, only the running agent knows it


def parse_target(text: str, config_path: Path) -> Target:
    if "://" not in text and ":" not in text:
        return Target(text, _named(text, config_path))
    parts = urlsplit(text)
    scheme = parts.scheme
    if scheme in ("tcp", "rtu-over-tcp"):
        if not parts.hostname:
            raise UsageError(f"{text}: no host (tcp://HOST[:PORT])")
        framing: Framing = "mbap" if scheme == "tcp" else "rtu"
        endpoint: TcpEndpoint | SerialSettings = TcpEndpoint(parts.hostname, parts.port or 502)
    elif scheme in ("rtu", "ascii"):
        framing = "rtu" if scheme == "rtu" else "ascii"
        endpoint = _serial(parts.path, parse_qs(parts.query), framing)
    else:
        raise UsageError(f"{text}: a target is tcp://, rtu-over-tcp://, rtu:, ascii: or a name")
    connection = Connection(text, endpoint, framing, _TIMEOUT, 0.0, 0.0, False, ())
    return Target(None, connection)


def _serial(device: str, query: dict[str, list[str]], framing: Framing) -> SerialSettings:
    if not device:
        raise UsageError("a serial target names its device: rtu:/dev/ttyS1?baudrate=9600")
    try:
        baudrate = int(query.get("baudrate", ["9600"])[0])
        parity = query.get("parity", ["N"])[0].upper()
        bytesize = int(query.get("bytesize", ["8"])[0])
        stopbits = int(query.get("stopbits", ["1"])[0])
    except ValueError as exc:
        raise UsageError(f"{device}: {exc}") from None
    if parity not in ("N", "E", "O") or bytesize not in (7, 8) or stopbits not in (1, 2):
        raise UsageError("parity is N, E or O; bytesize 7 or 8; stopbits 1 or 2")
    silence = rtu_silence(baudrate) if framing == "rtu" else 0.0
    return SerialSettings(
        device,
        baudrate,
        cast(Literal["N", "E", "O"], parity),
        cast(Literal[7, 8], bytesize),
        cast(Literal[1, 2], stopbits),
        silence,
        low_latency=False,
        rs485=False,
    )


def _named(name: str, config_path: Path) -> Connection | None:
    """The config's connection of that name; None when the file cannot be read (the
    running agent may still know it)."""
    try:
        config = load_config(config_path)
    except ConfigError:
        return None
    for conn in config.connections:
        if conn.name == name:
            return conn
    known = ", ".join(conn.name for conn in config.connections) or "none"
    raise UsageError(f"no connection named {name!r} in {config_path} (connections: {known})")


def parse_address(text: str, table: str | None) -> tuple[Table, int]:
    if table is None:
        try:
            return parse_classic_address(text)
        except ValueError as exc:
            raise UsageError(f"{text}: {exc} (or give --table and a 0-based address)") from None
    try:
        return Table(table), int(text, 0)
    except ValueError:
        raise UsageError(f"{text}: with --table, a 0-based address (0..65535)") from None


# -- asking -------------------------------------------------------------------------------


def request(target: Target, args: dict[str, Any], control: Path) -> dict[str, Any]:
    """`args` asked through the running agent if it holds the target, else directly."""
    try:
        held = ask(control, "read" if "values" not in args else "write", _with(target, args))
    except NotRunning:
        held = None
    except Refused as exc:
        if exc.code != "no_connection":
            raise
        held = None
    if held is not None:
        return {**held, "through": "the running agent"}
    if target.connection is None:
        raise UsageError(f"no connection named {target.name!r}: the agent is not running")
    from agent.service.probing import exchange  # the adapters: deferred

    return {**asyncio.run(exchange(target.connection, args)), "through": "its own connection"}


def _with(target: Target, args: dict[str, Any]) -> dict[str, Any]:
    where = {"connection": target.name}
    if target.connection is not None:
        where["endpoint"] = str(target.connection.endpoint)
    return {**args, **where}


# -- the commands -------------------------------------------------------------------------


def read(
    target_text: str,
    address: str,
    *,
    unit: int,
    count: int,
    table: str | None,
    config: Path,
    control: Path | None,
    as_json: bool,
    out: TextIO = sys.stdout,
) -> int:
    try:
        target = parse_target(target_text, config)
        where, start = parse_address(address, table)
        limit = MAX_READ_BITS if where.is_bits else MAX_READ_REGISTERS
        if not 1 <= count <= limit or start + count > 65536:
            raise UsageError(f"--count is 1..{limit}, within the table")
        args = {"unit": unit, "table": str(where), "start": start, "count": count}
        answer = request(target, args, control_socket(control, config))
    except UsageError as exc:
        print(f"orio-agent read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (Refused, Unreachable) as exc:
        print(f"orio-agent read: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        out.write(json.dumps(answer, indent=2) + "\n")
    else:
        out.write("\n".join(render_read(answer)) + "\n")
    return 0 if answer.get("error") is None else EXIT_FAILED


def write(
    target_text: str,
    address: str,
    value: str,
    *,
    unit: int,
    kind: str | None,
    byte_order: str,
    table: str | None,
    yes: bool,
    config: Path,
    control: Path | None,
    out: TextIO = sys.stdout,
) -> int:
    try:
        target = parse_target(target_text, config)
        where, start = parse_address(address, table)
        values = _encoded(where, value, kind, byte_order)
        if not yes:
            raise UsageError(
                f"this writes {values} to {where} {start} of unit {unit}: add --yes to do it"
            )
        args = {"unit": unit, "table": str(where), "start": start, "values": values}
        answer = request(target, args, control_socket(control, config))
    except UsageError as exc:
        print(f"orio-agent write: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (Refused, Unreachable) as exc:
        print(f"orio-agent write: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out.write("\n".join(render_write(answer)) + "\n")
    ok = answer.get("error") is None and answer.get("read_back") == values
    return 0 if ok else EXIT_FAILED


def _encoded(table: Table, value: str, kind: str | None, byte_order: str) -> list[int]:
    if table in (Table.INPUT, Table.DISCRETE):
        raise UsageError(f"the {table} table is read-only")
    if table is Table.COIL:
        if value.lower() not in ("0", "1", "true", "false", "on", "off"):
            raise UsageError("a coil takes 1/0, true/false or on/off")
        return [1 if value.lower() in ("1", "true", "on") else 0]
    point_type = cast(PointType, kind or "uint16")  # argparse's choices
    try:
        number: int | float = float(value) if point_type.startswith("float") else int(value, 0)
        return encode_registers(number, point_type, byte_order=cast(ByteOrder, byte_order))
    except ValueError as exc:
        raise UsageError(f"{value}: {exc}") from None


# -- showing ------------------------------------------------------------------------------


def render_read(answer: dict[str, Any]) -> list[str]:
    head = (
        f"unit {answer['unit']} {answer['table']} {answer['start']}+{answer['count']} "
        f"through {answer['through']}"
    )
    if answer.get("error") is not None:
        return [head, f"FAILED: {_failure(answer)}"]
    values: list[int] = answer["values"]
    lines = [f"{head}: {answer['elapsed_ms']} ms"]
    if answer["table"] in ("coil", "discrete"):
        return lines + [f"  {answer['start'] + i:>5}  {v}" for i, v in enumerate(values)]
    first = 40001 if answer["table"] == "holding" else 30001
    lines.append(f"  {'address':>7}  {'classic':>7}  {'hex':>6}  {'unsigned':>8}  {'signed':>7}")
    for i, v in enumerate(values):
        signed = v - 65536 if v >= 32768 else v
        address = answer["start"] + i
        classic = first + address if address < 9999 else (first - 1) * 10 + 1 + address
        lines.append(f"  {address:>7}  {classic:>7}  0x{v:04x}  {v:>8}  {signed:>7}")
    for width, types in WIDE_TYPES.items():
        if len(values) >= width:
            lines += decode_table(values[:width], types)
    return lines


def decode_table(registers: list[int], types: tuple[PointType, ...]) -> list[str]:
    """The first `len(registers)` registers as each type (a column) in each byte order
    (a row): 21 columns a type, so that a uint64 fits, in 80 columns in all."""
    lines = ["", f"  {len(registers)} registers" + "".join(f"{t:>21}" for t in types)]
    for order in ORDERS:
        cells = [_shown(decode_registers(registers, t, byte_order=order)) for t in types]
        lines.append(f"  {order:<11}" + "".join(f"{c:>21}" for c in cells))
    return lines


def _shown(value: object) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.9g}"
        return text if len(text) <= 20 else f"{value:.9e}"
    return str(value)


def render_write(answer: dict[str, Any]) -> list[str]:
    head = f"unit {answer['unit']} {answer['table']} {answer['start']} <- {answer['values']}"
    head += f" through {answer['through']}"
    if answer.get("error") is not None:
        return [head, f"FAILED: {_failure(answer)}"]
    back = answer.get("read_back")
    said = "read back the same" if back == answer["values"] else f"READ BACK {back}"
    return [f"{head}: written, {said}"]


def _failure(answer: dict[str, Any]) -> str:
    code = answer.get("code")
    said = f"exception {code} ({answer['meaning']}): " if code is not None else ""
    return f"{said}{answer['error']}"
