"""`orio-agent run | check-config | status | --version`.

Exit status of `run`: 0 when stopped by SIGTERM/SIGINT, 78 (EX_CONFIG) for a config
file that does not load (systemd does not restart it), 70 (EX_SOFTWARE) when an
unexpected error stopped the agent: one `agent_failed` log line with the error and its
traceback, and systemd's `Restart=on-failure` starts it again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_PATH, confined
from agent.errors import ConfigError
from agent.service import allocator

# Light on purpose: `run` forks the config's validating child (agent.config.confined) as
# soon as it has its arguments, and imports the rest while the child works.

DEFAULT_TURNAROUND = 0.05  # seconds: scan's, as agent.service.scan has it
DEFAULT_SINCE = 300.0  # seconds: cloud verify's
EXIT_CONFIG = ConfigError.exit_code


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
        from agent.service import logs

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
        from agent.service import report

        return report.check_config(path)
    # Validated by a child while the agent's modules are imported here: pydantic and the
    # validated file never take memory in the agent (agent.config.confined).
    pending = confined.start(path)
    from agent.service import logs, running  # imported meanwhile: READY comes sooner

    try:
        config = pending.result()
    except ConfigError as exc:
        print(f"orio-agent: invalid config\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except confined.ConfinedLoadFailed as exc:
        print(f"orio-agent: {exc}", file=sys.stderr)
        return running.EXIT_SOFTWARE
    logs.configure(level=config.log.level, fmt=config.log.format)
    return running.main(config, path, args.control)


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
