"""Degraded mode: whether the queue's disk takes writes, and when to try it again.

A disk that cannot take writes (full after making room, I/O errors, read-only) puts the
durable outbox in degraded mode: agent.outbox.disk delivers from memory and remembers
acknowledgements, and tries the writes again after a capped, jittered back-off until
they succeed. Separate from that module because this is the policy alone (the state,
the back-off, one log line per change of state); what the outbox does in degraded mode
stays with the outbox.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.errors import QueueError

log = structlog.get_logger("agent.queue")

RETRY_MIN, RETRY_MAX = 1.0, 30.0  # seconds between tries of a disk that failed


class DiskHealth:
    """The disk's state as the outbox last found it: `ok`, or failing with `error`,
    `failures` times in a row, to be tried again at `retry_at` (on `time`'s clock)."""

    __slots__ = ("_path", "_time", "error", "failures", "ok", "retry_at")

    def __init__(self, path: Path, *, time: Callable[[], float]) -> None:
        self._path = path
        self._time = time
        self.ok = True
        self.error: str | None = None
        self.failures = 0
        self.retry_at = 0.0

    def open_failed(self, exc: BaseException) -> None:
        """The file would not open: logged the first time only."""
        self._failed()
        if self.ok or self.failures == 1:
            log.error(
                "queue_open_failed",
                path=str(self._path),
                error=type(exc).__name__,
                detail=str(exc),
                retry_in=round(self.retry_at - self._time(), 1),
            )
        self._degrade(str(exc))

    def write_failed(self, exc: QueueError, *, unwritten: int) -> None:
        """A write (or a read, or a sync) failed: logged when the disk was fine until now."""
        self._failed()
        if self.ok:
            log.error(
                "queue_disk_failed",
                path=str(self._path),
                error=type(exc).__name__,
                detail=str(exc),
                unwritten=unwritten,
                action="delivering from memory; retrying the disk",
            )
        self._degrade(str(exc))

    def recovered(self, *, messages_on_disk: int) -> None:
        """A write succeeded: the disk is fine (logged if it had failed)."""
        was = self.error
        self.ok = True
        self.error = None
        if self.failures:
            log.info(
                "queue_disk_recovered",
                path=str(self._path),
                failures=self.failures,
                after_error=was,
                messages_on_disk=messages_on_disk,
            )
        self.failures = 0

    def _failed(self) -> None:
        self.failures += 1
        self.retry_at = self._time() + self._backoff()

    def _degrade(self, error: str) -> None:
        self.ok = False
        self.error = error

    def _backoff(self) -> float:
        ceiling = min(RETRY_MAX, RETRY_MIN * 2 ** min(self.failures, 10))
        return random.uniform(ceiling / 2, ceiling)
