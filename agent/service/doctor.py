"""`orio-agent doctor`: what an engineer would otherwise check by hand, one line each.

Each check says PASS, FAIL or SKIP (it does not apply here, or an earlier one failed)
with what it found and, on a failure, a hint. Exit status 1 when any check failed.

The broker login is not tried while the agent is running: a second connection with the
thing's client id would take the agent's over. The agent's own view of its connection
(through the control socket) is reported instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import os
import pwd
import shutil
import socket
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from agent.config import Config, load_config
from agent.config.model import SerialSettings, TcpEndpoint
from agent.errors import BrokerAuthRefused, BrokerError, BrokerTlsError, ConfigError
from agent.service.control_client import NotRunning, Refused, Unreachable, ask
from agent.service.status import control_socket

SERVICE_USER = "orio-agent"
SERIAL_GROUP = "dialout"
CONNECT_TIMEOUT = 5.0  # seconds, a TCP endpoint's
TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
Verdict = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    name: str
    found: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.verdict}  {self.name}: {self.found}"
        hint = self.hint.replace("\n", "\n            ")
        return text + (f"\n      hint: {hint}" if hint else "")


def doctor(config_path: Path, *, control: Path | None, out: TextIO = sys.stdout) -> int:
    failed = False

    def say(check: Check) -> None:
        nonlocal failed
        failed |= check.verdict == "FAIL"
        out.write(check.line() + "\n")
        out.flush()

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        say(Check("FAIL", "config", f"{config_path} does not load", "\n".join(_lines(exc))))
        return 1
    say(Check("PASS", "config", f"{config_path} is valid"))
    say(service_user())
    for check in serial_devices(config):
        say(check)
    for check in asyncio.run(tcp_endpoints(config)):
        say(check)
    for check in broker(config, control_socket(control, config_path)):
        say(check)
    say(clock())
    for check in queue(config):
        say(check)
    return 1 if failed else 0


def _lines(exc: ConfigError) -> list[str]:
    return [problem.render(exc.path) for problem in exc.problems]


def service_user() -> Check:
    name = "service user"
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return Check("SKIP", name, f"no user {SERVICE_USER!r} here (not installed from the .deb)")
    try:
        dialout = grp.getgrnam(SERIAL_GROUP)
    except KeyError:
        return Check("FAIL", name, f"no group {SERIAL_GROUP!r}", "serial ports need it")
    if SERVICE_USER in dialout.gr_mem or user.pw_gid == dialout.gr_gid:
        return Check("PASS", name, f"{SERVICE_USER} is in {SERIAL_GROUP}")
    return Check(
        "FAIL",
        name,
        f"{SERVICE_USER} is not in {SERIAL_GROUP}: serial ports will be refused",
        f"adduser {SERVICE_USER} {SERIAL_GROUP}",
    )


def serial_devices(config: Config) -> list[Check]:
    """Each serial device the config names: there, and openable by this user."""
    devices = {
        conn.endpoint.device: conn.name
        for conn in config.connections
        if isinstance(conn.endpoint, SerialSettings)
    }
    devices.update({i.line.device: i.name for i in config.instruments})
    return [_serial(device, owner) for device, owner in sorted(devices.items())]


def _serial(device: str, owner: str) -> Check:
    name = f"serial {device} ({owner})"
    try:
        handle = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        return Check("FAIL", name, "no such device", "is the adapter plugged in? ls /dev/tty*")
    except PermissionError:
        return Check("FAIL", name, "permission denied", f"the user needs group {SERIAL_GROUP}")
    except OSError as exc:
        return Check("FAIL", name, exc.strerror or str(exc), "busy: held by another program?")
    os.close(handle)
    return Check("PASS", name, "present and openable")


async def tcp_endpoints(config: Config) -> list[Check]:
    endpoints = {
        str(conn.endpoint): conn.name
        for conn in config.connections
        if isinstance(conn.endpoint, TcpEndpoint)
    }
    checks = [_reach(where, owner) for where, owner in sorted(endpoints.items())]
    return list(await asyncio.gather(*checks))


async def _reach(where: str, owner: str) -> Check:
    host, _, port = where.rpartition(":")
    name = f"modbus {where} ({owner})"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(host, int(port))
    except (OSError, TimeoutError) as exc:
        found = str(exc) or f"no answer within {CONNECT_TIMEOUT:g} s"
        return Check("FAIL", name, f"not reachable: {found}", "address, port, cabling, firewall?")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check("PASS", name, "reachable")


def broker(config: Config, control: Path) -> list[Check]:
    mqtt = config.mqtt
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        socket.getaddrinfo(mqtt.host, mqtt.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return [Check("FAIL", "broker name", f"{mqtt.host}: {exc}", "DNS: /etc/resolv.conf")]
    checks = [Check("PASS", "broker name", f"{mqtt.host} resolves")]
    running = _agent_connected(control)
    if running is not None:
        verdict: Verdict = "PASS" if running else "FAIL"
        found = "the running agent is " + ("connected" if running else "NOT connected")
        hint = "" if running else "see `orio-agent status` and the journal"
        return [*checks, Check(verdict, "broker login", f"{where}: {found}", hint)]
    return [*checks, asyncio.run(_login(config))]


def _agent_connected(control: Path) -> bool | None:
    """The running agent's broker connection; None when no agent answers."""
    try:
        status = ask(control, "status", {"points": False}, timeout=10.0)
    except (NotRunning, Unreachable, Refused):
        return None
    return bool(status["broker"]["connected"])


async def _login(config: Config) -> Check:
    """One connection with the thing's credentials: reachable, TLS, login."""
    from agent.cloud.mqtt import MqttSession  # the adapter: deferred

    where = f"{config.mqtt.host}:{config.mqtt.port}"
    session = MqttSession(
        thing_id=config.thing_id, secret=config.secret.get_secret_value(), config=config.mqtt
    )
    try:
        await session.connect_once()
    except BrokerError as exc:
        return Check("FAIL", "broker login", f"{where}: {exc}", _login_hint(exc))
    finally:
        await session.close()
    tls = "TLS certificate valid, " if config.mqtt.tls else ""
    return Check("PASS", "broker login", f"{where}: {tls}login accepted")


def _login_hint(exc: BrokerError) -> str:
    if isinstance(exc, BrokerAuthRefused):
        return "thing.id and the secret, as the platform shows them"
    if isinstance(exc, BrokerTlsError):
        return "mqtt.ca_file, and the broker's name as in its certificate"
    return "mqtt.host and mqtt.port; is port 8883/8083 open to this gateway?"


def clock(adjtimex: Callable[[ctypes.Array[ctypes.c_char]], int] | None = None) -> Check:
    """The kernel's view (adjtimex): synchronised by NTP (timesyncd, chrony) or not."""
    call = adjtimex or ctypes.CDLL(None, use_errno=True).adjtimex
    state = call(ctypes.create_string_buffer(512))  # struct timex, modes 0: read only
    if state == TIME_ERROR:
        return Check(
            "FAIL",
            "clock",
            "not synchronised",
            "timedatectl set-ntp true; readings are held while the clock is unset",
        )
    if state < 0:
        return Check("SKIP", "clock", "the kernel would not say (adjtimex failed)")
    return Check("PASS", "clock", "synchronised")


def queue(config: Config) -> list[Check]:
    path = config.queue.path
    if path == ":memory:":
        return [Check("SKIP", "queue", 'in memory (queue.path = ":memory:")')]
    file = Path(path)
    directory = next(d for d in (file.parent, *file.parent.parents) if d.exists())
    used = sum(f.stat().st_size for f in file.parent.glob(file.name + "*") if f.is_file())
    free = shutil.disk_usage(directory).free
    need = config.queue.max_bytes - used
    room = Check("PASS", "queue space", f"{free // 2**20} MiB free in {directory}")
    if free < need:
        room = Check(
            "FAIL",
            "queue space",
            f"{free // 2**20} MiB free in {directory}, queue.max_bytes needs "
            f"{need // 2**20} MiB more",
            "free space, or lower queue.max_bytes",
        )
    return [room, _queue_file(file)]


def _queue_file(file: Path) -> Check:
    if not file.exists():
        return Check("SKIP", "queue file", f"{file} not made yet (the agent makes it)")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        return Check("FAIL", "queue file", f"{file}: {exc}", "stop the agent and move it aside")
    if result != "ok":
        return Check("FAIL", "queue file", f"{file}: {result}", "stop the agent and move it aside")
    return Check("PASS", "queue file", f"{file} is healthy")
