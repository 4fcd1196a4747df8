"""The queue's files as files: fsync, sizes, moving a corrupt file aside, the reserve.

What agent.outbox.store does to queue.db and its companions (-wal, -shm, .reserve)
through the OS rather than through SQLite. Separate so that the store reads as its SQL,
and because these calls have their own failure modes: they raise the outbox's errors
through `translate_os`, or, where a failure only means "not now", report it instead.

A full disk. The reserve file beside the queue (queue.db.reserve) holds space that is
given up when the disk fills, so that the deletions and the checkpoint that make room
can always be written; it is re-created once the disk has room again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from agent.outbox.translate import translate_os

_SUFFIXES = ("", "-wal", "-shm")  # queue.db and the two files SQLite keeps beside it


def sync_wal(path: Path) -> bool:
    """fsync the WAL of the file at `path`; False if there is none (nothing committed
    since the last checkpoint removed it)."""
    wal = Path(f"{path}-wal")
    try:
        fd = os.open(wal, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise translate_os(exc, "open the WAL to sync it") from exc
    try:
        os.fdatasync(fd)  # the frames and the size that finds them; no timestamps
    except OSError as exc:
        raise translate_os(exc, "sync the WAL") from exc
    finally:
        os.close(fd)
    return True


def sync_dir(directory: Path) -> bool:
    """fsync a directory (the files' names in it); False if that failed (try again later)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        os.fsync(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def files_bytes(path: Path) -> int:
    """What queue.db, -wal and -shm take on disk together."""
    total = 0
    for suffix in _SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def move_aside(path: Path) -> Path:
    """Rename queue.db, -wal and -shm to queue.db.corrupt-<UTC time>*: the name they got."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    for suffix in _SUFFIXES:
        source = Path(f"{path}{suffix}")
        if source.exists():
            try:
                source.rename(f"{aside}{suffix}")
            except OSError as exc:
                raise translate_os(exc, f"move {source} aside") from exc
    return aside


class Reserve:
    """The reserve file beside the queue: `size` bytes held for the day the disk fills."""

    __slots__ = ("path", "size")

    def __init__(self, queue_path: Path, *, size: int) -> None:
        self.path = queue_path.with_name(queue_path.name + ".reserve")
        self.size = size

    def release(self) -> None:
        """The disk is full: give the space up (the writes that make room need it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def restore(self) -> bool:
        """Re-create the reserve if it is gone and the disk has room again; True if it was
        re-created now (the disk has room: the full budget again)."""
        if self.path.exists():
            return False
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError:
            return False
        size = min(self.size, max(4096, usage.total // 32))
        if usage.free < 4 * size:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        return True
