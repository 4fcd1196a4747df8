"""A simulated plant: Modbus units served by pymodbus over TCP or a serial line.

A :class:`SimUnit` is one Modbus unit (device id) with the four tables. Tests
set and read its values directly, look at the requests it received, and make
it misbehave (invalid addresses, refused writes, no answer at all, garbled
replies).

Four framings, as the agent's four transports: Modbus TCP (``serve_tcp``), RTU
frames over TCP, a serial device server's (``serve_tcp(framer=FramerType.RTU)``),
RTU and ASCII on a serial device (``serve_serial``, ``serve_rtu``).

The unit's own lists are the truth. pymodbus 3.16's simulator (``SimDevice``
with four non-shared blocks) keeps a copy; the device ``action`` callback,
which pymodbus awaits on every access, brings that copy up to date from the
unit before pymodbus answers, and applies writes to the unit. The server's
``trace_pdu`` hook sees every decoded request first: it records it, and drops
the requests a unit must not answer (a dead unit, an id nobody owns) so the
line stays silent, as it would on a real RS-485 bus. Its ``trace_packet`` hook
sees the bytes both ways: it logs them with their time (``PlantServer.wire``)
and breaks a garbling unit's replies, framed, just before they are sent.

``python -m sim.plant --port 5020 [--rtu-device PATH --baudrate 9600]`` runs
the demo plant until SIGINT/SIGTERM.
"""

# ruff: noqa: ASYNC109  # a default deadline that names what was awaited is the point here

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

from pymodbus import ModbusDeviceIdentification
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Table = Literal["coil", "discrete", "input", "holding"]
BitTable = Literal["coil", "discrete"]
RegisterTable = Literal["input", "holding"]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

TABLES: tuple[Table, ...] = get_args(Table)
DEFAULT_MAX_ADDRESS = 10_000
DEFAULT_WAIT_TIMEOUT = 10.0
WIRE_LOG_SIZE = 1000  # packets a server keeps in `PlantServer.wire`
LOOPBACK = "127.0.0.1"

READ_FUNCTION_CODES = frozenset({1, 2, 3, 4})
WRITE_FUNCTION_CODES = frozenset({5, 6, 15, 16, 22, 23})
FUNCTION_CODE_TABLE: dict[int, Table] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    4: "input",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
}
_BITS_PER_REGISTER = 16


class Packet(NamedTuple):
    """Bytes the server received (all it holds unframed, as they came in) or sent (a
    frame), and when: ``time.monotonic()`` as pymodbus's trace hook saw them."""

    at: float
    sending: bool
    data: bytes


class Request(NamedTuple):
    """One request as the unit received it (``count`` in bits or registers)."""

    function_code: int
    address: int
    count: int  # type: ignore[assignment]  # shadows tuple.count: pymodbus's name for it


class SimUnit:
    """One Modbus unit with coils, discrete inputs, input and holding registers.

    Every table covers addresses ``0..max_address``; coils and discrete inputs
    are addressed bit by bit.
    """

    def __init__(self, unit_id: int = 1, *, max_address: int = DEFAULT_MAX_ADDRESS) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} outside 0..255")
        if not 0 <= max_address <= 0xFFFF:
            raise ValueError(f"max_address {max_address} outside 0..65535")
        self.unit_id = unit_id
        self.max_address = max_address
        self._bits: dict[BitTable, list[bool]] = {
            "coil": [False] * (max_address + 1),
            "discrete": [False] * (max_address + 1),
        }
        self._registers: dict[RegisterTable, list[int]] = {
            "input": [0] * (max_address + 1),
            "holding": [0] * (max_address + 1),
        }
        #: addresses per table that answer ILLEGAL_ADDRESS to any request touching them
        self.invalid: dict[Table, set[int]] = {table: set() for table in TABLES}
        #: the unit does not answer at all (requests are still logged)
        self.dead = False
        #: replies go out with their last byte changed: a bad CRC (RTU), a bad LRC (ASCII);
        #: Modbus TCP has no checksum, so there a value (or an exception code) is wrong
        self.garble = False
        #: writes answer ``write_refusal`` and change nothing
        self.refuse_writes = False
        self.write_refusal = ExcCodes.DEVICE_FAILURE
        #: every request received, in order
        self.requests: list[Request] = []
        #: registers that count the reads touching them (see :meth:`count_reads`)
        self._counted: dict[RegisterTable, set[int]] = {"input": set(), "holding": set()}
        #: read requests per function code
        self.read_counts: Counter[int] = Counter()
        self.write_count = 0
        self._changed = asyncio.Event()
        # pymodbus tells the action how many 16-bit registers a bit request
        # spans, not how many bits: the exact count comes from the request.
        self._pending_counts: dict[tuple[int, int], int] = {}

    # -- values ---------------------------------------------------------------

    def set_registers(self, table: RegisterTable, offset: int, values: Sequence[int]) -> None:
        registers = self._registers[table]
        self._check_span(offset, len(values))
        for value in values:
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"register value {value} outside 0..65535")
        registers[offset : offset + len(values)] = list(values)

    def get_registers(self, table: RegisterTable, offset: int, count: int = 1) -> list[int]:
        self._check_span(offset, count)
        return self._registers[table][offset : offset + count]

    def count_reads(self, table: RegisterTable, offset: int, count: int = 1) -> None:
        """Make registers ``offset .. offset+count-1`` count the read requests touching them.

        Each register starts at 0 and goes up by one (modulo 65536) on every read request
        that covers it and that the unit answers, as the request arrives: the n-th read
        returns n, so a reading's value tells which read it came from. Writes, refused
        reads and the requests of a dead unit count nothing; once ``dead`` is set, the
        count is final.
        """
        self._check_span(offset, count)
        self._counted[table].update(range(offset, offset + count))
        self._registers[table][offset : offset + count] = [0] * count

    def set_bits(self, table: BitTable, offset: int, values: Sequence[bool]) -> None:
        self._check_span(offset, len(values))
        self._bits[table][offset : offset + len(values)] = [bool(v) for v in values]

    def get_bits(self, table: BitTable, offset: int, count: int = 1) -> list[bool]:
        self._check_span(offset, count)
        return self._bits[table][offset : offset + count]

    def set_struct(
        self,
        table: RegisterTable,
        offset: int,
        fmt: str,
        *values: float | int,
        byte_order: ByteOrder = "ABCD",
    ) -> None:
        """Pack ``values`` with a :mod:`struct` format (no prefix) into registers.

        ``set_struct("holding", 0, "i", -5)`` writes an int32 as two registers.
        """
        data = struct.pack(f">{fmt}", *values)
        self.set_registers(table, offset, registers_from_bytes(data, byte_order))

    def get_struct(
        self, table: RegisterTable, offset: int, fmt: str, *, byte_order: ByteOrder = "ABCD"
    ) -> tuple[float | int, ...]:
        size = struct.calcsize(f">{fmt}")
        registers = self.get_registers(table, offset, (size + 1) // 2)
        data = bytes_from_registers(registers, byte_order)
        return struct.unpack(f">{fmt}", data[:size])

    def set_float32(
        self, table: RegisterTable, offset: int, value: float, *, byte_order: ByteOrder = "ABCD"
    ) -> None:
        self.set_struct(table, offset, "f", value, byte_order=byte_order)

    def get_float32(
        self, table: RegisterTable, offset: int, *, byte_order: ByteOrder = "ABCD"
    ) -> float:
        return float(self.get_struct(table, offset, "f", byte_order=byte_order)[0])

    def set_string(self, table: RegisterTable, offset: int, text: str, *, length: int) -> None:
        """Write ``text`` into ``length`` registers, two bytes each, NUL padded."""
        data = text.encode()
        if len(data) > 2 * length:
            raise ValueError(f"{text!r} does not fit in {length} registers")
        self.set_registers(table, offset, registers_from_bytes(data.ljust(2 * length, b"\0")))

    # -- request log ------------------------------------------------------------

    @property
    def read_count(self) -> int:
        """All read requests (function codes 1-4)."""
        return sum(self.read_counts.values())

    def reset_log(self) -> None:
        self.requests.clear()
        self.read_counts.clear()
        self.write_count = 0

    async def wait_until(
        self, predicate: Callable[[SimUnit], bool], *, timeout: float = DEFAULT_WAIT_TIMEOUT
    ) -> None:
        """Return once ``predicate(self)`` holds, re-checked after every request."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"unit {self.unit_id}: condition not met after {timeout} s; "
                f"requests so far: {self.requests}"
            ) from None

    async def wait_for_requests(self, count: int, *, timeout: float = DEFAULT_WAIT_TIMEOUT) -> None:
        """Return once ``count`` requests in total have arrived (logged, even if dead)."""
        await self.wait_until(lambda unit: len(unit.requests) >= count, timeout=timeout)

    # -- pymodbus glue ------------------------------------------------------------

    def build_device(self) -> SimDevice:
        """A pymodbus device whose action keeps it in step with this unit."""
        size = self.max_address + 1
        # One value per bit and count=1: with values=False and count=size
        # pymodbus 3.16 validates the block in O(size**2).
        bits = [SimData(address=0, values=[False] * size, datatype=DataType.BITS)]
        registers = [SimData(address=0, count=size, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(
            id=self.unit_id,
            simdata=(list(bits), list(bits), list(registers), list(registers)),
            action=self._action,
        )

    def record(self, pdu: ModbusPDU) -> None:
        """Log one incoming request (called from the server's trace hook)."""
        count = pdu.count or len(pdu.bits) or len(pdu.registers)
        request = Request(pdu.function_code, pdu.address, count)
        self.requests.append(request)
        if request.function_code in READ_FUNCTION_CODES:
            self.read_counts[request.function_code] += 1
            self._count_read(request)
        elif request.function_code in WRITE_FUNCTION_CODES:
            self.write_count += 1
        self._pending_counts[(request.function_code, request.address)] = count
        # Wake every waiter, then re-arm: waiters re-check their predicate.
        self._changed.set()
        self._changed.clear()

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's per-access hook: check, apply a write, refresh its copy."""
        table = FUNCTION_CODE_TABLE[function_code]
        if set_values is not None:
            exact_count = len(set_values)
        elif table == "coil" or table == "discrete":
            exact_count = self._pending_counts.get((function_code, address), 1)
        else:
            exact_count = count
        touched = range(address, address + exact_count)
        if touched.stop - 1 > self.max_address or any(a in self.invalid[table] for a in touched):
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values is not None:
            if self.refuse_writes:
                return self.write_refusal
            if table == "coil":
                self._bits[table][address : touched.stop] = [bool(v) for v in set_values]
            elif table == "holding":
                self._registers[table][address : touched.stop] = [int(v) for v in set_values]
        if table == "coil" or table == "discrete":
            # A bit block packs 16 bits per register, and ``count`` is in registers.
            first = address // _BITS_PER_REGISTER
            for index in range(first, first + count):
                current_registers[index - start_address] = self._packed_bits(table, index)
        else:
            offset = address - start_address
            current_registers[offset : offset + count] = self._registers[table][
                address : address + count
            ]
        return None

    def _count_read(self, request: Request) -> None:
        """Counted at receipt, in step with `dead`: a request dropped later counts nothing."""
        table = FUNCTION_CODE_TABLE[request.function_code]
        if self.dead or (table != "input" and table != "holding") or not self._counted[table]:
            return
        touched = range(request.address, request.address + request.count)
        if touched.stop - 1 > self.max_address or any(a in self.invalid[table] for a in touched):
            return  # refused: answered with an exception, not with values
        registers = self._registers[table]
        for address in self._counted[table].intersection(touched):
            registers[address] = (registers[address] + 1) & 0xFFFF

    def _packed_bits(self, table: BitTable, register_index: int) -> int:
        """Bits ``16*i .. 16*i+15`` as one register, lowest address in bit 0."""
        first_bit = register_index * _BITS_PER_REGISTER
        word = 0
        for bit, value in enumerate(self._bits[table][first_bit : first_bit + _BITS_PER_REGISTER]):
            if value:
                word |= 1 << bit
        return word

    def _check_span(self, offset: int, count: int) -> None:
        if offset < 0 or count < 0 or offset + count - 1 > self.max_address:
            raise IndexError(
                f"unit {self.unit_id}: offset {offset} count {count} outside 0..{self.max_address}"
            )

    def __repr__(self) -> str:
        return f"SimUnit({self.unit_id}, dead={self.dead}, requests={len(self.requests)})"


def registers_from_bytes(data: bytes, byte_order: ByteOrder = "ABCD") -> list[int]:
    """Big-endian bytes (ABCD...) to registers in the given byte order."""
    if len(data) % 2:
        data += b"\0"
    registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order in ("BADC", "DCBA"):
        registers = [((r & 0xFF) << 8) | (r >> 8) for r in registers]
    if byte_order in ("CDAB", "DCBA"):
        registers.reverse()
    return registers


def bytes_from_registers(registers: Sequence[int], byte_order: ByteOrder = "ABCD") -> bytes:
    """Registers in the given byte order back to big-endian bytes."""
    ordered = list(registers)
    if byte_order in ("CDAB", "DCBA"):
        ordered.reverse()
    if byte_order in ("BADC", "DCBA"):
        ordered = [((r & 0xFF) << 8) | (r >> 8) for r in ordered]
    return b"".join(r.to_bytes(2, "big") for r in ordered)


class _Line:
    """What the server's trace hooks need: which units answer on this line, which one
    was asked last (the one a reply is from: one request at a time), connections made."""

    def __init__(self, units: Sequence[SimUnit], framer: FramerType) -> None:
        self.units = {unit.unit_id: unit for unit in units}
        if len(self.units) != len(units):
            raise ValueError("two units with the same id on one line")
        self.framer = framer
        self.asked: SimUnit | None = None
        self.connections = 0
        self.wire: deque[Packet] = deque(maxlen=WIRE_LOG_SIZE)

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            return pdu
        unit = self.asked = self.units.get(pdu.dev_id)
        if unit is not None:
            unit.record(pdu)
        if unit is None or unit.dead:
            # pymodbus's request handler ignores a request traced to None, so
            # nothing is sent back: a dead unit and an absent one stay silent.
            return None  # type: ignore[return-value]
        return pdu

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self.asked is not None and self.asked.garble:
            data = garbled(data, self.framer)
        self.wire.append(Packet(time.monotonic(), sending, data))
        return data

    def trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1


_HEX_DIGITS = b"0123456789ABCDEF"


def garbled(frame: bytes, framer: FramerType) -> bytes:
    """`frame` with its checksum wrong: RTU's CRC, ASCII's LRC (the hex digit before CR
    LF); Modbus TCP, which has no checksum, gets its last byte changed all the same."""
    if framer is FramerType.ASCII:
        digit = frame[-3]
        other = _HEX_DIGITS[(_HEX_DIGITS.index(digit) + 1) % len(_HEX_DIGITS)]
        return frame[:-3] + bytes([other]) + frame[-2:]
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


class PlantServer:
    """A running pymodbus server; ``port`` is set for TCP, ``device`` for a serial line."""

    def __init__(
        self,
        server: ModbusTcpServer | ModbusSerialServer,
        units: Sequence[SimUnit],
        line: _Line,
        *,
        host: str | None = None,
        port: int | None = None,
        device: str | None = None,
    ) -> None:
        self._server = server
        self.units = list(units)
        self._line = line
        self.host = host
        self._port = port
        self.device = device

    @property
    def port(self) -> int:
        if self._port is None:
            raise AttributeError("a serial line's server has no port")
        return self._port

    @property
    def framer(self) -> FramerType:
        return self._line.framer

    @property
    def transport(self) -> Any:
        """pymodbus's transport: a serial server's port (its SerialTransport, whose
        ``sync_serial`` is the pyserial port), a TCP server's listener (asyncio.Server)."""
        return self._server.transport

    @property
    def wire(self) -> Sequence[Packet]:
        """The last WIRE_LOG_SIZE packets in and out, oldest first."""
        return self._line.wire

    @property
    def connections(self) -> int:
        """Connections accepted so far (TCP); a serial server counts its port's opening."""
        return self._line.connections

    def unit(self, unit_id: int) -> SimUnit:
        return next(unit for unit in self.units if unit.unit_id == unit_id)

    def drop_connections(self) -> None:
        """Close every client's connection and keep listening: what a serial device
        server does when it restarts, or a NAT router that forgets the connection."""
        for handler in list(self._server.active_connections.values()):
            handler.close()

    async def stop(self) -> None:
        listener = self._server.transport
        await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus is untyped here
        if isinstance(listener, asyncio.Server):
            await listener.wait_closed()

    async def __aenter__(self) -> PlantServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# What the simulated units say of themselves (function 17, and 43/14's basic objects).
VENDOR, PRODUCT, REVISION = "ORIO-SIM", "SIM-METER", "1.2"


def identity() -> ModbusDeviceIdentification:
    return ModbusDeviceIdentification(  # type: ignore[no-untyped-call]  # pymodbus: untyped
        info_name={"VendorName": VENDOR, "ProductCode": PRODUCT, "MajorMinorRevision": REVISION}
    )


async def serve_tcp(
    units: Sequence[SimUnit],
    host: str = LOOPBACK,
    port: int = 0,
    *,
    framer: FramerType = FramerType.SOCKET,
) -> PlantServer:
    """Serve ``units`` over TCP; ``port=0`` picks a free port (see ``.port``).

    Modbus TCP (MBAP) by default; ``framer=FramerType.RTU``: RTU frames, CRC included, as
    a serial device server passes them between its socket and its RS-485 line.
    """
    line = _Line(units, framer)
    server = ModbusTcpServer(
        [unit.build_device() for unit in units],
        framer=framer,
        identity=identity(),
        address=(host, port),
        trace_pdu=line.trace_pdu,
        trace_packet=line.trace_packet,
        trace_connect=line.trace_connect,
    )
    await server.serve_forever(background=True)
    listener = server.transport
    if not isinstance(listener, asyncio.Server) or not listener.sockets:
        await server.shutdown()  # type: ignore[no-untyped-call]
        raise RuntimeError(f"Modbus TCP server did not bind {host}:{port}")
    bound_port = int(listener.sockets[0].getsockname()[1])
    return PlantServer(server, units, line, host=host, port=bound_port)


async def serve_serial(
    units: Sequence[SimUnit],
    device: str,
    baudrate: int = 19200,
    *,
    framer: FramerType,
    parity: str = "N",
    bytesize: int = 8,
    stopbits: int = 1,
) -> PlantServer:
    """Serve ``units`` on a serial device (e.g. a socat pty end): Modbus RTU
    (``FramerType.RTU``) or Modbus ASCII (``FramerType.ASCII``)."""
    line = _Line(units, framer)
    server = ModbusSerialServer(
        [unit.build_device() for unit in units],
        framer=framer,
        identity=identity(),
        port=device,
        baudrate=baudrate,
        parity=parity,
        bytesize=bytesize,
        stopbits=stopbits,
        trace_pdu=line.trace_pdu,
        trace_packet=line.trace_packet,
        trace_connect=line.trace_connect,
    )
    await server.serve_forever(background=True)
    return PlantServer(server, units, line, device=device)


async def serve_rtu(
    units: Sequence[SimUnit],
    device: str,
    baudrate: int = 19200,
    *,
    parity: str = "N",
    bytesize: int = 8,
    stopbits: int = 1,
) -> PlantServer:
    """Serve ``units`` over Modbus RTU on a serial device (e.g. a socat pty end)."""
    return await serve_serial(
        units,
        device,
        baudrate,
        framer=FramerType.RTU,
        parity=parity,
        bytesize=bytesize,
        stopbits=stopbits,
    )


# -- the demo plant ---------------------------------------------------------------

DEMO_SERIAL = "ORIO-DEMO"
DEMO_SERIAL_OFFSET = 100
DEMO_SERIAL_LENGTH = 8
DEMO_ALARM_OFFSET = 120
DEMO_RUNNING_COIL = 16  # "00017"
DEMO_PERIOD = 60.0  # seconds for one sine cycle
DEMO_TICK = 1.0


def demo_units(unit_ids: Sequence[int]) -> list[SimUnit]:
    """Units carrying the demo's static values."""
    units = []
    for unit_id in unit_ids:
        unit = SimUnit(unit_id)
        unit.set_string("holding", DEMO_SERIAL_OFFSET, f"{DEMO_SERIAL}", length=DEMO_SERIAL_LENGTH)
        unit.set_registers("holding", DEMO_ALARM_OFFSET, [0xBEEF])
        units.append(unit)
    return units


def update_demo_values(units: Sequence[SimUnit], elapsed: float) -> None:
    """Temperature (30001, float32), humidity x100 (30003), counter (40001), coil 00017."""
    phase = 2 * math.pi * elapsed / DEMO_PERIOD
    for unit in units:
        shift = unit.unit_id - 1
        unit.set_float32("input", 0, 21.5 + 4.0 * math.sin(phase) + shift)
        unit.set_registers("input", 2, [round(100 * (45.0 + 10.0 * math.cos(phase)))])
        unit.set_registers("holding", 0, [int(elapsed) & 0xFFFF])
        unit.set_bits("coil", DEMO_RUNNING_COIL, [int(elapsed // 10) % 2 == 0])


async def run_demo(host: str, port: int, rtu_device: str | None, baudrate: int) -> None:
    tcp_units = demo_units([1])
    rtu_units = demo_units([1, 2]) if rtu_device else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        tcp = await serve_tcp(tcp_units, host, port)
        stack.push_async_callback(tcp.stop)
        print(f"plant: modbus tcp on {host}:{tcp.port} unit 1", flush=True)
        if rtu_device:
            rtu = await serve_rtu(rtu_units, rtu_device, baudrate)
            stack.push_async_callback(rtu.stop)
            print(f"plant: modbus rtu on {rtu_device} @ {baudrate} units 1, 2", flush=True)
        started = time.monotonic()
        while not stop.is_set():
            update_demo_values([*tcp_units, *rtu_units], time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEMO_TICK):
                    await stop.wait()
    print("plant: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.plant", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--rtu-device", help="serial device for an RTU server with units 1, 2")
    parser.add_argument("--baudrate", type=int, default=9600)
    args = parser.parse_args(argv)
    asyncio.run(run_demo(args.host, args.port, args.rtu_device, args.baudrate))


if __name__ == "__main__":
    main()
