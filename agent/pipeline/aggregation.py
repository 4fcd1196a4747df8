"""Every aggregated point's open window, fed by the taps, closed on time, kept durable.

`Aggregation.add` (through `tap`) takes a point's value, polled or derived; a window
that closes, because a later sample came or because `close_due` found its end past,
gives its results. They are held until `flush` (after each poll cycle, and before the
state is written) and then handed to `emit` per bucket, at most RESULTS_PER_MESSAGE in
a message, stamped with the window's end. The agent puts them straight into the outbox
(not through a batch), so that a window's results and the state that no longer holds
it are committed together.

Durable at little cost: `write()` gives what the queue's next commit stores (agent.outbox
`keep_state`). After a window closed, that is a snapshot of every open window; otherwise
only the samples taken since the last write, appended to a journal, a few bytes each (a
snapshot of a thousand windows is about 200 KB: writing one at every commit wore the
flash at 300 KB/s). `restore(snapshot, journal)` rebuilds the windows from the snapshot
and replays the journal's samples, so a kill or a restart mid-window resumes each window
with the samples it had; one whose end passed while the agent was down is closed at
start-up with what it had (its `count` says how many).
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from agent.config.model import Aggregate
from agent.outbox.rows import StateWrite
from agent.pipeline.aggregates import Aggregator, Result, WindowSpec
from agent.pipeline.readings import Value

log = structlog.get_logger("agent.aggregates")

STATE_VERSION = 2
RESULTS_PER_MESSAGE = 100  # readings in one message of results
JOURNAL_LIMIT = 100_000  # samples in the journal before a snapshot replaces it

Key = tuple[str, str]  # (bucket, point id)


class Aggregation:
    def __init__(
        self,
        points: Sequence[tuple[str, str, Aggregate]],  # (bucket, point id, its aggregate)
        *,
        emit: Callable[[str, list[Result]], None],
    ) -> None:
        self._emit = emit
        self._windows: dict[Key, Aggregator] = {}
        for bucket, point_id, aggregate in points:
            spec = WindowSpec(
                point_id, float(aggregate.window_s), aggregate.functions, names=dict(aggregate.ids)
            )
            self._windows[(bucket, point_id)] = Aggregator(spec)
        self._order = list(self._windows)  # a journal entry's first field indexes it
        self.dirty = False  # something to write since `write()` was last called
        self._snapshot_due = True  # a window closed (or nothing was ever written)
        self._journal: list[tuple[int, int, int | float]] = []
        self._journalled = 0  # samples written to the journal since the last snapshot
        self._pending: dict[str, list[Result]] = {}  # closed windows' results, by bucket

    def __bool__(self) -> bool:
        return bool(self._windows)

    def tap(self, bucket: str, point_id: str) -> Callable[[Value | None, int], None]:
        """What a poller calls with each value of that point."""
        key = (bucket, point_id)
        index = self._order.index(key)
        journal = self._journal

        def add(value: Value | None, timestamp_ms: int) -> None:
            # The hot path, once per sample: one call into the window, no more.
            kind = type(value)
            if kind is not float and kind is not int:
                return  # a failed read (None), or a value the checks keep from an aggregate
            assert isinstance(value, int | float)
            results = self._windows[key].add(value, timestamp_ms)
            self.dirty = True
            if results:
                self._snapshot_due = True
                self._pending.setdefault(bucket, []).extend(results)
            else:
                journal.append((index, timestamp_ms, value))

        return add

    def close_due(self, now_ms: int) -> None:
        for key, window in self._windows.items():
            results = window.close_due(now_ms)
            if results:
                self.dirty = self._snapshot_due = True
                self._pending.setdefault(key[0], []).extend(results)
        self.flush()

    def flush(self) -> None:
        """The results of the windows closed since the last flush, a message per bucket and
        RESULTS_PER_MESSAGE results (the agent flushes after each poll cycle)."""
        pending, self._pending = self._pending, {}
        for bucket, results in pending.items():
            for start in range(0, len(results), RESULTS_PER_MESSAGE):
                self._emit(bucket, results[start : start + RESULTS_PER_MESSAGE])

    def next_close_ms(self) -> int | None:
        due = [t for w in self._windows.values() if (t := w.next_close_ms()) is not None]
        return min(due, default=None)

    # -- durability -------------------------------------------------------------------------

    def write(self, whole: bool = False) -> StateWrite:
        """For the queue's next commit (its results put first, into the same commit);
        `whole`: a snapshot, whatever is due (the last write did not reach the disk)."""
        self.flush()
        self.dirty = False
        if whole or self._snapshot_due or self._journalled + len(self._journal) > JOURNAL_LIMIT:
            self._snapshot_due = False
            self._journal.clear()
            self._journalled = 0
            return StateWrite(snapshot=self.snapshot())
        if not self._journal:
            return StateWrite()
        entries = list(self._journal)
        self._journal.clear()
        self._journalled += len(entries)  # on disk since the last snapshot
        return StateWrite(journal=(marshal.dumps(entries),))

    def snapshot(self) -> bytes:
        """Every open window (marshal of plain data: six times quicker than JSON)."""
        return marshal.dumps(
            {
                "version": STATE_VERSION,
                "order": [list(key) for key in self._order],
                "windows": [self._windows[key].state() for key in self._order],
            }
        )

    def restore(self, snapshot: bytes, journal: Sequence[bytes] = ()) -> None:
        """The windows as a snapshot left them, then the samples journalled after it;
        what no longer fits the config is dropped (and said)."""
        order = self._restore_snapshot(snapshot)
        replayed = 0
        for blob in journal:
            try:
                entries: Any = marshal.loads(blob)
                for index, timestamp_ms, value in entries:
                    key = order[index] if 0 <= index < len(order) else None
                    if key in self._windows:
                        self._windows[key].add(value, timestamp_ms)
                        replayed += 1
            except (ValueError, TypeError, EOFError) as exc:
                log.warning("aggregates_journal_unusable", reason=str(exc))
        self._snapshot_due = True  # the next commit writes what this came to
        log.info("aggregates_restored", windows=len(order), samples_replayed=replayed)

    def _restore_snapshot(self, snapshot: bytes) -> list[Key | None]:
        try:
            data: Any = marshal.loads(snapshot)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"state version {data.get('version')}")
            order: list[Key | None] = [(str(key[0]), str(key[1])) for key in data["order"]]
            states = data["windows"]
        except (ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
            log.warning("aggregates_state_unusable", reason=str(exc))
            return []
        for key, state in zip(order, states, strict=False):
            window = self._windows.get(key) if key is not None else None
            if key is None or window is None:
                continue
            try:
                self._windows[key] = Aggregator.restore(window.spec, state)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("aggregate_state_dropped", point=key[1], reason=str(exc))
        return order

    def adopt(self, previous: Aggregation) -> None:
        """A reload: the open windows of the aggregates both configs have, as they are
        (the previous one's closed windows' results are flushed first, by the agent)."""
        for key, window in previous._windows.items():
            mine = self._windows.get(key)
            if mine is not None and mine.spec == window.spec:
                self._windows[key] = window
        self._snapshot_due = True
