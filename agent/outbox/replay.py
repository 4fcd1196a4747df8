"""The pace of a replay: backlog goes out at `replay_rate` messages a second.

Separate from agent.outbox.front (which hands backlog out) because it is a plain token
bucket, with its own clock and no knowledge of lanes or disks: the front asks it before
each backlog message, and how long to wait when it says no.
"""

from __future__ import annotations

from collections.abc import Callable


class ReplayPace:
    """A token bucket: `rate` tokens a second, at most max(1, rate) saved; rate 0 (or
    less) lets everything through."""

    __slots__ = ("_at", "_rate", "_time", "_tokens")

    def __init__(self, rate: float, *, time: Callable[[], float]) -> None:
        self._rate = rate
        self._time = time
        self._tokens = 0.0
        self._at = time()

    def restart(self) -> None:
        """A replay starts: nothing saved from before."""
        self._tokens = 0.0
        self._at = self._time()

    def take(self) -> bool:
        """Whether one backlog message may go now (and count it if so)."""
        rate = self._rate
        if rate <= 0:
            return True
        now = self._time()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self) -> float | None:
        """Seconds until `take` may say yes; None if it never says no (no rate)."""
        if self._rate > 0:
            return max(0.001, (1.0 - self._tokens) / self._rate)
        return None
