"""The MQTT side of delivery, in memory: every publish recorded, its PUBACK the test's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent.errors import TransientError


class PublisherOffline(TransientError):
    """`publish` while not connected (what the MQTT adapter raises as NotConnected)."""


class PublishLost(TransientError):
    """The connection dropped before the PUBACK (the adapter's ConnectionLost)."""


@dataclass(slots=True)
class Published:
    topic: str
    payload: bytes
    retain: bool
    future: asyncio.Future[None] = field(repr=False, compare=False)


class FakePublisher:
    """A broker connection the test drives: it connects, acknowledges and drops."""

    def __init__(self, *, connected: bool = True) -> None:
        self.published: list[Published] = []
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        if connected:
            self._connected.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        if not self.connected:
            raise PublisherOffline("not connected to the broker")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.published.append(Published(topic, payload, retain, future))
        self._changed.set()
        return future

    # -- what the test does -------------------------------------------------------------

    @property
    def pending(self) -> list[Published]:
        """Published and not yet acknowledged nor failed, oldest first."""
        return [p for p in self.published if not p.future.done()]

    def connect(self) -> None:
        self._connected.set()

    def disconnect(self) -> None:
        """The connection drops: every message awaiting its PUBACK fails."""
        self._connected.clear()
        self.fail(len(self.pending))

    def ack(self, count: int = 1) -> None:
        """PUBACKs for the `count` oldest pending messages."""
        for published in self.pending[:count]:
            published.future.set_result(None)

    def fail(self, count: int = 1) -> None:
        for published in self.pending[:count]:
            published.future.set_exception(PublishLost("connection lost before PUBACK"))

    async def wait_published(self, count: int) -> None:
        """Until at least `count` messages have been published."""
        while len(self.published) < count:
            self._changed.clear()
            await self._changed.wait()
