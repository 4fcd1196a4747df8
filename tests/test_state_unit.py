"""agent.service.state: one picture of the agent, read by STATUS=, agent_stats and health.

Real pollers over an in-memory register bus, a real in-memory outbox; the three views
must agree on what is failing and what was counted.
"""

from __future__ import annotations

from agent.clock import Clock
from agent.config import resolve
from agent.config.schema import ModbusConfig
from agent.outbox.port import MemoryOutbox
from agent.service.health import health_readings
from agent.service.state import AgentState, stats_fields, status_line
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import DevicePoller
from agent.testing import FakeRegisterBus

WALL_MS = 1_800_000_000_000
BOOT_MS = 5_000


class Offline:
    """The broker session, three reconnects in and down now."""

    connected = False
    connected_at: float | None = None
    last_ack_at: float | None = 40.0
    refused_subscriptions: set[str] = {"$thing/x/$conf/$expected/denied"}  # noqa: RUF012
    reconnects = 3
    restamped = 0  # and stands in for delivery and the configurator
    writes = 0
    rejected = 0


class Now:
    def __init__(self) -> None:
        self.seconds = 100.0

    def __call__(self) -> float:
        return self.seconds


def pollers(bus: FakeRegisterBus) -> list[DevicePoller]:
    connection = resolve.connection(
        ModbusConfig.model_validate(
            {
                "name": bus.name,
                "transport": "tcp",
                "host": "127.0.0.1",
                "devices": [
                    {
                        "name": name,
                        "unit": unit,
                        "bucket": "b",
                        "points": [{"id": f"{name}_v", "table": "holding", "address": 0}],
                    }
                    for name, unit in (("meter1", 1), ("meter2", 2))
                ],
            }
        )
    )
    return [
        DevicePoller(device=device, bus=bus, emit=lambda bucket, parts: None)
        for device in connection.devices
    ]


async def test_a_silent_device_and_the_counts_are_the_same_in_all_three_views() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(1, Table.HOLDING, 0, [42])
    bus.time_out(2)
    clock = Clock(wall_ms=lambda: WALL_MS, boot_ms=lambda: BOOT_MS, boot_id="b")
    outbox = MemoryOutbox(max_bytes=1_000_000, clock=clock)
    outbox.put("t", b"[]")
    now = Now()
    state = AgentState(queue=outbox, clock=clock, monotonic=now)
    state.track_link(Offline(), Offline())
    sources = pollers(bus)
    state.track_sources(sources, [bus], Offline())
    for source in sources:
        await source.poll_once()
        await source.poll_once()
    now.seconds += 42.4

    view = state.view()
    fields = stats_fields(view)
    health = {r.id: r.value for r in health_readings(view, "health")}

    assert "not connected; queue 1 messages; not answering: meter2" == status_line(view)
    assert [("fake", "memory:fake", True)] == [
        (v.name, v.endpoint, v.connected) for v in view.lines
    ]
    assert ["meter2"] == fields["devices_failing"]
    assert 1 == health["agent_devices_failing"]
    assert (2, 2) == (fields["readings"], health["agent_readings"])  # meter1, twice
    assert (2, 2) == (fields["read_errors"], health["agent_read_errors_meter2"])
    assert 0 == health["agent_read_errors_meter1"]
    assert (3, 3) == (fields["reconnects"], health["agent_reconnects"])
    assert (1, 1) == (fields["queue_depth"], health["agent_queue_depth"])
    assert 42 == health["agent_uptime"]
    assert {WALL_MS} == {r.timestamp_ms for r in health_readings(view, "health")}


async def test_the_view_is_a_copy_and_points_are_shown_when_asked() -> None:
    bus = FakeRegisterBus()
    bus.set_registers(1, Table.HOLDING, 0, [42])
    bus.time_out(2)
    clock = Clock(wall_ms=lambda: WALL_MS, boot_ms=lambda: BOOT_MS, boot_id="b")
    state = AgentState(queue=MemoryOutbox(max_bytes=1000, clock=clock), clock=clock)
    sources = pollers(bus)
    state.track_sources(sources, [bus], Offline())
    await sources[0].poll_once()

    before = state.view(points=True)
    await sources[0].poll_once()

    meter1, meter2 = before.sources
    assert 1 == meter1.stats.readings  # taken before the second poll
    assert 2 == sources[0].stats.readings
    assert ("meter1_v", "b", 42) == (
        meter1.points[0].id,
        meter1.points[0].bucket,
        meter1.points[0].value,
    )
    assert meter1.points[0].age_s is not None
    assert (None, None) == (meter2.points[0].value, meter2.points[0].age_s)
    assert ("device", "fake") == (meter1.kind, meter1.where)
    assert () == state.view().sources[0].points


def test_a_clock_not_yet_set_is_in_the_status_line() -> None:
    clock = Clock(wall_ms=lambda: 1000, boot_ms=lambda: BOOT_MS, boot_id="b")
    state = AgentState(queue=MemoryOutbox(max_bytes=1000, clock=clock), clock=clock)

    assert "not connected; queue 0 messages; clock not set" == status_line(state.view())
