"""Every aggregated point's open window, fed by the taps, closed on time, kept durable.

`Aggregation.add` (through `tap`) takes a point's value, polled or derived; a window
that closes, because a later sample came or because `close_due` found its end past,
gives its results, each encoded at once as a reading's JSON, stamped with the window's
end. They are held until there are RESULTS_PER_MESSAGE of a bucket, or until `flush`
(after each poll cycle, and before the state is written), and then handed to `emit` per
bucket, at most RESULTS_PER_MESSAGE in a message (a thousand windows closing at once
are not held as one list). The agent
puts them straight into the outbox (not through a batch), so that a window's results and
the state that no longer holds it are committed together.

Durable at little cost: `write()` gives what the queue's next commit stores (agent.outbox
`keep_state`). After a window closed, that is a snapshot of every open window; otherwise
only the samples taken since the last write, appended to a journal (a sample alone about
25 bytes, one in rows 4 or 8 bytes and its row's timestamp 8; a
snapshot of a thousand windows is about 110 KB, one marshal of each window's packed state:
writing one at every commit, twice a second, would wear the flash at 220 KB/s). A journal
entry stays one however many samples it holds: a commit with a snapshot writes every
message put before it (agent.outbox), live ones the broker is about to acknowledge
included, which only a window's close needs. `restore(snapshot, journal)` rebuilds the windows from
the snapshot and replays the journal's samples, so a kill or a restart mid-window resumes
each window with the samples it had at the last commit; one whose end passed while the
agent was down is closed at start-up with what it had (its `count` says how many).

Rows. A poller's read of several aggregated points whose values come all at once (a
meter's block of floats) hands them over as a row (`rows`, then the row's `add`): one
append of its values to a flat array, where a tap per point would cost a call into each
window per sample. The rows are folded into their windows (`Aggregator.fold`, a sum and a
minimum per window of a slice of the array) every FOLD_ROWS rows and before anything else
reads or feeds those windows: a close, a snapshot, a sample that does not fit (late, of a
later window), a value that comes point by point. Each commit journals the rows taken
since the last one as they are, their timestamps and their values' bytes: a few bytes a
sample, in one entry per read.
"""

from __future__ import annotations

import io
import marshal
import math
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from agent.config.model import Aggregate
from agent.outbox.rows import StateWrite
from agent.pipeline.aggregates import (
    NO_NAMES,
    Aggregator,
    Closed,
    Number,
    WindowSpec,
    unpacked_state,
)
from agent.pipeline.readings import Value, id_prefix, timestamp_suffix

log = structlog.get_logger("agent.aggregates")

STATE_VERSION = 4  # 4: a header, then each window's packed state, one marshal after another
_STREAMED = 3  # 3: a header, then each window's state() marshalled one after another
RESULTS_PER_MESSAGE = 100  # readings in one message of results
JOURNAL_LIMIT = 100_000  # samples in the journal before a snapshot replaces it
FOLD_ROWS = 32  # rows a `Rows` holds before folding them into its windows
ROW_TYPECODES = frozenset("fdq")  # array typecodes of a row's values: float32, float64, int64

Key = tuple[str, str]  # (bucket, point id)
Tap = Callable[[Value | None, int], None]
RowTap = Callable[[Sequence[Number], int], None]  # a row's values (in order) and timestamp


class Rows:
    """The samples of a read's aggregated points, a row a poll, kept in flat arrays and
    folded into their windows in bulk (see the module docstring).

    A row goes into the arrays while every window is open with the same end, the row is
    inside it and no older than the last; any other row settles the arrays (folds them in)
    and is added window by window, after which the windows are looked at again. Whoever
    else feeds or closes one of the windows settles its rows first (`Aggregator.rows`).
    """

    __slots__ = (
        "_end_ms",
        "_journal",
        "_journalled",
        "_last_ms",
        "_stamps",
        "_values",
        "indexes",
        "typecode",
        "windows",
    )

    def __init__(
        self, windows: tuple[Aggregator, ...], typecode: str, journal: list[tuple[Any, ...]]
    ) -> None:
        self.windows = windows
        indexes = tuple(window.index for window in windows)  # as the journal names them
        consecutive = indexes == tuple(range(indexes[0], indexes[0] + len(indexes)))
        # In the journal: the first index alone when they follow one another (a read's
        # points declared in order), 5 bytes where a tuple of 50 took 250.
        self.indexes: int | tuple[int, ...] = indexes[0] if consecutive else indexes
        self.typecode = typecode
        self._journal = journal
        self._stamps = array("q")
        self._values: array[Any] = array(typecode)  # row after row
        self._journalled = 0  # the rows already in the journal
        self._end_ms = -1  # the windows' common end; -1: look at the windows first
        self._last_ms = 0  # the newest row's timestamp
        for window in windows:
            window.rows = self
        self._sync()

    def add(self, values: Sequence[Number], timestamp_ms: int) -> None:
        """One row: a value for each window, in order, all taken at `timestamp_ms`."""
        if self._last_ms <= timestamp_ms < self._end_ms:
            self._stamps.append(timestamp_ms)
            self._values.extend(values)
            self._last_ms = timestamp_ms
            if len(self._stamps) >= FOLD_ROWS:
                self.fold()
            return
        self._add_otherwise(values, timestamp_ms)

    def _add_otherwise(self, values: Sequence[Number], timestamp_ms: int) -> None:
        for window in self.windows:
            rows = window.rows
            if rows is not None:
                rows.settle()  # this one, or (after a new plan) the one now holding it
        # Journalled as one row, as the arrays' rows are (the first row of a minute opens
        # a thousand windows: one entry, not a thousand tuples).
        row = array(self.typecode, values)
        self._journal.append(self._entry(array("q", (timestamp_ms,)), row))
        for window, value in zip(self.windows, row, strict=True):  # as journalled
            window.add_unjournalled(value, timestamp_ms)
        self._sync()

    def _sync(self) -> None:
        ends = {window.next_close_ms() for window in self.windows}
        end_ms = ends.pop() if len(ends) == 1 else None
        if end_ms is None or any(window.rows is not self for window in self.windows):
            self._end_ms = -1
            return
        self._end_ms = end_ms
        self._last_ms = max(window.newest_ms for window in self.windows)

    def settle(self) -> None:
        """Fold in what the arrays hold; the next row is looked at against the windows."""
        self.fold()
        self._end_ms = -1

    def fold(self) -> None:
        """The rows held, journalled if they were not yet, into their windows."""
        if not self._stamps:
            return
        self.keep()
        values, width = self._values, len(self.windows)
        stamps = self._stamps.tolist()  # each window's newest time: one int object for all
        for index, window in enumerate(self.windows):
            window.fold(stamps, values[index::width].tolist())  # floats made once, not 4 times
        del self._stamps[:]
        del values[:]
        self._journalled = 0

    def keep(self) -> None:
        """The rows not yet journalled into the journal: one entry of their bytes."""
        rows = len(self._stamps)
        if rows > self._journalled:
            start = self._journalled
            values = self._values[start * len(self.windows) :]
            self._journal.append(self._entry(self._stamps[start:], values))
            self._journalled = rows

    def _entry(self, stamps: array[int], values: array[Any]) -> tuple[Any, ...]:
        """A journal entry of rows: their timestamps and values, as bytes."""
        return (self.indexes, self.typecode, stamps.tobytes(), values.tobytes())


class Aggregation:
    def __init__(
        self,
        points: Sequence[tuple[str, str, Aggregate]],  # (bucket, point id, its aggregate)
        *,
        emit: Callable[[str, list[bytes]], None],  # (bucket, results as readings' JSON)
    ) -> None:
        self._emit = emit
        # The samples since the last write: (index, timestamp, value) for a sample, and
        # (indexes, typecode, timestamps' bytes, values' bytes) for a `Rows`'s rows (the
        # indexes: the first one alone when they follow one another).
        self._journal: list[tuple[Any, ...]] = []
        self._opened_bound = self._opened  # one bound method for every window
        self._windows: dict[Key, Aggregator] = {}
        self._pending: dict[str, list[bytes]] = {}  # closed windows' results, by bucket
        self._on_close: dict[str, Closed] = {}  # one per bucket
        self._earliest_ms = math.inf  # no open window ends before this
        # By their windows' bucket and point ids (one tuple of ids, not a key per window).
        self._rows: dict[tuple[str, tuple[str, ...]], Rows] = {}
        widths: dict[float, float] = {}  # one float object per window length
        for bucket, point_id, aggregate in points:
            names = dict(aggregate.names) if aggregate.names else NO_NAMES
            width = widths.setdefault(aggregate.window_s, float(aggregate.window_s))
            spec = WindowSpec(point_id, width, aggregate.functions, names)
            window = Aggregator(spec)
            window.index = len(self._windows)  # a journal entry's first field
            self._windows[(bucket, point_id)] = window
            self._wire((bucket, point_id), window)
        self._order = list(self._windows)
        # The snapshot's header: the windows' keys in the order of their packed states.
        self._header = marshal.dumps({"version": STATE_VERSION, "order": self._order})
        self._snapshot_due = True  # a window closed (or nothing was ever written)
        self._journalled = 0  # samples written to the journal since the last snapshot

    def __bool__(self) -> bool:
        return bool(self._windows)

    def __contains__(self, key: tuple[str, str]) -> bool:
        """Whether (bucket, point id) is aggregated here."""
        return key in self._windows

    @property
    def dirty(self) -> bool:
        """Something to write since `write()` was last called."""
        return bool(self._journal) or self._snapshot_due

    def tap(self, bucket: str, point_id: str) -> Tap:
        """What a source calls with each value of that point (None: the read failed): the
        window's own `add` when no read of it comes in rows, one call per sample."""
        window = self._windows[(bucket, point_id)]
        add: Tap = window.add  # type: ignore[assignment]  # (a Value that is no number raises)

        def settled(value: Value | None, timestamp_ms: int) -> None:
            rows = window.rows
            if rows is not None:
                rows.settle()
            add(value, timestamp_ms)

        return settled

    def rows(self, bucket: str, point_ids: Sequence[str], typecode: str) -> RowTap | None:
        """What a poller calls with each row of these points' values (a read's, in order,
        of the array typecode `typecode`), instead of their taps; None unless every one is
        aggregated in windows of one width (a read of other points keeps its taps)."""
        ids = tuple(point_ids)
        known = self._rows.get((bucket, ids))
        if known is not None:
            return known.add
        windows = tuple(self._windows.get((bucket, point_id)) for point_id in ids)
        if typecode not in ROW_TYPECODES or not windows or None in windows:
            return None
        mine = tuple(window for window in windows if window is not None)
        if len({window.spec.window_ms for window in mine}) != 1:
            return None
        for window in mine:
            if window.rows is not None:
                window.rows.settle()  # a new plan: the rows of its old read are folded in
        self._rows = {
            key: rows
            for key, rows in self._rows.items()
            if key[0] != bucket or not set(key[1]) & set(ids)
        }
        made = self._rows[(bucket, ids)] = Rows(mine, typecode, self._journal)
        return made.add

    def settle(self) -> None:
        """Every row held folded into its windows."""
        for rows in self._rows.values():
            rows.settle()

    def _wire(self, key: Key, window: Aggregator) -> None:
        """`window` serves `key` here: its samples go into this journal, its results here."""
        window.index = self._windows[key].index  # the place of `key` in this config
        window.journal = self._journal
        window.on_close = self._on_close.get(key[0]) or self._closed(key[0])
        window.on_open = self._opened_bound
        window.rows = None  # a previous config's or restored: the pollers ask for rows anew
        self._windows[key] = window
        due = window.next_close_ms()
        if due is not None:
            self._opened(due)

    def _opened(self, end_ms: int) -> None:
        if end_ms < self._earliest_ms:
            self._earliest_ms = end_ms

    def _closed(self, bucket: str) -> Closed:
        def closed(spec: WindowSpec, values: Sequence[Number], end_ms: int) -> None:
            self._snapshot_due = True
            pending = self._pending.setdefault(bucket, [])
            suffix = timestamp_suffix(end_ms)
            for output_id, value in zip(spec.output_ids().values(), values, strict=True):
                pending.append(id_prefix(output_id) + repr(value).encode() + suffix)
            if len(pending) >= RESULTS_PER_MESSAGE:  # a message's worth: it need not wait
                self._emit(bucket, pending[:RESULTS_PER_MESSAGE])
                del pending[:RESULTS_PER_MESSAGE]

        self._on_close[bucket] = closed
        return closed

    def close_due(self, now_ms: int) -> None:
        """Close every window that ended at or before `now_ms` (called each second: a
        look at one number until the earliest window's end, then one pass over all)."""
        if now_ms >= self._earliest_ms:
            self.settle()
            self._earliest_ms = math.inf
            for window in self._windows.values():
                window.close_due(now_ms)
                due = window.next_close_ms()
                if due is not None and due < self._earliest_ms:
                    self._earliest_ms = due
        self.flush()

    def flush(self) -> None:
        """The results of the windows closed since the last flush, a message per bucket and
        RESULTS_PER_MESSAGE results (the agent flushes after each poll cycle)."""
        pending, self._pending = self._pending, {}
        for bucket, results in pending.items():
            for start in range(0, len(results), RESULTS_PER_MESSAGE):
                self._emit(bucket, results[start : start + RESULTS_PER_MESSAGE])

    def next_close_ms(self) -> int | None:
        return None if self._earliest_ms == math.inf else int(self._earliest_ms)

    # -- durability -------------------------------------------------------------------------

    def write(self, whole: bool = False) -> StateWrite:
        """For the queue's next commit (its results put first, into the same commit);
        `whole`: a snapshot, whatever is due (the last write did not reach the disk)."""
        self.flush()
        journal = self._journal
        for rows in self._rows.values():
            rows.keep()
        samples = sum(1 if len(entry) == 3 else _row_samples(entry) for entry in journal)
        if whole or self._snapshot_due or self._journalled + samples > JOURNAL_LIMIT:
            self._snapshot_due = False
            snapshot = self.snapshot()  # (settles the rows: their entries are not needed)
            journal.clear()
            self._journalled = 0
            return StateWrite(snapshot=snapshot)
        if not journal:
            return StateWrite()
        entries = marshal.dumps(journal)
        self._journalled += samples  # on disk since the last snapshot
        journal.clear()
        return StateWrite(journal=(entries,))

    def snapshot(self) -> bytes:
        """Every open window: a header (made once), then each window's packed state, one
        marshal after another (plain data, exact; a thousand windows in about 0.6 ms and
        110 KB, where their `state()` dicts took 3 ms and 230 KB)."""
        for rows in self._rows.values():
            rows.fold()  # (not settled: nothing changes the windows, rows go on as rows)
        windows, dumps = self._windows, marshal.dumps
        out = io.BytesIO()
        out.write(self._header)
        for key in self._order:  # one at a time: no thousand states held at once
            out.write(dumps(windows[key].packed()))
        return out.getvalue()

    def restore(self, snapshot: bytes, journal: Sequence[bytes] = ()) -> None:
        """The windows as a snapshot left them, then the samples journalled after it;
        what no longer fits the config is dropped (and said). Rows made before are
        dropped with the windows they fed (the pollers ask for rows anew)."""
        self.settle()
        self._rows.clear()
        order = self._restore_snapshot(snapshot)
        replayed = 0
        for blob in journal:
            try:
                entries: Any = marshal.loads(blob)
                for entry in entries:
                    for index, timestamp_ms, value in journal_samples(entry):
                        key = order[index] if 0 <= index < len(order) else None
                        if key in self._windows:
                            self._windows[key].add(value, timestamp_ms)
                            replayed += 1
            except (ValueError, TypeError, EOFError) as exc:
                log.warning("aggregates_journal_unusable", reason=str(exc))
        self._journal.clear()  # what the replay put there is in the next snapshot
        self._snapshot_due = True  # the next commit writes what this came to
        log.info("aggregates_restored", windows=len(order), samples_replayed=replayed)

    def _restore_snapshot(self, snapshot: bytes) -> list[Key | None]:
        stream = io.BytesIO(snapshot)
        try:
            header: Any = marshal.load(stream)
            version = header.get("version")
            if version not in (STATE_VERSION, _STREAMED):
                raise ValueError(f"state version {version}")
            order: list[Key | None] = [(str(key[0]), str(key[1])) for key in header["order"]]
        except (ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
            log.warning("aggregates_state_unusable", reason=str(exc))
            return []
        unpack = version == STATE_VERSION  # version 3 streamed each window's state() dict
        for key in order:
            try:
                state = marshal.load(stream)
            except (ValueError, TypeError, EOFError) as exc:
                # Cut short: the windows before are kept, the rest start afresh; the
                # journal still replays onto all of them (`order` is whole).
                log.warning("aggregates_state_unusable", reason=str(exc), from_point=key)
                break
            self._restore_window(key, state, unpack=unpack)
        return order

    def _restore_window(self, key: Key | None, state: Any, *, unpack: bool) -> None:
        window = self._windows.get(key) if key is not None else None
        if key is None or window is None:
            return
        try:
            if unpack:
                state = unpacked_state(window.spec.point_id, state)
            self._wire(key, Aggregator.restore(window.spec, state))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("aggregate_state_dropped", point=key[1], reason=str(exc))

    def adopt(self, previous: Aggregation) -> None:
        """A reload: the open windows of the aggregates both configs have, as they are
        (the previous one's closed windows' results are flushed first, by the agent)."""
        previous.settle()
        for key, window in previous._windows.items():
            mine = self._windows.get(key)
            if mine is not None and mine.spec == window.spec:
                self._wire(key, window)
        self._snapshot_due = True


def _row_samples(entry: tuple[Any, ...]) -> int:
    """How many samples a journal entry of rows holds."""
    _, typecode, _, values = entry
    return len(values) // array(typecode).itemsize


def journal_samples(entry: Any) -> Sequence[tuple[int, int, Number]]:
    """A journal entry's samples as (index, timestamp, value); ValueError if malformed."""
    if len(entry) == 3:
        return (entry,)
    indexes, typecode, stamp_bytes, value_bytes = entry
    if typecode not in ROW_TYPECODES:
        raise ValueError(f"rows of an unknown typecode {typecode!r}")
    stamps, values = array("q"), array(typecode)
    stamps.frombytes(stamp_bytes)
    values.frombytes(value_bytes)
    if not stamps or len(values) % len(stamps):
        raise ValueError(f"{len(values)} values for {len(stamps)} rows")
    width = len(values) // len(stamps)
    if type(indexes) is int:  # the first of `width` indexes that follow one another
        indexes = range(indexes, indexes + width)
    if len(indexes) != width:
        raise ValueError(f"rows of {width} values for {len(indexes)} points")
    return [
        (index, stamp, values[row * width + column])
        for row, stamp in enumerate(stamps)
        for column, index in enumerate(indexes)
    ]
