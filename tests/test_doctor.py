"""`orio-agent doctor`: one PASS/FAIL line per check, against real parts."""

from __future__ import annotations

from pathlib import Path

from sim.broker import Broker, free_port
from sim.plant import SimUnit, serve_tcp
from sim.pty import PtyPair
from tests.helpers import agent_toml, device, poll_until, running_agent
from tests.test_control import WAIT, orio_agent


def body(plant_port: int, closed_port: int, serial: str, missing: str) -> str:
    return f"""
[[modbus]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {plant_port}
{device(interval=1)}
[[modbus]]
name = "gone"
transport = "tcp"
host = "127.0.0.1"
port = {closed_port}
{device(interval=1, name="far", points='{ id = "far", address = "40001" }')}
[[modbus]]
name = "rs485"
transport = "rtu"
device = "{serial}"
{device(interval=1, name="near", points='{ id = "near", address = "40001" }')}
[[modbus]]
name = "unplugged"
transport = "rtu"
device = "{missing}"
{device(interval=1, name="lost", points='{ id = "lost", address = "40001" }')}"""


def verdicts(out: str) -> dict[str, str]:
    """Each check's name → its verdict."""
    found = {}
    for line in out.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in ("PASS", "FAIL", "SKIP"):
            found[rest.split(": ")[0]] = verdict
    return found


async def test_doctor_passes_what_works_and_fails_what_does_not(
    tmp_path: Path, broker: Broker, pty_pair: PtyPair
) -> None:
    plant = await serve_tcp([SimUnit(1)])
    closed, missing = free_port(), str(tmp_path / "ttyUSB9")
    config = tmp_path / "plant.toml"
    text = body(plant.port, closed, str(pty_pair.device_a), missing)
    config.write_text(
        agent_toml(
            broker, text, queue_path=tmp_path / "q" / "queue.db", control=f'socket = "{tmp_path}/c"'
        )
    )
    try:
        code, out, err = await orio_agent("doctor", "--config", str(config))
        wrong = config.read_text().replace(broker.thing_secret, "not-the-secret")
        config.write_text(wrong)
        refused_code, refused, _ = await orio_agent("doctor", "--config", str(config))
    finally:
        await plant.stop()

    assert 1 == code, out
    checks = verdicts(out)
    assert {
        "config": "PASS",
        f"serial {pty_pair.device_a} (rs485)": "PASS",
        f"serial {missing} (unplugged)": "FAIL",
        f"modbus 127.0.0.1:{plant.port} (plc)": "PASS",
        f"modbus 127.0.0.1:{closed} (gone)": "FAIL",
        "broker name": "PASS",
        "broker login": "PASS",
        "queue space": "PASS",
        "queue file": "SKIP",
    }.items() <= checks.items()
    assert checks["clock"] in ("PASS", "FAIL")
    assert "login accepted" in out
    assert "hint: is the adapter plugged in?" in out
    assert 1 == refused_code
    assert "FAIL" == verdicts(refused)["broker login"]
    assert "hint: thing.id and the secret" in refused
    assert "not-the-secret" not in refused + err


async def test_doctor_asks_a_running_agent_instead_of_logging_in_beside_it(
    tmp_path: Path, broker: Broker
) -> None:
    plant = await serve_tcp([SimUnit(1)])
    control = tmp_path / "control.sock"
    text = agent_toml(
        broker,
        f'[[modbus]]\nname = "plc"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {plant.port}\n'
        + device(interval=0.5),
        control=f'socket = "{control}"',
    )
    config = tmp_path / "agent.toml"
    config.write_text(text)
    try:
        async with running_agent(tmp_path, text) as agent:
            await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
            await poll_until(lambda: agent.session.connected, timeout=WAIT, what="connected")
            code, out, _ = await orio_agent("doctor", "--config", str(config))
            reconnects = agent.session.reconnects
    finally:
        await plant.stop()

    assert "the running agent is connected" in out
    assert ("PASS", 0) == (verdicts(out)["broker login"], reconnects)
    assert code in (0, 1)  # the clock of the machine running the tests may not be synchronised
