"""The queue's file: every SQLite call of the durable outbox, and nothing else.

`QueueStore` runs in the outbox's I/O thread only (agent.outbox.iothread; agent.outbox.disk
is the only caller). SQLite's errors are translated at this boundary, by their result
codes (agent.outbox.translate), into the outbox's own error types; nothing above this
module sees `sqlite3`. The row format is agent.outbox.rows; what the file may hold is
agent.outbox.budget; what is done to the files through the OS (fsync, sizes, the reserve)
is agent.outbox.files.

A full disk. The reserve file is given up, so that the deletions and the checkpoint
that make room can always be written; the oldest rows are then dropped and the queue
shrinks to what the disk can hold, until space returns. Power cuts: with
`synchronous = "normal"` the WAL is synced by `sync()`, called by the outbox every
`sync_interval`; with "full" at every commit.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import QueueCorrupt, QueueDiskFull, QueueError, QueueIOError
from agent.outbox.budget import ROW_OVERHEAD, DiskBudget
from agent.outbox.files import Reserve, files_bytes, move_aside, sync_dir, sync_wal
from agent.outbox.rows import (
    COLUMNS,
    JOURNAL_SCHEMA,
    SCHEMA,
    STATE_SCHEMA,
    Row,
    StateWrite,
    Unpacked,
    packed_row,
)
from agent.outbox.translate import translate, translate_os

CACHE_KIB = 512  # SQLite's page cache: a queue touches the ends of one table only
DELETE_CHUNK = 512  # seqs per DELETE statement (SQLite's variable limit is 32766)


@dataclass(slots=True)
class Opened:
    """What an opened file holds."""

    max_seq: int
    count: int
    payload_bytes: int
    oldest_ms: int | None
    moved_aside: Path | None = None
    corruption: str | None = None
    # name -> (the last snapshot, the journal entries after it, oldest first)
    states: dict[str, tuple[bytes | None, list[bytes]]] = field(default_factory=dict)


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
        self.budget = DiskBudget(max_bytes)
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._page_size = 4096
        self._reserve = Reserve(path, size=self.budget.reserve_bytes)
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
            moved = move_aside(self.path)
            self._connect()
        self._keep_reserve()
        with self._translated():
            max_seq = int(
                self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
            )
            states = self._saved_states()
        count, size = self._count()
        return Opened(max_seq, count, size, self._oldest(), moved, corruption, states)

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
        states: Mapping[str, StateWrite] | None = None,
    ) -> Written:
        """Insert `rows` and delete `delete` in one transaction, then keep the bounds.

        `supersede`: (topic, seq) pairs: rows on that topic older than seq go too.
        `held`: seqs that are being sent, never dropped for the bounds.
        `recount`: count the rows afterwards (after failures, when the caller's count
        may be off: a failed commit may have landed).
        `states`: name -> what to keep in the same transaction: a snapshot replaces the
        name's snapshot and journal, journal entries are appended (the aggregates' windows).
        A full disk is met by making room (the reserve, then the oldest rows) and trying
        once more; QueueDiskFull if even that does not fit.
        """
        result = Written()
        supersede = list(supersede)
        rows: list[Row] = [packed_row(message) for message in messages]
        keep = dict(states or {})
        try:
            self._transaction(rows, delete, supersede, held, result, keep)
        except QueueDiskFull:
            try:
                needed = sum(len(row[2]) + len(row[1]) + ROW_OVERHEAD for row in rows)
                self._make_room(needed, held, result)
                self._transaction(rows, delete, supersede, held, result, keep)
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
                self.budget.shrink(self._used_bytes(), self._page_size)
            else:
                self._keep_reserve()
            result.oldest_ms = self._oldest()
            if recount:
                result.count, result.payload_bytes = self._count()
        except QueueError as exc:
            result.after_error = exc
        result.files_bytes = files_bytes(self.path)
        return result

    def fetch(self, after: int, upto: int, limit: int) -> list[Row]:
        """Rows with after < seq <= upto, oldest first, at most `limit`."""
        with self._translated():
            return [
                (int(r[0]), r[1], bytes(r[2]), int(r[3]), r[4], int(r[5]), int(r[6]))
                for r in self._conn.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE seq > ? AND seq <= ?"
                    " ORDER BY seq LIMIT ?",
                    (after, upto, limit),
                )
            ]

    def sync(self) -> None:
        """Make every commit so far survive a power cut: fsync the WAL (and, once, the
        directory that holds it). Nothing is written that was not written already."""
        if sync_wal(self.path) and not self._dir_synced:
            self._dir_synced = sync_dir(self.path.parent)

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
            raise translate_os(exc, f"create {self.path.parent}") from exc
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
                wal_limit = self.budget.wal_limit
                db.execute(f"PRAGMA journal_size_limit={wal_limit}")
                db.execute(f"PRAGMA wal_autocheckpoint={max(1, wal_limit // self._page_size)}")
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise QueueCorrupt(f"quick_check: {check}")
                db.execute(SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _transaction(
        self,
        rows: Sequence[Row],
        delete: Sequence[int],
        supersede: list[tuple[str, int]],
        held: Collection[int],
        result: Written,
        states: Mapping[str, StateWrite],
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
                    f"INSERT OR IGNORE INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row
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
            for name, write in states.items():
                self._keep(name, write)
            db.execute("COMMIT")
        result.inserted += inserted
        result.inserted_bytes += inserted_bytes
        result.deleted += deleted
        result.deleted_bytes += deleted_bytes

    def _keep(self, name: str, write: StateWrite) -> None:
        """A state's snapshot and journal, inside the caller's transaction."""
        db = self._conn
        # Made when first used (a file without them stays so); IF NOT EXISTS every time,
        # since a transaction that rolls back takes a CREATE with it.
        db.execute(STATE_SCHEMA)
        db.execute(JOURNAL_SCHEMA)
        if write.snapshot is not None:
            db.execute(
                "INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)", (name, write.snapshot)
            )
            db.execute("DELETE FROM state_journal WHERE name = ?", (name,))
        for entries in write.journal:
            db.execute("INSERT INTO state_journal (name, value) VALUES (?, ?)", (name, entries))

    def _saved_states(self) -> dict[str, tuple[bytes | None, list[bytes]]]:
        found: dict[str, tuple[bytes | None, list[bytes]]] = {}
        tables = {
            str(r[0])
            for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not {"state", "state_journal"} <= tables:
            return found
        for name, value in self._conn.execute("SELECT name, value FROM state"):
            found[str(name)] = (bytes(value), [])
        for name, value in self._conn.execute("SELECT name, value FROM state_journal ORDER BY seq"):
            found.setdefault(str(name), (None, []))[1].append(bytes(value))
        return found

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

    def _keep_budget(self, held: Collection[int], result: Written) -> None:
        """Drop the oldest rows while the pages in use exceed what the budget leaves them."""
        for _ in range(4):  # each pass frees about the excess; pages are not bytes
            excess = self._used_bytes() - self.budget.rows(self._page_size)
            if excess <= 0:
                return
            before = len(result.dropped)
            self._drop_where(
                "1",
                held,
                result,
                "disk_full" if self.budget.shrunk else "max_bytes",
                excess=excess + self._page_size,
            )
            if len(result.dropped) == before:
                return  # nothing left that may be dropped

    def _make_room(self, needed: int, held: Collection[int], result: Written) -> None:
        """The disk is full: give up the reserve, drop the oldest rows, truncate the WAL."""
        self._reserve.release()
        used = self._used_bytes()
        excess = self.budget.room_to_make(needed, used, self._page_size)
        self._drop_where("1", held, result, "disk_full", excess=excess)
        self._checkpoint()

    def _checkpoint(self) -> None:
        with self._translated():
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def _keep_reserve(self) -> None:
        """Re-create the reserve (and the full budget) once the disk has room again."""
        if self._reserve.restore():
            self.budget.restore()

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
            raise translate_os(exc, "use the queue file") from exc
