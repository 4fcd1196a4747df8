"""Delivery: messages from the outbox to the broker, a bounded window in flight.

A message is taken from the outbox, published at QoS 1, and acknowledged to the outbox
only when the broker's PUBACK arrives; if the connection drops first it is released
back to the outbox and sent again after the reconnect.

Clock safety is applied here, at the last moment: nothing is sent while the wall clock
is not trustworthy; a message made before the clock was stepped has its timestamps
shifted by the step; a message from an earlier boot that never had a good clock is
dropped, since the time of its readings cannot be known (see agent/clock.py).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Protocol

import structlog

from agent.clock import Clock, shift_timestamps
from agent.errors import TransientError
from agent.outbox.port import Message, Outbox

DEFAULT_WINDOW = 32  # messages in flight at once
CLOCK_CHECK_INTERVAL = 1.0

log = structlog.get_logger("agent.delivery")


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def wait_connected(self) -> None: ...

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False
    ) -> asyncio.Future[None]: ...


class Delivery:
    def __init__(
        self, *, outbox: Outbox, publisher: Publisher, clock: Clock, window: int = DEFAULT_WINDOW
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._clock = clock
        self._window = asyncio.Semaphore(window)
        self.restamped = 0

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            if not self._publisher.connected:
                await self._publisher.wait_connected()
                self._outbox.mark_backlog()
            await self._clock_trusted()
            await self._window.acquire()
            message = await self._outbox.take()
            if not self._publisher.connected:
                self._settle(message, None)
                continue
            correction = self._clock.correction_ms(message.stamp)
            if correction is None:
                self._window.release()
                self._outbox.drop(message, "made in an earlier boot before its clock was set")
                continue
            payload = message.payload
            if correction:
                payload = shift_timestamps(payload, correction)
                self.restamped += 1
            try:
                future = self._publisher.publish(message.topic, payload)
            except TransientError:  # the connection went between the check and the send
                self._settle(message, None)
                continue
            future.add_done_callback(partial(self._settle, message))

    async def _clock_trusted(self) -> None:
        if self._clock.trusted():
            return
        log.warning("clock_not_set_holding_messages", floor_ms=self._clock.floor_ms)
        while not self._clock.trusted():  # noqa: ASYNC110 - the clock has no event to wait on
            await asyncio.sleep(CLOCK_CHECK_INTERVAL)
        log.info("clock_set_sending")

    def _settle(self, message: Message, future: asyncio.Future[None] | None) -> None:
        self._window.release()
        if future is None or future.cancelled() or future.exception() is not None:
            self._outbox.release(message)  # not sent, or its connection dropped first
        else:
            self._outbox.ack(message)
