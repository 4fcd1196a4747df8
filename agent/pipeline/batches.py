"""Batches: readings of one bucket joined into one JSON array message.

A bucket's open batch is flushed when it holds `max_readings`, when one more reading
would take it past `max_bytes`, or `max_delay` seconds after its first reading,
whichever comes first. The Batcher is synchronous and never blocks: full batches go
to a sink (the outbox) as they complete; `Batcher.flush_due` is driven by a timer task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.clock import STEP_TOLERANCE_MS, Clock, Stamp
from agent.pipeline.readings import Reading

_OVERHEAD = 2  # "[" and "]"


@dataclass(frozen=True, slots=True)
class Batch:
    bucket: str
    payload: bytes
    count: int
    stamp: Stamp | None = None  # the clock when its first reading was taken


@dataclass(slots=True)
class _OpenBatch:
    deadline: float
    stamp: Stamp | None
    parts: list[bytes] = field(default_factory=list)
    size: int = _OVERHEAD

    def close(self, bucket: str) -> Batch:
        return Batch(bucket, b"[" + b",".join(self.parts) + b"]", len(self.parts), self.stamp)


class Batcher:
    """Per-bucket open batches; completed ones are handed to `sink`."""

    def __init__(
        self,
        *,
        sink: Callable[[Batch], None],
        max_readings: int,
        max_bytes: int,
        max_delay: float,
        clock: Callable[[], float],
        wall: Clock | None = None,
    ) -> None:
        self._sink = sink
        self._max_readings = max_readings
        self._max_bytes = max_bytes
        self._max_delay = max_delay
        self._delays: dict[str, float] = {}
        self._clock = clock
        self._wall = wall
        self._open: dict[str, _OpenBatch] = {}
        self.on_new_deadline: Callable[[float], None] = lambda deadline: None

    def set_delay(self, bucket: str, delay: float) -> None:
        """A bucket-specific `max_delay` (a cloud setting may change it at run time)."""
        self._delays[bucket] = delay

    def delay_for(self, bucket: str) -> float:
        return self._delays.get(bucket, self._max_delay)

    def add(self, reading: Reading) -> None:
        self.add_encoded(reading.bucket, [reading.fragment()])

    def add_encoded(self, bucket: str, parts: list[bytes]) -> None:
        """Readings of one bucket taken together (one response), already encoded.

        The hot path: one clock stamp per call, not per reading.
        """
        stamp = self._wall.stamp() if self._wall is not None else None
        batch = self._open.get(bucket)
        if (
            batch is not None
            and stamp is not None
            and batch.stamp is not None
            and abs(stamp.offset_ms - batch.stamp.offset_ms) > STEP_TOLERANCE_MS
        ):
            # The wall clock was stepped: a batch never spans a step, so that all its
            # timestamps can be corrected together.
            self._emit(bucket)
            batch = None
        max_bytes, max_readings = self._max_bytes, self._max_readings
        taken = 0
        while taken < len(parts):
            if batch is None:
                batch = self._new_batch(bucket, stamp)
            # As many as the batch has room for, at once when their bytes fit too (the
            # common case: the same batches as part by part, at a fraction of the calls).
            chunk = parts[taken : taken + max(1, max_readings - len(batch.parts))]
            size = sum(map(len, chunk)) + len(chunk) - (0 if batch.parts else 1)
            if batch.size + size <= max_bytes:
                batch.parts.extend(chunk)
                batch.size += size
                taken += len(chunk)
            else:
                batch = self._add_one(bucket, batch, parts[taken], stamp)
                taken += 1
            if len(batch.parts) >= max_readings or batch.size >= max_bytes:
                self._emit(bucket)
            batch = self._open.get(bucket)

    def _new_batch(self, bucket: str, stamp: Stamp | None) -> _OpenBatch:
        deadline = self._clock() + self._delays.get(bucket, self._max_delay)
        batch = self._open[bucket] = _OpenBatch(deadline, stamp)
        self.on_new_deadline(deadline)
        return batch

    def _add_one(
        self, bucket: str, batch: _OpenBatch, part: bytes, stamp: Stamp | None
    ) -> _OpenBatch:
        """One part into a batch whose bytes it would overflow: the batch goes first
        (unless it is empty: a part larger than max_bytes goes alone). The batch it is in."""
        if batch.parts:
            self._emit(bucket)
            batch = self._new_batch(bucket, stamp)
        batch.size += len(part)
        batch.parts.append(part)
        return batch

    def flush_due(self) -> float | None:
        """Flush batches whose delay has passed; return the next deadline, if any."""
        now = self._clock()
        for bucket in [b for b, batch in self._open.items() if batch.deadline <= now]:
            self._emit(bucket)
        return min((batch.deadline for batch in self._open.values()), default=None)

    def hurry(self, within: float, *, quiet_for: float = 0.0) -> None:
        """A poll cycle ended and its source is quiet for `quiet_for` seconds: an open
        batch that would wait beyond that for readings that cannot come goes out within
        `within` instead (so that cycles ending together share a message). One that its
        next cycle can still join before its max_delay waits as it would (a fast poller
        packs several cycles, as max_delay allows)."""
        now = self._clock()
        soon, next_cycle = now + within, now + quiet_for
        for batch in self._open.values():
            if batch.deadline > soon and batch.deadline <= next_cycle + within:
                batch.deadline = soon
                self.on_new_deadline(soon)

    def flush_all(self) -> None:
        for bucket in list(self._open):
            self._emit(bucket)

    @property
    def open_readings(self) -> int:
        return sum(len(batch.parts) for batch in self._open.values())

    def _emit(self, bucket: str) -> None:
        self._sink(self._open.pop(bucket).close(bucket))
