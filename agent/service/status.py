"""`orio-agent status [--json] [--watch] [--points]`: what the running agent sees.

The agent is asked through its control socket (agent.service.control) for its state
(`status_document` in agent.service.state); this module only shows it. The text fits
80 columns; `--watch` redraws it in place every second, like `top`, with plain ANSI
escapes (clear and home): nothing to install, and it works in any terminal over SSH.

Exit status (the LSB convention for status commands): 0 the agent answered, 3 it is
not running, 4 its state cannot be known (the socket may not be used, a broken reply).
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agent.service.control_client import NotRunning, Refused, Unreachable, ask

DEFAULT_SOCKET = Path("/run/orio-agent/control.sock")
EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4
WATCH_INTERVAL = 1.0
_CLEAR = "\x1b[H\x1b[2J"
_NAME = 14  # columns for a name in the tables
_ERROR = 60  # characters of a last error shown


def control_socket(control: Path | None, config: Path) -> Path:
    """The socket to ask: `--control`, else the config file's `[control] socket`, else
    the service's. The file is read for that key alone: no secret is needed to ask."""
    if control is not None:
        return control
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
        socket = data["control"]["socket"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return DEFAULT_SOCKET
    return Path(socket) if isinstance(socket, str) else DEFAULT_SOCKET


def status(
    socket: Path,
    *,
    as_json: bool,
    watch: bool,
    points: bool,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    while True:
        try:
            document = ask(socket, "status", {"points": points or as_json})
        except NotRunning as exc:
            print(f"orio-agent status: {exc}", file=sys.stderr)
            return EXIT_NOT_RUNNING
        except (Unreachable, Refused) as exc:
            print(f"orio-agent status: {exc}", file=sys.stderr)
            return EXIT_UNKNOWN
        text = json.dumps(document, indent=2) if as_json else "\n".join(render(document))
        out.write((_CLEAR if watch else "") + text + "\n")
        out.flush()
        if not watch:
            return EXIT_RUNNING
        try:
            sleep(WATCH_INTERVAL)
        except KeyboardInterrupt:
            return EXIT_RUNNING


def render(doc: dict[str, Any]) -> list[str]:
    """The status document as text for a terminal, 80 columns."""
    agent, broker, queue = doc["agent"], doc["broker"], doc["queue"]
    lines = [f"orio-agent {agent['version']}, up {duration(agent['uptime_s'])}"]
    if broker["connected"]:
        link = f"connected for {duration(broker['connected_for_s'])}"
    else:
        link = "NOT CONNECTED"
    if broker["last_puback_age_s"] is not None:
        link += f", last PUBACK {duration(broker['last_puback_age_s'])} ago"
    lines.append(f"broker   {link}, {broker['reconnects']} reconnects")
    lines += [
        f"         subscription refused: {topic}" for topic in broker["refused_subscriptions"]
    ]
    lines.append(f"clock    {'trusted' if doc['clock']['trusted'] else 'NOT SET: readings held'}")
    lines.append(_queue_line(queue))
    if doc["connections"]:
        lines.append(
            f"  {'connection':<{_NAME}} {'endpoint':<26} {'state':<9} {'req/s':>6} {'busy':>5} "
            f"{'rtt ms (p95)':>13}"
        )
        for conn in doc["connections"]:
            lines.append(_connection_line(conn))
    if doc["sources"]:
        lines.append(
            f"  {'source':<{_NAME}} {'on':<{_NAME}} {'state':<8} {'every':>6} {'kept':>7} "
            f"{'last ok':>8} {'errors':>7}"
        )
        for source in doc["sources"]:
            lines += _source_lines(source)
    return lines


def _connection_line(conn: dict[str, Any]) -> str:
    state = "connected" if conn["connected"] else "closed"
    rtt = conn["rtt_ms"]
    shown = "-" if rtt is None else f"{rtt['median']:.1f} ({rtt['p95']:.1f})"
    return (
        f"  {_cut(conn['name'], _NAME)} {_cut(conn['endpoint'], 26)} {state:<9} "
        f"{conn['requests_per_s']:>6.1f} {conn['utilisation_pct']:>4.0f}% {shown:>13}"
    )


def _queue_line(queue: dict[str, Any]) -> str:
    text = f"queue    {queue['depth']} messages ({size(queue['bytes'])})"
    if queue["oldest_age_s"] is not None:
        text += f", oldest {duration(queue['oldest_age_s'])}"
    if queue["backlog"]:
        text += f", {queue['backlog']} to replay"
    if queue["dropped"]:
        text += f", {queue['dropped']} dropped"
    if queue["disk"] != "ok":
        text += f", DISK {queue['disk']}"
    return text


def _source_lines(source: dict[str, Any]) -> list[str]:
    state = source["state"].upper() if source["state"] == "failing" else source["state"]
    last = source["last_good_age_s"]
    kept = source["achieved_interval_s"]
    lines = [
        f"  {_cut(source['name'], _NAME)} {_cut(source['where'], _NAME)} {state:<8} "
        f"{duration(source['interval_s']):>6} {duration(kept and kept['median']):>7} "
        f"{duration(last):>8} {source['read_errors']:>7}"
    ]
    if source["state"] == "failing" and source["last_error"]:
        lines.append(f"    {_cut(source['last_error'], _ERROR + 14).rstrip()}")
        remaining = source["backoff_remaining_s"]
        if remaining:
            lines.append(f"    backed off: next try in {duration(remaining)}")
        elif remaining is not None:
            lines.append("    backed off: trying now")
    for point in source["points"]:
        value = "-" if point["value"] is None else json.dumps(point["value"])
        age = "" if point["age_s"] is None else f"  ({duration(point['age_s'])} ago)"
        lines.append(f"    {_cut(point['id'], 24)} {_cut(value, 30).rstrip()}{age}")
    return lines


def duration(seconds: float | None) -> str:
    """0.25 s, 1.2 s, 45 s, 3m 05s, 2h 03m, 4d 01h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _cut(text: str, width: int) -> str:
    """`text` in exactly `width` columns: padded, or cut with an ellipsis."""
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"
