"""agent.pipeline.aggregation: the windows kept as a snapshot and a journal of samples,
restored to exactly where they were."""

from __future__ import annotations

import marshal

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.config.model import Aggregate
from agent.outbox.rows import StateWrite
from agent.pipeline.aggregates import Result
from agent.pipeline.aggregation import Aggregation

AGGREGATE = Aggregate(10, ("avg", "min", "max", "count"))


class Kept:
    """What the queue's file would hold: the last snapshot and the journal after it."""

    def __init__(self) -> None:
        self.snapshot: bytes | None = None
        self.journal: list[bytes] = []

    def commit(self, write: StateWrite) -> None:
        if write.snapshot is not None:
            self.snapshot, self.journal = write.snapshot, []
        self.journal.extend(write.journal)


def aggregation(into: list[Result]) -> Aggregation:
    return Aggregation([("b", "v", AGGREGATE)], emit=lambda bucket, results: into.extend(results))


samples = st.lists(
    st.tuples(st.integers(min_value=0, max_value=3_000), st.integers(-1000, 1000)),
    min_size=1,
    max_size=60,
).map(
    lambda steps: [
        (1_000_000 + sum(s for s, _ in steps[: i + 1]), v) for i, (_, v) in enumerate(steps)
    ]
)


@settings(max_examples=200, deadline=None)
@given(samples, st.data())
def test_a_restart_anywhere_gives_the_results_of_a_run_without_one(
    taken: list[tuple[int, int]], data: st.DataObject
) -> None:
    whole: list[Result] = []
    reference = aggregation(whole)
    feed = reference.tap("b", "v")
    for stamp, value in taken:
        feed(value, stamp)
    reference.close_due(10**12)

    cut = data.draw(st.integers(0, len(taken)))
    commits = set(data.draw(st.lists(st.integers(0, len(taken)), max_size=10)))
    before: list[Result] = []
    first = aggregation(before)
    kept = Kept()
    feed = first.tap("b", "v")
    for n, (stamp, value) in enumerate(taken[:cut]):
        feed(value, stamp)
        first.flush()
        if n in commits or n == cut - 1:
            kept.commit(first.write())
    after: list[Result] = []
    second = aggregation(after)
    if kept.snapshot is not None:
        second.restore(kept.snapshot, kept.journal)
    feed = second.tap("b", "v")
    for stamp, value in taken[cut:]:
        feed(value, stamp)
    second.close_due(10**12)

    assert whole == before + after


def test_a_whole_write_is_a_snapshot_whatever_is_due() -> None:
    results: list[Result] = []
    windows = aggregation(results)
    windows.write()  # the first: a snapshot
    windows.tap("b", "v")(5, 1_000_000)

    assert (None, 1) == (windows.write().snapshot, 1)  # a journal entry only
    windows.tap("b", "v")(6, 1_000_500)
    whole = windows.write(whole=True)
    assert (True, ()) == (whole.snapshot is not None, whole.journal)


def test_the_next_close_is_the_earliest_window_end_whichever_opened_last() -> None:
    results: list[Result] = []
    windows = Aggregation(
        [("b", "slow", Aggregate(60, ("count",))), ("b", "fast", Aggregate(10, ("count",)))],
        emit=lambda bucket, closed: results.extend(closed),
    )
    windows.tap("b", "slow")(1, 1_000_000)  # its window ends at 1,020,000
    windows.close_due(1_000_500)
    windows.tap("b", "fast")(2, 1_001_000)  # opened after: ends at 1,010,000

    assert 1_010_000 == windows.next_close_ms()
    windows.close_due(1_009_999)
    assert [] == results
    windows.close_due(1_010_000)
    assert [Result("fast_count", 1, 1_010_000)] == results
    assert 1_020_000 == windows.next_close_ms()


def test_a_snapshot_cut_short_keeps_the_windows_before_the_cut_and_replays_the_journal() -> None:
    def two(into: list[Result]) -> Aggregation:
        points = [("b", "v", AGGREGATE), ("b", "w", AGGREGATE)]
        return Aggregation(points, emit=lambda bucket, results: into.extend(results))

    results: list[Result] = []
    first = two([])
    first.tap("b", "v")(5, 1_000_000)
    first.tap("b", "w")(1, 1_000_000)
    snapshot = first.write().snapshot
    assert snapshot is not None
    first.tap("b", "v")(7, 1_001_000)
    journal = first.write().journal

    with capture_logs() as logs:
        second = two(results)
        second.restore(snapshot[:-3], journal)  # w's state cut short
    second.tap("b", "v")(9, 1_002_000)
    second.close_due(10**12)

    assert ["aggregates_state_unusable"] == [
        e["event"] for e in logs if e["log_level"] == "warning"
    ]
    assert {"v_count": 3, "v_max": 9} == {  # 5 from the snapshot, 7 from the journal, 9
        r.id: r.value for r in results if r.id in ("v_count", "v_max")
    }
    assert [] == [r for r in results if r.id.startswith("w_")]  # started afresh, no samples


def test_an_unreadable_journal_entry_is_said_and_the_others_replayed() -> None:
    results: list[Result] = []
    first = aggregation([])
    snapshot = first.write().snapshot  # no window open
    assert snapshot is not None
    first.tap("b", "v")(6, 1_000_500)
    good = first.write().journal

    with capture_logs() as logs:
        second = aggregation(results)
        second.restore(snapshot, [b"\x00garbage", *good])
    second.close_due(10**12)

    assert ["aggregates_journal_unusable"] == [
        e["event"] for e in logs if e["log_level"] == "warning"
    ]
    assert {"v_count": 1, "v_max": 6} == {
        r.id: r.value for r in results if r.id in ("v_count", "v_max")
    }


def test_a_journal_of_many_samples_is_still_a_journal_entry() -> None:
    """Only a window's close makes a snapshot: a commit with one writes the live messages
    the broker is about to acknowledge too (agent.outbox), which a journal entry spares."""
    windows = aggregation([])
    windows.write()
    feed = windows.tap("b", "v")
    for n in range(90):  # 10 Hz for 9 s: the 10 s window open all along
        feed(n, 1_020_000 + 100 * n)
    written = windows.write()
    assert (None, 1) == (written.snapshot, len(written.journal))


def test_a_snapshot_of_version_3_is_restored() -> None:
    """Before an upgrade: a header, then each window's state() dict."""
    results: list[Result] = []
    first = aggregation([])
    first.tap("b", "v")(5, 1_000_000)
    first.tap("b", "v")(7, 1_001_000)
    window = first.tap("b", "v").__self__  # type: ignore[attr-defined]
    old = marshal.dumps({"version": 3, "order": [["b", "v"]]}) + marshal.dumps(window.state())

    second = aggregation(results)
    second.restore(old)
    second.tap("b", "v")(9, 1_002_000)
    second.close_due(10**12)

    assert {"v_count": 3, "v_max": 9, "v_min": 5, "v_avg": 7} == {r.id: r.value for r in results}


def test_a_packed_state_that_cannot_be_used_is_said_and_the_others_restored() -> None:
    points = [("b", "v", AGGREGATE), ("b", "w", AGGREGATE)]
    first = Aggregation(points, emit=lambda bucket, results: None)
    first.tap("b", "w")(1, 1_000_000)
    w = first.tap("b", "w").__self__  # type: ignore[attr-defined]
    header = marshal.dumps({"version": 4, "order": [("b", "v"), ("b", "w")]})
    broken = header + marshal.dumps((10_000, 0, 1)) + marshal.dumps(w.packed())  # v's: 3 long

    results: list[Result] = []
    with capture_logs() as logs:
        second = Aggregation(points, emit=lambda bucket, closed: results.extend(closed))
        second.restore(broken)
    second.close_due(10**12)

    assert ["aggregate_state_dropped"] == [e["event"] for e in logs if e["log_level"] == "warning"]
    assert {"w_count": 1} == {r.id: r.value for r in results if r.id.endswith("_count")}
