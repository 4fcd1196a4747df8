"""`orio-agent read` and `write`: one request by hand, against real simulated units."""

from __future__ import annotations

import struct
from pathlib import Path

from agent.testing import captured_logs
from sim.broker import Broker
from sim.plant import SimUnit, registers_from_bytes, serve_tcp
from tests.helpers import agent_toml, device, poll_until, running_agent, tcp_connection
from tests.test_control import WAIT, orio_agent


def column(lines: list[str], point_type: str, order: str) -> str:
    """The decode table's cell for `point_type` (a column) in byte order `order` (a row)."""
    at = next(i for i, line in enumerate(lines) if point_type in line.split())
    types = lines[at].split()[2:]
    row = next(line for line in lines[at + 1 : at + 5] if line.split()[0] == order)
    return row.split()[1:][types.index(point_type)]


async def test_read_shows_a_cdab_float_in_the_cdab_column(tmp_path: Path) -> None:
    unit = SimUnit(3)
    unit.set_registers("holding", 10, registers_from_bytes(struct.pack(">f", 230.25), "CDAB"))
    plant = await serve_tcp([unit])
    target = f"tcp://127.0.0.1:{plant.port}"
    try:
        code, out, err = await orio_agent(
            "read", target, "40011", "--unit", "3", "--count", "2", "--control", "/nonexistent"
        )
    finally:
        await plant.stop()

    assert (0, "") == (code, err)
    lines = out.splitlines()
    assert lines[0].startswith("unit 3 holding 10+2 through its own connection: ")
    assert "230.25" == column(lines, "float32", "CDAB")
    assert "230.25" != column(lines, "float32", "ABCD")
    registers = unit.get_registers("holding", 10, 2)
    assert [f"0x{registers[0]:04x}", f"0x{registers[1]:04x}"] == [
        line.split()[2] for line in lines[2:4]
    ]


async def test_write_is_refused_without_yes_and_read_back_with_it(tmp_path: Path) -> None:
    unit = SimUnit(1)
    plant = await serve_tcp([unit])
    target = f"tcp://127.0.0.1:{plant.port}"
    try:
        refused = await orio_agent("write", target, "40101", "1234", "--control", "/none")
        code, out, _ = await orio_agent(
            "write", target, "40101", "-2.5", "--type", "float32", "--yes", "--control", "/none"
        )
    finally:
        await plant.stop()

    assert 2 == refused[0]
    assert "add --yes to do it" in refused[2]
    assert 0 == code, out
    assert "written, read back the same" in out
    assert [0xC020, 0x0000] == unit.get_registers("holding", 100, 2)


async def test_read_and_write_go_through_the_agent_that_holds_the_connection(
    tmp_path: Path, broker: Broker, sim_unit: SimUnit
) -> None:
    sim_unit.set_registers("holding", 0, [77])
    plant = await serve_tcp([sim_unit])
    control = tmp_path / "control.sock"
    config = tmp_path / "agent.toml"
    text = agent_toml(
        broker, tcp_connection(plant, device(interval=0.1)), control=f'socket = "{control}"'
    )
    config.write_text(text)
    try:
        with captured_logs() as logs:
            async with running_agent(tmp_path, text):
                await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
                by_name = await orio_agent("read", "plc", "40001", "--config", str(config))
                by_endpoint = await orio_agent(
                    "read", f"tcp://127.0.0.1:{plant.port}", "40001", "--control", str(control)
                )
                wrote = await orio_agent(
                    "write", "plc", "40002", "9", "--yes", "--config", str(config)
                )
    finally:
        await plant.stop()

    for code, out, _ in (by_name, by_endpoint):
        assert 0 == code
        assert "through the running agent" in out.splitlines()[0]
        assert "0x004d" in out
    assert 0 == wrote[0], wrote
    assert [9] == sim_unit.get_registers("holding", 1)
    written = [e for e in logs if e["event"] == "control_write"]
    assert [("plc", 1, "holding", 1, [9])] == [
        (e["connection"], e["unit"], e["table"], e["start"], e["values"]) for e in written
    ]
