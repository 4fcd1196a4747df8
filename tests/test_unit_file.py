"""The systemd unit, systemd/orio-agent.service: it verifies, its sandbox scores 2.0 or
better in `systemd-analyze security`, and it keeps the promises the service makes.

`systemd-analyze` (Debian package `systemd`) is required: without it these tests fail,
they are not skipped. Nothing here needs systemd running.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
UNIT = REPO / "systemd" / "orio-agent.service"
MODULES_LOAD = REPO / "systemd" / "modules-load.d" / "orio-agent.conf"
INSTALLED_EXEC = "/usr/bin/orio-agent"
MAX_EXPOSURE = 2.0
EX_CONFIG = 78
SERIAL_DRIVERS = ("ttyS", "ttyUSB", "ttyACM", "ttyAMA", "ttymxc")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: install the Debian package `systemd`")
    return path


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values, in order, of the active (uncommented) lines of a unit file."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return directives(UNIT.read_text(encoding="utf-8"))


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at a stub, so that `verify` finds the program
    without the package installed (everything else is the file as shipped)."""
    stub = tmp_path / "bin" / "orio-agent"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_EXEC} " in text
    copy = tmp_path / "units" / "orio-agent.service"
    copy.parent.mkdir()
    copy.write_text(
        text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={stub} "), encoding="utf-8"
    )
    return copy


def test_systemd_analyze_verify_reports_nothing(testable_unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(testable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (0, "", "") == (result.returncode, result.stdout, result.stderr)


def test_security_exposure_is_at_most_2(testable_unit: Path) -> None:
    """`systemd-analyze security --offline=true`: the issue's bar is 2.0 or lower."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(testable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for orio-agent\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_runs_as_type_notify_with_a_watchdog(unit: dict[str, list[str]]) -> None:
    assert (["notify"], ["main"], ["30s"]) == (
        unit["Type"],
        unit["NotifyAccess"],
        unit["WatchdogSec"],
    )


def test_runs_the_installed_agent_on_the_installed_config(unit: dict[str, list[str]]) -> None:
    assert [f"{INSTALLED_EXEC} run --config /etc/orio-agent/config.toml"] == unit["ExecStart"]


def test_reload_sends_sighup(unit: dict[str, list[str]]) -> None:
    assert ["/bin/kill -HUP $MAINPID"] == unit["ExecReload"]


def test_a_bad_config_does_not_restart_loop(unit: dict[str, list[str]]) -> None:
    """The agent exits 78 (EX_CONFIG) on a bad config; any other failure is restarted."""
    assert (["on-failure"], [str(EX_CONFIG)]) == (unit["Restart"], unit["RestartPreventExitStatus"])


def test_stop_leaves_time_to_flush(unit: dict[str, list[str]]) -> None:
    assert ["30s"] == unit["TimeoutStopSec"]


def test_runs_as_the_package_user_with_serial_port_access(unit: dict[str, list[str]]) -> None:
    assert (["orio-agent"], ["orio-agent"], ["dialout"]) == (
        unit["User"],
        unit["Group"],
        unit["SupplementaryGroups"],
    )


def test_state_and_config_directories(unit: dict[str, list[str]]) -> None:
    """Queue and settings in /var/lib/orio-agent; the config in /etc/orio-agent."""
    assert (["orio-agent"], ["orio-agent"]) == (
        unit["StateDirectory"],
        unit["ConfigurationDirectory"],
    )


def test_the_control_socket_lives_in_the_runtime_directory(unit: dict[str, list[str]]) -> None:
    """/run/orio-agent, where [control] socket is by default; the group may enter it."""
    assert (["orio-agent"], ["0750"]) == (unit["RuntimeDirectory"], unit["RuntimeDirectoryMode"])


def test_the_secret_may_come_as_the_thing_secret_credential(unit: dict[str, list[str]]) -> None:
    """A relative source: looked up in /etc/credstore/ etc.; absent, the service still
    starts (an absolute path that does not exist would fail every start)."""
    assert ["thing-secret:orio-agent.thing-secret"] == unit["LoadCredential"]


def test_serial_ports_are_allowed_and_nothing_else(unit: dict[str, list[str]]) -> None:
    allowed = {value.split()[0] for value in unit["DeviceAllow"]}
    assert ["closed"] == unit["DevicePolicy"]
    assert {f"char-{driver}" for driver in SERIAL_DRIVERS} <= allowed
    assert all(value.endswith(" rw") for value in unit["DeviceAllow"])
    assert "PrivateDevices" not in unit  # it would hide the serial ports


def test_usb_and_acm_serial_drivers_are_loaded_at_boot() -> None:
    """DeviceAllow=char-ttyUSB only takes effect if the driver is registered at start."""
    modules = [
        line
        for line in MODULES_LOAD.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert ["usbserial", "cdc_acm"] == modules


def test_boot_id_stays_readable(unit: dict[str, list[str]]) -> None:
    """ProcSubset=pid would hide /proc/sys/kernel/random/boot_id, which clock safety reads."""
    assert "ProcSubset" not in unit


def test_sandbox_directives(unit: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectKernelLogs": ["yes"],
        "ProtectControlGroups": ["yes"],
        "ProtectClock": ["yes"],
        "ProtectHostname": ["yes"],
        "ProtectProc": ["invisible"],
        "LockPersonality": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "RestrictRealtime": ["yes"],
        "RestrictSUIDSGID": ["yes"],
        "RestrictNamespaces": ["yes"],
        "RemoveIPC": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "SystemCallArchitectures": ["native"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "UMask": ["0077"],
    }
    assert expected == {key: unit.get(key) for key in expected}
