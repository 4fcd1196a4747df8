"""agent.sources.modbus.plan: the points of one unit coalesced into the fewest Modbus read requests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.modbus.plan import (
    Limits,
    ReadRequest,
    Refusals,
    Refused,
    Span,
    plan_reads,
    split,
)
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


# --- planning around what the unit refused ----------------------------------------------------


def test_a_request_does_not_cover_an_address_the_unit_refuses() -> None:
    # Holding 198 does not exist in the unit: 195-197 and 199 cannot be one request.
    plan = plan_reads(registers(195, 196, 197, 199), DEFAULT, [Refused(Table.HOLDING, 198, 199)])

    assert shapes(plan) == [(Table.HOLDING, 195, 3), (Table.HOLDING, 199, 1)]


def test_a_refused_address_elsewhere_does_not_keep_neighbours_apart() -> None:
    refused = [Refused(Table.HOLDING, 200, 201), Refused(Table.COIL, 98, 99)]
    points = registers(195, 196, 197, 199) + spans(Table.COIL, (97, 1), (99, 1))

    plan = plan_reads(points, DEFAULT, refused)

    # 198 is not refused: holding 195-199 in one; coil 98 is, so coils 97 and 99 take two.
    assert shapes(plan) == [(Table.COIL, 97, 1), (Table.COIL, 99, 1), (Table.HOLDING, 195, 5)]


def test_a_refused_range_only_forbids_covering_all_of_it() -> None:
    # 0-3 was refused as a whole: 0-2 and 1-3 may still be asked.
    plan = plan_reads(registers(0, 1, 2, 3), DEFAULT, [Refused(Table.HOLDING, 0, 4)])

    assert shapes(plan) == [(Table.HOLDING, 0, 3), (Table.HOLDING, 3, 1)]


def test_a_refusal_in_another_table_changes_nothing() -> None:
    plan = plan_reads(registers(0, 1, 2), DEFAULT, [Refused(Table.INPUT, 1, 2)])

    assert shapes(plan) == [(Table.HOLDING, 0, 3)]


def test_a_value_that_covers_a_refused_range_gets_a_request_of_its_own() -> None:
    # A float32 at 4-5 over the refused 5, between two registers: it is asked alone.
    points = spans(Table.HOLDING, (3, 1), (4, 2), (6, 1))

    plan = plan_reads(points, DEFAULT, [Refused(Table.HOLDING, 5, 6)])

    assert shapes(plan) == [(Table.HOLDING, 3, 1), (Table.HOLDING, 4, 2), (Table.HOLDING, 6, 1)]


REFUSED, ANSWERED = False, True


def shown(table: Table, *reads: tuple[int, int, bool]) -> Refusals:
    """What a unit showed of one table: reads (start, end, answered), in order."""
    refusals = Refusals()
    for start, end, answered in reads:
        if answered:
            refusals.answered(table, start, end)
        else:
            refusals.refused(table, start, end)
    return refusals


def test_the_refusals_of_a_split_narrow_down_to_the_hole() -> None:
    refusals = shown(Table.HOLDING, (0, 7, REFUSED), (0, 3, ANSWERED), (4, 7, ANSWERED))

    assert [Refused(Table.HOLDING, 3, 4)] == refusals.ranges()


def test_a_refusal_explained_by_a_narrower_one_is_not_kept() -> None:
    # Points 195, 196, 197, 199, 200, 201; the unit lacks 201. The split asks 195-201,
    # 195-197, 199-201, 199, 200-201, 200, 201; then 195-202 covers 201 again.
    refusals = shown(
        Table.HOLDING,
        *((195, 202, REFUSED), (195, 198, ANSWERED), (199, 202, REFUSED), (199, 200, ANSWERED)),
        *((200, 202, REFUSED), (200, 201, ANSWERED), (201, 202, REFUSED), (195, 203, REFUSED)),
    )

    assert [Refused(Table.HOLDING, 201, 202)] == refusals.ranges()


def test_a_refused_combination_of_answering_addresses_is_kept_whole() -> None:
    refusals = shown(Table.INPUT, (0, 4, ANSWERED), (2, 6, REFUSED), (4, 6, ANSWERED))

    assert [Refused(Table.INPUT, 2, 6)] == refusals.ranges()


def test_an_answer_that_covers_a_refusal_voids_it() -> None:
    refusals = Refusals()
    refusals.refused(Table.COIL, 5, 6)
    refusals.refused(Table.HOLDING, 5, 6)

    voided = refusals.answered(Table.COIL, 4, 8)
    unchanged = refusals.answered(Table.HOLDING, 6, 8)

    assert (True, False) == (voided, unchanged)
    assert [Refused(Table.HOLDING, 5, 6)] == refusals.ranges()
    assert refusals
    refusals.answered(Table.HOLDING, 5, 6)
    assert not refusals


# --- properties ------------------------------------------------------------------------------


def valid_group(group: Sequence[Span], limits: Limits, refused: Sequence[Refused] = ()) -> bool:
    """Can these spans (one table) be read by one request under `limits`, without covering
    a refused range whole?"""
    ordered = sorted(group, key=lambda s: (s.start, s.end))
    start, end = ordered[0].start, ordered[0].end
    for span in ordered[1:]:
        if span.start - end > limits.max_gap:
            return False
        end = max(end, span.end)
    if len(group) > 1 and any(r.within(ordered[0].table, start, end) for r in refused):
        return False
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


def fewest_requests(points: list[Span], limits: Limits, refused: Sequence[Refused] = ()) -> int:
    """Brute force: the smallest partition into valid groups, table by table."""
    total = 0
    for table in Table:
        of_table = [s for s in points if s.table is table]
        if of_table:
            total += min(
                len(p)
                for p in partitions(of_table)
                if all(valid_group(group, limits, refused) for group in p)
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


@st.composite
def layouts_with_holes(
    draw: st.DrawFn, max_points: int, max_address: int
) -> tuple[list[Span], Limits, list[Refused]]:
    """Points, limits, and ranges the unit refuses (a single address most often); no point
    covers a refused range (such a point is asked alone and parked: a test of its own)."""
    points, limits = draw(layouts(max_points, max_address))
    refused = [
        Refused(table, start, start + width)
        for table, start, width in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(Table),
                    st.integers(0, max_address),
                    st.sampled_from([1, 1, 1, 2, 3]),
                ),
                max_size=4,
            )
        )
    ]
    kept = [p for p in points if not any(r.within(p.table, p.start, p.end) for r in refused)]
    return kept, limits, refused


@settings(max_examples=300, deadline=None)
@given(layouts_with_holes(max_points=25, max_address=60))
def test_every_span_is_read_by_exactly_one_request_within_the_limits(
    layout: tuple[list[Span], Limits, list[Refused]],
) -> None:
    points, limits, refused = layout

    plan = plan_reads(points, limits, refused)

    planned = sorted(s.index for r in plan for s in r.spans)
    assert planned == [s.index for s in points]
    for request in plan:
        assert request.count <= limits.size_for(request.table)
        assert valid_group(request.spans, limits, refused)
        assert not any(r.within(request.table, request.start, request.end) for r in refused)
        for span in request.spans:
            assert span.table is request.table
            assert request.start <= span.start
            assert span.end <= request.end
        assert request.start == min(s.start for s in request.spans)
        assert request.end == max(s.end for s in request.spans)


@settings(max_examples=500, deadline=None)
@given(layouts_with_holes(max_points=6, max_address=16))
def test_request_count_is_the_minimum(layout: tuple[list[Span], Limits, list[Refused]]) -> None:
    """With or without ranges the unit refuses (holes, parked points)."""
    points, limits, refused = layout

    assert len(plan_reads(points, limits, refused)) == fewest_requests(points, limits, refused)


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
