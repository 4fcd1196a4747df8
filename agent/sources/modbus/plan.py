"""Coalescing: the points of one unit merged into the fewest Modbus read requests.

Pure functions over plain data. Points of one table are sorted by address and merged
greedily while the unused registers between two neighbours stay within `max_gap` and the
request stays within the size limit; for intervals on a line, greedy is optimal, so the
request count per cycle is the minimum for that gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.sources.modbus.points import Table


@dataclass(frozen=True, slots=True)
class Span:
    """One value to read: `width` registers (or bits) from `start` in `table`."""

    table: Table
    start: int
    width: int
    index: int  # position of the point in the device's list; the reader maps back with it

    @property
    def end(self) -> int:
        return self.start + self.width


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read covering several spans."""

    table: Table
    start: int
    count: int
    spans: tuple[Span, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class Limits:
    max_gap: int
    max_registers: int
    max_bits: int
    one_per_point: bool = False

    def size_for(self, table: Table) -> int:
        return self.max_bits if table.is_bits else self.max_registers


def plan_reads(spans: Sequence[Span], limits: Limits) -> list[ReadRequest]:
    """The fewest requests that read every span, in table then address order."""
    requests: list[ReadRequest] = []
    for table in Table:
        ordered = sorted((s for s in spans if s.table is table), key=lambda s: (s.start, s.end))
        requests += _merge(ordered, table, limits)
    return requests


def split(request: ReadRequest, limits: Limits) -> list[ReadRequest]:
    """Two smaller plans for a request the device refused, halving its spans.

    A request holding one span cannot be split further and is returned as it is.
    """
    if len(request.spans) < 2:
        return [request]
    middle = len(request.spans) // 2
    halves = (request.spans[:middle], request.spans[middle:])
    return [req for half in halves for req in _merge(list(half), request.table, limits)]


def _merge(ordered: list[Span], table: Table, limits: Limits) -> list[ReadRequest]:
    if limits.one_per_point:
        return [ReadRequest(table, s.start, s.width, (s,)) for s in ordered]
    size = limits.size_for(table)
    requests: list[ReadRequest] = []
    group: list[Span] = []
    start = end = 0
    for span in ordered:
        if group and span.start - end <= limits.max_gap and max(end, span.end) - start <= size:
            group.append(span)
            end = max(end, span.end)
            continue
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
        # A value wider than the configured request size still gets a request of its own.
        group, start, end = [span], span.start, span.end
    if group:
        requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests
