"""The durable outbox's front: the port's methods, on the event loop, in memory only.

`QueueFront` is what the pollers (`put`, `wait_room`) and delivery (`take`, `ack`,
`release`, `drop`, `mark_backlog`) call; none of it touches the file or raises from it.
It is the base of agent.outbox.disk.DiskOutbox, whose task (`run`) does the file's work
and keeps the front's view of the file up to date (the attributes so marked in
`__init__`). Separate so that each side reads on its own: here, the order in which
messages are handed out and what becomes of them after; there, what is written, read
back and recovered.

Live first. A message can be taken as soon as it is put; the newest messages stay in
memory (up to MEMORY_CACHE_BYTES, 2 MiB) after their commit too, and are delivered from
there without reading them back. When a connection comes
up, whatever is queued is backlog: it is read from disk in chunks and replayed at
`replay_rate`, oldest first, while messages made after the reconnect go out at once.

Back-pressure. A healthy disk slower than the plant: beyond 3/4 of `memory_bytes`
waiting to be written, `wait_room` holds the pollers before their next cycle until
half of it is written; polling slows rather than readings being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from agent.clock import Clock, Stamp
from agent.outbox.budget import commit_bytes_for
from agent.outbox.degraded import DiskHealth
from agent.outbox.drops import DropLog
from agent.outbox.memory import Doomed, MemoryLanes, ReadLane, Unwritten
from agent.outbox.port import Message, OutboxStats
from agent.outbox.replay import ReplayPace
from agent.outbox.rows import message_of
from agent.outbox.settings import QueueSettings

log = structlog.get_logger("agent.queue")

MEMORY_CACHE_BYTES = 2 * 1024 * 1024  # committed messages kept in memory for delivery


class QueueFront:
    """The Outbox port's methods over the queue's memory; the base of DiskOutbox, which
    keeps the file and runs the queue's task."""

    def __init__(self, settings: QueueSettings, *, clock: Clock, time: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._time = time
        self._stats = OutboxStats(queued_total=0)
        self._commit_bytes = commit_bytes_for(settings.commit_bytes, settings.max_bytes)
        self._seq = 0
        # Messages in memory, not handed out, oldest first: backlog (made before the last
        # connection came up) and live (made since).
        self._memory = MemoryLanes()
        self._mem_floor = 0  # every unsent message newer than this is in memory
        self._unwritten = Unwritten()  # not on disk (yet), oldest first
        # Messages up to this seq were made before a write failed: SQLite may have kept
        # a failed write's rows all the same, so their acknowledgements delete them to be
        # sure (a DELETE of a row that is not there costs nothing).
        self._suspect_upto = 0
        self._in_flight: dict[int, Message] = {}
        self._in_flight_bytes = 0  # their payloads (unwritten or not)
        self._taker_waiting = False  # delivery waits in take(): connected, and keeping up
        self._retry: dict[int, Message] = {}  # released: sent again first
        self._acked: set[int] = set()  # on disk, acknowledged, deletion not yet committed
        # Of those, the ones `_disk_count` does not count: acknowledged while a write that
        # failed, or one still in the I/O thread, was to store them. Deleted all the same,
        # but not taken off the depth (they are off it already, as unwritten no more).
        self._uncounted: set[int] = set()
        # Taken while a commit was under way, then dropped from the file by it (for the
        # bounds; `held` was what was out when it began): counted in the depth until done
        # with, and then there is nothing to delete.
        self._gone: set[int] = set()
        # topic → the seq that replaced older unsent ones, until the file has deleted them
        # (reads from the file skip them meanwhile)
        self._supersede_due: dict[str, int] = {}
        self._backlog_end = 0  # seqs up to this one are backlog, replayed at replay_rate
        self._backlog = ReadLane(0)
        self._live = ReadLane(0)  # live messages that had to leave memory
        self._generation = 0  # bumped by mark_backlog: reads started before it are stale
        self._refill_wanted = False
        self._pace = ReplayPace(settings.replay_rate, time=self._time)
        self._ready = asyncio.Event()  # something may be takeable
        self._room = asyncio.Event()  # the disk keeps up: the pollers may go on
        self._room.set()
        self._wake = asyncio.Event()  # the queue's task has something to do
        self._commit_at: float | None = None  # when the queue's task commits next
        # The queue's task keeps these up to date: the file as it last found it.
        self.commits = 0
        self._writing: set[int] = set()  # in the write now in the I/O thread
        self._deleting = 0  # acknowledged messages the write in the I/O thread deletes
        self._health = DiskHealth(settings.path, time=self._time)
        self._open = False
        self._disk_count = self._disk_bytes = 0
        self._files_bytes = 0
        self._oldest_ms: int | None = None
        self._closed = False
        self._drops = DropLog(
            self._stats, max_bytes=settings.max_bytes, max_age=settings.max_age, time=self._time
        )

    # -- the Outbox port --------------------------------------------------------------------

    def put(
        self, topic: str, payload: bytes, stamp: Stamp | None = None, *, replace: bool = False
    ) -> None:
        if self._closed:
            log.error("queue_put_after_close", topic=topic, bytes=len(payload))
            return
        if replace:
            self._supersede(topic)
        self._seq += 1
        message = Message(self._seq, topic, payload, stamp or self._clock.stamp())
        self._memory.add_live(message)
        self._unwritten.add(message, self._time())
        self._stats.queued_total += 1
        self._ready.set()  # delivered at once; written only if not acknowledged in time
        # What waits for the disk: not what is in flight (it is mostly acknowledged before
        # its commit; counted, a full window would ask for a commit at every put).
        waiting = self._unwritten.bytes - self._in_flight_bytes
        if self._health.ok and waiting > self._settings.memory_bytes * 3 // 4:
            self._room.clear()  # the disk is behind: the pollers wait (wait_room)
            self._commit_at = self._time()  # and it is asked to catch up now
            self._wake.set()
        if self._health.ok and waiting >= self._commit_bytes:
            self._commit_at = self._time()
            self._wake.set()
        elif self._commit_at is None:
            self._commit_at = self._time() + self._settings.commit_interval
            self._wake.set()
        self._trim_memory()

    async def take(self) -> Message:
        while True:
            message = self._next()
            if message is None:
                self._ready.clear()
                wait = self._token_wait()
                self._taker_waiting = True  # what is put now is taken at once
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._ready.wait()
                finally:
                    self._taker_waiting = False
                continue
            if self._expired(message):
                self._forget(message)
                self._drops.expired(len(message.payload))
                self._wake.set()  # the queue's task logs them, one line for many
                continue
            self._in_flight[message.seq] = message
            self._in_flight_bytes += len(message.payload)
            return message

    def ack(self, message: Message) -> None:
        if not self._landed(message):
            return
        self._stats.sent_total += 1
        self._forget(message)

    def release(self, message: Message) -> None:
        if self._landed(message):
            self._retry[message.seq] = message
            self._ready.set()

    def drop(self, message: Message, reason: str) -> None:
        """Forget a taken message that must never be sent (its time cannot be known)."""
        if self._landed(message):
            self._forget(message)
            self._stats.dropped_total += 1
            log.error("message_dropped", seq=message.seq, topic=message.topic, reason=reason)

    def _landed(self, message: Message) -> bool:
        """`message` is no longer in flight; whether it was."""
        if self._in_flight.pop(message.seq, None) is None:
            return False
        self._in_flight_bytes -= len(message.payload)
        return True

    def mark_backlog(self) -> None:
        """A connection came up: what is queued now is backlog, replayed at replay_rate;
        it is read again from the start of the file (what was sent is gone from it)."""
        self._generation += 1
        self._backlog_end = self._seq
        self._memory.to_backlog()
        self._backlog = ReadLane(0)
        self._live = ReadLane(self._backlog_end)
        self._pace.restart()
        waiting = self._depth() - len(self._in_flight)
        if waiting > 0:
            log.info(
                "replay_started", messages=waiting, rate=self._settings.replay_rate or "unlimited"
            )
        self._want_rows()
        self._ready.set()

    def stats(self) -> OutboxStats:
        stats = self._stats
        stats.depth = self._depth()
        stats.depth_bytes = self._disk_bytes + self._unwritten.bytes
        stats.in_flight = len(self._in_flight)
        oldest = self._oldest_ms
        first = self._unwritten.first()
        if first is not None:
            made = first.stamp.wall_ms
            oldest = made if oldest is None else min(oldest, made)
        stats.oldest_created = oldest / 1000 if oldest is not None else None
        stats.commits = self.commits
        stats.backlog = self._backlog_waiting()
        stats.files_bytes = self._files_bytes
        stats.disk = "ok" if self._health.ok else f"failing: {self._health.error}"
        return stats

    async def wait_room(self) -> None:
        """Until the disk has caught up with what was put (the pollers wait here before a
        cycle: a disk slower than the plant slows polling rather than losing readings).
        Never waits while the disk fails: then the oldest in memory are dropped."""
        await self._room.wait()

    def _update_room(self) -> None:
        waiting = self._unwritten.bytes - self._in_flight_bytes
        if not self._health.ok or self._closed or waiting <= self._settings.memory_bytes // 2:
            self._room.set()

    def _commit_due(self, at: float) -> None:
        """A commit at `at` at the latest (an earlier one already due stays)."""
        if self._commit_at is None or at < self._commit_at:
            self._commit_at = at
            self._wake.set()

    # -- choosing the next message ----------------------------------------------------------

    def _next(self) -> Message | None:
        if self._deletions_behind():
            return None  # the file first forgets what was sent (bounds resends after a kill)
        if self._retry:
            return self._retry.pop(min(self._retry))
        decided, message = self._next_live()
        return message if decided else self._next_backlog()

    def _next_live(self) -> tuple[bool, Message | None]:
        """(True, the message or None to wait) when live data decides; (False, None) when
        there is no live data to send."""
        if self._live.rows:
            return True, message_of(self._live.rows.popleft())
        if self._live_on_disk():  # live that had to leave memory goes before newer live
            self._want_rows()
            return True, None
        live = self._memory.live
        if live:
            return True, self._memory.pop(live)
        return False, None

    def _next_backlog(self) -> Message | None:
        backlog_first = self._backlog.rows or self._backlog_on_disk()
        if backlog_first and not self._backlog.rows:
            self._want_rows()
            return None
        backlog = self._memory.backlog
        if not backlog_first and not backlog:
            return None
        if not self._pace.take():
            return None
        if self._backlog.rows:
            row = self._backlog.rows.popleft()
            if not self._backlog.rows:
                self._want_rows()
            return message_of(row)
        return self._memory.pop(backlog)

    def _deletions_behind(self) -> bool:
        """Acknowledged messages whose deletion is not yet on disk are resent after a kill;
        delivery waits while there are ack_batch of them, so that a kill resends at most
        ack_batch of them besides the window in flight."""
        if not (self._open and self._health.ok):
            return False
        if len(self._acked) + self._deleting < self._settings.ack_batch:
            return False
        self._commit_at = self._time()
        self._wake.set()
        return True

    def _backlog_on_disk(self) -> bool:
        return self._open and self._backlog.read < min(self._backlog_end, self._mem_floor)

    def _live_on_disk(self) -> bool:
        return self._open and max(self._live.read, self._backlog_end) < self._mem_floor

    def _want_rows(self) -> None:
        if not self._refill_wanted:
            self._refill_wanted = True
            self._wake.set()

    def _expired(self, message: Message) -> bool:
        stamp, now = message.stamp, self._clock.stamp()
        if stamp.boot_id == now.boot_id:
            age_ms = now.boot_ms - stamp.boot_ms  # immune to clock steps
        else:
            age_ms = now.wall_ms - stamp.wall_ms
        return age_ms > self._settings.max_age * 1000

    def _token_wait(self) -> float | None:
        """How long until a backlog message may go, if one is waiting for its rate."""
        if self._backlog.rows or self._memory.backlog:
            return self._pace.wait()
        return None

    # -- acknowledgements and memory --------------------------------------------------------

    def _forget(self, message: Message) -> None:
        """A taken message is done with (sent, dropped): off the disk too, in time."""
        seq = message.seq
        if seq in self._gone:
            self._gone.discard(seq)  # the file dropped it already
            return
        unwritten = self._unwritten.pop(seq)
        if unwritten is not None and not self._room.is_set():
            self._update_room()  # less to write: the pollers may go on
        if unwritten is not None and seq not in self._writing and seq > self._suspect_upto:
            return  # never written: nothing to delete
        self._acked.add(seq)  # on disk (or perhaps): delete it
        if unwritten is not None:
            self._uncounted.add(seq)  # not in `_disk_count`: its write failed or is under way
        if len(self._acked) >= self._settings.ack_batch:
            self._commit_at = self._time()
            self._wake.set()
        elif self._commit_at is None:
            self._commit_at = self._time() + self._settings.commit_interval
            self._wake.set()

    def _trim_memory(self) -> None:
        """Keep memory bounded: committed messages leave it (they are read back later);
        unwritten ones (the disk failing) are dropped beyond memory_bytes, oldest first."""
        dropped = dropped_bytes = 0
        while self._memory.bytes > MEMORY_CACHE_BYTES:
            lane = self._memory.backlog or self._memory.live
            if not lane:
                break
            head = lane[0]
            if head.seq in self._unwritten:
                if self._health.ok or self._unwritten.bytes <= self._settings.memory_bytes:
                    break  # to be written (the pollers wait meanwhile), or within bounds
                self._unwritten.pop(head.seq)
                dropped += 1
                dropped_bytes += len(head.payload)
            else:
                self._mem_floor = max(self._mem_floor, head.seq)
            self._memory.pop(lane)
        if dropped:
            self._drops.count("memory_full", dropped, dropped_bytes)

    def _supersede(self, topic: str) -> None:
        """Forget unsent messages on `topic`: the one being put replaces them."""
        self._supersede_due[topic] = self._seq + 1  # the file's copies: at the next commit
        self._discard(lambda _seq, other: other == topic)
        for message in self._unwritten.on_topic(topic):
            if message.seq not in self._in_flight:
                self._forget(message)
        for seq in [s for s, m in self._retry.items() if m.topic == topic]:
            self._forget(self._retry.pop(seq))

    def _depth(self) -> int:
        """Messages not yet acknowledged (on disk or in memory). Never fewer: only the
        acknowledgements `_disk_count` counts are taken off it (it once said 0 during a
        disk outage with messages on disk and in flight); a few more, for as long as a
        failed write's rows wait to be deleted."""
        counted = len(self._acked) - len(self._uncounted)
        return max(0, self._disk_count - counted) + len(self._unwritten) + len(self._gone)

    def _backlog_waiting(self) -> int:
        if self._backlog_end == 0:
            return 0
        disk = 0
        if self._backlog_on_disk():
            disk = max(0, self._disk_count - len(self._in_flight))  # an upper estimate
        return disk + len(self._backlog.rows) + len(self._memory.backlog)

    def _discard(self, doomed: Doomed) -> None:
        """Take the unsent messages `doomed(seq, topic)` picks out of memory and out of
        the rows read back (the file's copies are the caller's business)."""
        for lane in (self._backlog, self._live):
            lane.discard(doomed)
        self._memory.discard(doomed)
