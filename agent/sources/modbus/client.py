"""The Modbus adapter: one pymodbus client per `[[modbus]]` connection.

Every request on a connection goes through `ModbusLine._request`, one at a time (a
serial line or a TCP endpoint answers one request at a time), with the connection's
pauses applied. When a device's cycle ends and another device's request waits for the
line, `end_cycle` lets it go before the caller goes on (and decodes its last response).
What can go wrong is translated in `_request`, once, into the agent's errors:

- a Modbus exception response, which pymodbus returns as a value (`isError()`):
  DeviceRefused with its code;
- a reply to another function, or with another number of values than asked for:
  DeviceProtocolError;
- what pymodbus raises: the table `ERRORS`, looked up along the exception's MRO.

pymodbus 3.16 drops a frame it cannot use without a word to the caller (a bad CRC, a short
frame, another transaction's or another unit's reply) and, once its time-out has passed,
raises the same ModbusIOException as for a silent line; a connection that closes under a
request it also reports only at the time-out. Its trace hooks do see both: `trace_packet`
every byte that comes in, `trace_connect` the loss. `_Wire` keeps what they saw of the
request under way: bytes that made no reply turn the error into DeviceProtocolError, and a
loss ends the wait at once, as DeviceUnreachable.

Between two frames a serial line keeps its silence (`SerialSettings.silence`: RTU's 3.5
characters, 1.75 ms above 19,200 baud, or `inter_frame`), and any connection its
`request_delay`. Both run from the end of the last frame on the line, the moment its last
bytes came in (`_Wire.heard_at`), or the end of a request nothing answered: a request goes
at once when the silence has passed meanwhile, after only the rest of it otherwise, and
that rest is waited to the tens of microseconds (`timer.Timer`), not rounded up to
asyncio's millisecond. A serial port's `rs485` and `low_latency` modes are set on the port
pymodbus opened, at each connection (`ModbusLine._set_modes` says what a port without them
does).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import serial.rs485
import structlog
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from agent.config.model import Connection, Framing, SerialSettings, TcpEndpoint
from agent.errors import (
    DeviceError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
)
from agent.sources.modbus.meter import LineMeter
from agent.sources.modbus.points import Table
from agent.sources.modbus.timer import Timer

log = structlog.get_logger("agent.modbus")

_READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_BIT_FUNCTIONS = frozenset({1, 2})
_REGISTER_FUNCTIONS = frozenset({3, 4})
_SHOWN_BYTES = 32  # of a reply that could not be used, in the error's message
# What pyserial raises when a port lacks a mode: ValueError from the ioctl (a pty, a driver
# without it), NotImplementedError off Linux, AttributeError for a port that is no
# serialposix.Serial (None included: not pymodbus's SerialTransport).
_MODE_ERRORS = (ValueError, NotImplementedError, AttributeError, OSError)

_FRAMERS: Mapping[Framing, FramerType] = {
    "mbap": FramerType.SOCKET,
    "rtu": FramerType.RTU,
    "ascii": FramerType.ASCII,
}

Client = AsyncModbusTcpClient | AsyncModbusSerialClient
Call = Callable[[Client], Coroutine[Any, Any, ModbusPDU]]

# What pymodbus 3.16 raises from a request, as the agent's errors. Looked up along the
# exception's MRO, so the most specific entry wins; what is not here is a bug and propagates.
# A request during which bytes came in that made no reply is a DeviceProtocolError whatever
# the entry (see `error_type`).
ERRORS: Mapping[type[Exception], type[DeviceError]] = {
    # Not connected (client/base.py:84), or the connection closed under the request (_Wire).
    ConnectionException: DeviceUnreachable,
    # No reply to this request within the time-out (transaction/transaction.py:227-239).
    ModbusIOException: DeviceTimeout,
    # Any other complaint of pymodbus's about a frame.
    ModbusException: DeviceProtocolError,
    # The adapter's backstop, should pymodbus's own time-out not fire.
    TimeoutError: DeviceTimeout,
}


def error_type(exc: BaseException, *, heard: bool) -> type[DeviceError] | None:
    """The agent's error for what a request raised; None when `ERRORS` does not know it.

    `heard`: bytes came in during the request, and no reply was made of them. Whatever
    pymodbus says next (its time-out, or a connection it closed because it could not decode
    them) comes of a frame it could not use: a protocol error.
    """
    for cls in type(exc).__mro__:
        found = ERRORS.get(cls)
        if found is not None:
            return DeviceProtocolError if heard else found
    return None


class _Wire:
    """What pymodbus's trace hooks saw of the request under way on one client."""

    def __init__(self) -> None:
        self.received = b""  # the last bytes pymodbus was given to frame
        self.heard_at = 0.0  # time.monotonic() when bytes last came in: a frame's end
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def begin(self) -> asyncio.Future[None]:
        """A request starts: forget the last one's bytes; the future is done at a loss (kept
        from request to request until one happens: `_exchange` takes its callback off)."""
        self.received = b""
        if self.lost.done():
            self.lost = asyncio.get_running_loop().create_future()
        return self.lost

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        # Coming in, `data` is all pymodbus holds unframed (transaction.py:264-271), called
        # from data_received as the bytes arrive.
        if not sending:
            self.received = data
            self.heard_at = time.monotonic()
        return data

    def trace_connect(self, connected: bool) -> None:
        # Called from connection_lost (transaction.py:260-262), also when pymodbus itself
        # drops a TCP connection after several requests without a reply.
        if not connected and not self.lost.done():
            self.lost.set_result(None)


class ModbusLine:
    """One connection (TCP endpoint or serial line), shared by all its devices."""

    def __init__(self, config: Connection) -> None:
        self.name = config.name
        self._config = config
        self._lock = asyncio.Lock()
        self._queued = 0  # requests waiting for the lock
        self._client: Client | None = None
        self._wire: _Wire | None = None
        self._quiet_since = 0.0  # time.monotonic() at the end of the last frame on the line
        self._told_low_latency = False
        self._timer = Timer()  # the silences', to the tens of microseconds
        self.meter = LineMeter(time.monotonic())  # for the agent's state
        self._delay = config.request_delay
        if isinstance(config.endpoint, SerialSettings):
            self._delay = max(self._delay, config.endpoint.silence)

    async def read(self, unit: int, table: Table, start: int, count: int) -> list[int] | list[bool]:
        """Registers (or bits) `start` to `start+count` of `unit`; raises DeviceError."""
        function = _READ_FUNCTION[table]

        async def call(client: Client) -> ModbusPDU:
            if table is Table.HOLDING:
                return await client.read_holding_registers(start, count=count, device_id=unit)
            if table is Table.INPUT:
                return await client.read_input_registers(start, count=count, device_id=unit)
            if table is Table.COIL:
                return await client.read_coils(start, count=count, device_id=unit)
            return await client.read_discrete_inputs(start, count=count, device_id=unit)

        response = await self._request(
            call, unit=unit, function=function, address=start, count=count
        )
        if table.is_bits:
            return list(response.bits[:count])
        return list(response.registers)

    async def write_registers(self, unit: int, start: int, values: Sequence[int]) -> None:
        """Write holding registers: function 6 for one, 16 for several."""

        async def call(client: Client) -> ModbusPDU:
            if len(values) == 1:
                return await client.write_register(start, values[0], device_id=unit)
            return await client.write_registers(start, list(values), device_id=unit)

        await self._request(
            call,
            unit=unit,
            function=6 if len(values) == 1 else 16,
            address=start,
            count=len(values),
        )

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        async def call(client: Client) -> ModbusPDU:
            return await client.write_coil(address, value, device_id=unit)

        await self._request(call, unit=unit, function=5, address=address, count=1)

    async def identify(self, unit: int) -> dict[str, str]:
        """What a unit says of itself: function 17's server id (`server_id`) and function
        43/14's basic objects (`vendor`, `product`, `revision`); what it does not answer
        is left out."""
        found: dict[str, str] = {}

        async def server_id(client: Client) -> ModbusPDU:
            return await client.report_device_id(device_id=unit)

        async def device_information(client: Client) -> ModbusPDU:
            return await client.read_device_information(read_code=1, object_id=0, device_id=unit)

        with contextlib.suppress(DeviceError, DeviceRefused):
            reply = await self._request(server_id, unit=unit, function=17, address=0, count=0)
            found["server_id"] = _text(getattr(reply, "identifier", b""))
        with contextlib.suppress(DeviceError, DeviceRefused):
            reply = await self._request(
                device_information, unit=unit, function=43, address=0, count=0
            )
            information = getattr(reply, "information", {}) or {}
            for key, name in ((0, "vendor"), (1, "product"), (2, "revision")):
                if key in information:
                    found[name] = _text(information[key])
        return found

    async def end_cycle(self) -> None:
        """Called after a device's poll cycle: honours `close_after_cycle`. When another
        device's request waits for the line, it is let go first: the caller's work after
        its cycle (decoding the last response) is then done while that request is out."""
        if self._config.close_after_cycle:
            async with self._lock:
                self._close()
        elif self._queued:
            await asyncio.sleep(0)

    async def close(self) -> None:
        async with self._lock:
            self._close()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """The line lent to someone else (a scan): the port is closed, and every request
        waits until the block ends; the next one opens the port again."""
        async with self._lock:
            self._close()
            yield

    @property
    def connected(self) -> bool:
        """The socket or serial port is open now (for the agent's state)."""
        return self._client is not None and bool(self._client.connected)

    @property
    def endpoint(self) -> str:
        return str(self._config.endpoint)

    async def _request(
        self, call: Call, *, unit: int, function: int, address: int, count: int
    ) -> ModbusPDU:
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            client, wire = await self._connected()
            # Bytes that came in since (a late reply) end a frame too.
            await self._timer.sleep_until(max(self._quiet_since, wire.heard_at) + self._delay)
            lost = wire.begin()
            started = time.monotonic()
            try:
                response = await self._exchange(call(client), lost)
            except Exception as exc:
                kind = error_type(exc, heard=bool(wire.received))
                if kind is None:
                    raise
                raise self._error(
                    kind, exc, received=wire.received, unit=unit, function=function, address=address
                ) from exc
            finally:
                # The reply's last bytes ended the last frame; with none, the request did,
                # no later than now.
                ended = time.monotonic()
                self._quiet_since = wire.heard_at if wire.received else ended
                self.meter.record(started, ended)
                if not client.connected:
                    self._close()
            if response.isError():
                raise DeviceRefused(
                    response.exception_code,
                    connection=self.name,
                    unit=unit,
                    function=function,
                    address=address,
                    count=count,
                )
            problem = _reply_problem(response, function=function, count=count)
            if problem is not None:
                raise DeviceProtocolError(
                    f"unit {unit} answered function {function} at {address} with {problem}",
                    connection=self.name,
                    unit=unit,
                    received=wire.received,
                )
            return response
        finally:
            self._lock.release()

    async def _exchange(
        self, request: Coroutine[Any, Any, ModbusPDU], lost: asyncio.Future[None]
    ) -> ModbusPDU:
        """The reply to `request`; raises what pymodbus raised, or ConnectionException as
        soon as the connection closes (pymodbus would wait for its time-out).

        The request runs in the caller's task (a task per request cost 12 µs, more than
        the rest of a small read): the connection closing expires the time-out at once.
        A cancellation that Python 3.11's `wait_for` inside pymodbus swallows is raised
        again afterwards, so the caller is never left running when it was cancelled.
        """
        loop = asyncio.get_running_loop()
        # pymodbus applies its own time-out; ours is the backstop.
        backstop = asyncio.timeout(self._config.timeout * 2 + 1)

        waiting = True

        def expire(_: asyncio.Future[None]) -> None:
            # Scheduled when the connection closed, it may run after the request ended
            # (removing a done callback does not unschedule it): a finished time-out
            # cannot be rescheduled.
            if waiting:
                backstop.reschedule(loop.time())

        lost.add_done_callback(expire)
        try:
            async with backstop:
                response = await request
        except TimeoutError:
            if lost.done():
                raise ConnectionException("the connection closed during the request") from None
            raise
        finally:
            waiting = False
            lost.remove_done_callback(expire)
        _raise_if_cancelled()
        return response

    def _error(
        self,
        kind: type[DeviceError],
        exc: Exception,
        *,
        received: bytes,
        unit: int,
        function: int,
        address: int,
    ) -> DeviceError:
        """The agent's error of type `kind` for a failed request, said for the log."""
        request = f"function {function} at {address}"
        if kind is DeviceProtocolError:
            shown = received[:_SHOWN_BYTES].hex(" ") + (
                " ..." if len(received) > _SHOWN_BYTES else ""
            )
            return DeviceProtocolError(
                f"unit {unit} answered {request} with no usable reply (a bad CRC, a short or"
                f" garbled frame, another unit's or transaction's reply): "
                + (f"received {shown}" if received else str(exc)),
                connection=self.name,
                unit=unit,
                received=received,
            )
        if kind is DeviceUnreachable:
            return DeviceUnreachable(
                f"connection lost before unit {unit} answered {request}",
                connection=self.name,
                unit=unit,
            )
        return kind(
            f"unit {unit} did not answer {request} within {self._config.timeout}s",
            connection=self.name,
            unit=unit,
        )

    async def _connected(self) -> tuple[Client, _Wire]:
        if self._client is not None and self._wire is not None and self._client.connected:
            return self._client, self._wire
        self._close()
        wire = _Wire()
        client = self._new_client(wire)
        await self._open(client)
        log.info("modbus_connected", connection=self.name, endpoint=self.endpoint)
        self._client, self._wire = client, wire
        if self._config.connect_delay:
            await asyncio.sleep(self._config.connect_delay)
        self._quiet_since = time.monotonic()
        return client, wire

    def _new_client(self, wire: _Wire) -> Client:
        """A pymodbus client for the endpoint and framing, not yet connected."""
        config = self._config
        # reconnect_delay=0: pymodbus does not reconnect by itself; the pollers' back-off
        # decides when to try again. retries=0: a failed read is reported, not repeated.
        common: dict[str, Any] = {
            "framer": _FRAMERS[config.framing],
            "timeout": config.timeout,
            "retries": 0,
            "reconnect_delay": 0,
            "name": config.name,
            "trace_packet": wire.trace_packet,
            "trace_connect": wire.trace_connect,
        }
        endpoint = config.endpoint
        client: Client
        if isinstance(endpoint, TcpEndpoint):
            client = AsyncModbusTcpClient(endpoint.host, port=endpoint.port, **common)
        else:
            client = AsyncModbusSerialClient(
                endpoint.device,
                baudrate=endpoint.baudrate,
                parity=endpoint.parity,
                bytesize=endpoint.bytesize,
                stopbits=endpoint.stopbits,
                **common,
            )
        for response in REGISTER_RESPONSES:
            client.register(response)
        return client

    async def _open(self, client: Client) -> None:
        """Connect `client` and set its serial port's modes; closed again on failure."""
        where = self.endpoint
        try:
            async with asyncio.timeout(self._config.timeout * 2 + 1):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            client.close()
            raise DeviceUnreachable(
                f"cannot connect to {where}: {exc}", connection=self.name
            ) from exc
        if not ok:
            client.close()
            raise DeviceUnreachable(f"cannot connect to {where}", connection=self.name)
        endpoint = self._config.endpoint
        if isinstance(endpoint, SerialSettings):
            try:
                self._set_modes(_serial_port(client), endpoint)
            except DeviceUnreachable:
                client.close()
                raise

    def _set_modes(self, port: Any, line: SerialSettings) -> None:
        """The kernel's RS-485 mode and the adapter's low-latency mode, when asked for.

        Without the RS-485 mode a port that needs it never drives its transmitter: no
        request would reach the line, and every unit would seem silent. So a port that
        cannot have it is not used (DeviceUnreachable, saying why). The low-latency mode
        only shortens the wait for a reply's last bytes: without it the line works, a
        little slower, and a warning says so (once; at debug level on reconnections).
        """
        if line.rs485:
            try:
                port.rs485_mode = serial.rs485.RS485Settings()  # RTS high while sending
            except _MODE_ERRORS as exc:
                raise DeviceUnreachable(
                    f"cannot switch {line.device} to the kernel's RS-485 mode: {exc} (if the"
                    " adapter switches the line's direction by itself, set rs485 = false)",
                    connection=self.name,
                ) from exc
        if line.low_latency:
            try:
                port.set_low_latency_mode(True)
            except _MODE_ERRORS as exc:
                level = log.debug if self._told_low_latency else log.warning
                self._told_low_latency = True
                level(
                    "low_latency_unavailable",
                    connection=self.name,
                    device=line.device,
                    error=str(exc),
                    meaning="the port has no low-latency mode (a USB adapter's, FTDI's);"
                    " replies may wait up to its latency timer (16 ms on FTDI) to come in",
                )

    def _close(self) -> None:
        """Close the connection and the timer (both made again at the next request)."""
        self._timer.close()
        if self._client is not None:
            self._client.close()
            self._client = self._wire = None


def _serial_port(client: Client) -> Any:
    """The pyserial port pymodbus opened for `client` (SerialTransport.sync_serial)."""
    return getattr(client.ctx.transport, "sync_serial", None)


class _Registers:
    """A read-registers reply decoded with one struct call. pymodbus 3.16 unpacks it
    register by register, and formats every register into the text of a debug line that
    it builds whether or not debug is on: together about a microsecond a point of a
    float32 read, the largest cost on the poll's path. Mixed into pymodbus's own reply
    classes, which stay what the rest of pymodbus (its framers, its `isError`) sees."""

    registers: Sequence[int]
    function_code: int
    dev_id: int
    transaction_id: int

    def decode(self, data: bytes) -> None:
        size = data[0]
        if size >= len(data):  # as pymodbus's own decode refuses it
            raise ModbusIOException(
                f"byte_count {size} > length of packet {len(data)}",
                function_code=self.function_code,
            )
        self.registers = list(struct.unpack_from(f">{size // 2}H", data, 1))

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, "
            f"transaction_id={self.transaction_id}, registers={len(self.registers)})"
        )


class _HoldingRegisters(_Registers, ReadHoldingRegistersResponse):
    pass


class _InputRegisters(_Registers, ReadInputRegistersResponse):
    pass


# Registered with every client: the replies to functions 3 and 4, decoded as above.
REGISTER_RESPONSES: tuple[type[ModbusPDU], ...] = (_HoldingRegisters, _InputRegisters)


def _reply_problem(response: ModbusPDU, *, function: int, count: int) -> str | None:
    """What is wrong with a reply that is not an exception response; None if nothing."""
    if response.function_code != function:
        return f"function {response.function_code}"
    if function in _REGISTER_FUNCTIONS and len(response.registers) != count:
        return f"{len(response.registers)} registers for {count}"
    if function in _BIT_FUNCTIONS and len(response.bits) < count:
        return f"{len(response.bits)} bits for {count}"
    return None


def _text(raw: object) -> str:
    """A unit's identification bytes as text: printable ASCII kept, the rest as \\xNN."""
    if isinstance(raw, list):
        raw = b"".join(part if isinstance(part, bytes) else bytes(part) for part in raw)
    if not isinstance(raw, bytes):
        return str(raw)
    return raw.decode("ascii", "backslashreplace").strip("\x00 ")


def _raise_if_cancelled() -> None:
    """Python 3.11's `asyncio.wait_for` can swallow a cancellation that arrives as its
    inner future completes; pymodbus uses it, so the caller's is raised again here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
