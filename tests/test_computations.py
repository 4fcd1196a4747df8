"""Derived points and windowed aggregates, against the real plant and broker.

What the cloud received is compared with what the simulated units held: a sum of three
phase powers, a counter's windows computed offline from its own raw readings, and the
same window across a `kill -9` of the agent mid-window.
"""

from __future__ import annotations

import io
import json
import marshal
import sqlite3
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.pipeline.aggregates import unpacked_state
from agent.pipeline.aggregation import journal_samples
from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import SimUnit, serve_tcp
from tests.helpers import (
    AgentProcess,
    agent_toml,
    durable_agent_toml,
    poll_until,
    running_agent,
    tcp_connection,
)

WAIT = 30.0
WINDOW = 2  # seconds


def phases(interval: float = 0.2) -> str:
    return f"""
  [[modbus.devices]]
  name = "meter"
  unit = 1
  interval = {interval}
  bucket = "power"
  points = [
    {{ id = "p_l1", address = "40001", publish = false }},
    {{ id = "p_l2", address = "40002", publish = false }},
    {{ id = "p_l3", address = "40003", publish = false }},
  ]

[[derived]]
id = "p_total"
bucket = "power"
expression = "p_l1 + p_l2 + p_l3"
value_type = "integer"
"""


async def test_three_phase_powers_are_summed_and_the_inputs_not_published(
    tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    unit = SimUnit(1)
    unit.set_registers("holding", 0, [1200, 1300, 1400])
    plant = await serve_tcp([unit])
    try:
        async with running_agent(tmp_path, agent_toml(broker, tcp_connection(plant, phases()))):
            await cloud.wait_for(lambda m: bool(cloud.readings("power")), timeout=WAIT)
            unit.set_registers("holding", 0, [2000, 2000, 2001])
            await cloud.wait_for(
                lambda m: any(r["value"] == 6001 for r in cloud.readings("power")), timeout=WAIT
            )
    finally:
        await plant.stop()

    readings = cloud.readings("power")
    assert {"p_total"} == {r["id"] for r in readings}
    assert {3900, 6001} == {r["value"] for r in readings}


def counter(*, publish: bool = True, interval: float = 0.25) -> str:
    aggregate = f'{{ window = {WINDOW}, functions = ["avg", "min", "max", "count"] }}'
    point = f'{{ id = "n", address = "40001", publish = {str(publish).lower()}, aggregate = {aggregate} }}'
    return f"""
  [[modbus.devices]]
  name = "meter"
  unit = 1
  interval = {interval}
  bucket = "b"
  points = [ {point} ]
"""


def windows(raw: list[dict[str, Any]]) -> dict[int, list[int]]:
    """The raw readings by the window their timestamp falls in (its end, ms), once each."""
    seen: dict[int, int] = {int(r["timestamp"]): r["value"] for r in raw}
    found: dict[int, list[int]] = defaultdict(list)
    for stamp, value in sorted(seen.items()):
        found[(stamp // (WINDOW * 1000) + 1) * WINDOW * 1000].append(value)
    return found


def results(readings: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The aggregates published, by window end."""
    found: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in readings:
        if r["id"] != "n":
            found[int(r["timestamp"])][r["id"]] = r["value"]
    return found


async def test_a_counters_windows_are_published_at_each_boundary(
    tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    unit = SimUnit(1)
    unit.count_reads("holding", 0)
    plant = await serve_tcp([unit])
    try:
        async with running_agent(tmp_path, agent_toml(broker, tcp_connection(plant, counter()))):
            await cloud.wait_for(lambda m: len(results(cloud.readings("b"))) >= 4, timeout=WAIT)
    finally:
        await plant.stop()

    raw = [r for r in cloud.readings("b") if r["id"] == "n"]
    offline = windows(raw)
    published = results(cloud.readings("b"))
    # The first window may have begun before the agent; the others are whole.
    for end in sorted(published)[1:4]:
        assert end % (WINDOW * 1000) == 0
        samples = offline[end]
        assert {
            "n_avg": fmean(samples),
            "n_min": min(samples),
            "n_max": max(samples),
            "n_count": len(samples),
        } == published[end]


async def test_a_window_survives_kill_9_mid_window(
    tmp_path: Path, broker: Broker, cloud: CloudClient
) -> None:
    unit = SimUnit(1)
    unit.count_reads("holding", 0)
    plant = await serve_tcp([unit])
    queue = tmp_path / "state" / "queue.db"
    config = tmp_path / "agent.toml"
    config.write_text(
        durable_agent_toml(
            broker, tcp_connection(plant, counter()), queue_path=queue, batch="max_delay = 0"
        )
    )
    try:
        async with AgentProcess(config, log_dir=tmp_path) as agent:  # killed if still running
            await agent.start()
            await cloud.wait_for(lambda m: len(results(cloud.readings("b"))) >= 1, timeout=WAIT)
            # Mid-window: the open window's state is on disk with two samples or more (its
            # end taken from the same read: the next may come after the window closed).
            seen: list[tuple[int, int]] = []
            await poll_until(
                lambda: open_with(queue, samples=2, into=seen), timeout=WAIT, what="a window"
            )
            killed_in = seen[-1][0]
            await agent.kill()
            await agent.start()
            await cloud.wait_for(lambda m: killed_in in results(cloud.readings("b")), timeout=WAIT)
            await agent.stop()
    finally:
        await plant.stop()

    raw = [r for r in cloud.readings("b") if r["id"] == "n"]
    samples = windows(raw)[killed_in]
    assert {
        "n_avg": fmean(samples),
        "n_min": min(samples),
        "n_max": max(samples),
        "n_count": len(samples),
    } == results(cloud.readings("b"))[killed_in]
    assert [] == agent.events("aggregate_state_dropped")


def _open_window(queue: Path) -> tuple[int, int] | None:
    """(end ms, samples) of the open window the aggregates' state on disk holds: the
    snapshot's window with the journalled samples after it."""
    try:
        with sqlite3.connect(f"file:{queue}?mode=ro", uri=True) as db:
            row = db.execute("SELECT value FROM state WHERE name = 'aggregates'").fetchone()
            journal = [r[0] for r in db.execute("SELECT value FROM state_journal ORDER BY seq")]
    except sqlite3.Error:
        return None
    if row is None:
        return None
    snapshot = io.BytesIO(row[0])
    marshal.load(snapshot)  # the header; the one window's packed state follows it
    state = unpacked_state("n", marshal.load(snapshot))
    samples = [
        sample
        for blob in journal
        for entry in marshal.loads(blob)
        for sample in journal_samples(entry)
    ]
    width = WINDOW * 1000
    window = state.get("window")
    if samples:
        end = (samples[-1][1] // width + 1) * width
        held = window["count"] if window is not None and window["start_ms"] + width == end else 0
        return end, held + len([e for e in samples if e[1] >= end - width])
    if window is None:
        return None
    return int(window["start_ms"]) + width, int(window["count"])


def open_with(queue: Path, *, samples: int, into: list[tuple[int, int]]) -> bool:
    """Whether the state on disk holds a window open with `samples` samples or more; if so,
    its (end ms, samples) appended to `into`."""
    found = _open_window(queue)
    if found is None or found[1] < samples:
        return False
    into.append(found)
    return True


# -- config -------------------------------------------------------------------------------

BASE = """
[thing]
id = "t"
secret = "s"

[mqtt]
host = "h"

[[modbus]]
name = "plc"
transport = "tcp"
host = "10.0.0.1"
"""


def problems(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(BASE + body)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [p.render("FILE") for p in caught.value.problems]


@pytest.mark.parametrize(
    ("expression", "said"),
    [
        ("p_l1 + p_l4", "unknown point 'p_l4'"),
        ("__import__('os')", "not allowed"),
        ("p_l1.real", "not allowed"),
        ("2 ** 100000", "exponent"),
        ("(" * 200 + "p_l1" + ")" * 200, "deep"),
    ],
)
def test_a_bad_expression_is_refused_at_load_with_key_and_line(
    tmp_path: Path, expression: str, said: str
) -> None:
    body = phases().replace('"p_l1 + p_l2 + p_l3"', json.dumps(expression))
    found = problems(tmp_path, body)

    assert 1 == len(found), found
    assert found[0].startswith("FILE:")
    assert ": derived[0].expression: " in found[0]
    assert said in found[0].lower() or said in found[0]


def test_an_aggregate_of_a_string_and_an_id_taken_twice_are_refused(tmp_path: Path) -> None:
    body = """
  [[modbus.devices]]
  name = "m"
  bucket = "b"
  points = [
    { id = "s", address = "40001", type = "string", length = 2, aggregate = { window = 60, functions = ["avg"] } },
    { id = "v", address = "40011", aggregate = { window = 60, functions = ["max"] } },
    { id = "v_max", address = "40012" },
  ]
"""
    found = problems(tmp_path, body)

    assert any("aggregates apply to numbers; this point is a string" in p for p in found)
    assert any("point id 'v_max' is already used in bucket 'b'" in p for p in found)


def test_check_config_shows_derived_inputs_and_aggregate_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.service.cli import main

    path = tmp_path / "c.toml"
    path.write_text(
        BASE
        + phases()
        + counter()
        .replace('name = "meter"', 'name = "m2"')
        .replace("unit = 1", "unit = 2")
        .replace('bucket = "b"', 'bucket = "c"')
    )

    assert 0 == main(["check-config", str(path)])

    out = capsys.readouterr().out
    assert (
        "  derived 'p_total' in 'power' = p_l1 + p_l2 + p_l3 (integer; inputs p_l1, p_l2, p_l3;"
        " each no older than 0.4 s)"
    ) in out
    assert "  aggregate of 'n' every 2 s: n_avg, n_min, n_max, n_count" in out
