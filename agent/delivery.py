"""Delivery: messages from the outbox to the broker, a bounded window in flight.

A message is taken from the outbox, published at QoS 1, and acknowledged to the outbox
only when the broker's PUBACK arrives; if the connection drops first it is released
back to the outbox and sent again after the reconnect.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Protocol

from agent.errors import TransientError
from agent.outbox import Message, Outbox

DEFAULT_WINDOW = 32  # messages in flight at once


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def wait_connected(self) -> None: ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        ...


class Delivery:
    def __init__(self, *, outbox: Outbox, publisher: Publisher,
                 window: int = DEFAULT_WINDOW) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._window = asyncio.Semaphore(window)
        self._in_flight = 0

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            await self._publisher.wait_connected()
            await self._window.acquire()
            message = await self._outbox.take()
            if not self._publisher.connected:
                self._settle(message, None)
                continue
            try:
                future = self._publisher.publish(message.topic, message.payload)
            except TransientError:  # the connection went between the check and the send
                self._settle(message, None)
                continue
            self._in_flight += 1
            future.add_done_callback(partial(self._settle, message))

    def _settle(self, message: Message, future: asyncio.Future[None] | None) -> None:
        self._window.release()
        if future is None:
            self._outbox.release(message)
            return
        self._in_flight -= 1
        if future.cancelled() or future.exception() is not None:
            self._outbox.release(message)
        else:
            self._outbox.ack(message)
