"""The probes' wiring to real connections: a `ModbusLine` per connection for a command
that runs without the agent, and a session of its own to publish what it read."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

from agent.cloud.mqtt import MqttSession
from agent.config import Config
from agent.config.model import Connection, Device, SerialSettings, rtu_silence
from agent.errors import (
    BrokerError,
    DeviceError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
)
from agent.service.scan import Found, Scan, per_address
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.points import Table
from agent.sources.modbus.probe import fragments, probe


async def probe_all(config: Config, chosen: Sequence[tuple[Connection, Device]]) -> list[Any]:
    """Each chosen device probed once: the connections at once, a connection's devices in
    turn (as their pollers share it)."""
    lines = {conn.name: ModbusLine(conn) for conn, _ in chosen}
    try:
        return await probe_on(lines, chosen)
    finally:
        for line in lines.values():
            await line.close()


async def probe_on(
    lines: Mapping[str, ModbusLine], chosen: Sequence[tuple[Connection, Device]]
) -> list[Any]:
    """The probes on `lines` (the agent's own, when it runs them): results in `chosen`'s
    order."""
    by_line: dict[str, list[Device]] = {}
    for conn, device in chosen:
        by_line.setdefault(conn.name, []).append(device)

    async def one_line(name: str, devices: list[Device]) -> list[Any]:
        return [await probe(device, lines[name]) for device in devices]

    done = await asyncio.gather(*(one_line(n, d) for n, d in by_line.items()))
    found = {result["device"]: result for results in done for result in results}
    return [found[device.name] for _, device in chosen]


async def publish_alone(
    config: Config, results: list[dict[str, Any]], limit: float
) -> dict[str, Any]:
    """The probe's readings on a session of this process's own, each bucket's batch
    waited for until its PUBACK."""
    batches = fragments(results)
    if not batches:
        return {"ok": True, "message": "nothing to publish"}
    session = MqttSession(
        thing_id=config.thing_id, secret=config.secret.get_secret_value(), config=config.mqtt
    )
    running = asyncio.create_task(session.run(), name="mqtt")
    try:
        async with asyncio.timeout(limit):
            await session.wait_connected()
            for bucket, parts in batches.items():
                topic = f"$thing/{config.thing_id}/$data/{bucket}"
                await session.publish(topic, b"[" + b",".join(parts) + b"]")
    except (TimeoutError, BrokerError) as exc:
        reason = str(exc) or f"no PUBACK within {limit:g} s"
        return {"ok": False, "message": f"not acknowledged: {reason}"}
    finally:
        await session.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    count = sum(len(parts) for parts in batches.values())
    return {"ok": True, "message": f"{count} readings, PUBACK received ({', '.join(batches)})"}


async def exchange(connection: Connection, args: Mapping[str, Any]) -> dict[str, Any]:
    """`orio-agent read`/`write` on a connection of this process's own."""
    line = ModbusLine(connection)
    try:
        return await exchange_on(line, args)
    finally:
        await line.close()


async def exchange_on(line: ModbusLine, args: Mapping[str, Any]) -> dict[str, Any]:
    """One read, or one write and its read-back, on `line`; failures in the result."""
    unit, start = int(args["unit"]), int(args["start"])
    table = Table(args["table"])
    values = args.get("values")
    count = len(values) if values is not None else int(args["count"])
    result: dict[str, Any] = {
        "unit": unit,
        "table": str(table),
        "start": start,
        "count": count,
        "connection": line.name,
        "error": None,
        "code": None,
    }
    began = time.perf_counter()
    try:
        if values is not None:
            result["values"] = list(values)
            await _write(line, unit, table, start, list(values))
            result["read_back"] = [int(v) for v in await line.read(unit, table, start, count)]
        else:
            result["values"] = [int(v) for v in await line.read(unit, table, start, count)]
    except DeviceRefused as exc:
        result.update(error=str(exc), code=exc.code, meaning=exc.meaning)
    except DeviceError as exc:
        result.update(error=str(exc))
    result["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 1)
    return result


async def _write(line: ModbusLine, unit: int, table: Table, start: int, values: list[int]) -> None:
    if table is Table.COIL:
        for offset, value in enumerate(values):
            await line.write_coil(unit, start + offset, bool(value))
    else:
        await line.write_registers(unit, start, values)


async def scan_line(
    line: Connection,
    baudrates: Sequence[int],
    parities: Sequence[str],
    units: Sequence[int],
    turnaround: float,
    progress: Callable[[int, int], None],
) -> Scan:
    """Each address of `units` asked once at each speed and parity (agent.service.scan)."""
    result = Scan()
    began = time.monotonic()
    total, done = len(baudrates) * len(parities) * len(units), 0
    assert isinstance(line.endpoint, SerialSettings)
    for baudrate in baudrates:
        for parity in parities:
            endpoint = dataclasses.replace(
                line.endpoint,
                baudrate=baudrate,
                parity=cast(Literal["N", "E", "O"], parity),
                silence=rtu_silence(baudrate),
            )
            timeout = per_address(baudrate, turnaround)
            bus = ModbusLine(dataclasses.replace(line, endpoint=endpoint, timeout=timeout))
            try:
                for unit in units:
                    await _try_unit(bus, unit, baudrate, parity, result)
                    done += 1
                    progress(done, total)
            finally:
                await bus.close()
    result.seconds = time.monotonic() - began
    return result


async def _try_unit(bus: ModbusLine, unit: int, baudrate: int, parity: str, result: Scan) -> None:
    try:
        await bus.read(unit, Table.HOLDING, 0, 1)
    except DeviceRefused as exc:
        answer = f"exception {exc.code} ({exc.meaning})"
    except DeviceProtocolError as exc:
        result.garbled.append((unit, baudrate, parity, exc.received[:16].hex(" ")))
        return
    except DeviceTimeout:
        return
    else:
        answer = "answers function 3"
    result.found.append(Found(unit, baudrate, parity, answer, await bus.identify(unit)))
