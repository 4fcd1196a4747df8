"""In-memory fakes of the agent's ports, for unit tests of the core.

Each fake satisfies the port it stands in for (checked by mypy, see `_conformance` at
the end) and does no more than a test needs to say what happened:

- `FakeRegisterBus`: the register bus of the pollers
  (`agent.sources.modbus.poller.RegisterBus`) and of the configurator
  (`agent.cloud.configurator.Bus`). Tables per unit, zeroed until set; a unit can refuse
  chosen address ranges with a Modbus exception code or not answer at all; every request
  is recorded as (unit, function, address, count).
- `FakePublisher`: the MQTT side of delivery (`agent.cloud.delivery.Publisher`). A connected
  flag with an event; `publish` records the message and returns a future that the test
  resolves (`ack`, the PUBACK) or fails (`fail`, `disconnect`).
- `FakeSerialLine`: a serial port as `agent.sources.serial.instrument` uses one
  (`SerialLine` below). The test is the instrument: `feed` is what it says, `written`
  what it was told.
- `FakeTunable`, `FakeDelays`, `FakeLogLevel`: what the configurator may change in the
  agent itself (`agent.cloud.configurator.Tunable`, `Delays`, `LogLevel`).
- `captured_logs`: structlog's events, whatever an earlier `configure` left behind.
- `VirtualTimeLoop`: an event loop whose clock moves only when every task waits for a
  timer, and then straight to the next one: schedules and time-outs run in no time
  and always the same way (`run_in_virtual_time`).

Nothing here imports a protocol library, and production code never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import (
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
from structlog.testing import capture_logs

from agent.errors import DeviceRefused, DeviceTimeout, DeviceUnreachable, TransientError
from agent.sources.modbus.points import Table

if TYPE_CHECKING:
    from agent.config.schema import SerialConfig

T = TypeVar("T")

READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
WRITE_COIL = 5
WRITE_REGISTER = 6
WRITE_REGISTERS = 16


# -- the register bus ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusRequest:
    """One request as the unit saw it; `at` (the loop's time) does not take part in ==."""

    unit: int
    function: int
    address: int
    count: int
    values: tuple[int | bool, ...] | None = None  # what a write carried
    at: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class _Fault:
    unit: int
    table: Table | None  # None: every table
    addresses: range | None  # None: every address
    code: int | None  # a Modbus exception code; None: no answer at all
    functions: frozenset[int] | None  # None: every function

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
    request that touches it, as a device does. Time-outs are checked before refusals.
    """

    def __init__(self, *, name: str = "fake", latency: float = 0.0, timeout: float = 0.0) -> None:
        self.name = name
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
    ) -> None:
        """Answer requests that touch `addresses` of `table` with exception `code`."""
        self._faults.append(
            _Fault(
                unit, table, addresses, code, None if functions is None else frozenset(functions)
            )
        )

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
                raise DeviceRefused(
                    fault.code,
                    connection=self.name,
                    unit=unit,
                    function=function,
                    address=start,
                    count=count,
                )


# -- the publisher ------------------------------------------------------------------------


class PublisherOffline(TransientError):
    """`publish` while not connected (what the MQTT adapter raises as NotConnected)."""


class PublishLost(TransientError):
    """The connection dropped before the PUBACK (the adapter's ConnectionLost)."""


@dataclass(slots=True)
class Published:
    topic: str
    payload: bytes
    retain: bool
    future: asyncio.Future[None] = field(repr=False, compare=False)


class FakePublisher:
    """A broker connection the test drives: it connects, acknowledges and drops."""

    def __init__(self, *, connected: bool = True) -> None:
        self.published: list[Published] = []
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        if connected:
            self._connected.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        if not self.connected:
            raise PublisherOffline("not connected to the broker")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.published.append(Published(topic, payload, retain, future))
        self._changed.set()
        return future

    # -- what the test does -------------------------------------------------------------

    @property
    def pending(self) -> list[Published]:
        """Published and not yet acknowledged nor failed, oldest first."""
        return [p for p in self.published if not p.future.done()]

    def connect(self) -> None:
        self._connected.set()

    def disconnect(self) -> None:
        """The connection drops: every message awaiting its PUBACK fails."""
        self._connected.clear()
        self.fail(len(self.pending))

    def ack(self, count: int = 1) -> None:
        """PUBACKs for the `count` oldest pending messages."""
        for published in self.pending[:count]:
            published.future.set_result(None)

    def fail(self, count: int = 1) -> None:
        for published in self.pending[:count]:
            published.future.set_exception(PublishLost("connection lost before PUBACK"))

    async def wait_published(self, count: int) -> None:
        """Until at least `count` messages have been published."""
        while len(self.published) < count:
            self._changed.clear()
            await self._changed.wait()


# -- the serial line ----------------------------------------------------------------------


class SerialLine(Protocol):
    """What an instrument needs of its serial port (agent.sources.serial.port.SerialPort has it).

    The port hands what it reads to the `on_data` callback it was made with.
    """

    def open(self) -> None: ...

    async def wait_lost(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def discard_input(self) -> None: ...

    def close(self) -> None: ...


class FakeSerialLine:
    """A serial port with the test as the instrument at its other end.

    `feed` delivers bytes to `on_data` at once, as the loop's reader callback would; an
    exception from `on_data` stops reading and comes out of `wait_lost`, as with the
    real port. `unplug` makes the device vanish; `fail_opens` makes that many `open`
    calls fail first. `on_write`, when set, sees every write (to answer a request).
    """

    def __init__(
        self, on_data: Callable[[bytes], None], *, name: str = "serial", fail_opens: int = 0
    ) -> None:
        self.name = name
        self.fail_opens = fail_opens
        self.on_write: Callable[[bytes], None] | None = None
        self.written: list[bytes] = []
        self.opens = 0
        self.discards = 0
        self._on_data = on_data
        self._lost: asyncio.Future[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._lost is not None and not self._lost.done()

    def open(self) -> None:
        if self.fail_opens:
            self.fail_opens -= 1
            raise DeviceUnreachable(f"cannot open {self.name}", connection=self.name)
        self._lost = asyncio.get_running_loop().create_future()
        self.opens += 1

    async def wait_lost(self) -> None:
        assert self._lost is not None
        await asyncio.shield(self._lost)

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise DeviceUnreachable("port is closed", connection=self.name)
        self.written.append(data)
        if self.on_write is not None:
            self.on_write(data)

    def discard_input(self) -> None:
        self.discards += 1

    def close(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None and lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: whoever waited for it has stopped waiting
        elif lost is not None:
            lost.cancel()

    # -- what the test does -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """The instrument talks. Bytes sent while the port is not being read are lost."""
        if not self.is_open:
            return
        try:
            self._on_data(data)
        except Exception as exc:  # the callback boundary, as in SerialPort
            self._stop(exc)

    def unplug(self) -> None:
        self._stop(DeviceUnreachable(f"{self.name} went away", connection=self.name))

    def _stop(self, error: Exception) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(error)


# -- the agent's own settings -------------------------------------------------------------


class FakeTunable:
    """A source's interval, as the configurator sets it; `changes` lists every change."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.changes: list[float] = []

    def set_interval(self, interval: float) -> None:
        self.interval = interval
        self.changes.append(interval)


class FakeDelays:
    """The batcher's per-bucket max_delay: `default` until set."""

    def __init__(self, default: float = 1.0) -> None:
        self.default = default
        self.delays: dict[str, float] = {}

    def delay_for(self, bucket: str) -> float:
        return self.delays.get(bucket, self.default)

    def set_delay(self, bucket: str, delay: float) -> None:
        self.delays[bucket] = delay


class FakeLogLevel:
    def __init__(self, level: str = "info") -> None:
        self.level = level

    def set_level(self, level: str) -> None:
        self.level = level


# -- time ---------------------------------------------------------------------------------


class _VirtualSelector(selectors.BaseSelector):
    """The platform's selector, except that waiting for a timer moves the clock instead."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        self._real = selectors.DefaultSelector()
        self._advance = advance

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only real I/O (another thread) can wake us
            return self._real.select(None)
        self._advance(timeout)
        return ready

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` starts at 0 and jumps to the next timer when idle.

    For code whose behaviour depends on the loop's clock (schedules, back-off,
    `asyncio.timeout`): an overrun of 2.5 s takes no real time and always lands on the
    same instants. Real I/O still works, but time does not wait for it.
    """

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_VirtualSelector(self._advance))

    def time(self) -> float:
        return self._now

    def _advance(self, seconds: float) -> None:
        self._now += seconds


def run_in_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog's events as dicts, from loggers bound inside the block.

    structlog's defaults apply meanwhile (every level, whatever an earlier `configure`
    chose) and the configuration in place before is restored after.
    """
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with capture_logs() as events:
            yield events
    finally:
        structlog.configure(**saved)


async def settle(rounds: int = 10) -> None:
    """Let every ready task run a few steps (callbacks chained through futures)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- each fake satisfies its port: mypy checks this block, nothing runs it ---------------

if TYPE_CHECKING:
    from agent.cloud.configurator import Bus, Delays, LogLevel, Tunable
    from agent.cloud.delivery import Publisher
    from agent.sources.modbus.poller import RegisterBus
    from agent.sources.serial.port import SerialPort

    def _conformance(config: SerialConfig) -> None:
        register_bus: RegisterBus = FakeRegisterBus()
        settings_bus: Bus = FakeRegisterBus()
        publisher: Publisher = FakePublisher()
        fake_line: SerialLine = FakeSerialLine(print)
        real_line: SerialLine = SerialPort(config, print)
        tunable: Tunable = FakeTunable(1.0)
        delays: Delays = FakeDelays()
        log_level: LogLevel = FakeLogLevel()
        del register_bus, settings_bus, publisher, fake_line, real_line, tunable, delays, log_level


__all__ = [
    "READ_FUNCTION",
    "WRITE_COIL",
    "WRITE_REGISTER",
    "WRITE_REGISTERS",
    "BusRequest",
    "FakeDelays",
    "FakeLogLevel",
    "FakePublisher",
    "FakeRegisterBus",
    "FakeSerialLine",
    "FakeTunable",
    "PublishLost",
    "Published",
    "PublisherOffline",
    "SerialLine",
    "VirtualTimeLoop",
    "captured_logs",
    "run_in_virtual_time",
    "settle",
]
