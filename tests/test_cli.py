"""The command line: `orio-agent check-config [PATH]`, `run --config PATH`, `--version`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from agent.config import DEFAULT_PATH, MASK
from agent.service.cli import main
from agent.service.running import CRASH_AFTER
from sim.broker import free_port

REPO = Path(__file__).parents[1]
EXAMPLE = REPO / "config.example.toml"
EXAMPLE_SECRET = "vjn6u1.~EQrKuOP4"  # the secret written in config.example.toml
EX_CONFIG = 78
EX_SOFTWARE = 70
WAIT = 30.0

SECRET = "s3cr3t-Pa55word"
GOOD = f"""\
[thing]
id = "gw-01"
secret = "{SECRET}"

[mqtt]
host = "broker.local"

[[modbus]]
name = "plc"
transport = "tcp"
host = "10.0.0.2"

  [[modbus.devices]]
  name = "meter1"
  bucket = "sensorData"
  points = [
    {{ id = "temperature", address = "30001", type = "float32" }},
    {{ id = "humidity", address = "30003", type = "uint16", scale = 0.01 }},
    {{ id = "running", address = "00017" }},
  ]
"""
# One mistake on line 19, in a file that holds the secret.
BAD = GOOD.replace('address = "00017" }', 'address = "00017", type = "uint17" }')
BAD_LINE = 19
BAD_MESSAGE = (
    "modbus[0].devices[0].points[2].type: Input should be 'int16', 'uint16', 'int32', "
    "'uint32', 'int64', 'uint64', 'float32', 'float64', 'bool', 'string' or 'hex' "
    "(got 'uint17')"
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ORIO_AGENT_* override or systemd credential directory leaks in from the shell."""
    for name in list(os.environ):
        if name.upper().startswith("ORIO_AGENT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


def resolved_json(stdout: str) -> dict[str, object]:
    """The resolved config that check-config prints after its summary lines."""
    return json.loads(stdout[stdout.index("\n{") + 1 :])  # type: ignore[no-any-return]


# --- check-config on a good file ------------------------------------------------------------


def test_check_config_accepts_the_example_config(capsys: pytest.CaptureFixture[str]) -> None:
    """Done when: config.example.toml passes check-config."""
    code = main(["check-config", str(EXAMPLE)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines()[:9] == [
        f"{EXAMPLE}: OK",
        "  device 'meter1' on 'plc' unit 1: 7 points in 5 requests every 1 s",
        "    coil 16 (1 bit): running",
        "    input 0-2 (3 registers): temperature, humidity",
        "    holding 100-107 (8 registers): serial",
        "    holding 120-121 (2 registers): alarm_word, pump_fault",
        "    holding 200-201 (2 registers): energy",
        "  device 'flowmeter' on 'rs485' unit 7: 2 points in 1 request every 5 s",
        "    input 0-3 (4 registers): flow, total",
    ]
    assert EXAMPLE_SECRET not in out
    assert resolved_json(out)["thing"] == {"id": "xY6Eie5hv", "secret": MASK}


def test_check_config_takes_the_file_as_run_does_too(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", "--config", str(EXAMPLE)])

    out, err = capsys.readouterr()
    assert (code, err, out.splitlines()[0]) == (0, "", f"{EXAMPLE}: OK")


def test_check_config_prints_the_resolved_config_with_defaults(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check-config", str(good)])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines()[:4] == [
        f"{good}: OK",
        "  device 'meter1' on 'plc' unit 1: 3 points in 2 requests every 1 s",
        "    coil 16 (1 bit): running",
        "    input 0-2 (3 registers): temperature, humidity",
    ]
    resolved = resolved_json(out)
    assert resolved["thing"] == {"id": "gw-01", "secret": MASK}
    assert resolved["mqtt"] == {
        "host": "broker.local",
        "port": 8083,
        "tls": True,
        "keepalive": 60,
        "connect_timeout": 10.0,
        "backoff_min": 1.0,
        "backoff_max": 30.0,
        "max_inflight": 32,
        "max_config_payload": 65536,
    }
    assert resolved["batch"] == {
        "max_readings": 100,
        "max_bytes": 65536,
        "max_delay": 1.0,
        "flush_at_cycle_end": True,
    }


def test_check_config_never_prints_the_secret(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check-config", str(good)])

    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert MASK in out


def test_check_config_masks_a_secret_read_from_a_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    path = tmp_path / "config.toml"
    path.write_text(GOOD.replace(f'secret = "{SECRET}"', f'secret_file = "{secret_file}"'))

    code = main(["check-config", str(path)])

    out, _ = capsys.readouterr()
    assert code == 0
    assert SECRET not in out
    assert resolved_json(out)["thing"] == {
        "id": "gw-01",
        "secret": MASK,
        "secret_file": str(secret_file),
    }


def test_check_config_shows_environment_overrides(
    good: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIO_AGENT_MQTT__HOST", "10.0.0.5")
    monkeypatch.setenv("ORIO_AGENT_THING__SECRET", "another-secret-value")

    code = main(["check-config", str(good)])

    out, _ = capsys.readouterr()
    assert code == 0
    assert resolved_json(out)["mqtt"]["host"] == "10.0.0.5"  # type: ignore[index]
    assert "another-secret-value" not in out


# --- a bad file exits 78 ---------------------------------------------------------------------


def test_check_config_on_a_bad_file_exits_78_naming_file_key_and_line(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check-config", str(bad)])

    out, err = capsys.readouterr()
    assert (code, out) == (EX_CONFIG, "")
    assert err == f"orio-agent: invalid config\n{bad}:{BAD_LINE}: {BAD_MESSAGE}\n"
    assert SECRET not in err


def test_run_with_a_bad_file_exits_78_before_starting(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--config", str(bad)])

    out, err = capsys.readouterr()
    assert (code, out) == (EX_CONFIG, "")
    assert err == f"orio-agent: invalid config\n{bad}:{BAD_LINE}: {BAD_MESSAGE}\n"


def test_check_config_on_a_missing_file_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.toml"

    code = main(["check-config", str(missing)])

    _, err = capsys.readouterr()
    assert code == EX_CONFIG
    assert err == f"orio-agent: invalid config\n{missing}: cannot read: No such file or directory\n"


def test_check_config_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(BAD.replace('host = "broker.local"', 'host = "broker.local"\nport = 0'))

    code = main(["check-config", str(path)])

    _, err = capsys.readouterr()
    assert code == EX_CONFIG
    assert err.splitlines() == [
        "orio-agent: invalid config",
        f"{path}:7: mqtt.port: Input should be greater than or equal to 1 (got 0)",
        f"{path}:{BAD_LINE + 1}: {BAD_MESSAGE}",
    ]


def test_check_config_without_a_path_reads_the_default_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if DEFAULT_PATH.exists():
        pytest.skip(f"{DEFAULT_PATH} exists on this machine")

    code = main(["check-config"])

    _, err = capsys.readouterr()
    assert code == EX_CONFIG
    assert err == (
        f"orio-agent: invalid config\n{DEFAULT_PATH}: cannot read: No such file or directory\n"
    )


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out == f"orio-agent {__version__}\n"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == 2
    assert "required" in capsys.readouterr().err


# --- as a real process -------------------------------------------------------------------


def run_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORIO_AGENT_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_process_exits_78_on_a_bad_config(bad: Path) -> None:
    result = run_agent("check-config", str(bad))

    assert (result.returncode, result.stdout) == (EX_CONFIG, "")
    assert result.stderr == f"orio-agent: invalid config\n{bad}:{BAD_LINE}: {BAD_MESSAGE}\n"
    assert SECRET not in result.stderr


def test_process_exits_78_on_a_bad_environment_override(good: Path) -> None:
    result = run_agent("check-config", str(good), env={"ORIO_AGENT_MQTT__PORT": "eighty"})

    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"orio-agent: invalid config\n{good}:5: mqtt.port: Input should be a valid integer, "
        "unable to parse string as an integer (got 'eighty') "
        "(set by environment variable ORIO_AGENT_MQTT__PORT)\n"
    )


def test_process_exits_78_on_a_section_override_that_is_not_json(good: Path) -> None:
    result = run_agent("check-config", str(good), env={"ORIO_AGENT_THING": "{not json"})

    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"orio-agent: invalid config\n{good}: environment variable ORIO_AGENT_THING is not a "
        "JSON object\n"
    )


def test_process_accepts_the_example_config() -> None:
    result = run_agent("check-config", str(EXAMPLE))

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{EXAMPLE}: OK\n")
    assert EXAMPLE_SECRET not in result.stdout


# --- `run` as a real process: how it ends -------------------------------------------------


def no_broker_config(tmp_path: Path) -> Path:
    """An agent with nothing to poll and no broker listening: it runs and retries."""
    path = tmp_path / "agent.toml"
    path.write_text(f"""\
[thing]
id = "gw-01"
secret = "{SECRET}"

[mqtt]
host = "127.0.0.1"
port = {free_port()}
tls = false

[queue]
path = ":memory:"

[log]
format = "json"
""")
    return path


class Ended:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stderr = stderr.decode()
        self.records: list[dict[str, Any]] = [
            json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")
        ]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.records if record["event"] == event]


async def run_until_exit(
    config: Path, *, env: dict[str, str] | None = None, stop_after_start: bool = False
) -> Ended:
    """`python -m agent run --config CONFIG`; SIGTERM once it has started, if asked."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("ORIO_AGENT_") and k != CRASH_AFTER
    }
    environment.update(env or {}, PYTHONUNBUFFERED="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        str(config),
        cwd=REPO,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(WAIT):
            seen = b""
            if stop_after_start:
                while b'"agent_started"' not in seen:
                    line = await process.stdout.readline()
                    assert line, f"the agent exited before starting: {seen.decode()}"
                    seen += line
                process.send_signal(signal.SIGTERM)
            rest, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ended(process.returncode, seen + rest, err)


async def test_run_exits_70_with_one_log_line_when_an_unexpected_error_stops_it(
    tmp_path: Path,
) -> None:
    """The error comes from the test-only hook ORIO_TEST_CRASH_AFTER (see agent/service/cli.py)."""
    ended = await run_until_exit(no_broker_config(tmp_path), env={CRASH_AFTER: "0.5"})

    assert (EX_SOFTWARE, "") == (ended.returncode, ended.stderr)
    assert ["agent_started", "agent_failed"] == [
        r["event"] for r in ended.records if r["event"] in ("agent_started", "agent_failed")
    ]
    assert 1 == sum("exception" in record for record in ended.records)  # the traceback once
    [failed] = ended.events("agent_failed")
    traceback = failed.pop("exception")
    assert {
        "event": "agent_failed",
        "level": "error",
        "during": "run",
        "error_type": "RuntimeError",
        "error": f"RuntimeError: {CRASH_AFTER}=0.5: an injected failure",
        "exit_status": EX_SOFTWARE,
    } == {k: v for k, v in failed.items() if k != "ts"}
    assert traceback.startswith("Traceback (most recent call last):")
    assert "ExceptionGroup" not in traceback  # the TaskGroup's wrapping is taken off


async def test_run_stops_with_0_on_sigterm(tmp_path: Path) -> None:
    ended = await run_until_exit(no_broker_config(tmp_path), stop_after_start=True)

    assert (0, "") == (ended.returncode, ended.stderr)
    assert 1 == len(ended.events("agent_stopped"))
    assert [] == ended.events("agent_failed")


def test_check_config_lists_a_slower_points_requests_under_its_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "intervals.toml"
    path.write_text(
        GOOD.replace(
            '{ id = "running", address = "00017" }',
            '{ id = "running", address = "00017" },\n'
            '    { id = "total", address = "30101", type = "uint32", interval = 60 }',
        )
    )

    assert 0 == main(["check-config", str(path)])

    lines = capsys.readouterr().out.splitlines()
    assert lines[1:5] == [
        "  device 'meter1' on 'plc' unit 1: 4 points in 3 requests every 1 s",
        "    coil 16 (1 bit): running",
        "    input 0-2 (3 registers): temperature, humidity",
        "    every 60 s: input 100-101 (2 registers): total",
    ]
    assert "  modbus total: 1 devices, 4 points, 3 requests, 2.02 requests/s" == lines[5]
