"""`orio-agent run | check-config | status | --version`.

Exit status of `run`: 0 when stopped by SIGTERM/SIGINT, 78 (EX_CONFIG) for a config
file that does not load (systemd does not restart it), 70 (EX_SOFTWARE) when an
unexpected error stopped the agent: one `agent_failed` log line with the error and its
traceback, and systemd's `Restart=on-failure` starts it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.config import DEFAULT_PATH, Config, confined
from agent.config.model import Aggregate, Device
from agent.errors import ConfigError
from agent.service import allocator, logs
from agent.service.supervise import describe_error, primary
from agent.sources.modbus.plan import ReadRequest
from agent.sources.modbus.poller import plan_groups

log = structlog.get_logger("agent.cli")

EXIT_OK = 0
DEFAULT_TURNAROUND = 0.05  # seconds: scan's, as agent.service.scan has it
DEFAULT_SINCE = 300.0  # seconds: cloud verify's
EXIT_SOFTWARE = 70  # EX_SOFTWARE: stopped by an unexpected error
EXIT_CONFIG = ConfigError.exit_code
# Test-only: `run` fails with an unexpected error after this many seconds (the exit
# status test, tests/test_cli.py). Not ORIO_AGENT_*: those are config overrides.
CRASH_AFTER = "ORIO_TEST_CRASH_AFTER"


def main(argv: list[str] | None = None) -> int:
    allocator.fix_malloc_thresholds()  # before anything allocates much (see allocator.py)
    parser = argparse.ArgumentParser(
        prog="orio-agent",
        description="Polls Modbus and serial devices and publishes their readings to the "
        "ORing PaaS MQTT broker.",
    )
    parser.add_argument("--version", action="version", version=f"orio-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent")
    run.add_argument(
        "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})"
    )
    run.add_argument("--control", type=Path, help="the control socket, instead of [control] socket")
    check = commands.add_parser(
        "check-config", help="validate a config file and print it resolved, secret masked"
    )
    check.add_argument("path", nargs="?", type=Path, help=f"config file (default {DEFAULT_PATH})")
    check.add_argument("--config", type=Path, help="the same, as `run` takes it")
    _add_status(commands)
    _add_poll_once(commands)
    _add_adhoc(commands)
    _add_doctor(commands)
    _add_scan(commands)
    _add_cloud(commands)
    args = parser.parse_args(argv)
    tool = TOOLS.get(args.command)
    if tool is not None:
        # The commands keep stdout for their own output; the adapters' log lines go to
        # stderr, warnings and worse only.
        logs.configure(level="warning", fmt="console", stream=sys.stderr)
        return tool(args)
    return _agent(args)


# The commands' modules are imported when one runs: `run` loads none of them.


def _status(args: argparse.Namespace) -> int:
    from agent.service import status

    socket = status.control_socket(args.control, args.config or DEFAULT_PATH)
    return status.status(socket, as_json=args.json, watch=args.watch, points=args.points)


def _poll_once(args: argparse.Namespace) -> int:
    from agent.service import commission

    return commission.poll_once(
        args.config,
        device=args.device,
        publish=args.publish,
        control=args.control,
        as_json=args.json,
    )


def _doctor(args: argparse.Namespace) -> int:
    from agent.service import doctor

    return doctor.doctor(args.config, control=args.control)


def _scan(args: argparse.Namespace) -> int:
    from agent.service import scan

    return scan.scan(
        args.target,
        baudrates=args.baudrates,
        parities=args.parity,
        units=args.units,
        turnaround=args.turnaround,
        config=args.config,
        control=args.control,
    )


def _cloud(args: argparse.Namespace) -> int:
    from agent.service import cloud

    return cloud.cloud(
        args.action,
        args.config,
        force=getattr(args, "force", False),
        prune=getattr(args, "prune", False),
        since=getattr(args, "since", DEFAULT_SINCE),
        group=getattr(args, "group", None),
        control=args.control,
    )


def _agent(args: argparse.Namespace) -> int:
    """`run` and `check-config`: the config file loaded whole."""
    path: Path = (
        args.config or (args.path if args.command == "check-config" else None) or DEFAULT_PATH
    )
    if args.command == "check-config":
        return _check_config(path)
    # Validated by a child while the agent's modules are imported here: pydantic and the
    # validated file never take memory in the agent (agent.config.confined).
    pending = confined.start(path)
    from agent.service import agent  # noqa: F401  (imported meanwhile: READY comes sooner)

    try:
        config = pending.result()
    except ConfigError as exc:
        print(f"orio-agent: invalid config\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except confined.ConfinedLoadFailed as exc:
        print(f"orio-agent: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE
    logs.configure(level=config.log.level, fmt=config.log.format)
    return asyncio.run(_run(config, path, args.control))


def _check_config(path: Path) -> int:
    """`check-config`: the file loaded here (pydantic and all), and described."""
    from agent.config import load_settings, masked, resolve

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"orio-agent: invalid config\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    config = resolve.resolve(settings)
    try:
        print(describe(config, path, masked(settings)), flush=True)
    except BrokenPipeError:  # `check-config | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _config_and_control(command: argparse.ArgumentParser) -> None:
    """The two options every command that may ask the running agent takes."""
    command.add_argument(
        "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})"
    )
    command.add_argument("--control", type=Path, help="the running agent's control socket")


def _add_doctor(commands: Any) -> None:
    examine = commands.add_parser(
        "doctor",
        help="check config, serial ports, endpoints, broker, clock and queue, with hints",
        description="Exit status 1 when any check fails.",
    )
    _config_and_control(examine)


def _adhoc(args: argparse.Namespace) -> int:
    from agent.service import adhoc

    common = {
        "unit": args.unit,
        "table": args.table,
        "config": args.config,
        "control": args.control,
    }
    if args.command == "read":
        return adhoc.read(args.target, args.address, count=args.count, as_json=args.json, **common)
    return adhoc.write(
        args.target,
        args.address,
        args.value,
        kind=args.type,
        byte_order=args.byte_order,
        yes=args.yes,
        **common,
    )


def _add_adhoc(commands: Any) -> None:
    targets = (
        "TARGET is a connection of the config, tcp://HOST[:PORT], rtu-over-tcp://HOST:PORT, "
        "rtu:/dev/ttyS1?baudrate=9600&parity=E or ascii:/dev/ttyS1?...; through the running "
        "agent when it holds it."
    )
    read = commands.add_parser(
        "read", help="read registers by hand, decoded every way", description=targets
    )
    write = commands.add_parser(
        "write", help="write a register or coil by hand, then read it back", description=targets
    )
    for command in (read, write):
        command.add_argument("target")
        command.add_argument("address", help='classic ("40001"), or 0-based with --table')
        command.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
        command.add_argument("--table", choices=["coil", "discrete", "input", "holding"])
        _config_and_control(command)
    read.add_argument("--count", type=int, default=1, help="registers or bits (default 1)")
    read.add_argument("--json", action="store_true")
    write.add_argument("value", help="a number (for a register) or 1/0, true/false (a coil)")
    write.add_argument(
        "--type",
        choices=["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"],
        help="what the value is encoded as (default uint16)",
    )
    write.add_argument("--byte-order", default="ABCD", choices=["ABCD", "CDAB", "BADC", "DCBA"])
    write.add_argument("--yes", action="store_true", help="really write")


def _add_cloud(commands: Any) -> None:
    side = commands.add_parser(
        "cloud",
        help="the thing's data buckets, shapes and configs through the PaaS REST API",
        description="The credentials come from [paas] (a key, a file, an environment "
        "variable or a systemd credential), never from the command line.",
    )
    actions = side.add_subparsers(dest="action", required=True)
    helps = {
        "plan": "what the config publishes, against the thing's buckets and shapes "
        "(exit 0 in sync, 2 changes pending, 1 error)",
        "apply": "create what is missing (--prune deletes, --force re-creates)",
        "verify": "the cloud's last telemetry of each point, fresh or not",
        "config": "each setting: the cloud's expected and reported values, and the agent's",
    }
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        _config_and_control(action)
        if name == "apply":
            action.add_argument("--prune", action="store_true", help="delete what the config lacks")
            action.add_argument(
                "--force",
                action="store_true",
                help="re-create shapes of another type (history lost)",
            )
        if name == "verify":
            action.add_argument(
                "--since", type=float, default=300.0, help="seconds a last value may be old (300)"
            )
        if name == "config":
            action.add_argument("group", nargs="?", help="only this config group")


def _add_scan(commands: Any) -> None:
    find = commands.add_parser(
        "scan",
        help="find the units on an RS-485 line, with a config stub",
        description="TARGET: rtu:/dev/ttyS1?baudrate=9600&parity=E, or a connection of the "
        "config. Needs the line alone. Exit status: 0 units found, 1 none, 2 bad arguments.",
    )
    find.add_argument("target")
    find.add_argument("--baudrates", help="comma-separated, e.g. 9600,19200 (default the target's)")
    find.add_argument("--parity", help="comma-separated N,E,O (default the target's)")
    find.add_argument("--units", default="1-247", help="unit ids, e.g. 1-247 (the default)")
    find.add_argument(
        "--turnaround",
        type=float,
        default=DEFAULT_TURNAROUND,
        help=f"seconds a unit may take to answer (default {DEFAULT_TURNAROUND})",
    )
    _config_and_control(find)


def _add_poll_once(commands: Any) -> None:
    once = commands.add_parser(
        "poll-once",
        help="the commissioning test: each device's requests once, raw and decoded",
        description="Runs the real request plan and decoder once against the real devices. "
        "Through the running agent's control socket when it runs (it holds the ports), on "
        "connections of its own otherwise. Exit status: 0 all answered and decoded, 1 a "
        "device failed, 2 no such device, 78 a bad config file.",
    )
    _config_and_control(once)
    once.add_argument("--device", help="only this device")
    once.add_argument("--publish", action="store_true", help="publish the readings too")
    once.add_argument("--json", action="store_true", help="the results as JSON")


def _add_status(commands: Any) -> None:
    show = commands.add_parser(
        "status",
        help="what the running agent sees: broker, queue, connections, devices, points",
        description="Asks the running agent through its control socket. Exit status: 0 it "
        "answered, 3 it is not running, 4 it cannot be asked (permissions, a broken reply).",
    )
    show.add_argument("--json", action="store_true", help="the whole state as JSON")
    show.add_argument("--watch", action="store_true", help="redraw every second, like top")
    show.add_argument("--points", action="store_true", help="each point's last value too")
    show.add_argument("--control", type=Path, help="the control socket to ask")
    show.add_argument(
        "--config", type=Path, help=f"read [control] socket from this file (default {DEFAULT_PATH})"
    )


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


async def _run(config: Config, path: Path, control: Path | None) -> int:
    from agent.service.agent import Agent  # deferred: check-config need not import the adapters

    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    during = "start"
    try:
        agent = Agent(config, config_path=path, control_path=control)
        during = "run"
        async with asyncio.TaskGroup() as group:
            group.create_task(agent.run(stop, reload), name="agent")
            crash_after = os.environ.get(CRASH_AFTER)
            if crash_after:
                group.create_task(_crash_after(float(crash_after), stop), name="test-crash")
    except Exception as exc:  # whatever stopped the agent: said once, and a failed exit
        log.error(
            "agent_failed",
            during=during,
            error_type=type(primary(exc)).__name__,
            error=describe_error(exc),
            exit_status=EXIT_SOFTWARE,
            exc_info=primary(exc),
        )
        return EXIT_SOFTWARE
    return EXIT_OK


async def _crash_after(seconds: float, stop: asyncio.Event) -> None:
    """The test-only failure of CRASH_AFTER, unless the agent is stopped first."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        raise RuntimeError(f"{CRASH_AFTER}={seconds:g}: an injected failure") from None


# The commands other than `run` and `check-config`, by name.
TOOLS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": _status,
    "poll-once": _poll_once,
    "read": _adhoc,
    "write": _adhoc,
    "doctor": _doctor,
    "scan": _scan,
    "cloud": _cloud,
}


if __name__ == "__main__":
    sys.exit(main())
