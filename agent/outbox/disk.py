"""The durable outbox: unsent messages in SQLite (agent.outbox.store), delivered from memory.

One task owns the file. `DiskOutbox.run` is the queue's task in the service's TaskGroup;
every SQLite call it makes runs in the outbox's one I/O thread, so a slow or failing disk
never stalls polling, and nothing that goes wrong with the disk raises into a poller or
into delivery: the port's methods (`put`, `take`, `ack`, ...) touch memory only.

Write economy. Messages wait in memory until the next commit, `commit_interval` after the
first uncommitted one (0.5 s), or at once beyond `commit_bytes`; acknowledged messages
are deleted in the same transactions. A message is handed to delivery once it is
committed, so what the broker may have seen is on disk.

Durability. `synchronous = "normal"`: a commit survives the agent being killed at once,
and a power cut once the WAL has been synced, which happens every `sync_interval`
(2 s): a power cut loses at most what was put in the last commit_interval +
sync_interval. `synchronous = "full"` syncs every commit: at most commit_interval.

Live first. The newest messages stay in memory (up to MEMORY_CACHE_BYTES, 2 MiB) after their
commit, and are delivered from there without reading them back. When a connection comes
up, whatever is queued is backlog: it is read from disk in chunks and replayed at
`replay_rate`, oldest first, while messages made after the reconnect go out at once.

A disk that cannot take writes (full after making room, I/O errors, read-only):
messages are delivered from memory (at most `memory_bytes`, the oldest dropped and
counted), acknowledgements of what is on disk are remembered, and the writes are tried
again with back-off; when the disk recovers, the unsent messages are written and the
acknowledged ones deleted, so a restart resends nothing the broker had. One log line per
change of state.

Back-pressure. A healthy disk slower than the plant: beyond 3/4 of `memory_bytes`
waiting to be written, `wait_room` holds the pollers before their next cycle until
half of it is written; polling slows rather than readings being dropped.

Bounds. `max_bytes` on disk (see agent.outbox.store), `max_age` both when a message is
handed to delivery and once a minute on disk; the oldest go first, counted and logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent.clock import Clock, Stamp
from agent.errors import QueueCorrupt, QueueError
from agent.outbox.port import Message, OutboxStats
from agent.outbox.store import (
    Opened,
    QueueStore,
    Row,
    Unpacked,
    Written,
    unpack_payload,
)

__all__ = ["DiskOutbox", "QueueSettings", "unpack_payload"]

log = structlog.get_logger("agent.queue")

FETCH_CHUNK = 256  # rows read back from disk at a time
MEMORY_CACHE_BYTES = 2 * 1024 * 1024  # committed messages kept in memory for delivery
AGE_CHECK_INTERVAL = 60.0  # seconds between sweeps of the file for max_age
RETRY_MIN, RETRY_MAX = 1.0, 30.0  # seconds between tries of a disk that failed
DROP_LOG_INTERVAL = 60.0  # seconds: drops after the first line are summed into the next
OPEN_WAIT = 30.0  # seconds the constructor waits for the file to open

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    path: Path
    max_bytes: int  # queue.db + -wal + -shm
    max_age: float
    replay_rate: float  # backlog messages per second; 0 = unlimited
    synchronous: str = "normal"
    commit_interval: float = 0.5
    sync_interval: float = 2.0
    memory_bytes: int = 8 * 1024 * 1024  # unwritten messages held while the disk fails
    commit_bytes: int = 512 * 1024  # a commit at once beyond this (a quarter of the cache)
    ack_batch: int = 32  # acknowledged messages that force a commit of their deletion


class _Lane:
    """Committed messages read back from disk, oldest first, beyond `read`."""

    __slots__ = ("read", "rows")

    def __init__(self, read: int) -> None:
        self.read = read
        self.rows: deque[Row] = deque()


def _message(row: Row) -> Message:
    seq, topic, packed, codec, boot_id, wall_ms, boot_ms = row
    return Message(seq, topic, unpack_payload(packed, codec), Stamp(boot_id, wall_ms, boot_ms))


class DiskOutbox:
    """The Outbox port on SQLite. The port's methods run on the event loop and touch
    memory only; `run` (the queue's task) does all the file's work."""

    def __init__(
        self, settings: QueueSettings, *, clock: Clock, loop_time: Callable[[], float] | None = None
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._time = loop_time or time.monotonic
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="queue-io"
        )
        self._store = QueueStore(
            settings.path, max_bytes=settings.max_bytes, synchronous=settings.synchronous
        )
        self._stats = OutboxStats(queued_total=0)
        # A commit never takes more than a sixteenth of the budget, so that the bound
        # is kept commit by commit.
        self._commit_bytes = max(1, min(settings.commit_bytes, settings.max_bytes // 16))
        self.commits = 0
        self._seq = 0
        # Messages in memory, not handed out, oldest first: backlog (made before the last
        # connection came up) and live (made since).
        self._mem_backlog: deque[Message] = deque()
        self._mem_live: deque[Message] = deque()
        self._resident: set[int] = set()  # seqs in the two deques
        self._mem_bytes = 0
        self._mem_floor = 0  # every unsent message newer than this is in memory
        self._unwritten: dict[int, Message] = {}  # not on disk (yet), oldest first
        self._unwritten_bytes = 0
        self._writing: set[int] = set()  # in the write now in the I/O thread
        # Messages up to this seq were made before a write failed: SQLite may have kept
        # a failed write's rows all the same, so their acknowledgements delete them to be
        # sure (a DELETE of a row that is not there costs nothing).
        self._suspect_upto = 0
        self._deleting = 0  # acknowledged messages the write in the I/O thread deletes
        self._sendable = 0  # messages in memory up to this seq may be handed out
        self._in_flight: dict[int, Message] = {}
        self._retry: dict[int, Message] = {}  # released: sent again first
        self._acked: set[int] = set()  # on disk, acknowledged, deletion not yet committed
        # topic → the seq that replaced older unsent ones, until the file has deleted them
        # (reads from the file skip them meanwhile)
        self._supersede_due: dict[str, int] = {}
        self._backlog_end = 0  # seqs up to this one are backlog, replayed at replay_rate
        self._backlog = _Lane(0)
        self._live = _Lane(0)  # live messages that had to leave memory
        self._generation = 0  # bumped by mark_backlog: reads started before it are stale
        self._refill_wanted = False
        self._tokens = 0.0
        self._tokens_at = self._time()
        self._ready = asyncio.Event()  # something may be takeable
        self._room = asyncio.Event()  # the disk keeps up: the pollers may go on
        self._room.set()
        self._wake = asyncio.Event()  # the queue's task has something to do
        self._commit_at: float | None = None
        self._synced = True
        self._sync_at = 0.0
        self._age_at = 0.0
        self._disk_ok = True
        self._disk_error: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._open = False
        self._disk_count = self._disk_bytes = 0
        self._files_bytes = 0
        self._oldest_ms: int | None = None
        self._closing = False
        self._closed = False
        self._job: asyncio.Future[Any] | None = None
        self._busy = asyncio.Lock()  # the queue's task and aclose: one at a time
        self._expired_count = self._expired_bytes = 0
        self._drops_unlogged: dict[str, list[int]] = {}  # reason → [messages, bytes]
        self._drops_logged_at: dict[str, float] = {}
        self._open_file()

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
        size = len(payload)
        self._mem_live.append(message)
        self._resident.add(message.seq)
        self._mem_bytes += size
        self._unwritten[message.seq] = message
        self._unwritten_bytes += size
        self._stats.queued_total += 1
        if self._disk_ok and self._unwritten_bytes > self._settings.memory_bytes * 3 // 4:
            self._room.clear()  # the disk is behind: the pollers wait (wait_room)
            self._commit_at = self._time()  # and it is asked to catch up now
            self._wake.set()
        if not self._disk_ok:
            self._sendable = message.seq  # nothing to wait for: it goes from memory
            self._ready.set()
        if self._disk_ok and self._unwritten_bytes >= self._commit_bytes:
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
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._ready.wait()
                continue
            if self._expired(message):
                self._forget(message)
                self._expired_count += 1
                self._expired_bytes += len(message.payload)
                self._wake.set()  # the queue's task logs them, one line for many
                continue
            self._in_flight[message.seq] = message
            return message

    def ack(self, message: Message) -> None:
        if self._in_flight.pop(message.seq, None) is None:
            return
        self._stats.sent_total += 1
        self._forget(message)

    def release(self, message: Message) -> None:
        if self._in_flight.pop(message.seq, None) is not None:
            self._retry[message.seq] = message
            self._ready.set()

    def drop(self, message: Message, reason: str) -> None:
        """Forget a taken message that must never be sent (its time cannot be known)."""
        if self._in_flight.pop(message.seq, None) is not None:
            self._forget(message)
            self._stats.dropped_total += 1
            log.error("message_dropped", seq=message.seq, topic=message.topic, reason=reason)

    def mark_backlog(self) -> None:
        """A connection came up: what is queued now is backlog, replayed at replay_rate;
        it is read again from the start of the file (what was sent is gone from it)."""
        self._generation += 1
        self._backlog_end = self._seq
        self._mem_backlog.extend(self._mem_live)
        self._mem_live.clear()
        self._backlog = _Lane(0)
        self._live = _Lane(self._backlog_end)
        self._tokens = 0.0
        self._tokens_at = self._time()
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
        stats.depth_bytes = self._disk_bytes + self._unwritten_bytes
        stats.in_flight = len(self._in_flight)
        oldest = self._oldest_ms
        if self._unwritten:
            first = next(iter(self._unwritten.values())).stamp.wall_ms
            oldest = first if oldest is None else min(oldest, first)
        stats.oldest_created = oldest / 1000 if oldest is not None else None
        stats.commits = self.commits
        stats.backlog = self._backlog_waiting()
        stats.files_bytes = self._files_bytes
        stats.disk = "ok" if self._disk_ok else f"failing: {self._disk_error}"
        return stats

    async def wait_room(self) -> None:
        """Until the disk has caught up with what was put (the pollers wait here before a
        cycle: a disk slower than the plant slows polling rather than losing readings).
        Never waits while the disk fails: then the oldest in memory are dropped."""
        await self._room.wait()

    def _update_room(self) -> None:
        if (
            not self._disk_ok
            or self._closed
            or (self._unwritten_bytes <= self._settings.memory_bytes // 2)
        ):
            self._room.set()

    async def run(self) -> None:
        """The queue's task: commits, syncs, reads for delivery, bounds, disk recovery."""
        while not self._closing:
            timeout = self._next_deadline()
            if timeout is None or timeout > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            if self._closing:
                return
            async with self._busy:
                await self._service()

    async def flush(self) -> None:
        """Commit what is pending now (and wait for it)."""
        async with self._busy:
            await self._write()

    async def aclose(self) -> None:
        """Commit what is pending, sync and close the file. Unacknowledged messages stay."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        try:
            if self._job is not None:  # a call the queue's task left running (cancelled)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._job)
            async with self._busy:
                if self._open:
                    await self._write()
                self._log_drops(force=True)
                if self._unwritten:
                    log.error(
                        "queue_unsaved_at_stop",
                        messages=len(self._unwritten),
                        error=self._disk_error,
                    )
                if self._open:
                    with contextlib.suppress(QueueError):
                        await self._io(self._store.close)
                    self._open = False
        finally:
            self._closed = True
            self._room.set()
            self._executor.shutdown(wait=True)

    # -- choosing the next message ----------------------------------------------------------

    def _next(self) -> Message | None:
        if self._deletions_behind():
            return None  # the file first forgets what was sent (bounds resends after a kill)
        if self._retry:
            return self._retry.pop(min(self._retry))
        if self._live.rows:
            return _message(self._live.rows.popleft())
        if self._live_on_disk():  # live that had to leave memory goes before newer live
            self._want_rows()
            return None
        if self._mem_live and self._mem_live[0].seq <= self._sendable:
            return self._pop_memory(self._mem_live)
        backlog_first = self._backlog.rows or self._backlog_on_disk()
        if backlog_first and not self._backlog.rows:
            self._want_rows()
            return None
        if not backlog_first and not (
            self._mem_backlog and self._mem_backlog[0].seq <= self._sendable
        ):
            return None
        if not self._take_token():
            return None
        if self._backlog.rows:
            row = self._backlog.rows.popleft()
            if not self._backlog.rows:
                self._want_rows()
            return _message(row)
        return self._pop_memory(self._mem_backlog)

    def _deletions_behind(self) -> bool:
        """Acknowledged messages whose deletion is not yet on disk are resent after a kill;
        delivery waits while there are ack_batch of them, so that a kill resends at most
        ack_batch of them besides the window in flight."""
        if not (self._open and self._disk_ok):
            return False
        if len(self._acked) + self._deleting < self._settings.ack_batch:
            return False
        self._commit_at = self._time()
        self._wake.set()
        return True

    def _pop_memory(self, lane: deque[Message]) -> Message:
        message = lane.popleft()
        self._resident.discard(message.seq)
        self._mem_bytes -= len(message.payload)
        return message

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

    def _take_token(self) -> bool:
        rate = self._settings.replay_rate
        if rate <= 0:
            return True
        now = self._time()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _token_wait(self) -> float | None:
        """How long until a backlog message may go, if one is waiting for its rate."""
        rate = self._settings.replay_rate
        if rate > 0 and (self._backlog.rows or self._mem_backlog):
            return max(0.001, (1.0 - self._tokens) / rate)
        return None

    # -- acknowledgements and memory --------------------------------------------------------

    def _forget(self, message: Message) -> None:
        """A taken message is done with (sent, dropped): off the disk too, in time."""
        seq = message.seq
        unwritten = self._unwritten.pop(seq, None)
        if unwritten is not None:
            self._unwritten_bytes -= len(unwritten.payload)
        if unwritten is None or seq in self._writing or seq <= self._suspect_upto:
            self._acked.add(seq)  # on disk (or about to be): delete it
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
        while self._mem_bytes > MEMORY_CACHE_BYTES:
            lane = self._mem_backlog or self._mem_live
            if not lane:
                break
            head = lane[0]
            if head.seq in self._unwritten:
                if self._disk_ok or self._unwritten_bytes <= self._settings.memory_bytes:
                    break  # to be written (the pollers wait meanwhile), or within bounds
                del self._unwritten[head.seq]
                self._unwritten_bytes -= len(head.payload)
                dropped += 1
                dropped_bytes += len(head.payload)
            else:
                self._mem_floor = max(self._mem_floor, head.seq)
            self._pop_memory(lane)
        if dropped:
            self._count_dropped("memory_full", dropped, dropped_bytes)

    def _count_dropped(self, reason: str, messages: int, size: int) -> None:
        """Count dropped messages; log them at once, then at most once a DROP_LOG_INTERVAL
        per reason (a queue kept full by a long outage drops at every commit)."""
        self._stats.dropped_total += messages
        held = self._drops_unlogged.setdefault(reason, [0, 0])
        held[0] += messages
        held[1] += size
        self._log_drops()

    def _log_drops(self, *, force: bool = False) -> None:
        now = self._time()
        for reason, (messages, size) in list(self._drops_unlogged.items()):
            if not messages or (
                not force and now < self._drops_logged_at.get(reason, -1e9) + DROP_LOG_INTERVAL
            ):
                continue
            self._drops_logged_at[reason] = now
            self._drops_unlogged[reason] = [0, 0]
            log.warning(
                "queue_dropped_oldest",
                reason=reason,
                messages=messages,
                bytes=size,
                dropped_total=self._stats.dropped_total,
                max_bytes=self._settings.max_bytes,
                max_age=self._settings.max_age,
            )

    def _supersede(self, topic: str) -> None:
        """Forget unsent messages on `topic`: the one being put replaces them."""
        self._supersede_due[topic] = self._seq + 1  # the file's copies: at the next commit
        self._discard(lambda _seq, other: other == topic)
        for message in [m for m in self._unwritten.values() if m.topic == topic]:
            if message.seq not in self._in_flight:
                self._forget(message)
        for seq in [s for s, m in self._retry.items() if m.topic == topic]:
            self._forget(self._retry.pop(seq))

    def _depth(self) -> int:
        """Messages not yet acknowledged (on disk or in memory)."""
        return max(0, self._disk_count - len(self._acked)) + len(self._unwritten)

    def _backlog_waiting(self) -> int:
        if self._backlog_end == 0:
            return 0
        disk = 0
        if self._backlog_on_disk():
            disk = max(0, self._disk_count - len(self._in_flight))  # an upper estimate
        return disk + len(self._backlog.rows) + len(self._mem_backlog)

    # -- the queue's task -------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        """Seconds until the queue's task has something to do (None: only when woken)."""
        now = self._time()
        deadlines: list[float] = []
        if self._refill_wanted:
            return 0.0
        if not self._open or not self._disk_ok:
            deadlines.append(self._retry_at)
        elif self._commit_at is not None:
            deadlines.append(self._commit_at)
        if not self._synced and self._settings.synchronous == "normal":
            deadlines.append(self._sync_at)
        if self._open:
            deadlines.append(self._age_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    async def _service(self) -> None:
        now = self._time()
        if self._expired_count:
            self._count_dropped("max_age", self._expired_count, self._expired_bytes)
            self._expired_count = self._expired_bytes = 0
        self._log_drops()
        if not self._open:
            if now >= self._retry_at and await self._reopen():
                self._recovered()
                self._commit_at = self._time()  # write what memory held meanwhile
                self._wake.set()
            return
        if self._refill_wanted:
            self._refill_wanted = False
            await self._refill()
        failing = not self._disk_ok
        due = self._retry_at if failing else self._commit_at
        if due is not None and now >= due:
            await self._write(sweep=now >= self._age_at)
        elif now >= self._age_at:
            await self._write(sweep=True, messages=False)
        if not self._synced and self._settings.synchronous == "normal" and now >= self._sync_at:
            await self._sync()

    async def _io(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one call of the store in the I/O thread. The call completes even if the
        caller is cancelled (the next write repeats what it may have lost)."""
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))
        self._job = job
        try:
            return await asyncio.shield(job)
        finally:
            if self._job is job and job.done():
                self._job = None

    def _open_file(self) -> None:
        """Open the file at start-up (before the loop runs anything else: READY waits)."""
        future = self._executor.submit(self._store.open)
        try:
            opened = future.result(timeout=OPEN_WAIT)
        except (QueueError, concurrent.futures.TimeoutError) as exc:
            self._open_failed(exc)
            return
        self._opened(opened)

    async def _reopen(self) -> bool:
        """Open the file again; False (to be tried again later) if it still will not."""
        try:
            opened = await self._io(self._store.open)
        except QueueError as exc:
            self._open_failed(exc)
            return False
        self._opened(opened)
        return True

    def _opened(self, opened: Opened) -> None:
        if opened.moved_aside is not None:
            log.error(
                "queue_corrupt_moved_aside",
                path=str(self._settings.path),
                moved_to=str(opened.moved_aside),
                error=opened.corruption,
            )
        self._open = True
        if opened.max_seq >= self._seq:
            self._seq = opened.max_seq
        # Everything on the file is older than anything in memory: backlog.
        self._mem_floor = max(self._mem_floor, opened.max_seq)
        self._backlog_end = max(self._backlog_end, opened.max_seq)
        self._sendable = max(self._sendable, opened.max_seq)
        self._disk_count, self._disk_bytes = opened.count, opened.payload_bytes
        self._oldest_ms = opened.oldest_ms
        self._age_at = self._time()
        if opened.count:
            log.info(
                "queue_opened",
                path=str(self._settings.path),
                messages=opened.count,
                bytes=opened.payload_bytes,
            )
            self._ready.set()

    def _open_failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._retry_at = self._time() + self._backoff()
        if self._disk_ok or self._failures == 1:
            log.error(
                "queue_open_failed",
                path=str(self._settings.path),
                error=type(exc).__name__,
                detail=str(exc),
                retry_in=round(self._retry_at - self._time(), 1),
            )
        self._degrade(str(exc))
        # Messages made now must not take the seqs of rows the file may still hold.
        self._seq = max(self._seq, time.time_ns() // 1000)
        self._sendable = self._seq

    async def _write(self, *, sweep: bool = False, messages: bool = True) -> None:
        """Commit what is unwritten now, in commits of at most `_commit_bytes` each (what
        is put meanwhile waits for the next round: the queue's task has reads to do too)."""
        upto = self._seq
        await self._commit(sweep=sweep, messages=messages)
        while (
            messages
            and self._open
            and self._disk_ok
            and self._unwritten
            and next(iter(self._unwritten)) <= upto
        ):
            await self._commit(upto=upto)

    async def _commit(
        self, *, sweep: bool = False, messages: bool = True, upto: int | None = None
    ) -> None:
        """One commit: unwritten messages in, acknowledged (and superseded) ones out; with
        `sweep`, the file's messages past max_age dropped too."""
        if messages:
            self._commit_at = None
        if not self._open:
            return
        if not ((messages and self._unwritten) or self._acked or self._supersede_due or sweep):
            return
        batch: list[Message] = []
        size = 0
        for message in self._unwritten.values() if messages else ():
            if batch and size + len(message.payload) > self._commit_bytes:
                break
            if upto is not None and message.seq > upto:
                break
            batch.append(message)
            size += len(message.payload)
        rows: list[Unpacked] = [
            (m.seq, m.topic, m.payload, m.stamp.boot_id, m.stamp.wall_ms, m.stamp.boot_ms)
            for m in batch
        ]
        deletes = sorted(self._acked)
        supersede = list(self._supersede_due.items())
        held = set(self._in_flight) | set(self._retry)
        cutoff = None
        if sweep:
            self._age_at = self._time() + AGE_CHECK_INTERVAL
            cutoff = self._clock.stamp().wall_ms - int(self._settings.max_age * 1000)
        self._writing = {m.seq for m in batch}
        self._deleting = len(deletes)
        try:
            result = await self._io(
                self._store.write,
                rows,
                deletes,
                supersede=supersede,
                held=held,
                age_cutoff_ms=cutoff,
                recount=not self._disk_ok,
            )
        except QueueError as exc:
            self._writing = set()
            if isinstance(exc.partial, Written):
                self._applied(exc.partial, [])
            await self._write_failed(exc)
            return
        finally:
            self._writing = set()
            self._deleting = 0
            self._ready.set()
        if result.inserted or result.deleted:
            self.commits += 1
        for message in batch:
            if self._unwritten.pop(message.seq, None) is not None:
                self._unwritten_bytes -= len(message.payload)
        self._acked.difference_update(deletes)
        for topic, seq in supersede:
            if self._supersede_due.get(topic) == seq:
                del self._supersede_due[topic]
        self._applied(result, rows)
        self._update_room()
        if not self._disk_ok:
            self._recovered()
        if result.after_error is not None:
            await self._write_failed(result.after_error)
        self._trim_memory()

    def _applied(self, result: Written, rows: list[Unpacked]) -> None:
        if result.count is not None:  # after a failure: what the file really holds
            self._disk_count, self._disk_bytes = result.count, result.payload_bytes
        else:
            self._disk_count += result.inserted - result.deleted
            self._disk_bytes += result.inserted_bytes - result.deleted_bytes
        if result.files_bytes:
            self._files_bytes = result.files_bytes
        if result.after_error is None:
            self._oldest_ms = result.oldest_ms
        if self._synced:
            self._sync_at = self._time() + self._settings.sync_interval
        self._synced = False
        if rows:
            self._sendable = max(self._sendable, rows[-1][0])
            self._ready.set()
        if result.disk_full:
            log.error(
                "queue_disk_full",
                path=str(self._settings.path),
                messages_on_disk=self._disk_count,
                files_bytes=result.files_bytes,
            )
        if result.dropped:
            dropped = set(result.dropped)
            self._discard(lambda seq, _topic: seq in dropped)
            self._count_dropped(
                result.dropped_for or "max_bytes", len(result.dropped), result.dropped_bytes
            )

    def _discard(self, doomed: Callable[[int, str], bool]) -> None:
        """Take the unsent messages `doomed(seq, topic)` picks out of memory and out of
        the rows read back (the file's copies are the caller's business)."""
        for lane in (self._backlog, self._live):
            lane.rows = deque(r for r in lane.rows if not doomed(r[0], r[1]))
        for mem in (self._mem_backlog, self._mem_live):
            for message in [m for m in mem if doomed(m.seq, m.topic)]:
                mem.remove(message)
                self._resident.discard(message.seq)
                self._mem_bytes -= len(message.payload)

    async def _write_failed(self, exc: QueueError) -> None:
        self._suspect_upto = self._seq
        self._failures += 1
        self._retry_at = self._time() + self._backoff()
        if self._disk_ok:
            log.error(
                "queue_disk_failed",
                path=str(self._settings.path),
                error=type(exc).__name__,
                detail=str(exc),
                unwritten=len(self._unwritten),
                action="delivering from memory; retrying the disk",
            )
        self._degrade(str(exc))
        if isinstance(exc, QueueCorrupt):
            await self._start_over()

    async def _start_over(self) -> None:
        """The file went corrupt under us: move it aside, start a new one, and write
        again what memory still holds (what only the old file held is lost)."""
        with contextlib.suppress(QueueError):
            await self._io(self._store.close)
        self._open = False
        lost = self._disk_count
        if not await self._reopen():
            return
        self._disk_count = self._disk_bytes = 0
        for message in [
            *self._mem_backlog,
            *self._mem_live,
            *self._in_flight.values(),
            *self._retry.values(),
        ]:
            if message.seq not in self._unwritten:
                self._unwritten[message.seq] = message
                self._unwritten_bytes += len(message.payload)
        self._unwritten = dict(sorted(self._unwritten.items()))
        self._acked.clear()
        self._backlog, self._live = _Lane(0), _Lane(self._backlog_end)
        log.error("queue_restarted_after_corruption", messages_lost=lost)

    def _degrade(self, error: str) -> None:
        self._disk_ok = False
        self._disk_error = error
        self._room.set()  # polling goes on; memory keeps the newest
        self._sendable = self._seq  # deliver from memory what cannot wait for the disk
        self._ready.set()

    def _recovered(self) -> None:
        was = self._disk_error
        self._disk_ok = True
        self._disk_error = None
        if self._failures:
            log.info(
                "queue_disk_recovered",
                path=str(self._settings.path),
                failures=self._failures,
                after_error=was,
                messages_on_disk=self._disk_count,
            )
        self._failures = 0

    def _backoff(self) -> float:
        ceiling = min(RETRY_MAX, RETRY_MIN * 2 ** min(self._failures, 10))
        return random.uniform(ceiling / 2, ceiling)

    async def _refill(self) -> None:
        """Read the next chunk of backlog (and of live that left memory) from disk."""
        for lane, upto in (
            (self._live, self._mem_floor),
            (self._backlog, min(self._backlog_end, self._mem_floor)),
        ):
            after = max(lane.read, self._backlog_end) if lane is self._live else lane.read
            if lane.rows or after >= upto:
                continue
            generation = self._generation
            try:
                rows = await self._io(self._store.fetch, after, upto, FETCH_CHUNK)
            except QueueError as exc:
                await self._write_failed(exc)
                return
            if generation != self._generation:
                self._want_rows()  # a reconnect started the backlog over meanwhile
                return
            lane.read = rows[-1][0] if len(rows) == FETCH_CHUNK else upto
            lane.rows.extend(row for row in rows if not self._elsewhere(row))
            if not lane.rows and lane.read < upto:
                self._want_rows()
            self._ready.set()

    def _elsewhere(self, row: Row) -> bool:
        """A row read back that must not be sent from the file: it is in flight, waiting
        to be sent again, acknowledged, in memory, or replaced by a newer report."""
        seq, topic = row[0], row[1]
        newer = self._supersede_due.get(topic)
        return (
            seq in self._in_flight
            or seq in self._retry
            or seq in self._acked
            or seq in self._resident
            or (newer is not None and seq < newer)
        )

    async def _sync(self) -> None:
        self._synced = True
        try:
            await self._io(self._store.sync)
        except QueueError as exc:
            self._synced = False
            await self._write_failed(exc)
