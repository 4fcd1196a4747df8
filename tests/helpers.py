"""Running the agent inside a test: a config written for the test's broker and devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.clock import Clock
from agent.config import load_config
from agent.service import Agent
from sim.broker import Broker

STOP_TIMEOUT = 30.0


def agent_toml(broker: Broker, body: str, *, batch: str = "max_delay = 0.2") -> str:
    """A whole config file: the broker's thing, plain MQTT on loopback, then `body`."""
    return f"""
[thing]
id = "{broker.thing_id}"
secret = "{broker.thing_secret}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
tls = false
backoff_min = 0.2
backoff_max = 1.0

[queue]
path = ":memory:"

[batch]
{batch}

[log]
level = "debug"
{body}
"""


@asynccontextmanager
async def running_agent(tmp_path: Path, text: str, *,
                        clock: Clock | None = None) -> AsyncIterator[Agent]:
    """The agent running in this event loop; stopped (SIGTERM's path) on exit."""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    agent = Agent(load_config(path), clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent")
    try:
        yield agent
    finally:
        stop.set()
        async with asyncio.timeout(STOP_TIMEOUT):
            await task
