"""The probes' wiring to real connections: a `ModbusLine` per connection for a command
that runs without the agent, and a session of its own to publish what it read."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from agent.cloud.mqtt import MqttSession
from agent.config import Config
from agent.config.model import Connection, Device
from agent.errors import BrokerError
from agent.sources.modbus.client import ModbusLine
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
