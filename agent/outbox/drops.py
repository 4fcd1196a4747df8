"""Messages the durable outbox dropped: counted at once, logged one line for many.

Separate from the outbox's two sides (agent.outbox.front, agent.outbox.disk), which
both drop, because a queue kept full by a long outage drops at every commit, and saying
so must not flood the journal: the counting is exact (the stats' `dropped_total`), the
logging is summed per reason and rate-limited here.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agent.outbox.port import OutboxStats

log = structlog.get_logger("agent.queue")

DROP_LOG_INTERVAL = 60.0  # seconds: drops after the first line are summed into the next


class DropLog:
    """Drops by reason ("max_age", "max_bytes", "disk_full", "memory_full"): into
    `stats.dropped_total` at once, into the log at most once a DROP_LOG_INTERVAL."""

    def __init__(
        self, stats: OutboxStats, *, max_bytes: int, max_age: float, time: Callable[[], float]
    ) -> None:
        self._stats = stats
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._time = time
        self._unlogged: dict[str, list[int]] = {}  # reason → [messages, bytes]
        self._logged_at: dict[str, float] = {}
        self._expired_count = self._expired_bytes = 0

    def count(self, reason: str, messages: int, size: int) -> None:
        """Count dropped messages; log them at once, then at most once a DROP_LOG_INTERVAL
        per reason (a queue kept full by a long outage drops at every commit)."""
        self._stats.dropped_total += messages
        held = self._unlogged.setdefault(reason, [0, 0])
        held[0] += messages
        held[1] += size
        self.log()

    def expired(self, size: int) -> None:
        """A message found past max_age as it was taken: counted by `count_expired`, from
        the queue's task (delivery only notes it)."""
        self._expired_count += 1
        self._expired_bytes += size

    def count_expired(self) -> None:
        if self._expired_count:
            self.count("max_age", self._expired_count, self._expired_bytes)
            self._expired_count = self._expired_bytes = 0

    def log(self, *, force: bool = False) -> None:
        """Log what was counted and not yet logged, per reason, where its interval is up
        (every reason with `force`, at shutdown)."""
        now = self._time()
        for reason, (messages, size) in list(self._unlogged.items()):
            if not messages or (
                not force and now < self._logged_at.get(reason, -1e9) + DROP_LOG_INTERVAL
            ):
                continue
            self._logged_at[reason] = now
            self._unlogged[reason] = [0, 0]
            log.warning(
                "queue_dropped_oldest",
                reason=reason,
                messages=messages,
                bytes=size,
                dropped_total=self._stats.dropped_total,
                max_bytes=self._max_bytes,
                max_age=self._max_age,
            )
