"""Clock safety: no reading reaches the cloud with a timestamp from an unset clock."""

from __future__ import annotations

import time
from pathlib import Path

from agent.clock import FLOOR_MS, Clock, Stamp, shift_timestamps
from sim.broker import Broker
from sim.cloud import CloudClient
from sim.plant import PlantServer
from tests.helpers import agent_toml, device, running_agent, tcp_connection

YEAR_MS = 365 * 24 * 3600 * 1000
WAIT = 30.0


class Settable:
    """A wall clock that is `error_ms` off the real one until the test "syncs NTP"."""

    def __init__(self, error_ms: int) -> None:
        self.error_ms = error_ms

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.error_ms


def test_a_clock_before_the_build_floor_is_not_trusted() -> None:
    assert not Clock(wall_ms=lambda: FLOOR_MS - 1, boot_ms=lambda: 0, boot_id="b").trusted()
    assert Clock(wall_ms=lambda: FLOOR_MS, boot_ms=lambda: 0, boot_id="b").trusted()


def test_a_step_of_the_clock_since_a_message_was_made_is_its_correction() -> None:
    wall = Settable(-50 * YEAR_MS)
    clock = Clock(wall_ms=wall.wall_ms, boot_ms=lambda: 5_000, boot_id="b")
    made = clock.stamp()

    wall.error_ms = 0

    assert 50 * YEAR_MS == clock.correction_ms(made)


def test_drift_below_the_tolerance_is_no_step() -> None:
    wall = Settable(0)
    clock = Clock(wall_ms=wall.wall_ms, boot_ms=lambda: 5_000, boot_id="b")
    made = clock.stamp()

    wall.error_ms = 1_500

    assert 0 == clock.correction_ms(made)


def test_a_message_from_an_earlier_boot_keeps_its_time_if_its_clock_was_set() -> None:
    clock = Clock(wall_ms=lambda: FLOOR_MS + 10 * YEAR_MS // 10, boot_ms=lambda: 1, boot_id="now")

    assert 0 == clock.correction_ms(Stamp("earlier", FLOOR_MS + 1000, 99))


def test_a_message_from_an_earlier_boot_with_an_unset_clock_cannot_be_timed() -> None:
    clock = Clock(wall_ms=lambda: FLOOR_MS + 1000, boot_ms=lambda: 1, boot_id="now")

    assert clock.correction_ms(Stamp("earlier", 86_400_000, 99)) is None


def test_timestamps_in_a_payload_are_shifted() -> None:
    payload = (
        b'[{"id":"a","value":1,"timestamp":"1000"},'
        b'{"id":"b","value":"timestamp","timestamp":"2000"}]'
    )

    assert (
        b'[{"id":"a","value":1,"timestamp":"1500"},'
        b'{"id":"b","value":"timestamp","timestamp":"2500"}]'
    ) == shift_timestamps(payload, 500)


async def test_readings_taken_before_ntp_arrive_restamped_once_the_clock_is_set(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    tcp_plant: PlantServer,
) -> None:
    wall = Settable(-(time.time_ns() // 1_000_000) + 3_600_000)  # 1970-01-01T01:00
    clock = Clock(wall_ms=wall.wall_ms)
    body = tcp_connection(tcp_plant, device(interval=0.2))
    config = agent_toml(broker, body, queue_path=tmp_path / "queue.db")
    async with running_agent(tmp_path, config, clock=clock) as agent:
        unit = tcp_plant.unit(1)
        await unit.wait_until(lambda u: u.read_count >= 5, timeout=WAIT)
        assert not cloud.readings("b"), "nothing may leave while the clock reads 1970"
        polled_before_sync = time.time_ns() // 1_000_000
        wall.error_ms = 0  # NTP sets the clock
        await cloud.wait_for(lambda m: len(cloud.readings("b")) >= 5, timeout=WAIT)
        assert agent.delivery.restamped >= 1

    stamps = [int(r["timestamp"]) for r in cloud.readings("b")]
    assert all(polled_before_sync - 60_000 < ts < polled_before_sync + 60_000 for ts in stamps)
