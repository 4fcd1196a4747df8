"""One commissioning pass over a device: its real request plan, each reply in raw form
and decoded, what would be published, and each failure with its Modbus code.

`probe` runs the same plan (`plan_groups`) as the poller and its point-by-point decoding
(`PointReader`; the poller's runs publish the same, byte for byte), once, every interval
group included, with no deadband and no refusal learning:
what the engineer sees is what the unit answers to the agent's requests. Its result is
plain JSON, so that it can come from the running agent over the control channel as well
as from a connection opened by `orio-agent poll-once` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.config.model import Device
from agent.errors import DeviceError, DeviceRefused
from agent.pipeline.readings import encode_value, now_ms, timestamp_suffix
from agent.sources.modbus.plan import ReadRequest
from agent.sources.modbus.poller import PointReader, RegisterBus, plan_groups

FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


async def probe(
    device: Device, bus: RegisterBus, *, wall_ms: Callable[[], int] = now_ms
) -> dict[str, Any]:
    """Every planned request of `device` asked once, in order; never raises DeviceError."""
    readers = [PointReader(point) for point in device.points]
    requests: list[dict[str, Any]] = []
    for seconds, planned in plan_groups(device):
        for request in planned:
            requests.append(await _ask(device, bus, request, readers, seconds, wall_ms))
    await bus.end_cycle()
    return {
        "device": device.name,
        "connection": bus.name,
        "unit": device.unit,
        "interval_s": device.interval,
        "ok": all(r["error"] is None for r in requests)
        and all(p["error"] is None for r in requests for p in r["points"]),
        "requests": requests,
    }


async def _ask(
    device: Device,
    bus: RegisterBus,
    request: ReadRequest,
    readers: list[PointReader],
    seconds: float,
    wall_ms: Callable[[], int],
) -> dict[str, Any]:
    table = str(request.table)
    result: dict[str, Any] = {
        "table": table,
        "function": FUNCTION[table],
        "start": request.start,
        "count": request.count,
        "interval_s": seconds,
        "elapsed_ms": None,
        "values": None,
        "error": None,
        "code": None,
        "meaning": None,
        "points": [],
    }
    began = time.perf_counter()
    try:
        values = await bus.read(device.unit, request.table, request.start, request.count)
    except DeviceRefused as exc:
        result.update(error=str(exc), code=exc.code, meaning=exc.meaning)
    except DeviceError as exc:
        result.update(error=str(exc), error_type=type(exc).__name__)
    else:
        stamp = wall_ms()
        result["values"] = [int(v) for v in values]
        result["points"] = [
            _point(readers[span.index], values[span.start - request.start :][: span.width], stamp)
            for span in request.spans
        ]
    result["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 1)
    return result


def _point(reader: PointReader, raw: list[int] | list[bool], stamp: int) -> dict[str, Any]:
    found: dict[str, Any] = {
        "id": reader.point.id,
        "bucket": reader.point.bucket,
        "type": reader.point.type,
        "byte_order": reader.point.byte_order,
        "raw": [int(v) for v in raw],
        "value": None,
        "published": None,
        "error": None,
    }
    try:
        value = reader.value(raw)
    except ValueError as exc:
        found["error"] = str(exc)
        return found
    found["value"] = value
    found["published"] = (reader.prefix + encode_value(value) + timestamp_suffix(stamp)).decode()
    return found


def fragments(results: list[dict[str, Any]]) -> dict[str, list[bytes]]:
    """What the probe would publish, by bucket: the readings of the points that decoded."""
    by_bucket: dict[str, list[bytes]] = {}
    for device in results:
        for request in device["requests"]:
            for point in request["points"]:
                if point["published"] is not None:
                    by_bucket.setdefault(point["bucket"], []).append(point["published"].encode())
    return by_bucket
