"""agent.pipeline.aggregation: the windows kept as a snapshot and a journal of samples,
restored to exactly where they were."""

from __future__ import annotations

import json
import marshal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.config.model import Aggregate
from agent.outbox.rows import StateWrite
from agent.pipeline.aggregates import Result
from agent.pipeline.aggregation import Aggregation
from tests.test_aggregates import OracleWindow, check_avg, check_sum

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


def decoded(parts: list[bytes]) -> list[Result]:
    """An emit's readings, as the results they are."""
    readings = [json.loads(part) for part in parts]
    return [Result(r["id"], r["value"], int(r["timestamp"])) for r in readings]


def aggregation(into: list[Result]) -> Aggregation:
    return Aggregation(
        [("b", "v", AGGREGATE)], emit=lambda bucket, parts: into.extend(decoded(parts))
    )


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
        emit=lambda bucket, parts: results.extend(decoded(parts)),
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
        return Aggregation(points, emit=lambda bucket, parts: into.extend(decoded(parts)))

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
    window = first._windows[("b", "v")]
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
    w = first._windows[("b", "w")]
    header = marshal.dumps({"version": 4, "order": [("b", "v"), ("b", "w")]})
    broken = header + marshal.dumps((10_000, 0, 1)) + marshal.dumps(w.packed())  # v's: 3 long

    results: list[Result] = []
    with capture_logs() as logs:
        second = Aggregation(points, emit=lambda bucket, parts: results.extend(decoded(parts)))
        second.restore(broken)
    second.close_due(10**12)

    assert ["aggregate_state_dropped"] == [e["event"] for e in logs if e["log_level"] == "warning"]
    assert {"w_count": 1} == {r.id: r.value for r in results if r.id.endswith("_count")}


# -- rows: a read's values together ------------------------------------------------------------

EVERY = Aggregate(10, ("avg", "min", "max", "sum", "count", "first", "last", "integral"))
ROW_POINTS = ("a", "b", "c")


def row_aggregation(into: list[Result]) -> Aggregation:
    return Aggregation(
        [("b", point, EVERY) for point in ROW_POINTS],
        emit=lambda bucket, parts: into.extend(decoded(parts)),
    )


# A row: its timestamp step (back in time, sometimes: late), its values, and whether it
# comes point by point instead (a read with a NaN: None for that point's value).
rows_strategy = st.lists(
    st.tuples(
        st.integers(-1_000, 3_000) | st.sampled_from([0, 10_000, 25_000]),
        st.tuples(*(st.integers(-(2**40), 2**40) for _ in ROW_POINTS)),
        st.sampled_from(["row", "row", "row", "points", "nan"]),
    ),
    min_size=1,
    max_size=120,
)


def stamped(
    steps: list[tuple[int, tuple[int, ...], str]],
) -> list[tuple[int, tuple[int, ...], str]]:
    stamp = 1_000_000
    out = []
    for step, values, how in steps:
        stamp += step
        out.append((stamp, values, how))
    return out


def give(windows: Aggregation, row: tuple[int, tuple[int, ...], str]) -> None:
    stamp, values, how = row
    if how == "row":
        tap = windows.rows("b", ROW_POINTS, "q")
        assert tap is not None
        tap(values, stamp)
        return
    for n, (point, value) in enumerate(zip(ROW_POINTS, values, strict=True)):
        windows.tap("b", point)(None if how == "nan" and n == 1 else value, stamp)


def reference(rows: list[tuple[int, tuple[int, ...], str]]) -> list[Result]:
    """The same values, every one through its point's own tap."""
    results: list[Result] = []
    windows = row_aggregation(results)
    for row in rows:
        stamp, values, how = row
        give(windows, (stamp, values, "points" if how == "row" else how))
        windows.close_due(stamp - 5_000)  # the timer, late
    windows.close_due(10**12)
    return results


@settings(max_examples=150, deadline=None)
@given(rows_strategy.map(stamped), st.data())
def test_rows_give_what_every_value_through_its_tap_gives_restarted_anywhere(
    rows: list[tuple[int, tuple[int, ...], str]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(rows)))
    commits = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    before: list[Result] = []
    first = row_aggregation(before)
    kept = Kept()
    for n, row in enumerate(rows[:cut]):
        give(first, row)
        first.close_due(row[0] - 5_000)
        if commits[n] or n == cut - 1:
            kept.commit(first.write())
    after: list[Result] = []
    second = row_aggregation(after)
    if kept.snapshot is not None:
        second.restore(kept.snapshot, kept.journal)
    for row in rows[cut:]:
        give(second, row)
        second.close_due(row[0] - 5_000)
    second.close_due(10**12)

    assert reference(rows) == before + after  # ints: to the last digit, integral included


floats = st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3_000), st.tuples(floats, floats)), min_size=1, max_size=150)
)
def test_rows_of_floats_sum_as_closely_as_one_sample_at_a_time(
    steps: list[tuple[int, tuple[float, float]]],
) -> None:
    results: list[Result] = []
    windows = Aggregation(
        [("b", point, Aggregate(10, ("avg", "sum", "min", "max", "count"))) for point in "xy"],
        emit=lambda bucket, parts: results.extend(decoded(parts)),
    )
    tap = windows.rows("b", ("x", "y"), "d")
    assert tap is not None
    stamp, taken = 1_000_000, []
    for step, values in steps:
        stamp += step
        tap(values, stamp)
        taken.append((stamp, values))
    windows.close_due(10**12)

    published = {(r.id, r.timestamp_ms): r.value for r in results}
    for column, point in enumerate("xy"):
        for end in sorted({(s // 10_000 + 1) * 10_000 for s, _ in taken}):
            samples = [v[column] for s, v in taken if (s // 10_000 + 1) * 10_000 == end]
            window = OracleWindow(end, list(samples), Fraction(0), 0.0, 10.0)
            check_sum(published[(f"{point}_sum", end)], window)
            check_avg(published[(f"{point}_avg", end)], window)
            assert (min(samples), max(samples), len(samples)) == (
                published[(f"{point}_min", end)],
                published[(f"{point}_max", end)],
                published[(f"{point}_count", end)],
            )


def test_rows_are_journalled_as_one_entry_of_their_bytes_and_replayed() -> None:
    first = row_aggregation([])
    first.write()  # the first: a snapshot
    tap = first.rows("b", ROW_POINTS, "q")
    assert tap is not None
    for n in range(5):
        tap((n, 10 * n, 100 * n), 1_000_000 + 1_000 * n)
    written = first.write()
    opened, entry = marshal.loads(written.journal[0])
    # The first row opened each window: an entry of its own, of the same shape; then the
    # four held in the arrays (indexes 0, 1, 2: the first alone; a timestamp 8 bytes).
    assert [(0, "q", 1), (0, "q", 4)] == [(e[0], e[1], len(e[2]) // 8) for e in (opened, entry)]
    assert written.snapshot is None

    results: list[Result] = []
    second = row_aggregation(results)
    snapshot = Kept()
    snapshot.commit(StateWrite(snapshot=row_aggregation([]).snapshot()))
    assert snapshot.snapshot is not None
    second.restore(snapshot.snapshot, written.journal)
    second.close_due(10**12)
    assert {"a_count": 5, "b_sum": 100, "c_max": 400} == {
        r.id: r.value for r in results if r.id in ("a_count", "b_sum", "c_max")
    }


def restored_rows(kept: Kept) -> list[Result]:
    """What a row aggregation restored from `kept` publishes, every window closed."""
    results: list[Result] = []
    second = row_aggregation(results)
    assert kept.snapshot is not None
    second.restore(kept.snapshot, kept.journal)
    second.close_due(10**12)
    return results


def test_a_row_journalled_at_one_commit_is_not_journalled_again_at_the_next() -> None:
    first = row_aggregation([])
    kept = Kept()
    kept.commit(first.write())
    tap = first.rows("b", ROW_POINTS, "q")
    assert tap is not None
    for n in range(3):  # the first opens the windows; the others are held as rows
        tap((n, n, n), 1_000_000 + 1_000 * n)
        kept.commit(first.write())
    results = restored_rows(kept)

    assert {"a_count": 3, "a_sum": 3} == {
        r.id: r.value for r in results if r.id in ("a_count", "a_sum")
    }


def test_rows_are_refused_for_points_not_all_aggregated_alike() -> None:
    windows = Aggregation(
        [
            ("b", "ten", AGGREGATE),
            ("b", "other", AGGREGATE),
            ("b", "sixty", Aggregate(60, ("avg",))),
        ],
        emit=lambda bucket, results: None,
    )
    assert windows.rows("b", ("ten", "other"), "f") is not None
    assert windows.rows("b", ("ten", "sixty"), "f") is None  # two widths
    assert windows.rows("b", ("ten", "plain"), "f") is None  # "plain" has no aggregate
    assert windows.rows("b", ("ten",), "Q") is None  # uint64: no array holds it all


def test_rows_of_points_out_of_order_name_each_one_in_the_journal() -> None:
    first = row_aggregation([])
    kept = Kept()
    kept.commit(first.write())
    tap = first.rows("b", ("c", "a"), "d")
    assert tap is not None
    tap((1.5, 2.5), 1_000_000)  # opens both windows
    tap((3.5, 4.5), 1_001_000)  # held as a row
    kept.commit(first.write())
    assert (2, 0) == marshal.loads(kept.journal[-1])[-1][0]
    results = restored_rows(kept)

    assert {"c_sum": 5.0, "a_sum": 7.0} == {
        r.id: r.value for r in results if r.id in ("a_sum", "c_sum")
    }


def test_rows_made_before_a_restore_are_made_anew_for_the_restored_windows() -> None:
    first = row_aggregation([])
    tap = first.rows("b", ROW_POINTS, "q")
    assert tap is not None
    tap((1, 1, 1), 1_000_000)
    tap((2, 2, 2), 1_001_000)
    snapshot = first.snapshot()
    results: list[Result] = []
    second = row_aggregation(results)
    stale = second.rows("b", ROW_POINTS, "q")
    second.restore(snapshot)
    fresh = second.rows("b", ROW_POINTS, "q")
    assert fresh is not None
    assert fresh != stale
    fresh((3, 3, 3), 1_002_000)
    second.close_due(10**12)

    assert {"a_count": 3, "a_sum": 6} == {
        r.id: r.value for r in results if r.id in ("a_count", "a_sum")
    }


def test_rows_after_a_snapshot_are_still_kept_as_rows() -> None:
    windows = row_aggregation([])
    kept = Kept()
    tap = windows.rows("b", ROW_POINTS, "q")
    assert tap is not None
    tap((1, 2, 3), 1_000_000)  # opens the windows (value by value)
    tap((4, 5, 6), 1_001_000)  # a row
    kept.commit(windows.write(whole=True))  # the snapshot folds the row in
    tap((7, 8, 9), 1_002_000)

    write = windows.write()
    entries = marshal.loads(write.journal[0])
    kept.commit(write)

    assert [4] == [len(entry) for entry in entries]  # one row, not three samples
    results = restored_rows(kept)
    assert {"a_count": 3, "a_sum": 12} == {
        r.id: r.value for r in results if r.id in ("a_count", "a_sum")
    }


def test_results_are_the_readings_of_their_ids_as_json_writes_them() -> None:
    emitted: list[tuple[str, bytes]] = []
    quoted = 'm\u00e9ter "1"\\'  # an id JSON escapes: a quote, a backslash, non-ASCII
    windows = Aggregation(
        [
            ("b", quoted, Aggregate(10, ("avg", "count", "max"), (("max", "peak \u00b5"),))),
            ("b", "plain", Aggregate(10, ("sum",))),
        ],
        emit=lambda bucket, parts: emitted.extend((bucket, part) for part in parts),
    )
    windows.tap("b", quoted)(2.5, 1_000)
    windows.tap("b", quoted)(3, 2_000)
    windows.tap("b", "plain")(7, 3_000)

    windows.close_due(10_000)

    assert [
        ("b", {"id": f"{quoted}_avg", "value": 2.75, "timestamp": "10000"}),
        ("b", {"id": f"{quoted}_count", "value": 2, "timestamp": "10000"}),
        ("b", {"id": "peak \u00b5", "value": 3, "timestamp": "10000"}),
        ("b", {"id": "plain_sum", "value": 7, "timestamp": "10000"}),
    ] == [(bucket, json.loads(part)) for bucket, part in emitted]
