"""Health telemetry: the agent's own state as readings in a bucket of its own.

Every `[health] interval` seconds the agent publishes, through the normal data path
(batches, durable queue), readings with these data shape ids:

| id | type | meaning |
| --- | --- | --- |
| agent_uptime | integer | seconds since the agent started |
| agent_connected | boolean | connected to the broker now |
| agent_reconnects | integer | broker reconnects since start |
| agent_queue_depth | integer | messages in the queue (not yet acknowledged) |
| agent_queue_bytes | integer | their payload bytes |
| agent_queue_oldest_age | integer | age of the oldest queued message, seconds (0 if empty) |
| agent_readings | integer | readings taken since start |
| agent_messages_sent | integer | messages the broker acknowledged since start |
| agent_messages_dropped | integer | messages dropped by queue bounds since start |
| agent_queue_commits | integer | queue transactions written to disk since start |
| agent_read_errors_<device> | integer | failed requests of that device or instrument since start |
| agent_devices_failing | integer | devices and instruments not answering now |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.outbox.port import Outbox
from agent.pipeline.readings import Reading, Value
from agent.sources.modbus.poller import DevicePoller
from agent.sources.serial.instrument import Instrument


class Connection(Protocol):
    @property
    def connected(self) -> bool: ...

    reconnects: int


def health_readings(
    *,
    bucket: str,
    started: float,
    session: Connection,
    outbox: Outbox,
    pollers: Sequence[DevicePoller],
    instruments: Sequence[Instrument],
    wall_ms: Callable[[], int],
) -> list[Reading]:
    stats = outbox.stats()
    now = wall_ms()
    oldest = 0 if stats.oldest_created is None else max(0, round(now / 1000 - stats.oldest_created))
    values: dict[str, Value] = {
        "agent_uptime": round(time.monotonic() - started),
        "agent_connected": session.connected,
        "agent_reconnects": session.reconnects,
        "agent_queue_depth": stats.depth,
        "agent_queue_bytes": stats.depth_bytes,
        "agent_queue_oldest_age": oldest,
        "agent_readings": sum(p.stats.readings for p in pollers)
        + sum(i.stats.readings for i in instruments),
        "agent_messages_sent": stats.sent_total,
        "agent_messages_dropped": stats.dropped_total,
        "agent_queue_commits": stats.commits,
        "agent_devices_failing": sum(1 for p in pollers if p.stats.consecutive_failures)
        + sum(1 for i in instruments if i.stats.consecutive_failures),
    }
    for poller in pollers:
        values[f"agent_read_errors_{poller.name}"] = poller.stats.requests_failed
    for instrument in instruments:
        values[f"agent_read_errors_{instrument.name}"] = instrument.stats.no_reply
    return [Reading(bucket, key, value, now) for key, value in values.items()]
