"""Shared fixtures: a real mosquitto, the cloud client, socat pty pairs, Modbus units.

Nothing is mocked. A missing mosquitto or socat makes the fixture raise, so
the tests needing it error out instead of being skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.broker import Broker, BrokerFactory, free_port
from sim.cloud import CloudClient
from sim.plant import PlantServer, SimUnit, serve_tcp
from sim.pty import PtyPair
from tests.lazyfs_fixture import lazyfs  # the power-cut file system (sim/lazyfs.py)
from tests.rabbitmq_fixture import rabbitmq, rabbitmq_node  # noqa: F401 - fixtures: a second broker
from tests.tls_fixture import tls_pki  # noqa: F401 - a fixture: throwaway CAs and certificates

__all__ = ["free_port", "lazyfs"]  # re-exported: free_port for test modules, lazyfs as a fixture


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers with custom options (``persistence=True``, ``extra_things=...``)."""
    started: list[Broker] = []

    def start(**options: Any) -> Broker:
        broker = Broker(tmp_path / f"broker{len(started)}", **options)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """A started mosquitto with the document's thing and application users."""
    return broker_factory()


@pytest.fixture
async def cloud(broker: Broker) -> AsyncIterator[CloudClient]:
    """The application, connected and subscribed to ``$thing/#``."""
    client = CloudClient.for_broker(broker)
    await client.connect()
    yield client
    await client.disconnect()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    """A serial line: open ``device_a`` on one side and ``device_b`` on the other."""
    with PtyPair(tmp_path / "pty") as pair:
        yield pair


@pytest.fixture
def sim_unit() -> SimUnit:
    """Modbus unit 1 with every table zeroed."""
    return SimUnit(1)


@pytest.fixture
async def tcp_plant(sim_unit: SimUnit) -> AsyncIterator[PlantServer]:
    """``sim_unit`` served over Modbus TCP on a free loopback port."""
    server = await serve_tcp([sim_unit])
    yield server
    await server.stop()
