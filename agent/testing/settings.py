"""What the configurator may change in the agent itself, in memory."""

from __future__ import annotations


class FakeTunable:
    """A source's interval, as the configurator sets it; `changes` lists every change."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.changes: list[float] = []

    def set_interval(self, interval: float) -> None:
        self.interval = interval
        self.changes.append(interval)


class FakeDelays:
    """The batcher's per-bucket max_delay: `default` until set."""

    def __init__(self, default: float = 1.0) -> None:
        self.default = default
        self.delays: dict[str, float] = {}

    def delay_for(self, bucket: str) -> float:
        return self.delays.get(bucket, self.default)

    def set_delay(self, bucket: str, delay: float) -> None:
        self.delays[bucket] = delay


class FakeLogLevel:
    def __init__(self, level: str = "info") -> None:
        self.level = level

    def set_level(self, level: str) -> None:
        self.level = level
