"""The queue's disk budget: how `max_bytes` is shared between the files, in numbers.

`max_bytes` bounds queue.db, queue.db-wal and queue.db-shm together: the WAL is
checkpointed when it reaches `wal_limit` (1/8 of the budget, 16 KiB to 4 MiB) and
truncated back to that size (`journal_size_limit`); the -shm index stays at 32 KiB for
such a WAL; the rows may use what is left. Rows are counted by the pages they occupy,
not by their payload: SQLite never gives pages back to the file system, it reuses them,
so the file stays at its largest size and the budget must hold for that size.

Separate from agent.outbox.store because this is arithmetic only, the same for every
file, that a reader (and the tests) can check without SQLite: the store measures the
file and asks here how much it may hold.
"""

from __future__ import annotations

SHM_BYTES = 32 * 1024  # the -shm index of a WAL under 4096 frames
WAL_LIMIT_MIN, WAL_LIMIT_MAX = 16 * 1024, 4 * 1024 * 1024
RESERVE_MIN, RESERVE_MAX = 64 * 1024, 1024 * 1024
ROW_OVERHEAD = 48  # bytes a row takes besides its payload and topic (header, cell, stamps)


def wal_limit_for(max_bytes: int) -> int:
    return max(WAL_LIMIT_MIN, min(WAL_LIMIT_MAX, max_bytes // 8))


def reserve_for(max_bytes: int) -> int:
    return max(RESERVE_MIN, min(RESERVE_MAX, max_bytes // 32))


def commit_bytes_for(commit_bytes: int, max_bytes: int) -> int:
    """The most one commit writes: `commit_bytes`, but never more than a sixteenth of the
    budget, so that the bound is kept commit by commit."""
    return max(1, min(commit_bytes, max_bytes // 16))


class DiskBudget:
    """What the queue's files may take now: `max_bytes`, or less after the disk filled."""

    __slots__ = ("current", "max_bytes", "reserve_bytes", "wal_limit")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.wal_limit = wal_limit_for(max_bytes)
        self.reserve_bytes = reserve_for(max_bytes)
        self.current = max_bytes  # shrunk to what the disk holds after it filled

    @property
    def shrunk(self) -> bool:
        """Whether the disk filled: rows dropped now are dropped for "disk_full"."""
        return self.current < self.max_bytes

    def rows(self, page_size: int) -> int:
        """What the rows' pages may take: the budget less the WAL's and the index's share
        (for small budgets at least half of it: the index's 32 KiB is then the allowance)."""
        return max(4 * page_size, self.current // 2, self.current - self.wal_limit - SHM_BYTES)

    def room_to_make(self, needed: int, used: int, page_size: int) -> int:
        """Bytes of rows to drop when the disk is full and `needed` more must be written."""
        return max(2 * needed, used // 8, 2 * page_size)

    def shrink(self, used: int, page_size: int) -> None:
        """After the disk filled: the queue may keep what it holds now (`used` bytes of
        pages), not grow into the space it just freed (that space is the margin that lets
        it go on writing)."""
        self.current = max(
            4 * page_size + self.wal_limit + SHM_BYTES,
            min(self.current, used + self.wal_limit + SHM_BYTES),
        )

    def restore(self) -> None:
        """The disk has room again (the reserve is back): the full budget."""
        self.current = self.max_bytes
