"""The agent as a service: systemd's notify protocol, SIGTERM, SIGHUP, health readings."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import PlantServer, SimUnit
from tests.helpers import (
    AgentProcess,
    agent_toml,
    device,
    poll_until,
    running_agent,
    tcp_connection,
)

WAIT = 30.0


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def seen(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self._sock.close()


@contextmanager
def notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watchdog_usec: int
) -> Iterator[NotifySocket]:
    receiver = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(receiver.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield receiver
    finally:
        receiver.close()


def device_config(
    broker: Broker, plant: PlantServer, tmp_path: Path, *, interval: float, extra: str = ""
) -> str:
    body = tcp_connection(plant, device(interval=interval)) + extra
    return agent_toml(broker, body, queue_path=tmp_path / "state" / "queue.db", log_format="json")


def polls(unit: SimUnit) -> int:
    return sum(1 for r in unit.requests if (r.function_code, r.address) == (3, 0))


async def test_notify_protocol_ready_watchdog_status_stopping(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broker: Broker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(device_config(broker, tcp_plant, tmp_path, interval=0.5))
    with notify_socket(tmp_path, monkeypatch, watchdog_usec=400_000) as systemd:
        async with AgentProcess(config, log_dir=tmp_path) as agent:  # killed if still running
            await agent.start()
            await poll_until(
                lambda: len(systemd.seen("WATCHDOG=1")) >= 4,
                timeout=WAIT,
                what="four watchdog pings",
            )
            await poll_until(
                lambda: any(
                    "connected; queue" in m
                    for _, m in systemd.seen("STATUS=")
                    if "not connected" not in m
                ),
                timeout=WAIT,
                what="STATUS saying connected",
            )
            assert 0 == await agent.stop()

    messages = [m for _, m in systemd.messages]
    assert "READY=1" == messages[0]
    assert "STOPPING=1" in messages
    pings = [t for t, _ in systemd.seen("WATCHDOG=1")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.4, "pinged at half of WATCHDOG_USEC (0.2 s), with slack"


async def test_a_blocked_event_loop_stops_the_watchdog_pings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broker: Broker,
    tcp_plant: PlantServer,
) -> None:
    with notify_socket(tmp_path, monkeypatch, watchdog_usec=200_000) as systemd:
        async with running_agent(
            tmp_path, device_config(broker, tcp_plant, tmp_path, interval=1.0)
        ):
            await poll_until(
                lambda: len(systemd.seen("WATCHDOG=1")) >= 3, timeout=WAIT, what="watchdog pings"
            )
            blocked_at = time.monotonic()
            time.sleep(1.5)  # noqa: ASYNC251 - blocking the loop is the point of this test
            unblocked_at = time.monotonic()
            await poll_until(
                lambda: any(t > unblocked_at for t, _ in systemd.seen("WATCHDOG")),
                timeout=WAIT,
                what="pings after the block",
            )

    during = [t for t, _ in systemd.seen("WATCHDOG=1") if blocked_at + 0.05 < t < unblocked_at]
    assert [] == during


async def test_sigterm_exits_0_and_loses_no_reading(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    sim_unit.count_reads("holding", 0)
    config = tmp_path / "agent.toml"
    config.write_text(device_config(broker, tcp_plant, tmp_path, interval=0.1))
    async with AgentProcess(config, log_dir=tmp_path) as agent:  # killed if still running
        await agent.start()
        await cloud.wait_for(lambda m: len(cloud.readings("b")) >= 10, timeout=WAIT)
        assert 0 == await agent.stop()
        answered = polls(sim_unit)

        await agent.start()  # whatever SIGTERM left queued goes out now
        await cloud.wait_for(
            lambda m: set(range(1, answered + 1)) <= {r["value"] for r in cloud.readings("b")},
            timeout=WAIT,
        )
        await agent.stop()


async def test_sighup_reloads_the_poll_interval_and_keeps_the_broker_session(
    tmp_path: Path,
    broker: Broker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(device_config(broker, tcp_plant, tmp_path, interval=5.0))
    agent = AgentProcess(config, log_dir=tmp_path)
    await agent.start()
    try:
        await agent.wait_for_event("mqtt_connected", timeout=WAIT)
        await sim_unit.wait_until(lambda u: polls(u) >= 1, timeout=WAIT)
        config.write_text(device_config(broker, tcp_plant, tmp_path, interval=0.1))
        assert agent.pid is not None
        os.kill(agent.pid, signal.SIGHUP)
        reloaded = await agent.wait_for_event("config_reloaded", timeout=WAIT)
        start = polls(sim_unit)
        began = asyncio.get_running_loop().time()
        await sim_unit.wait_until(lambda u: polls(u) >= start + 10, timeout=WAIT)
        elapsed = asyncio.get_running_loop().time() - began
    finally:
        await agent.stop()

    assert "kept" == reloaded["broker_session"]
    assert 1 == len(agent.events("mqtt_connected")), "the MQTT session was not dropped"
    assert elapsed < 4.0, f"10 polls took {elapsed:.1f} s after the reload"


async def test_a_bad_reload_keeps_the_running_config(
    tmp_path: Path,
    broker: Broker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    config = tmp_path / "agent.toml"
    good = device_config(broker, tcp_plant, tmp_path, interval=0.2)
    config.write_text(good)
    agent = AgentProcess(config, log_dir=tmp_path)
    await agent.start()
    try:
        await sim_unit.wait_until(lambda u: polls(u) >= 2, timeout=WAIT)
        config.write_text(good.replace("interval = 0.2", "interval = -3"))
        assert agent.pid is not None
        os.kill(agent.pid, signal.SIGHUP)
        failed = await agent.wait_for_event("config_reload_failed", timeout=WAIT)
        start = polls(sim_unit)
        await sim_unit.wait_until(lambda u: polls(u) >= start + 5, timeout=WAIT)
        assert agent.running
    finally:
        assert 0 == await agent.stop()

    assert any("interval" in problem for problem in failed["problems"])
    assert broker.thing_secret not in str(failed)


async def test_health_readings_arrive_in_their_bucket(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    extra = '\n[health]\nbucket = "gateway"\ninterval = 0.5\n'
    async with running_agent(
        tmp_path, device_config(broker, tcp_plant, tmp_path, interval=0.2, extra=extra)
    ):
        await cloud.wait_for(
            lambda m: len({r["id"] for r in cloud.readings("gateway")}) >= 12, timeout=WAIT
        )

    ids = {r["id"] for r in cloud.readings("gateway")}
    assert {
        "agent_uptime",
        "agent_connected",
        "agent_reconnects",
        "agent_queue_depth",
        "agent_queue_bytes",
        "agent_queue_oldest_age",
        "agent_readings",
        "agent_messages_sent",
        "agent_messages_dropped",
        "agent_queue_commits",
        "agent_devices_failing",
        "agent_read_errors_meter1",
    } == ids
