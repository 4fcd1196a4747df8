"""`orio-agent scan`: the units on an RS-485 line, found on a socat pty pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.service.scan import parse_units, per_address, physical_minimum
from agent.testing import captured_logs
from sim.broker import Broker
from sim.plant import SimUnit, serve_rtu
from sim.pty import PtyPair
from tests.helpers import agent_toml, poll_until, running_agent
from tests.test_control import WAIT, orio_agent

UNITS = (3, 17, 200)


async def test_scan_finds_exactly_the_units_on_the_line_and_prints_a_stub_that_checks(
    tmp_path: Path, broker: Broker, pty_pair: PtyPair
) -> None:
    units = [SimUnit(unit) for unit in UNITS]
    units[1].invalid["holding"].add(0)  # answers with exception 2: present all the same
    plant = await serve_rtu(units, str(pty_pair.device_b), baudrate=115200)
    try:
        code, out, err = await orio_agent(
            "scan",
            f"rtu:{pty_pair.device_a}?baudrate=115200",
            "--units",
            "1-40,190-210",
            "--turnaround",
            "0.03",
            "--control",
            str(tmp_path / "none.sock"),
        )
    finally:
        await plant.stop()

    assert 0 == code, err
    found = [line.split()[1] for line in out.splitlines() if " baud, parity " in line]
    assert [str(unit) for unit in UNITS] == found
    assert "unit  17 at 115200 baud, parity N: exception 2 (illegal data address)" in out
    # function 17's server id and 43/14's identification, of each unit found
    assert "vendor 'ORIO-SIM', product 'SIM-METER', revision '1.2'" in out
    assert "server_id 'ORIO-SIM-SIM-METER-1.2'" in out
    assert "  # ORIO-SIM SIM-METER" in out
    assert "about " in err.splitlines()[0]
    stub = out[out.index("# A start") :]
    config = tmp_path / "found.toml"
    config.write_text(agent_toml(broker, stub))
    checked = await orio_agent("check-config", str(config))
    assert 0 == checked[0], checked[2]
    assert "3 devices" in checked[1]


async def test_scan_through_the_agent_pauses_the_line_and_polling_resumes_after(
    tmp_path: Path, broker: Broker, pty_pair: PtyPair
) -> None:
    polled, other = SimUnit(1), SimUnit(9)
    plant = await serve_rtu([polled, other], str(pty_pair.device_b), baudrate=38400)
    control = tmp_path / "control.sock"
    body = f"""
[[modbus]]
name = "rs485"
transport = "rtu"
device = "{pty_pair.device_a}"
baudrate = 38400

  [[modbus.devices]]
  name = "meter"
  interval = 0.1
  bucket = "b"
  points = [{{ id = "v", address = "40001" }}]
"""
    try:
        with captured_logs() as logs:
            async with running_agent(
                tmp_path, agent_toml(broker, body, control=f'socket = "{control}"')
            ) as agent:
                await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
                code, out, err = await orio_agent(
                    "scan",
                    f"rtu:{pty_pair.device_a}?baudrate=38400",
                    "--units",
                    "1-12",
                    "--turnaround",
                    "0.03",
                    "--control",
                    str(control),
                )
                before = len(polled.requests)
                await polled.wait_until(lambda u: len(u.requests) > before + 3, timeout=WAIT)
                errors = agent.pollers[0].stats.read_errors
    finally:
        await plant.stop()

    assert 0 == code, err
    assert "WARNING: the running agent polls" in err
    assert "(connection 'rs485')" in err
    assert ["1", "9"] == [line.split()[1] for line in out.splitlines() if " baud, parity " in line]
    assert 0 == errors
    events = [e["event"] for e in logs]
    assert {"scan_pauses_connection", "scan_done"} <= set(events)


def test_the_time_per_address_follows_the_baud_rate() -> None:
    # 15 characters of 11 bits and two silences, and the unit's 50 ms
    assert 0.0500 + 15 * 11 / 9600 + 2 * 3.5 * 11 / 9600 == pytest.approx(per_address(9600, 0.05))
    assert 0.0500 + 15 * 11 / 115200 + 2 * 0.00175 == pytest.approx(per_address(115200, 0.05))
    assert 247 * (8 * 11 / 9600 + 3.5 * 11 / 9600) == pytest.approx(physical_minimum(9600, 247))


def test_units_take_ranges_and_lists() -> None:
    assert [1, 2, 3, 7, 250] == parse_units("1-3,7,250")


def test_the_command_lines_defaults_are_the_modules() -> None:
    from agent.service import cli, cloud, scan

    assert (scan.DEFAULT_TURNAROUND, cloud.DEFAULT_SINCE) == (
        cli.DEFAULT_TURNAROUND,
        cli.DEFAULT_SINCE,
    )


async def test_a_unit_whose_replies_are_garbled_is_flagged_not_found(
    tmp_path: Path, pty_pair: PtyPair
) -> None:
    good, bad = SimUnit(2), SimUnit(5)
    bad.garble = True  # its CRC is wrong: what two units answering together look like
    plant = await serve_rtu([good, bad], str(pty_pair.device_b), baudrate=115200)
    try:
        code, out, err = await orio_agent(
            "scan",
            f"rtu:{pty_pair.device_a}?baudrate=115200",
            "--units",
            "1-6",
            "--turnaround",
            "0.03",
            "--control",
            str(tmp_path / "none.sock"),
        )
    finally:
        await plant.stop()

    assert 0 == code, err
    found = [line.split()[1] for line in out.splitlines() if line.endswith("answers function 3")]
    assert ["2"] == found
    garbled = [line for line in out.splitlines() if "GARBLED" in line]
    assert 1 == len(garbled), out
    assert garbled[0].startswith("  unit   5 at 115200 baud, parity N: GARBLED reply (")
