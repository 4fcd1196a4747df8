"""A register bus in memory: the pollers' and the configurator's Modbus side."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from agent.errors import DeviceRefused, DeviceTimeout
from agent.sources.modbus.meter import LineMeter
from agent.sources.modbus.points import Table

READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
WRITE_COIL = 5
WRITE_REGISTER = 6
WRITE_REGISTERS = 16


@dataclass(frozen=True, slots=True)
class BusRequest:
    """One request as the unit saw it; `at` (the loop's time) does not take part in ==."""

    unit: int
    function: int
    address: int
    count: int
    values: tuple[int | bool, ...] | None = None  # what a write carried
    at: float = field(default=0.0, compare=False)


@dataclass(slots=True)
class _Fault:
    unit: int
    table: Table | None  # None: every table
    addresses: range | None  # None: every address
    code: int | None  # a Modbus exception code; None: no answer at all
    functions: frozenset[int] | None  # None: every function
    times: int | None = None  # requests it still answers; None: until cleared

    def matches(self, unit: int, table: Table, function: int, start: int, count: int) -> bool:
        if unit != self.unit or (self.table is not None and table is not self.table):
            return False
        if self.functions is not None and function not in self.functions:
            return False
        if self.addresses is None:
            return True
        return start < self.addresses.stop and self.addresses.start < start + count


class FakeRegisterBus:
    """Modbus units in memory: a register bus for pollers and the configurator.

    Every table of every unit reads 0 until set. Values are stored as given, so a test
    can hand the core what a misbehaving adapter would (a register above 65535).
    A unit that is made silent (`time_out`) waits `timeout` seconds of the loop's time
    and raises DeviceTimeout; a refused range (`refuse`) raises DeviceRefused for any
    request that touches it, as a device does, or for the next `times` of them only (a
    unit busy twice, then answering). Time-outs are checked before refusals.
    """

    def __init__(self, *, name: str = "fake", latency: float = 0.0, timeout: float = 0.0) -> None:
        self.name = name
        self.endpoint = f"memory:{name}"  # as the agent's state shows a connection
        self.connected = True
        self.meter = LineMeter(0.0)  # nothing recorded: the state shows no load
        self.latency = latency  # seconds each answered request takes (the loop's time)
        self.timeout = timeout  # seconds before a silent unit's DeviceTimeout
        self.requests: list[BusRequest] = []
        self.cycles_ended = 0
        self._tables: dict[tuple[int, Table], dict[int, int]] = {}
        self._faults: list[_Fault] = []
        self._changed = asyncio.Event()

    # -- what the test sets up ----------------------------------------------------------

    def set_registers(self, unit: int, table: Table, start: int, values: Sequence[int]) -> None:
        cells = self._tables.setdefault((unit, table), {})
        for offset, value in enumerate(values):
            cells[start + offset] = value

    def set_bits(self, unit: int, table: Table, start: int, values: Sequence[bool]) -> None:
        self.set_registers(unit, table, start, [int(bool(v)) for v in values])

    def refuse(
        self,
        unit: int,
        table: Table | None = None,
        addresses: range | None = None,
        *,
        code: int = DeviceRefused.ILLEGAL_DATA_ADDRESS,
        functions: Collection[int] | None = None,
        times: int | None = None,
    ) -> None:
        """Answer requests that touch `addresses` of `table` with exception `code`: every
        one, or the next `times` of them."""
        only = None if functions is None else frozenset(functions)
        self._faults.append(_Fault(unit, table, addresses, code, only, times))

    def time_out(
        self, unit: int, table: Table | None = None, addresses: range | None = None
    ) -> None:
        """Leave requests that touch `addresses` of `table` (default: all) unanswered."""
        self._faults.append(_Fault(unit, table, addresses, None, None))

    def clear_faults(self, unit: int | None = None) -> None:
        """The unit (default: every unit) answers everything again."""
        self._faults = [f for f in self._faults if unit is not None and f.unit != unit]

    # -- what the test looks at ---------------------------------------------------------

    def registers(self, unit: int, table: Table, start: int, count: int) -> list[int]:
        cells = self._tables.get((unit, table), {})
        return [cells.get(address, 0) for address in range(start, start + count)]

    def calls(self, unit: int | None = None) -> list[tuple[int, int, int]]:
        """(function, address, count) of every request, or of one unit's."""
        return [
            (r.function, r.address, r.count)
            for r in self.requests
            if unit is None or r.unit == unit
        ]

    async def wait_requests(self, count: int) -> None:
        """Until at least `count` requests have been made."""
        while len(self.requests) < count:
            self._changed.clear()
            await self._changed.wait()

    # -- the port -----------------------------------------------------------------------

    async def read(self, unit: int, table: Table, start: int, count: int) -> list[int] | list[bool]:
        await self._request(unit, table, READ_FUNCTION[table], start, count)
        values = self.registers(unit, table, start, count)
        if table.is_bits:
            return [bool(v) for v in values]
        return values

    async def write_registers(self, unit: int, start: int, values: Sequence[int]) -> None:
        function = WRITE_REGISTER if len(values) == 1 else WRITE_REGISTERS
        await self._request(unit, Table.HOLDING, function, start, len(values), tuple(values))
        self.set_registers(unit, Table.HOLDING, start, values)

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        await self._request(unit, Table.COIL, WRITE_COIL, address, 1, (value,))
        self.set_bits(unit, Table.COIL, address, [value])

    async def end_cycle(self) -> None:
        self.cycles_ended += 1

    async def _request(
        self,
        unit: int,
        table: Table,
        function: int,
        start: int,
        count: int,
        values: tuple[int | bool, ...] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.requests.append(BusRequest(unit, function, start, count, values, at=loop.time()))
        self._changed.set()
        fault = next(
            (
                f
                for f in self._faults
                if f.code is None and f.matches(unit, table, function, start, count)
            ),
            None,
        )
        if fault is not None:
            await asyncio.sleep(self.timeout)
            raise DeviceTimeout(
                f"unit {unit} did not answer function {function} at {start}",
                connection=self.name,
                unit=unit,
            )
        if self.latency:
            await asyncio.sleep(self.latency)
        for fault in self._faults:
            if fault.code is not None and fault.matches(unit, table, function, start, count):
                if fault.times is not None:
                    fault.times -= 1
                    if not fault.times:
                        self._faults.remove(fault)
                raise DeviceRefused(
                    fault.code,
                    connection=self.name,
                    unit=unit,
                    function=function,
                    address=start,
                    count=count,
                )
