"""`orio-agent poll-once`: the commissioning test of a register map, against the real
devices, before going live.

Each device's real request plan is asked once and decoded as the poller would
(agent.sources.modbus.probe): per request the function, start and count, the raw
registers in hex, the round-trip time or the failure with its Modbus exception code;
per point its type, byte order, value, bucket and the reading it would publish.

When the agent is running it holds the ports, so the request goes through its control
channel: the devices are asked on the agent's own connections, one request at a time
between its pollers' (never two frames at once on an RS-485 line). Otherwise the
command opens the connections itself. `--publish` sends the readings too: through the
agent, into its queue; alone, on a session of its own, waiting for the PUBACK.

Exit status: 0 every device answered every request and every point decoded; 1 one did
not; 2 no such device; 78 a config file that does not load (when it is read).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.service.control_client import NotRunning, Refused, Unreachable, ask
from agent.service.status import control_socket

EXIT_FAILED = 1
EXIT_NO_DEVICE = 2
PUBLISH_TIMEOUT = 30.0  # seconds for a session of its own to connect and be acknowledged


def poll_once(
    config_path: Path,
    *,
    device: str | None,
    publish: bool,
    control: Path | None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    args = {"device": device, "publish": publish}
    try:
        answer = ask(control_socket(control, config_path), "poll_once", args, timeout=120.0)
        how = "through the running agent"
    except NotRunning:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            print(f"orio-agent: invalid config\n{exc}", file=sys.stderr)
            return ConfigError.exit_code
        answer = asyncio.run(alone(config, device=device, publish=publish))
        how = "on its own connections"
    except Refused as exc:
        print(f"orio-agent poll-once: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE if exc.code == "no_device" else EXIT_FAILED
    except Unreachable as exc:
        print(f"orio-agent poll-once: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if "error" in answer:
        print(f"orio-agent poll-once: {answer['error']}", file=sys.stderr)
        return EXIT_NO_DEVICE
    if as_json:
        out.write(json.dumps(answer, indent=2) + "\n")
    else:
        out.write("\n".join(render(answer, how)) + "\n")
    ok = all(result["ok"] for result in answer["devices"])
    return 0 if ok and answer.get("published", {}).get("ok", True) else EXIT_FAILED


async def alone(config: Config, *, device: str | None, publish: bool) -> dict[str, Any]:
    """The probe on connections of this process's own (the agent is not running)."""
    from agent.service.probing import probe_all, publish_alone  # the adapters: deferred

    chosen = [(c, d) for c, d in config.all_devices() if device is None or d.name == device]
    if not chosen:
        return {"error": no_device(device, [d.name for _, d in config.all_devices()])}
    answer: dict[str, Any] = {"devices": await probe_all(config, chosen)}
    if publish:
        answer["published"] = await publish_alone(config, answer["devices"], PUBLISH_TIMEOUT)
    return answer


def no_device(name: str | None, known: list[str]) -> str:
    return f"no Modbus device named {name!r} (devices: {', '.join(known) or 'none'})"


def render(answer: dict[str, Any], how: str) -> list[str]:
    lines = [f"poll-once {how}"]
    for result in answer["devices"]:
        state = "OK" if result["ok"] else "FAILED"
        lines.append(
            f"device {result['device']!r} on {result['connection']!r} unit {result['unit']}: "
            f"{state}"
        )
        for request in result["requests"]:
            lines += _request_lines(request, result["interval_s"])
    published = answer.get("published")
    if published is not None:
        lines.append(f"published: {published['message']}")
    return lines


def _request_lines(request: dict[str, Any], device_interval: float) -> list[str]:
    every = (
        "" if request["interval_s"] == device_interval else f" every {request['interval_s']:g} s"
    )
    head = (
        f"  {request['table']} {request['start']}+{request['count']} "
        f"(function {request['function']}){every}: {request['elapsed_ms']} ms"
    )
    if request["error"] is not None:
        code = request["code"]
        said = f"exception {code} ({request['meaning']}): " if code is not None else ""
        return [f"{head}, FAILED: {said}{request['error']}"]
    lines = [head, f"    raw {_hex(request['values'], request['table'])}"]
    for point in request["points"]:
        order = f" {point['byte_order']}" if len(point["raw"]) > 1 else ""  # of several
        kind = f"{point['type']}{order}"
        if point["error"] is not None:
            lines.append(f"    {point['id']:<20} {kind:<14} CANNOT DECODE: {point['error']}")
            continue
        lines.append(
            f"    {point['id']:<20} {kind:<14} {json.dumps(point['value']):<14} "
            f"-> {point['bucket']}"
        )
        lines.append(f"      {point['published']}")
    return lines


def _hex(values: list[int], table: str) -> str:
    if table in ("coil", "discrete"):
        return " ".join(str(int(v)) for v in values)
    return " ".join(f"{v:04x}" for v in values)
