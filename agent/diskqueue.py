"""The durable outbox: SQLite in WAL mode, the single source of truth for unsent messages.

Write economy. `put` never touches the disk: messages wait in memory until the next
commit, which happens `commit_interval` after the first uncommitted message (default
0.5 s), or at once when they exceed `commit_bytes`. Acknowledged messages are deleted
in the same transactions. At 1,000 readings/s that is two or three commits a second,
whatever the batch size. A message is handed to delivery only once it is committed, so
what the broker may have seen is always on disk.

Durability. `synchronous = "normal"` (the default): a commit survives the agent being
killed at any moment; on a power cut the last commits before it may be lost (WAL is
synced at checkpoints), never the file's integrity. `synchronous = "full"` syncs every
commit (more flash wear, a few ms per commit). Messages put less than
`commit_interval` ago are in memory only, in both modes.

Order and replay. Messages go out oldest first. Whatever is queued when a connection
comes up (the backlog) is replayed at `replay_rate` messages/s, oldest first, while
messages made after it (live) go out as they come, so neither starves the other: the
cloud sees live data in real time and the backlog filling in behind it.

Payloads are stored zlib-compressed when that saves space (batches of JSON readings
shrink several times), which cuts the bytes written to flash below the payload's own size;
`max_bytes` counts what is on disk.

Bounds. Beyond `max_bytes` on disk, or for messages older than `max_age`, the oldest
messages are deleted, counted and logged. A full disk (SQLITE_FULL) is handled the same
way. A corrupt file is moved aside (queue.db.corrupt-<UTC time>) and a new one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import structlog

from agent.clock import Clock, Stamp
from agent.outbox import Message, OutboxStats

log = structlog.get_logger("agent.queue")

FETCH_CHUNK = 256  # rows read from disk at a time for delivery
AGE_CHECK_INTERVAL = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL,
    wall_ms INTEGER NOT NULL,
    boot_ms INTEGER NOT NULL
)
"""


class _Row(NamedTuple):
    """A committed message as read from disk, its payload still packed."""

    seq: int
    topic: str
    packed: bytes
    codec: int
    stamp: Stamp

    def message(self) -> Message:
        return Message(self.seq, self.topic, unpack_payload(self.packed, self.codec),
                       self.stamp)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    path: Path
    max_bytes: int
    max_age: float
    replay_rate: float  # backlog messages per second; 0 = unlimited
    synchronous: str = "normal"
    commit_interval: float = 0.5
    commit_bytes: int = 1024 * 1024
    ack_batch: int = 32  # acknowledged messages that force a commit of their deletion


class DiskOutbox:
    """The Outbox port on SQLite. All methods run on the event loop's thread."""

    def __init__(self, settings: QueueSettings, *, clock: Clock,
                 loop_time: Callable[[], float] | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self._time = loop_time or time.monotonic
        self._db = self._open(settings.path)
        self._pending: list[Message] = []  # put, not yet committed
        self._pending_bytes = 0
        self._acked: list[int] = []  # acknowledged, deletion not yet committed
        # Committed, read from disk, not yet taken; payloads still packed (memory stays at
        # the compressed size however long the backlog).
        self._fetched: deque[_Row] = deque()
        self._retry: list[tuple[int, Message]] = []  # released: sent again first (a heap)
        self._in_flight: dict[int, Message] = {}
        self._cursor = 0  # highest seq read from disk
        self._committed_seq = 0  # highest seq committed
        self._backlog_end = 0  # seqs up to this one are backlog, replayed at replay_rate
        self._tokens = 0.0
        self._tokens_at = self._time()
        self._ready = asyncio.Event()
        self._commit_handle: asyncio.TimerHandle | None = None
        self._last_age_check = -AGE_CHECK_INTERVAL
        row = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)"
            " FROM messages"
        ).fetchone()
        # What is on disk, kept in step by every commit and deletion (no COUNT(*) later).
        self._seq, self._disk_count, self._disk_bytes = int(row[0]), int(row[1]), int(row[2])
        count = self._disk_count
        self._committed_seq = self._seq
        self._backlog_end = self._seq
        self._stats = OutboxStats(queued_total=0)
        self.commits = 0
        if count:
            log.info("queue_opened", path=str(settings.path), messages=count,
                     bytes=self._disk_bytes)
            self._ready.set()

    # -- the Outbox port ------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, stamp: Stamp | None = None, *,
            replace: bool = False) -> None:
        if replace:
            self._supersede(topic)
        self._seq += 1
        self._pending.append(Message(self._seq, topic, payload, stamp or self._clock.stamp()))
        self._pending_bytes += len(payload)
        self._stats.queued_total += 1
        if self._pending_bytes >= self._settings.commit_bytes:
            self.commit()
        elif self._commit_handle is None:
            self._commit_handle = asyncio.get_running_loop().call_later(
                self._settings.commit_interval, self.commit
            )

    async def take(self) -> Message:
        while True:
            message = self._next()
            if message is not None:
                self._in_flight[message.seq] = message
                return message
            wait = self._token_wait()
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ready.wait()

    def ack(self, message: Message) -> None:
        if self._in_flight.pop(message.seq, None) is None:
            return
        self._acked.append(message.seq)
        self._stats.sent_total += 1
        if len(self._acked) >= self._settings.ack_batch:
            self.commit()
        elif self._commit_handle is None:
            self._commit_handle = asyncio.get_running_loop().call_later(
                self._settings.commit_interval, self.commit
            )

    def release(self, message: Message) -> None:
        if self._in_flight.pop(message.seq, None) is not None:
            heapq.heappush(self._retry, (message.seq, message))
            self._ready.set()

    def drop(self, message: Message, reason: str) -> None:
        """Delete a message that must never be sent (e.g. its time cannot be known)."""
        if self._in_flight.pop(message.seq, None) is not None:
            self._acked.append(message.seq)
            self._stats.dropped_total += 1
            log.error("message_dropped", seq=message.seq, topic=message.topic, reason=reason)

    def mark_backlog(self) -> None:
        """A connection came up: what is queued now is backlog, replayed at replay_rate."""
        self._backlog_end = self._seq
        self._tokens = 0.0
        self._tokens_at = self._time()
        backlog = self._seq - self._cursor + len(self._fetched) + len(self._retry)
        if backlog > 0:
            log.info("replay_started", messages=max(backlog, 0),
                     rate=self._settings.replay_rate or "unlimited")

    def stats(self) -> OutboxStats:
        stats = self._stats
        in_memory = len(self._pending)
        stats.depth = self._disk_count + in_memory
        stats.depth_bytes = self._disk_bytes + self._pending_bytes
        stats.in_flight = len(self._in_flight)
        # Oldest by seq: the primary key, one row, however long the queue.
        row = self._db.execute("SELECT wall_ms FROM messages ORDER BY seq LIMIT 1").fetchone()
        oldest = row[0] if row is not None else None
        if oldest is None and self._pending:
            oldest = self._pending[0].stamp.wall_ms
        stats.oldest_created = oldest / 1000 if oldest is not None else None
        stats.commits = self.commits
        stats.backlog = max(0, self._backlog_end - self._cursor) + len(
            [m for m in self._fetched if m.seq <= self._backlog_end]
        )
        return stats

    def close(self) -> None:
        """Commit what is pending and close the file. Unacknowledged messages stay."""
        self.commit()
        if self._commit_handle is not None:
            self._commit_handle.cancel()
        self._db.close()

    def _supersede(self, topic: str) -> None:
        """Forget unsent messages on `topic` (a newer report replaces them)."""
        self._pending_bytes -= sum(len(m.payload) for m in self._pending if m.topic == topic)
        self._pending = [m for m in self._pending if m.topic != topic]
        in_flight = list(self._in_flight)
        marks = ",".join("?" * len(in_flight))
        extra = f" AND seq NOT IN ({marks})" if in_flight else ""
        seqs = [int(r[0]) for r in self._db.execute(
            f"SELECT seq FROM messages WHERE topic = ?{extra}", [topic, *in_flight])]
        with self._db:
            removed = self._delete(seqs)
        self._forget(*removed)
        self._fetched = deque(m for m in self._fetched if m.topic != topic)
        self._retry = [(s, m) for s, m in self._retry if m.topic != topic]
        heapq.heapify(self._retry)

    # -- committing -----------------------------------------------------------------------

    def commit(self) -> None:
        """Write pending messages and deletions in one transaction."""
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        if not self._pending and not self._acked:
            return
        pending, acked = self._pending, self._acked
        rows = [(m.seq, m.topic, *_pack(m.payload), m.stamp.boot_id, m.stamp.wall_ms,
                 m.stamp.boot_ms) for m in pending]
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO messages (seq, topic, payload, codec, boot_id, wall_ms, boot_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)", rows,
                )
                removed = self._delete(acked)
        except sqlite3.OperationalError as exc:
            if not _is_disk_full(exc):
                raise
            self._on_disk_full()
            return
        self.commits += 1
        self._forget(*removed)
        self._disk_count += len(rows)
        self._disk_bytes += sum(len(row[2]) for row in rows)
        self._pending, self._pending_bytes, self._acked = [], 0, []
        if pending:
            self._committed_seq = pending[-1].seq
            self._ready.set()
        self._enforce_bounds()

    def _delete(self, seqs: list[int]) -> tuple[int, int]:
        """Delete rows (inside the caller's transaction): (rows, payload bytes) removed."""
        freed = count = 0
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            marks = ",".join("?" * len(chunk))
            row = self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages WHERE seq IN ({marks})",
                chunk,
            ).fetchone()
            freed += int(row[0])
            count += self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})",
                                      chunk).rowcount
        return count, freed

    def _forget(self, count: int, freed: int) -> None:
        """Account for rows a committed transaction deleted."""
        self._disk_count -= count
        self._disk_bytes -= freed

    def _enforce_bounds(self) -> None:
        settings = self._settings
        now = self._time()
        if now - self._last_age_check >= AGE_CHECK_INTERVAL:
            self._last_age_check = now
            cutoff = self._clock.stamp().wall_ms - int(settings.max_age * 1000)
            self._drop_oldest("max_age", f"wall_ms < {cutoff}")
        if self._disk_bytes > settings.max_bytes:
            self._drop_oldest("max_bytes", None)

    def _drop_oldest(self, reason: str, condition: str | None) -> None:
        """Delete the oldest messages not in flight: by `condition`, or down to max_bytes."""
        in_flight = list(self._in_flight)
        clauses = [f"seq NOT IN ({','.join('?' * len(in_flight))})"] if in_flight else []
        clauses += [condition] if condition else []
        where = " AND ".join(clauses) or "1"
        victims: list[int] = []
        freed = 0
        excess = self._disk_bytes - self._settings.max_bytes
        for seq, size in self._db.execute(
            f"SELECT seq, LENGTH(payload) FROM messages WHERE {where} ORDER BY seq", in_flight
        ):
            if condition is None and freed >= excess:
                break
            victims.append(seq)
            freed += size
        if not victims:
            return
        with self._db:
            removed = self._delete(victims)
        self.commits += 1
        self._forget(*removed)
        dropped = set(victims)
        self._fetched = deque(m for m in self._fetched if m.seq not in dropped)
        self._retry = [(s, m) for s, m in self._retry if s not in dropped]
        heapq.heapify(self._retry)
        self._stats.dropped_total += len(victims)
        log.warning("queue_dropped_oldest", reason=reason, messages=len(victims), bytes=freed,
                    dropped_total=self._stats.dropped_total, max_bytes=self._settings.max_bytes,
                    max_age=self._settings.max_age)

    def _on_disk_full(self) -> None:
        """SQLITE_FULL: make room by dropping the oldest quarter, keep the new messages."""
        count = self._disk_count
        log.error("queue_disk_full", path=str(self._settings.path), messages_on_disk=count,
                  pending=len(self._pending))
        if count:
            rows = self._db.execute(
                "SELECT seq FROM messages ORDER BY seq LIMIT ?", (max(1, count // 4),)
            ).fetchall()
            cutoff = rows[-1][0]
            self._drop_oldest("disk_full", f"seq <= {int(cutoff)}")
        elif len(self._pending) > 1:
            # Nothing on disk to drop: hold the newest half in memory, drop the rest.
            half = len(self._pending) // 2
            self._stats.dropped_total += half
            self._pending_bytes -= sum(len(m.payload) for m in self._pending[:half])
            self._pending = self._pending[half:]
            log.warning("queue_dropped_oldest", reason="disk_full", messages=half)
        asyncio.get_running_loop().call_later(self._settings.commit_interval, self.commit)

    # -- choosing the next message --------------------------------------------------------

    def _next(self) -> Message | None:
        if self._retry:
            return heapq.heappop(self._retry)[1]
        self._refill()
        if not self._fetched:
            return None
        head = self._fetched[0]
        if head.seq > self._backlog_end:
            return self._fetched.popleft().message()  # live: no rate limit
        if self._take_token():
            return self._fetched.popleft().message()
        # The backlog waits for its rate; live messages behind it need not.
        for index, row in enumerate(self._fetched):
            if row.seq > self._backlog_end:
                del self._fetched[index]
                return row.message()
        return None

    def _refill(self) -> None:
        if len(self._fetched) >= FETCH_CHUNK or self._cursor >= self._committed_seq:
            return
        rows = self._db.execute(
            "SELECT seq, topic, payload, codec, boot_id, wall_ms, boot_ms FROM messages"
            " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (self._cursor, self._committed_seq, FETCH_CHUNK),
        ).fetchall()
        for seq, topic, payload, codec, boot_id, wall_ms, boot_ms in rows:
            if seq in self._in_flight:
                continue
            self._fetched.append(_Row(seq, topic, bytes(payload), codec,
                                      Stamp(boot_id, wall_ms, boot_ms)))
        self._cursor = rows[-1][0] if rows else self._committed_seq

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
        if self._fetched and self._settings.replay_rate > 0:
            return max(0.001, (1.0 - self._tokens) / self._settings.replay_rate)
        return None

    # -- opening --------------------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(
                f"{path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
            )
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{path}{suffix}")
                if source.exists():
                    source.rename(f"{aside}{suffix}")
            log.error("queue_corrupt_moved_aside", path=str(path), moved_to=str(aside),
                      error=str(exc))
            return self._connect(path)

    def _connect(self, path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=True)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # Debian's SQLite zeroes deleted content; a queue deletes everything it sends,
            # so that would double the flash writes of a drain for nothing.
            db.execute("PRAGMA secure_delete=OFF")
            db.execute(f"PRAGMA synchronous={self._settings.synchronous.upper()}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.execute(_SCHEMA)
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db


def _is_disk_full(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


_RAW, _ZLIB = 0, 1
_ZLIB_LEVEL = 1  # fast; JSON batches shrink 4-8x even at this level


def unpack_payload(payload: bytes, codec: int) -> bytes:
    """A stored payload as it was put (also for tools reading the file)."""
    return zlib.decompress(payload) if codec == _ZLIB else bytes(payload)


def _pack(payload: bytes) -> tuple[bytes, int]:
    """What is written: zlib when it saves space (flash wear), the payload as it is if not."""
    packed = zlib.compress(payload, _ZLIB_LEVEL)
    return (packed, _ZLIB) if len(packed) < len(payload) else (payload, _RAW)
