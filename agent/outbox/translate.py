"""SQLite's and the OS's errors as the outbox's own: one table by result code, one by errno.

Separate from agent.outbox.store so that the mapping reads as the table it is, apart from
the SQL: a full disk (QueueDiskFull) is met by making room, a corrupt file
(QueueCorrupt) by moving it aside, a read-only one (QueueReadOnly) and anything else
(QueueIOError) by delivering from memory and trying the disk again later.
"""

from __future__ import annotations

import errno
import sqlite3

from agent.errors import QueueCorrupt, QueueDiskFull, QueueError, QueueIOError, QueueReadOnly

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


def translate_os(exc: OSError, doing: str) -> QueueError:
    """The same for an OS call on the queue's files; `doing` completes "cannot ..."."""
    detail = f"cannot {doing}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QueueDiskFull(detail)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return QueueReadOnly(detail)
    return QueueIOError(detail)
