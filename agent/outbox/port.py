"""The outbox: messages between the batcher and the broker.

`Outbox` is the port; `MemoryOutbox` is the bounded in-memory implementation (what
`queue.path = ":memory:"` means: lost on restart); `agent.outbox.disk.DiskOutbox` is the
durable one. A message leaves the outbox only
when the broker acknowledged it (`ack`); one whose connection dropped first goes back
to the front (`release`), so the cloud sees messages oldest first and at least once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from agent.clock import Clock, Stamp

if TYPE_CHECKING:
    from agent.outbox.rows import StateProvider  # rows imports this module

log = structlog.get_logger("agent.outbox")


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    topic: str
    payload: bytes
    stamp: Stamp  # when it was made, in terms that survive a clock step

    @property
    def created(self) -> float:
        """Wall-clock seconds when it was made (as the clock read then)."""
        return self.stamp.wall_ms / 1000


@dataclass(slots=True)
class OutboxStats:
    depth: int = 0
    depth_bytes: int = 0
    in_flight: int = 0
    oldest_created: float | None = None
    queued_total: int = 0
    sent_total: int = 0
    dropped_total: int = 0
    backlog: int = 0  # messages still to replay since the last (re)connect
    commits: int = 0  # transactions written to disk since start (flash wear)
    files_bytes: int = 0  # what the queue's files take on disk
    disk: str = "ok"  # or "failing: <error>" while the disk does not take writes


class Outbox(Protocol):
    def put(
        self, topic: str, payload: bytes, stamp: Stamp | None = None, *, replace: bool = False
    ) -> None:
        """Store a message; never blocks, may drop the oldest to stay within bounds.

        `replace`: unsent messages on the same topic are superseded by this one.
        """

    async def take(self) -> Message:
        """The oldest message not yet in flight; waits until there is one."""

    def ack(self, message: Message) -> None:
        """The broker has it: forget it."""

    def release(self, message: Message) -> None:
        """Its connection dropped before the broker acknowledged it: send it again."""

    def drop(self, message: Message, reason: str) -> None:
        """A taken message that must never be sent: forget it, counted and logged."""

    def mark_backlog(self) -> None:
        """A connection came up: what is queued now is backlog."""

    def stats(self) -> OutboxStats: ...

    async def run(self) -> None:
        """The outbox's own work (the disk's, for the durable one), as a task."""

    async def wait_room(self) -> None:
        """Until the outbox can take more without losing any (pollers wait before a cycle)."""

    async def flush(self) -> None:
        """Store what was put so far (commit it, for the durable one)."""

    async def aclose(self) -> None:
        """Store what is pending and release the outbox's resources."""

    # What a durable outbox held at start-up: name -> (snapshot, journal entries after it).
    saved_states: dict[str, tuple[bytes | None, list[bytes]]]

    def keep_state(self, name: str, provider: StateProvider) -> None:
        """Store what `provider(whole)` gives under `name` with the commit after each
        `state_changed` (agent.outbox.rows.StateWrite)."""

    def state_changed(self) -> None: ...


class MemoryOutbox:
    """Bounded by total payload bytes; beyond that the oldest waiting messages are dropped."""

    def __init__(self, *, max_bytes: int, clock: Clock) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._waiting: deque[Message] = deque()
        self._in_flight: dict[int, Message] = {}
        self._bytes = 0
        self._seq = 0
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._stats = OutboxStats()
        self.saved_states: dict[str, tuple[bytes | None, list[bytes]]] = {}  # nothing kept

    def keep_state(self, name: str, provider: StateProvider) -> None:
        """Nothing is kept: a memory outbox loses everything at a restart."""

    def state_changed(self) -> None:
        """Nothing to store."""

    def put(
        self, topic: str, payload: bytes, stamp: Stamp | None = None, *, replace: bool = False
    ) -> None:
        if replace:
            kept = deque(m for m in self._waiting if m.topic != topic)
            self._bytes -= sum(len(m.payload) for m in self._waiting if m.topic == topic)
            self._waiting = kept
        self._seq += 1
        self._waiting.append(Message(self._seq, topic, payload, stamp or self._clock.stamp()))
        self._bytes += len(payload)
        self._stats.queued_total += 1
        self._ready.set()
        self._empty.clear()
        dropped = 0
        while self._bytes > self._max_bytes and len(self._waiting) > 1:
            self._bytes -= len(self._waiting.popleft().payload)
            dropped += 1
        if dropped:
            self._stats.dropped_total += dropped
            log.warning(
                "outbox_full_dropped_oldest",
                dropped=dropped,
                dropped_total=self._stats.dropped_total,
                max_bytes=self._max_bytes,
            )

    async def take(self) -> Message:
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        message = self._waiting.popleft()
        self._in_flight[message.seq] = message
        return message

    def ack(self, message: Message) -> None:
        if self._in_flight.pop(message.seq, None) is not None:
            self._bytes -= len(message.payload)
            self._stats.sent_total += 1
            if not self._waiting and not self._in_flight:
                self._empty.set()

    def release(self, message: Message) -> None:
        if self._in_flight.pop(message.seq, None) is None:
            return
        # Keep oldest-first order among released messages and those still waiting.
        index = 0
        while index < len(self._waiting) and self._waiting[index].seq < message.seq:
            index += 1
        self._waiting.insert(index, message)
        self._ready.set()

    def drop(self, message: Message, reason: str) -> None:
        if self._in_flight.pop(message.seq, None) is not None:
            self._bytes -= len(message.payload)
            self._stats.dropped_total += 1
            log.error("message_dropped", seq=message.seq, topic=message.topic, reason=reason)
            if not self._waiting and not self._in_flight:
                self._empty.set()

    def mark_backlog(self) -> None:
        """Memory replays everything as it comes: there is no rate to apply."""

    async def wait_empty(self) -> None:
        """Until every message has been acknowledged."""
        await self._empty.wait()

    def stats(self) -> OutboxStats:
        stats = self._stats
        stats.depth = len(self._waiting) + len(self._in_flight)
        stats.depth_bytes = self._bytes
        stats.in_flight = len(self._in_flight)
        oldest = [m.created for m in self._in_flight.values()]
        if self._waiting:
            oldest.append(self._waiting[0].created)
        stats.oldest_created = min(oldest, default=None)
        return stats

    async def run(self) -> None:
        """Memory has no work of its own."""

    async def wait_room(self) -> None:
        """Memory makes room by dropping the oldest (its bound is max_bytes)."""

    async def flush(self) -> None:
        """Memory holds what it holds."""

    async def aclose(self) -> None:
        """Nothing to release for memory."""
