"""A broker port that closes the connection before a CONNACK: the attempt fails at once.

A proxy or load balancer whose backend is down accepts the connection and closes or
resets it. gmqtt would wait for a CONNACK until `connect_timeout`; the session gives the
attempt up as soon as the socket closes and goes through its back-off, so attempts come
as often as the back-off allows, not once per time-out. A CONNACK sent just before the
close (a refused login) is still told as what it is.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agent.cloud.mqtt import MqttSession
from agent.config.sections import MqttSection
from agent.testing import captured_logs
from sim.broker import LOOPBACK
from tests.helpers import poll_until
from tests.test_adapter_errors import Logs, connect_failures, mqtt_config

CONNECT_TIMEOUT = 10.0  # what each attempt would wait, were the close not noticed
BACKOFF = 0.1  # backoff_min = backoff_max: each wait between attempts is 0.05 .. 0.1 s
ATTEMPTS = 10
SLACK = 0.2  # s an attempt may take on a loaded machine: a few ms on loopback
WAIT = 30.0
CONNACK_NOT_AUTHORIZED = bytes([0x20, 0x02, 0x00, 0x05])  # MQTT 3.1.1 CONNACK, code 5
CLOSED = "the broker closed the connection before its CONNACK"


class ClosingListener:
    """A loopback listener that ends every connection at once, noting when each came.

    ``how``: ``"close"`` (FIN), ``"reset"`` (RST: SO_LINGER 0), or ``"refuse"`` (read the
    CONNECT, answer CONNACK "not authorized" and close in the same breath).
    """

    def __init__(self, how: str) -> None:
        self.how = how
        self.port = 0  # once listening
        self.accepted: list[float] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(asyncio.get_running_loop().time())
        if self.how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif self.how == "refuse":
            await reader.read(1024)
            writer.write(CONNACK_NOT_AUTHORIZED)
        writer.close()


@asynccontextmanager
async def closing_listener(how: str) -> AsyncIterator[ClosingListener]:
    listener = ClosingListener(how)
    server = await asyncio.start_server(listener.handle, LOOPBACK, 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def session_running(config: MqttSection) -> AsyncIterator[Logs]:
    """A session connecting to `config`'s broker; its log lines."""
    with captured_logs() as logs:
        session = MqttSession(thing_id="t1", secret="s", config=config)
        task = asyncio.create_task(session.run(), name="mqtt")
        try:
            yield logs
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await session.close()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_port_that_closes_at_once_is_retried_at_the_back_offs_pace(how: str) -> None:
    async with closing_listener(how) as listener:
        config = mqtt_config(
            LOOPBACK,
            listener.port,
            connect_timeout=CONNECT_TIMEOUT,
            backoff_min=BACKOFF,
            backoff_max=BACKOFF,
        )
        async with session_running(config) as logs:
            await poll_until(
                lambda: len(listener.accepted) >= ATTEMPTS,
                timeout=WAIT,
                what=f"{ATTEMPTS} attempts",
            )

    took = listener.accepted[ATTEMPTS - 1] - listener.accepted[0]
    assert took < (ATTEMPTS - 1) * (BACKOFF + SLACK), (
        f"{ATTEMPTS} attempts took {took:.2f} s: more than the back-off between them"
    )
    failures = connect_failures(logs)
    assert ("mqtt_connect_failed", "BrokerUnreachable", CLOSED) == (
        failures[0]["event"],
        failures[0]["error_type"],
        failures[0]["error"],
    )
    assert {CLOSED} == {e["error"] for e in failures}  # never "timed out"


async def test_a_connack_just_before_the_close_is_told_as_the_refusal_it_is() -> None:
    async with closing_listener("refuse") as listener:
        config = mqtt_config(LOOPBACK, listener.port, connect_timeout=CONNECT_TIMEOUT)
        async with session_running(config) as logs:
            await poll_until(lambda: connect_failures(logs), timeout=WAIT, what="a failure")

    first = connect_failures(logs)[0]
    assert ("mqtt_auth_refused", "BrokerAuthRefused") == (first["event"], first["error_type"])
