"""The queue's file: every SQLite call of the durable outbox, and nothing else.

`QueueStore` runs in the outbox's I/O thread only (agent.outbox.disk owns that thread and
is the only caller). SQLite's errors are translated here, by their result codes, into
the outbox's own error types; nothing above this module sees `sqlite3`.

The file's budget. `max_bytes` bounds queue.db, queue.db-wal and queue.db-shm together:
the WAL is checkpointed when it reaches `wal_limit` (1/8 of the budget, 16 KiB to
4 MiB) and truncated back to that size (`journal_size_limit`); the -shm index stays at
32 KiB for such a WAL; the rows may use what is left. Rows are counted by the pages they
occupy, not by their payload: SQLite never gives pages back to the file system, it reuses
them, so the file stays at its largest size and the budget must hold for that size.

A full disk. A reserve file beside the queue (queue.db.reserve) holds space that is
given up when the disk fills, so that the deletions and the checkpoint that make room
can always be written; the oldest rows are then dropped and the queue shrinks to what
the disk can hold, until space returns. Power cuts: with `synchronous = "normal"` the
WAL is synced by `sync()`, called by the outbox every `sync_interval`; with "full" at
every commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import zlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import QueueCorrupt, QueueDiskFull, QueueError, QueueIOError, QueueReadOnly

SHM_BYTES = 32 * 1024  # the -shm index of a WAL under 4096 frames
WAL_LIMIT_MIN, WAL_LIMIT_MAX = 16 * 1024, 4 * 1024 * 1024
RESERVE_MIN, RESERVE_MAX = 64 * 1024, 1024 * 1024
ROW_OVERHEAD = 48  # bytes a row takes besides its payload and topic (header, cell, stamps)
CACHE_KIB = 512  # SQLite's page cache: a queue touches the ends of one table only
DELETE_CHUNK = 512  # seqs per DELETE statement (SQLite's variable limit is 32766)

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
_COLUMNS = "seq, topic, payload, codec, boot_id, wall_ms, boot_ms"

# A row as stored and read back: (seq, topic, packed payload, codec, boot_id, wall_ms, boot_ms)
Row = tuple[int, str, bytes, int, str, int, int]
# A message to store: (seq, topic, payload as put, boot_id, wall_ms, boot_ms); packed here,
# in the I/O thread (zlib releases the GIL: compression costs the event loop nothing).
Unpacked = tuple[int, str, bytes, str, int, int]


def wal_limit_for(max_bytes: int) -> int:
    return max(WAL_LIMIT_MIN, min(WAL_LIMIT_MAX, max_bytes // 8))


def reserve_for(max_bytes: int) -> int:
    return max(RESERVE_MIN, min(RESERVE_MAX, max_bytes // 32))


@dataclass(slots=True)
class Opened:
    """What an opened file holds."""

    max_seq: int
    count: int
    payload_bytes: int
    oldest_ms: int | None
    moved_aside: Path | None = None
    corruption: str | None = None


@dataclass(slots=True)
class Written:
    """The outcome of one `write`: what changed on disk, and the file's state after it."""

    inserted: int = 0
    inserted_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    dropped: list[int] = field(default_factory=list)  # oldest rows dropped for the bounds
    dropped_bytes: int = 0
    dropped_for: str | None = None  # "disk_full", "max_bytes" or "max_age"
    disk_full: bool = False  # the disk filled during this write (room was made)
    files_bytes: int = 0
    oldest_ms: int | None = None
    after_error: QueueError | None = None  # keeping the bounds failed after the commit
    count: int | None = None  # with `recount`: the rows the file holds now
    payload_bytes: int = 0


class QueueStore:
    """The SQLite file. Not thread-safe: one thread calls it, one call at a time."""

    def __init__(self, path: Path, *, max_bytes: int, synchronous: str) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.wal_limit = wal_limit_for(max_bytes)
        self.reserve_bytes = reserve_for(max_bytes)
        self._synchronous = synchronous
        self._budget = max_bytes  # shrunk to what the disk holds after it filled
        self._db: sqlite3.Connection | None = None
        self._page_size = 4096
        self._reserve = path.with_name(path.name + ".reserve")
        self._dir_synced = False

    # -- opening and closing --------------------------------------------------------------

    def open(self) -> Opened:
        """Open (creating if needed); a corrupt file is moved aside and a new one started."""
        moved: Path | None = None
        corruption: str | None = None
        try:
            self._connect()
        except QueueCorrupt as exc:
            corruption = str(exc)
            moved = self._move_aside()
            self._connect()
        self._keep_reserve()
        with self._translated():
            max_seq = int(
                self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
            )
        count, size = self._count()
        return Opened(max_seq, count, size, self._oldest(), moved, corruption)

    def close(self) -> None:
        """Close the file; SQLite checkpoints and removes the WAL, syncing both."""
        db, self._db = self._db, None
        if db is not None:
            with self._translated():
                db.close()

    # -- writing --------------------------------------------------------------------------

    def write(
        self,
        messages: Sequence[Unpacked],
        delete: Sequence[int],
        *,
        supersede: Iterable[tuple[str, int]] = (),
        held: Collection[int] = (),
        age_cutoff_ms: int | None = None,
        recount: bool = False,
    ) -> Written:
        """Insert `rows` and delete `delete` in one transaction, then keep the bounds.

        `supersede`: (topic, seq) pairs: rows on that topic older than seq go too.
        `held`: seqs that are being sent, never dropped for the bounds.
        `recount`: count the rows afterwards (after failures, when the caller's count
        may be off: a failed commit may have landed).
        A full disk is met by making room (the reserve, then the oldest rows) and trying
        once more; QueueDiskFull if even that does not fit.
        """
        result = Written()
        supersede = list(supersede)
        rows: list[Row] = [
            (seq, topic, *pack_payload(payload), boot_id, wall_ms, boot_ms)
            for seq, topic, payload, boot_id, wall_ms, boot_ms in messages
        ]
        try:
            self._transaction(rows, delete, supersede, held, result)
        except QueueDiskFull:
            try:
                needed = sum(len(row[2]) + len(row[1]) + ROW_OVERHEAD for row in rows)
                self._make_room(needed, held, result)
                self._transaction(rows, delete, supersede, held, result)
            except QueueError as exc:
                exc.partial = result  # the rows dropped to make room are gone all the same
                raise
            result.disk_full = True
        # The commit is done: what follows keeps the bounds, and may fail without undoing it.
        try:
            if age_cutoff_ms is not None:
                self._drop_where(
                    "wall_ms < ?", held, result, "max_age", params=(int(age_cutoff_ms),)
                )
            self._keep_budget(held, result)
            if result.disk_full:
                self._shrink_budget()
            else:
                self._keep_reserve()
            result.oldest_ms = self._oldest()
            if recount:
                result.count, result.payload_bytes = self._count()
        except QueueError as exc:
            result.after_error = exc
        result.files_bytes = self.files_bytes()
        return result

    def fetch(self, after: int, upto: int, limit: int) -> list[Row]:
        """Rows with after < seq <= upto, oldest first, at most `limit`."""
        with self._translated():
            return [
                (int(r[0]), r[1], bytes(r[2]), int(r[3]), r[4], int(r[5]), int(r[6]))
                for r in self._conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE seq > ? AND seq <= ?"
                    " ORDER BY seq LIMIT ?",
                    (after, upto, limit),
                )
            ]

    def sync(self) -> None:
        """Make every commit so far survive a power cut: fsync the WAL (and, once, the
        directory that holds it). Nothing is written that was not written already."""
        wal = Path(f"{self.path}-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing committed since the last checkpoint removed it
        except OSError as exc:
            raise _os_error(exc, "open the WAL to sync it") from exc
        try:
            os.fdatasync(fd)  # the frames and the size that finds them; no timestamps
        except OSError as exc:
            raise _os_error(exc, "sync the WAL") from exc
        finally:
            os.close(fd)
        if not self._dir_synced:
            self._sync_dir()

    def files_bytes(self) -> int:
        """What queue.db, -wal and -shm take on disk together."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- internals ------------------------------------------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueIOError("the queue file is not open")
        return self._db

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"create {self.path.parent}") from exc
        with self._translated():
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            with self._translated():
                db.execute("PRAGMA journal_mode=WAL")
                # Debian's SQLite zeroes deleted content; a queue deletes everything it
                # sends, so that would double the flash writes of a drain for nothing.
                db.execute("PRAGMA secure_delete=OFF")
                db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
                db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
                db.execute(f"PRAGMA journal_size_limit={self.wal_limit}")
                db.execute(f"PRAGMA wal_autocheckpoint={max(1, self.wal_limit // self._page_size)}")
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise QueueCorrupt(f"quick_check: {check}")
                db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _move_aside(self) -> Path:
        aside = self.path.with_name(
            f"{self.path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        )
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                try:
                    source.rename(f"{aside}{suffix}")
                except OSError as exc:
                    raise _os_error(exc, f"move {source} aside") from exc
        return aside

    def _transaction(
        self,
        rows: Sequence[Row],
        delete: Sequence[int],
        supersede: list[tuple[str, int]],
        held: Collection[int],
        result: Written,
    ) -> None:
        db = self._conn
        inserted = deleted = deleted_bytes = 0
        with self._translated(rollback=True):
            db.execute("BEGIN IMMEDIATE")
            inserted_bytes = 0
            for row in rows:
                # OR IGNORE: a write whose outcome was lost (cancelled at shutdown) may be
                # written again; the same seq is the same message.
                if db.execute(
                    f"INSERT OR IGNORE INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row
                ).rowcount:
                    inserted += 1
                    inserted_bytes += len(row[2])
            count, size = self._delete(delete)
            deleted, deleted_bytes = deleted + count, deleted_bytes + size
            for topic, newer in supersede:
                victims = [
                    int(r[0])
                    for r in db.execute(
                        "SELECT seq FROM messages WHERE topic = ? AND seq < ?", (topic, newer)
                    )
                    if int(r[0]) not in held
                ]
                count, size = self._delete(victims)
                deleted, deleted_bytes = deleted + count, deleted_bytes + size
            db.execute("COMMIT")
        result.inserted += inserted
        result.inserted_bytes += inserted_bytes
        result.deleted += deleted
        result.deleted_bytes += deleted_bytes

    def _delete(self, seqs: Sequence[int]) -> tuple[int, int]:
        """Delete rows inside the caller's transaction: (rows, payload bytes) removed.

        The seqs go in lists padded to a power of two (with 0, which no row has), so that
        the statements come in a dozen shapes: each shape is one more prepared statement
        in sqlite3's cache, and lists of every length made it grow for hours."""
        count = freed = 0
        for start in range(0, len(seqs), DELETE_CHUNK):
            chunk = list(seqs[start : start + DELETE_CHUNK])
            width = 1 << max(0, len(chunk) - 1).bit_length()
            chunk += [0] * (width - len(chunk))
            marks = ",".join("?" * width)
            freed += int(
                self._conn.execute(
                    "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
                    f" WHERE seq IN ({marks})",
                    chunk,
                ).fetchone()[0]
            )
            count += self._conn.execute(
                f"DELETE FROM messages WHERE seq IN ({marks})", chunk
            ).rowcount
        return count, freed

    def _drop_where(
        self,
        condition: str,
        held: Collection[int],
        result: Written,
        reason: str,
        *,
        excess: int | None = None,
        params: Sequence[int] = (),
    ) -> None:
        """Delete the oldest rows not held: all matching `condition`, or `excess` bytes."""
        victims: list[int] = []
        freed = 0
        with self._translated():
            for seq, size in self._conn.execute(
                f"SELECT seq, LENGTH(payload) + LENGTH(topic) FROM messages WHERE {condition}"
                " ORDER BY seq",
                params,
            ):
                if excess is not None and freed >= excess:
                    break
                if seq in held:
                    continue
                victims.append(int(seq))
                freed += int(size) + ROW_OVERHEAD
        if not victims:
            return
        with self._translated(rollback=True):
            self._conn.execute("BEGIN IMMEDIATE")
            count, size = self._delete(victims)
            self._conn.execute("COMMIT")
        result.dropped += victims
        result.dropped_bytes += size
        result.deleted += count
        result.deleted_bytes += size
        result.dropped_for = result.dropped_for or reason

    def _used_bytes(self) -> int:
        """Bytes of the file's pages that hold rows (the rest are free for reuse)."""
        with self._translated():
            pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def _rows_budget(self) -> int:
        """What the rows' pages may take: the budget less the WAL's and the index's share
        (for small budgets at least half of it: the index's 32 KiB is then the allowance)."""
        return max(
            4 * self._page_size, self._budget // 2, self._budget - self.wal_limit - SHM_BYTES
        )

    def _keep_budget(self, held: Collection[int], result: Written) -> None:
        """Drop the oldest rows while the pages in use exceed what the budget leaves them."""
        for _ in range(4):  # each pass frees about the excess; pages are not bytes
            excess = self._used_bytes() - self._rows_budget()
            if excess <= 0:
                return
            before = len(result.dropped)
            self._drop_where(
                "1",
                held,
                result,
                "disk_full" if self._budget < self.max_bytes else "max_bytes",
                excess=excess + self._page_size,
            )
            if len(result.dropped) == before:
                return  # nothing left that may be dropped

    def _make_room(self, needed: int, held: Collection[int], result: Written) -> None:
        """The disk is full: give up the reserve, drop the oldest rows, truncate the WAL."""
        with contextlib.suppress(FileNotFoundError):
            self._reserve.unlink()
        used = self._used_bytes()
        self._drop_where(
            "1", held, result, "disk_full", excess=max(2 * needed, used // 8, 2 * self._page_size)
        )
        self._checkpoint()

    def _checkpoint(self) -> None:
        with self._translated():
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def _shrink_budget(self) -> None:
        """After the disk filled: the queue may keep what it holds now, not grow into the
        space it just freed (that space is the margin that lets it go on writing)."""
        self._budget = max(
            4 * self._page_size + self.wal_limit + SHM_BYTES,
            min(self._budget, self._used_bytes() + self.wal_limit + SHM_BYTES),
        )

    def _keep_reserve(self) -> None:
        """Re-create the reserve (and the full budget) once the disk has room again."""
        if self._reserve.exists():
            return
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError:
            return
        size = min(self.reserve_bytes, max(4096, usage.total // 32))
        if usage.free < 4 * size:
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            return
        self._budget = self.max_bytes

    def _sync_dir(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
            self._dir_synced = True
        except OSError:
            pass
        finally:
            os.close(fd)

    def _count(self) -> tuple[int, int]:
        with self._translated():
            count, size = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
        return int(count), int(size)

    def _oldest(self) -> int | None:
        with self._translated():
            row = self._conn.execute("SELECT wall_ms FROM messages ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    @contextlib.contextmanager
    def _translated(self, *, rollback: bool = False):  # type: ignore[no-untyped-def]
        """SQLite's and the OS's errors as the outbox's own, by result code."""
        try:
            yield
        except sqlite3.Error as exc:
            if rollback and self._db is not None and self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise translate(exc) from exc
        except OSError as exc:
            raise _os_error(exc, "use the queue file") from exc


# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_FULL, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_NOTADB = 13, 10, 11, 26
_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM = 8, 14, 3


def translate(exc: sqlite3.Error) -> QueueError:
    """One table: SQLite's result code → the outbox's error type."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    detail = f"{name}: {exc}"
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL:
        return QueueDiskFull(detail)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return QueueCorrupt(detail)
    if primary in (_SQLITE_READONLY, _SQLITE_PERM):
        return QueueReadOnly(detail)
    return QueueIOError(detail)  # I/O errors, cannot open, and anything unforeseen


def _os_error(exc: OSError, doing: str) -> QueueError:
    detail = f"cannot {doing}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QueueDiskFull(detail)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return QueueReadOnly(detail)
    return QueueIOError(detail)


_RAW, _ZLIB = 0, 1
_ZLIB_LEVEL = 1  # fast; JSON batches shrink 4-8x even at this level


def unpack_payload(payload: bytes, codec: int) -> bytes:
    """A stored payload as it was put (also for tools reading the file)."""
    return zlib.decompress(payload) if codec == _ZLIB else bytes(payload)


def pack_payload(payload: bytes) -> tuple[bytes, int]:
    """What is written: zlib when it saves space (flash wear), the payload as it is if not."""
    packed = zlib.compress(payload, _ZLIB_LEVEL)
    return (packed, _ZLIB) if len(packed) < len(payload) else (payload, _RAW)
