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

from agent.pipeline.readings import Reading, ValueType
from agent.service.state import AgentView, health_values

# The data shapes of the table above, for `orio-agent cloud plan`.
SHAPES: dict[str, ValueType] = {
    "agent_uptime": "integer",
    "agent_connected": "boolean",
    "agent_reconnects": "integer",
    "agent_queue_depth": "integer",
    "agent_queue_bytes": "integer",
    "agent_queue_oldest_age": "integer",
    "agent_readings": "integer",
    "agent_messages_sent": "integer",
    "agent_messages_dropped": "integer",
    "agent_queue_commits": "integer",
    "agent_devices_failing": "integer",
}
READ_ERRORS = "agent_read_errors_"  # + a device's or instrument's name: integer


def health_shapes(sources: list[str]) -> dict[str, ValueType]:
    """Every health reading's data shape, `sources` naming the devices and instruments."""
    return {**SHAPES, **{READ_ERRORS + name: "integer" for name in sources}}


def health_readings(view: AgentView, bucket: str) -> list[Reading]:
    """The table above, as readings of `bucket` stamped with the view's wall clock."""
    return [Reading(bucket, key, value, view.wall_ms) for key, value in health_values(view).items()]
