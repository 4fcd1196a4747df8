"""`orio-agent check-config`: the file validated in this process and described: each
device's request plan, the computations, the instruments, then the resolved config as
JSON with the secret masked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from agent.config import Config, load_settings, masked, resolve
from agent.config.model import Aggregate, Device
from agent.errors import ConfigError
from agent.sources.modbus.plan import ReadRequest
from agent.sources.modbus.poller import plan_groups

EXIT_OK = 0


def check_config(path: Path) -> int:
    """The file loaded here (pydantic and all), and described; 78 for a bad file."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"orio-agent: invalid config\n{exc}", file=sys.stderr)
        return ConfigError.exit_code
    config = resolve.resolve(settings)
    try:
        print(describe(config, path, masked(settings)), flush=True)
    except BrokenPipeError:  # `check-config | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def describe(config: Config, path: Path, shown: dict[str, Any]) -> str:
    """check-config's report: the plan per device, then the resolved config as JSON."""
    lines = [f"{path}: OK"]
    total_requests = total_rate = 0.0
    for conn, device in config.all_devices():
        groups = plan_groups(device)
        count = sum(len(requests) for _, requests in groups)
        total_requests += count
        total_rate += sum(len(requests) / seconds for seconds, requests in groups)
        template = f" (template {device.template!r})" if device.template else ""
        lines.append(
            f"  device {device.name!r} on {conn.name!r} unit {device.unit}: "
            f"{len(device.points)} points in {count} request{'s' if count != 1 else ''} "
            f"every {device.interval:g} s{template}"
        )
        for seconds, requests in groups:
            every = "" if seconds == device.interval else f"every {seconds:g} s: "
            lines += [f"    {every}{_request_line(request, device)}" for request in requests]
    if config.connections:
        points = sum(len(device.points) for _, device in config.all_devices())
        lines.append(
            f"  modbus total: {len(config.all_devices())} devices, {points} points, "
            f"{total_requests:g} requests, {total_rate:.3g} requests/s"
        )
    lines += _computed_lines(config)
    for instrument in config.instruments:
        mode = "polled" if instrument.request else "sampled"
        line = instrument.line
        lines.append(
            f"  instrument {instrument.name!r} on {line.device}: "
            f"{line.format}, {len(instrument.points)} points {mode} every {line.interval:g} s"
        )
    lines.append(json.dumps(shown, indent=2))
    return "\n".join(lines)


def _computed_lines(config: Config) -> list[str]:
    """check-config's lines for the aggregates and the derived points."""
    lines = []
    for _, device in config.all_devices():
        for point in device.points:
            if point.aggregate is not None:
                lines.append(f"  {_aggregate_line(point.id, point.aggregate, point.publish)}")
    for entry in config.derived:
        inputs = ", ".join(entry.expression.inputs)
        lines.append(
            f"  derived {entry.id!r} in {entry.bucket!r} = {entry.expression.source}"
            f" ({entry.shape}; inputs {inputs}; each no older than {entry.max_input_age:g} s)"
        )
        if entry.aggregate is not None:
            lines.append(f"    {_aggregate_line(entry.id, entry.aggregate, entry.publish)}")
    return lines


def _aggregate_line(point_id: str, aggregate: Aggregate, publish: bool) -> str:
    ids = ", ".join(output for _, output in aggregate.ids(point_id))
    raw = "" if publish else "; its readings not published"
    return f"aggregate of {point_id!r} every {aggregate.window_s} s: {ids}{raw}"


_SHOWN_POINTS = 6  # of a request's, in check-config's plan


def _request_line(request: ReadRequest, device: Device) -> str:
    """One planned read: `holding 0-9 (10 registers): a, b, c`."""
    unit = "bit" if request.table.is_bits else "register"
    where = f"{request.start}-{request.end - 1}" if request.count > 1 else str(request.start)
    ids = [device.points[span.index].id for span in request.spans]
    shown = ", ".join(ids[:_SHOWN_POINTS])
    if len(ids) > _SHOWN_POINTS:
        shown += f" and {len(ids) - _SHOWN_POINTS} more"
    size = f"{request.count} {unit}{'s' if request.count != 1 else ''}"
    return f"{request.table} {where} ({size}): {shown}"
