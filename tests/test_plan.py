"""agent.sources.modbus.plan: the points of one unit coalesced into the fewest Modbus read requests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.modbus.plan import Limits, ReadRequest, Span, plan_reads, split
from agent.sources.modbus.points import MAX_READ_BITS, MAX_READ_REGISTERS, Table

DEFAULT = Limits(max_gap=8, max_registers=MAX_READ_REGISTERS, max_bits=MAX_READ_BITS)

Shape = tuple[Table, int, int]  # (table, start, count) of one request


def spans(table: Table, *starts_and_widths: tuple[int, int]) -> list[Span]:
    return [
        Span(table, start, width, index) for index, (start, width) in enumerate(starts_and_widths)
    ]


def shapes(requests: Sequence[ReadRequest]) -> list[Shape]:
    return [(r.table, r.start, r.count) for r in requests]


def registers(*starts: int, width: int = 1) -> list[Span]:
    return spans(Table.HOLDING, *((start, width) for start in starts))


# --- adjacency and gaps ----------------------------------------------------------------------


def test_adjacent_registers_are_read_in_one_request() -> None:
    plan = plan_reads(spans(Table.INPUT, (0, 2), (2, 1), (3, 4)), DEFAULT)

    assert shapes(plan) == [(Table.INPUT, 0, 7)]
    assert [s.index for s in plan[0].spans] == [0, 1, 2]


def test_gap_equal_to_max_gap_is_bridged() -> None:
    plan = plan_reads(registers(0, 9), DEFAULT)  # 8 unused registers: 1..8

    assert shapes(plan) == [(Table.HOLDING, 0, 10)]


def test_gap_beyond_max_gap_starts_a_new_request() -> None:
    plan = plan_reads(registers(0, 10), DEFAULT)  # 9 unused registers: 1..9

    assert shapes(plan) == [(Table.HOLDING, 0, 1), (Table.HOLDING, 10, 1)]


def test_max_gap_zero_merges_only_touching_values() -> None:
    limits = Limits(max_gap=0, max_registers=125, max_bits=2000)

    plan = plan_reads(registers(0, 1, 3, 4, 5), limits)

    assert shapes(plan) == [(Table.HOLDING, 0, 2), (Table.HOLDING, 3, 3)]


def test_gaps_are_measured_from_the_end_of_a_wide_value() -> None:
    plan = plan_reads(spans(Table.HOLDING, (0, 4), (12, 1), (22, 1)), DEFAULT)

    # float64 at 0..3, gap 4..11 (8 registers), then 13..21 (9 registers).
    assert shapes(plan) == [(Table.HOLDING, 0, 13), (Table.HOLDING, 22, 1)]


def test_points_listed_out_of_order_are_planned_in_address_order() -> None:
    points = spans(Table.HOLDING, (40, 1), (0, 1), (20, 2), (2, 1))

    plan = plan_reads(points, DEFAULT)

    assert shapes(plan) == [(Table.HOLDING, 0, 3), (Table.HOLDING, 20, 2), (Table.HOLDING, 40, 1)]
    assert [[s.index for s in r.spans] for r in plan] == [[1, 3], [2], [0]]


# --- protocol limits -------------------------------------------------------------------------


def test_125_contiguous_registers_fit_one_request() -> None:
    plan = plan_reads(registers(*range(125)), DEFAULT)

    assert shapes(plan) == [(Table.HOLDING, 0, 125)]


def test_126_contiguous_registers_need_two_requests() -> None:
    plan = plan_reads(registers(*range(126)), DEFAULT)

    assert shapes(plan) == [(Table.HOLDING, 0, 125), (Table.HOLDING, 125, 1)]


def test_a_value_is_never_cut_at_the_register_limit() -> None:
    plan = plan_reads(registers(*range(0, 126, 2), width=2), DEFAULT)  # 63 float32s

    assert shapes(plan) == [(Table.HOLDING, 0, 124), (Table.HOLDING, 124, 2)]


def test_register_limit_counts_the_gaps_too() -> None:
    limits = Limits(max_gap=124, max_registers=125, max_bits=2000)

    plan = plan_reads(registers(0, 124, 125), limits)

    assert shapes(plan) == [(Table.HOLDING, 0, 125), (Table.HOLDING, 125, 1)]


def test_2000_contiguous_coils_fit_one_request() -> None:
    plan = plan_reads(spans(Table.COIL, *((n, 1) for n in range(2000))), DEFAULT)

    assert shapes(plan) == [(Table.COIL, 0, 2000)]


def test_2001_contiguous_discrete_inputs_need_two_requests() -> None:
    plan = plan_reads(spans(Table.DISCRETE, *((n, 1) for n in range(2001))), DEFAULT)

    assert shapes(plan) == [(Table.DISCRETE, 0, 2000), (Table.DISCRETE, 2000, 1)]


def test_max_gap_applies_to_bit_tables_too() -> None:
    plan = plan_reads(spans(Table.COIL, (0, 1), (9, 1), (19, 1)), DEFAULT)

    assert shapes(plan) == [(Table.COIL, 0, 10), (Table.COIL, 19, 1)]


def test_bit_tables_are_not_held_to_the_register_limit() -> None:
    plan = plan_reads(spans(Table.COIL, *((n, 1) for n in range(200))), DEFAULT)

    assert shapes(plan) == [(Table.COIL, 0, 200)]


def test_configured_smaller_request_size_is_respected() -> None:
    limits = Limits(max_gap=8, max_registers=10, max_bits=16)

    plan = plan_reads(
        registers(*range(25)) + spans(Table.COIL, *((n, 1) for n in range(20))), limits
    )

    assert shapes(plan) == [
        (Table.COIL, 0, 16),
        (Table.COIL, 16, 4),
        (Table.HOLDING, 0, 10),
        (Table.HOLDING, 10, 10),
        (Table.HOLDING, 20, 5),
    ]


def test_value_wider_than_the_request_size_gets_a_request_of_its_own() -> None:
    limits = Limits(max_gap=8, max_registers=2, max_bits=2000)

    plan = plan_reads(spans(Table.HOLDING, (0, 1), (1, 4), (5, 1)), limits)

    assert shapes(plan) == [(Table.HOLDING, 0, 1), (Table.HOLDING, 1, 4), (Table.HOLDING, 5, 1)]


# --- overlaps, tables, one per point ---------------------------------------------------------


def test_overlapping_and_identical_spans_share_one_request() -> None:
    # A uint32 at 10, a uint16 read of its low word, a second point on the same register
    # and a uint16 inside a float64.
    points = spans(Table.HOLDING, (10, 2), (11, 1), (11, 1), (20, 4), (21, 1))

    plan = plan_reads(points, DEFAULT)

    assert shapes(plan) == [(Table.HOLDING, 10, 14)]
    assert sorted(s.index for s in plan[0].spans) == [0, 1, 2, 3, 4]


def test_a_span_inside_a_wider_one_does_not_shorten_the_request() -> None:
    plan = plan_reads(spans(Table.HOLDING, (0, 4), (1, 1)), DEFAULT)

    assert shapes(plan) == [(Table.HOLDING, 0, 4)]


def test_tables_are_never_mixed_and_come_in_table_order() -> None:
    points = [
        Span(Table.HOLDING, 0, 1, 0),
        Span(Table.INPUT, 0, 2, 1),
        Span(Table.COIL, 8, 1, 2),
        Span(Table.DISCRETE, 0, 1, 3),
        Span(Table.HOLDING, 1, 1, 4),
        Span(Table.COIL, 0, 1, 5),
    ]

    plan = plan_reads(points, DEFAULT)

    assert shapes(plan) == [
        (Table.COIL, 0, 9),
        (Table.DISCRETE, 0, 1),
        (Table.INPUT, 0, 2),
        (Table.HOLDING, 0, 2),
    ]


def test_one_per_point_reads_every_point_alone() -> None:
    limits = Limits(max_gap=8, max_registers=125, max_bits=2000, one_per_point=True)

    plan = plan_reads(spans(Table.HOLDING, (5, 2), (0, 1), (1, 1)), limits)

    assert shapes(plan) == [(Table.HOLDING, 0, 1), (Table.HOLDING, 1, 1), (Table.HOLDING, 5, 2)]


def test_no_points_no_requests() -> None:
    assert plan_reads([], DEFAULT) == []


# --- splitting a refused request ------------------------------------------------------------


def test_split_halves_the_spans_of_a_refused_request() -> None:
    [request] = plan_reads(registers(0, 1, 2, 3, 4), DEFAULT)

    halves = split(request, DEFAULT)

    assert shapes(halves) == [(Table.HOLDING, 0, 2), (Table.HOLDING, 2, 3)]
    assert [[s.index for s in r.spans] for r in halves] == [[0, 1], [2, 3, 4]]


def test_split_drops_the_gap_between_the_halves() -> None:
    [request] = plan_reads(spans(Table.INPUT, (0, 2), (8, 2)), DEFAULT)

    assert shapes(split(request, DEFAULT)) == [(Table.INPUT, 0, 2), (Table.INPUT, 8, 2)]


def test_split_down_to_single_points() -> None:
    [request] = plan_reads(registers(0, 1, 2, 3), DEFAULT)

    pieces = [piece for half in split(request, DEFAULT) for piece in split(half, DEFAULT)]

    assert shapes(pieces) == [(Table.HOLDING, n, 1) for n in range(4)]


def test_a_single_point_request_cannot_be_split() -> None:
    [request] = plan_reads(registers(7, width=2), DEFAULT)

    assert split(request, DEFAULT) == [request]


# --- properties ------------------------------------------------------------------------------


def valid_group(group: Sequence[Span], limits: Limits) -> bool:
    """Can these spans (one table) be read by one request under `limits`?"""
    ordered = sorted(group, key=lambda s: (s.start, s.end))
    start, end = ordered[0].start, ordered[0].end
    for span in ordered[1:]:
        if span.start - end > limits.max_gap:
            return False
        end = max(end, span.end)
    return end - start <= limits.size_for(ordered[0].table)


def partitions(items: list[Span]) -> Iterator[list[list[Span]]]:
    """Every way to cut `items` into non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in partitions(rest):
        yield [[first], *partition]
        for n, group in enumerate(partition):
            yield [*partition[:n], [first, *group], *partition[n + 1 :]]


def fewest_requests(points: list[Span], limits: Limits) -> int:
    """Brute force: the smallest partition into valid groups, table by table."""
    total = 0
    for table in Table:
        of_table = [s for s in points if s.table is table]
        if of_table:
            total += min(
                len(p)
                for p in partitions(of_table)
                if all(valid_group(group, limits) for group in p)
            )
    return total


@st.composite
def layouts(draw: st.DrawFn, max_points: int, max_address: int) -> tuple[list[Span], Limits]:
    """Points of one unit and its limits; no value wider than a request."""
    limits = Limits(
        max_gap=draw(st.integers(0, 6)),
        max_registers=draw(st.integers(4, 12)),
        max_bits=draw(st.integers(1, 12)),
    )
    count = draw(st.integers(0, max_points))
    points = []
    for index in range(count):
        table = draw(st.sampled_from(Table))
        width = 1 if table.is_bits else draw(st.integers(1, 4))
        points.append(Span(table, draw(st.integers(0, max_address)), width, index))
    return points, limits


@settings(max_examples=300, deadline=None)
@given(layouts(max_points=25, max_address=60))
def test_every_span_is_read_by_exactly_one_request_within_the_limits(
    layout: tuple[list[Span], Limits],
) -> None:
    points, limits = layout

    plan = plan_reads(points, limits)

    planned = sorted(s.index for r in plan for s in r.spans)
    assert planned == [s.index for s in points]
    for request in plan:
        assert request.count <= limits.size_for(request.table)
        assert valid_group(request.spans, limits)
        for span in request.spans:
            assert span.table is request.table
            assert request.start <= span.start
            assert span.end <= request.end
        assert request.start == min(s.start for s in request.spans)
        assert request.end == max(s.end for s in request.spans)


@settings(max_examples=300, deadline=None)
@given(layouts(max_points=6, max_address=16))
def test_request_count_is_the_minimum(layout: tuple[list[Span], Limits]) -> None:
    points, limits = layout

    assert len(plan_reads(points, limits)) == fewest_requests(points, limits)


@settings(max_examples=200, deadline=None)
@given(layouts(max_points=12, max_address=30))
def test_split_keeps_every_span_within_the_refused_request(
    layout: tuple[list[Span], Limits],
) -> None:
    points, limits = layout

    for request in plan_reads(points, limits):
        pieces = split(request, limits)
        assert sorted(s.index for p in pieces for s in p.spans) == sorted(
            s.index for s in request.spans
        )
        if len(request.spans) == 1:
            assert pieces == [request]
        else:
            assert len(pieces) >= 2
        for piece in pieces:
            assert piece.table is request.table
            assert request.start <= piece.start
            assert piece.end <= request.end
