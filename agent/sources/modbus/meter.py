"""How busy a connection is, for the agent's state: requests/s, the share of time the line
was busy with a request (utilisation) and the round trip's median and 95th percentile.

`LineMeter.record` takes one request's start and end (monotonic seconds): two floats kept
in a deque of the last WINDOW seconds (at most KEPT), nothing else on the request's path.
`snapshot` works the figures out over the last WINDOW seconds when the state asks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW = 60.0  # seconds of requests the rates are taken over
KEPT = 4096  # requests remembered at most (68 requests/s over the window)


@dataclass(frozen=True, slots=True)
class LineLoad:
    requests_per_s: float
    utilisation: float  # 0..1: the share of the window the line spent in requests
    rtt_median_s: float | None
    rtt_p95_s: float | None


class LineMeter:
    __slots__ = ("_done", "_since")

    def __init__(self, now: float) -> None:
        self._done: deque[tuple[float, float]] = deque(maxlen=KEPT)  # (end, duration)
        self._since = now  # when counting began: the window is no longer than that

    def record(self, started: float, ended: float) -> None:
        done = self._done
        done.append((ended, ended - started))
        # Nothing older than the window is kept: a connection asked once a second holds
        # sixty requests, not KEPT (460 KB of them, an hour on).
        while done[0][0] < ended - WINDOW:
            done.popleft()

    @property
    def kept(self) -> int:
        """Requests remembered now."""
        return len(self._done)

    def snapshot(self, now: float) -> LineLoad:
        span = min(WINDOW, max(now - self._since, 1e-9))
        recent = sorted(d for end, d in self._done if end >= now - span)
        if not recent:
            return LineLoad(0.0, 0.0, None, None)
        # Fewer kept than the window held (a fast line): the rate over what is kept.
        if len(self._done) == KEPT and self._done[0][0] > now - span:
            span = max(now - self._done[0][0], 1e-9)
        p95 = recent[min(len(recent) - 1, math.ceil(0.95 * len(recent)) - 1)]
        return LineLoad(
            requests_per_s=len(recent) / span,
            utilisation=min(1.0, sum(recent) / span),
            rtt_median_s=recent[len(recent) // 2],
            rtt_p95_s=p95,
        )
