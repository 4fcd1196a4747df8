"""The control channel and `orio-agent status`, against a real plant and mosquitto.

The agent runs in the test's event loop; `orio-agent status` runs as a process of its
own, as an engineer would run it, and what it prints is compared with what the
simulated units and the broker saw.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import SimUnit, serve_tcp
from tests.helpers import agent_toml, device, poll_until, running_agent, tcp_connection

WAIT = 20.0
REPO = Path(__file__).resolve().parent.parent
GROUP = "dialout"  # a group Debian always has, for the socket's


async def orio_agent(*args: str) -> tuple[int, str, str]:
    """`orio-agent ARGS` as a process: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _source(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(source for source in status["sources"] if source["name"] == name)


async def status_until(
    path: Path, predicate: Callable[[dict[str, Any]], bool], *, what: str
) -> dict[str, Any]:
    """The agent's status, asked again until `predicate` holds (WAIT at most)."""
    deadline = time.monotonic() + WAIT
    while True:
        status = await status_json(path)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"status never showed {what}: {status}")
        await asyncio.sleep(0.05)


async def status_json(path: Path) -> dict[str, Any]:
    code, out, err = await orio_agent("status", "--json", "--control", str(path))
    assert (code, err) == (0, "")
    document: dict[str, Any] = json.loads(out)
    return document


def two_meters(plant_port: int) -> str:
    alive = device(interval=0.2, name="alive", points='{ id = "v", address = "40001" }')
    dead = device(interval=0.2, name="dead", points='{ id = "w", address = "40001" }')
    dead = dead.replace("unit = 1", "unit = 2") + "  backoff_max = 0.5\n"
    return f"""
[[modbus]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {plant_port}
timeout = 0.3
{alive}{dead}"""


async def test_status_shows_what_the_units_and_the_broker_saw(
    tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    alive, dead = SimUnit(1), SimUnit(2)
    alive.set_registers("holding", 0, [4242])
    dead.dead = True
    plant = await serve_tcp([alive, dead])
    control = tmp_path / "run" / "control.sock"
    text = agent_toml(
        broker, two_meters(plant.port), control=f'socket = "{control}"\ngroup = "{GROUP}"'
    )
    try:
        async with running_agent(tmp_path, text):
            await cloud.wait_for(lambda m: bool(cloud.readings("b")), timeout=WAIT)
            await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
            up = await status_until(
                control,
                lambda status: _source(status, "dead")["state"] == "failing",
                what="the dead unit failing",  # its first cycle timing out
            )
            code, shown, _ = await orio_agent("status", "--points", "--control", str(control))

            await broker.stop_async()
            await alive.wait_until(lambda unit: unit.read_count >= 20, timeout=WAIT)
            down = await status_json(control)
            await broker.start_async()
    finally:
        await plant.stop()

    assert (True, 0) == (up["broker"]["connected"], up["broker"]["reconnects"])
    assert up["broker"]["last_puback_age_s"] is not None
    sources = {source["name"]: source for source in up["sources"]}
    assert ("ok", "failing") == (sources["alive"]["state"], sources["dead"]["state"])
    assert [{"id": "v", "bucket": "b", "value": 4242}] == [
        {key: point[key] for key in ("id", "bucket", "value")}
        for point in sources["alive"]["points"]
    ]
    assert "unit 2 did not answer" in sources["dead"]["last_error"]
    kept = sources["alive"]["achieved_interval_s"]
    assert 0.1 < kept["median"] < 0.4
    assert kept["median"] <= kept["p95"]
    assert sources["alive"]["backoff_remaining_s"] is None
    assert 0 <= sources["dead"]["backoff_remaining_s"] <= 0.5  # its backoff_max
    assert [("plc", "127.0.0.1:" + str(plant.port), True)] == [
        (c["name"], c["endpoint"], c["connected"]) for c in up["connections"]
    ]
    line = up["connections"][0]
    # Two units every 0.2 s, the dead one backed off: between 2 and 20 requests a second.
    assert 2 < line["requests_per_s"] < 20
    assert 0 < line["utilisation_pct"] <= 100
    assert 0 < line["rtt_ms"]["median"] <= line["rtt_ms"]["p95"]

    assert 0 == code
    lines = shown.splitlines()
    assert lines[1].startswith("broker   connected for ")
    assert any(line.split()[:3] == ["alive", "plc", "ok"] for line in lines)
    assert any(line.split()[:3] == ["dead", "plc", "FAILING"] for line in lines)
    assert any(line.strip().startswith("backed off: ") for line in lines)
    assert any(line.split()[:2] == ["v", "4242"] for line in lines)
    assert all(len(line) <= 80 for line in lines)

    assert False is down["broker"]["connected"]
    assert down["queue"]["depth"] > up["queue"]["depth"]


async def test_status_of_an_agent_that_is_not_running_exits_3(tmp_path: Path) -> None:
    code, out, err = await orio_agent("status", "--control", str(tmp_path / "none.sock"))

    assert (3, "") == (code, out)
    assert [
        f"orio-agent status: orio-agent is not running (nothing listens at "
        f"{tmp_path / 'none.sock'})"
    ] == err.splitlines()


async def test_bad_requests_get_an_error_reply_and_leave_the_agent_running(
    tmp_path: Path, broker: Broker, sim_unit: SimUnit
) -> None:
    plant = await serve_tcp([sim_unit])
    control = tmp_path / "control.sock"
    text = agent_toml(
        broker,
        tcp_connection(plant, device(interval=0.5)),
        control=f'socket = "{control}"\ngroup = "{GROUP}"',
    )
    try:
        async with running_agent(tmp_path, text) as agent:
            await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
            replies = [
                await asyncio.to_thread(exchange, control, request)
                for request in (
                    b"not json\n",
                    b"[1, 2]\n",
                    b'{"v": 2, "op": "status"}\n',
                    b'{"v": 1, "op": "reboot"}\n',
                    b'{"v": 1, "op": "status", "args": {"points": "yes"}}\n',
                    b'{"v": 1, "op": "status", "args": 7}\n',
                    b"\xff\xfe\n",
                    b"x" * (128 * 1024) + b"\n",
                )
            ]
            assert agent.control is not None
            refused = agent.control.refused
            mode = stat.S_IMODE(os.stat(control).st_mode)
            gid = os.stat(control).st_gid
            after = await status_json(control)
    finally:
        await plant.stop()

    assert [
        "bad_request",
        "bad_request",
        "unsupported_version",
        "unknown_op",
        "bad_request",
        "bad_request",
        "bad_request",
        "too_large",
    ] == [json.loads(reply)["error"]["code"] for reply in replies]
    assert 8 == refused
    assert True is after["broker"]["connected"]
    assert (0o660, grp.getgrnam(GROUP).gr_gid) == (mode, gid)


def exchange(path: Path, request: bytes) -> bytes:
    """One raw request line and its reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(WAIT)
        conn.connect(str(path))
        conn.sendall(request)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply
