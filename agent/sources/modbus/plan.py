"""Coalescing: the points of one unit merged into the fewest Modbus read requests.

Pure functions over plain data. Points of one table are sorted by address and merged
greedily while the unused registers between two neighbours stay within `max_gap`, the
request stays within the size limit and covers no range the unit is known to refuse
(`Refused`) whole; for intervals on a line, greedy is optimal, so the request count per
cycle is the minimum for that gap and those refusals.

The one record with state, `Refusals`, keeps what a unit has shown of its address map (the
reads it refused as a layout problem, the addresses it answered) and narrows it to the
ranges a plan must avoid.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
class Refused:
    """Addresses `start`..`end - 1` of `table` that the unit will not serve in one read: no
    request for two or more spans covers all of them (a lone span still gets its own)."""

    table: Table
    start: int
    end: int

    def within(self, table: Table, start: int, end: int) -> bool:
        """Does a read of `start`..`end - 1` of `table` cover all of this range?"""
        return table is self.table and start <= self.start and self.end <= end


@dataclass(frozen=True, slots=True)
class Limits:
    max_gap: int
    max_registers: int
    max_bits: int
    one_per_point: bool = False

    def size_for(self, table: Table) -> int:
        return self.max_bits if table.is_bits else self.max_registers


def plan_reads(
    spans: Sequence[Span], limits: Limits, refused: Collection[Refused] = ()
) -> list[ReadRequest]:
    """The fewest requests that read every span, in table then address order, none of two or
    more spans covering a `refused` range whole."""
    requests: list[ReadRequest] = []
    for table in Table:
        ordered = sorted((s for s in spans if s.table is table), key=lambda s: (s.start, s.end))
        avoid = [r for r in refused if r.table is table]
        requests += _merge(ordered, table, limits, avoid)
    return requests


def split(request: ReadRequest, limits: Limits) -> list[ReadRequest]:
    """Two smaller plans for a request the device refused, halving its spans.

    A request holding one span cannot be split further and is returned as it is.
    """
    if len(request.spans) < 2:
        return [request]
    middle = len(request.spans) // 2
    halves = (request.spans[:middle], request.spans[middle:])
    return [req for half in halves for req in _merge(list(half), request.table, limits, ())]


class Refusals:
    """What one unit has shown of its address map: the reads it refused as a layout problem
    (illegal address or value) and the addresses it answered, per table.

    A read that covers a refused one whole is refused too, so only the narrowest refusals
    are kept. `ranges()` narrows each further to the addresses in it not known to answer:
    a refused 0..6 whose halves 0..2 and 4..6 answered is the hole 3. A read that answers
    although it covers a kept refusal says the unit changed: the refusal is forgotten.
    """

    def __init__(self) -> None:
        self._refused: set[Refused] = set()
        self._good: dict[Table, set[int]] = {}

    def __bool__(self) -> bool:
        return bool(self._refused)

    def refused(self, table: Table, start: int, end: int) -> None:
        """A read of `start`..`end - 1` was refused as a layout problem."""
        if any(r.within(table, start, end) for r in self._refused):
            return  # explained by a narrower refusal already known
        new = Refused(table, start, end)
        self._refused = {r for r in self._refused if not new.within(r.table, r.start, r.end)}
        self._refused.add(new)

    def answered(self, table: Table, start: int, end: int) -> bool:
        """A read of `start`..`end - 1` answered; True if that made a known refusal void."""
        self._good.setdefault(table, set()).update(range(start, end))
        void = {r for r in self._refused if r.within(table, start, end)}
        self._refused -= void
        return bool(void)

    def ranges(self) -> list[Refused]:
        """The ranges a plan must not cover whole, narrowest first, none inside another."""
        narrowed = sorted(
            {self._narrowed(r) for r in self._refused}, key=lambda r: (r.end - r.start, r.start)
        )
        kept: list[Refused] = []
        for candidate in narrowed:
            if not any(r.within(candidate.table, candidate.start, candidate.end) for r in kept):
                kept.append(candidate)
        return kept

    def _narrowed(self, refused: Refused) -> Refused:
        good = self._good.get(refused.table, set())
        unknown = [a for a in range(refused.start, refused.end) if a not in good]
        if not unknown:  # all of it answered before: the unit refuses the combination
            return refused
        return Refused(refused.table, unknown[0], unknown[-1] + 1)


_NO_STOP = 1 << 32  # beyond every Modbus address


def _merge(
    ordered: list[Span], table: Table, limits: Limits, refused: Sequence[Refused]
) -> list[ReadRequest]:
    if limits.one_per_point:
        return [ReadRequest(table, s.start, s.width, (s,)) for s in ordered]
    size = limits.size_for(table)
    requests: list[ReadRequest] = []
    group: list[Span] = []
    start = end = stop = 0  # from `start`, a request ending at `stop` covers a refused range
    for span in ordered:
        reach = max(end, span.end)
        if group and span.start - end <= limits.max_gap and reach - start <= size and reach < stop:
            group.append(span)
            end = reach
            continue
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
        # A value wider than the configured request size, or covering a refused range, still
        # gets a request of its own.
        group, start, end = [span], span.start, span.end
        stop = min((r.end for r in refused if r.start >= start), default=_NO_STOP)
    if group:
        requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests
