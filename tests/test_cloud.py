"""`orio-agent cloud plan | apply | verify | config` against the PaaS simulator (sim.paas),
over real HTTP on loopback, each command run as a process as an engineer would run it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.broker import Broker
from sim.paas import PaasSimulator
from tests.helpers import agent_toml, poll_until, running_agent
from tests.test_control import orio_agent

WAIT = 30.0
THING = "xY6Eie5hv"
KEY = "k3y-that-must-n0t-show"

POINTS = """
[[modbus]]
name = "plc"
transport = "tcp"
host = "127.0.0.1"
port = {port}

  [[modbus.devices]]
  name = "meter1"
  interval = 0.2
  bucket = "sensorData"
  points = [
    {{ id = "temperature", address = "30001", type = "float32", unit = "°C" }},
    {{ id = "count", address = "40001" }},
    {{ id = "running", address = "00017" }},
    {{ id = "word", address = "40201", type = "hex" }},
    {{ id = "serial", address = "40101", type = "string", length = 4 }},
  ]

[[serial]]
name = "gps"
device = "/dev/null"
format = "nmea"
bucket = "position"
points = [ {{ id = "location", field = "coordinate" }} ]
"""


@pytest.fixture
def paas() -> Iterator[PaasSimulator]:
    with PaasSimulator(api_key=KEY, things={THING: "gw"}, page_size=2) as simulator:
        yield simulator


def write_config(
    tmp_path: Path, paas: PaasSimulator, *, key: str = KEY, port: int = 1, extra: str = ""
) -> Path:
    (tmp_path / "paas-key").write_text(key + "\n")
    text = f"""
[thing]
id = "{THING}"
secret = "s"

[mqtt]
host = "127.0.0.1"
tls = false

[paas]
url = "{paas.url}"
api_key_file = "{tmp_path / "paas-key"}"
retries = 2
{extra}

[control]
socket = "{tmp_path}/none.sock"
{POINTS.format(port=port)}"""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


async def cloud(*args: str) -> tuple[int, str, str]:
    """`orio-agent cloud ARGS` as a process."""
    return await orio_agent("cloud", *args)


async def test_plan_on_an_empty_thing_lists_every_bucket_and_shape(
    tmp_path: Path, paas: PaasSimulator
) -> None:
    config = write_config(tmp_path, paas)

    code, out, err = await cloud("plan", "--config", str(config))

    assert (2, "") == (code, err)
    lines = out.splitlines()
    assert "  + bucket sensorData (5 shapes)" in lines
    assert "      + temperature  float (unit '°C')" in lines
    assert "      + count  integer" in lines
    assert "      + running  boolean" in lines
    assert "      + word  hex" in lines
    assert "      + serial  string" in lines
    assert "  + bucket position (1 shapes)" in lines
    assert "      + location  coordinate" in lines
    assert "Plan: 2 to create, 0 to replace (--force), 0 to delete (--prune)." == lines[-1]


async def test_apply_creates_them_and_a_second_plan_has_nothing_to_do(
    tmp_path: Path, paas: PaasSimulator
) -> None:
    for n in range(5):  # three pages of buckets, for the pagination
        paas.add_bucket(THING, f"other{n}", {"x": "float"})
    config = write_config(tmp_path, paas)

    applied = await cloud("apply", "--config", str(config))
    again = await cloud("apply", "--config", str(config))
    planned = await cloud("plan", "--config", str(config))

    assert 2 == applied[0], applied  # the five other buckets are left for --prune
    assert "created bucket sensorData (5 shapes)" in applied[1]
    assert "left bucket other0: not in the config (--prune deletes it)" in applied[1]
    assert {
        "temperature": "float",
        "count": "integer",
        "running": "boolean",
        "word": "hex",
        "serial": "string",
    } == paas.buckets(THING)["sensorData"]
    assert {"location": "coordinate"} == paas.buckets(THING)["position"]
    assert "created" not in again[1]
    assert 2 == planned[0]
    assert "sensorData" not in planned[1]
    followed = [
        r for r in paas.requests if r.path.endswith("/data-buckets") and "afterCursor" in r.query
    ]
    assert len(followed) >= 2  # nextLink followed past the first page


async def test_prune_deletes_only_what_the_config_lacks(
    tmp_path: Path, paas: PaasSimulator
) -> None:
    paas.add_bucket(THING, "retired", {"x": "float"})
    paas.add_bucket(THING, "sensorData", {"count": "integer", "gone": "string"})
    config = write_config(tmp_path, paas)

    code, out, _ = await cloud("apply", "--prune", "--config", str(config))
    planned = await cloud("plan", "--config", str(config))

    assert 0 == code, out
    assert "deleted bucket retired" in out
    assert "deleted shape sensorData/gone" in out
    assert "retired" not in paas.buckets(THING)
    assert "count" in paas.buckets(THING)["sensorData"]
    assert (0, "The thing's data buckets and shapes match the config: nothing to do.") == (
        planned[0],
        planned[1].splitlines()[-1],
    )


async def test_a_shape_of_another_type_is_refused_without_force(
    tmp_path: Path, paas: PaasSimulator
) -> None:
    paas.add_bucket(THING, "sensorData", {"count": "float"})
    config = write_config(tmp_path, paas)

    planned = await cloud("plan", "--config", str(config))
    kept = await cloud("apply", "--config", str(config))
    kept_type = paas.buckets(THING)["sensorData"]["count"]
    forced = await cloud("apply", "--force", "--config", str(config))

    assert 2 == planned[0]
    assert "-/+ count  valueType float → integer" in planned[1]
    assert "losing its history" in planned[1]
    assert (2, "float") == (kept[0], kept_type)
    assert "left shape sensorData/count" in kept[1]
    assert 0 == forced[0], forced
    assert "re-created shape sensorData/count (valueType float → integer)" in forced[1]
    assert "integer" == paas.buckets(THING)["sensorData"]["count"]


async def test_a_bad_key_is_a_clear_error_and_never_shown(
    tmp_path: Path, paas: PaasSimulator
) -> None:
    bad = "wr0ng-k3y-secret"
    config = write_config(tmp_path, paas, key=bad)

    code, out, err = await cloud("plan", "--config", str(config))

    assert 1 == code
    assert "HTTP 401 UNAUTHORIZED_ERROR" in err
    assert bad not in out + err
    assert KEY not in out + err
    assert f"ApiKey {bad}" == paas.requests[-1].headers["authorization"]  # it was sent


async def test_a_503_is_retried_and_a_404_is_not(tmp_path: Path, paas: PaasSimulator) -> None:
    config = write_config(tmp_path, paas)
    paas.fail_next(503, count=2)

    code, out, _ = await cloud("plan", "--config", str(config))

    assert 2 == code, out
    assert 3 == len([r for r in paas.requests if r.path.endswith("/data-buckets")])

    paas.requests.clear()
    paas.fail_next(404)
    code, out, err = await cloud("plan", "--config", str(config))

    assert 1 == code, out
    assert "404" in err
    assert 1 == len([r for r in paas.requests if r.path.endswith("/data-buckets")])


async def test_a_token_shorter_lived_than_the_margin_is_fetched_once_not_per_request(
    tmp_path: Path,
) -> None:
    with PaasSimulator(api_key=KEY, things={THING: "gw"}, page_size=2, token_lifetime=10) as short:
        (tmp_path / "client-secret").write_text(short.client_secret)
        extra = (
            'auth = "oauth"\n'
            f'client_id = "{short.client_id}"\n'
            f'client_secret_file = "{tmp_path / "client-secret"}"\n'
        )
        config = write_config(tmp_path, short, extra=extra)
        assert 0 == (await cloud("apply", "--config", str(config)))[0]

        tokens = [r for r in short.requests if r.path.endswith("/oauth/token")]
        others = [r for r in short.requests if not r.path.endswith("/oauth/token")]
    assert len(others) > 2, "enough requests to tell one token from one a request"
    assert 1 == len(tokens)


async def test_oauth_client_credentials_get_a_token(tmp_path: Path, paas: PaasSimulator) -> None:
    (tmp_path / "client-secret").write_text(paas.client_secret)
    extra = (
        'auth = "oauth"\n'
        f'client_id = "{paas.client_id}"\n'
        f'client_secret_file = "{tmp_path / "client-secret"}"\n'
    )
    config = write_config(tmp_path, paas, extra=extra)

    code, out, err = await cloud("plan", "--config", str(config))

    assert 2 == code, err
    assert ["POST"] == [r.method for r in paas.requests if r.path.endswith("/oauth/token")]
    assert paas.requests[-1].headers["authorization"].startswith("Bearer ")
    assert paas.client_secret not in out + err


async def test_verify_reports_what_the_cloud_never_saw_or_holds_stale(
    tmp_path: Path, paas: PaasSimulator
) -> None:
    config = write_config(tmp_path, paas)
    assert 0 == (await cloud("apply", "--config", str(config)))[0]
    now = int(time.time() * 1000)
    paas.record(
        THING,
        "sensorData",
        [
            {"id": "temperature", "value": 21.5, "timestamp": str(now)},
            {"id": "count", "value": 7, "timestamp": str(now - 3_600_000)},
        ],
    )

    code, out, _ = await cloud("verify", "--config", str(config))

    assert 2 == code
    lines = out.splitlines()
    assert "  sensorData/running: never seen by the cloud" in lines
    assert any(
        line.startswith("  sensorData/count: stale: the cloud's last value is 36") for line in lines
    )
    assert not any("temperature" in line for line in lines)


async def test_config_shows_the_clouds_and_the_agents_values(
    tmp_path: Path, paas: PaasSimulator, broker: Broker
) -> None:
    from sim.plant import SimUnit, serve_tcp

    unit = SimUnit(1)
    unit.set_registers("holding", 806, [600])
    plant = await serve_tcp([unit])
    body = (
        POINTS.format(port=plant.port).split("[[serial]]")[0]
        + """
[[config_groups]]
name = "gw-1-setting"
settings = [ { id = "GW1_40807", device = "meter1", address = "40807", type = "uint16" } ]
"""
    )
    control = tmp_path / "control.sock"
    (tmp_path / "paas-key").write_text(KEY)
    text = agent_toml(broker, body, control=f'socket = "{control}"')
    text += f'\n[paas]\nurl = "{paas.url}"\napi_key_file = "{tmp_path / "paas-key"}"\n'
    config = tmp_path / "agent.toml"
    config.write_text(text)
    paas.set_config(THING, "gw-1-setting", expected={"GW1_40807": 700}, reported={"GW1_40807": 600})
    try:
        async with running_agent(tmp_path, text) as agent:
            await poll_until(control.is_socket, timeout=WAIT, what="the control socket")
            await poll_until(
                lambda: "gw-1-setting" in agent.configurator.reported,
                timeout=WAIT,
                what="the agent's first report",
            )
            code, out, err = await cloud("config", "--config", str(config))
    finally:
        await plant.stop()

    assert 0 == code, err
    row = next(line for line in out.splitlines() if "GW1_40807" in line)
    assert ["GW1_40807", "700", "600", "600"] == row.split()
