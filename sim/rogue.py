"""Modbus devices that misbehave on purpose: what does the agent make of a bad reply?

A real server (sim.plant) never sends a bad frame, so these build their replies by hand.
Each answers every request as its `fault` says, one of `FAULTS`:

- ``ok``: a good reply, every register 7 (every bit set);
- ``exception``: an exception response with `exception_code`;
- ``wrong_transaction`` / ``wrong_unit``: a good reply with another transaction id (TCP)
  or unit id;
- ``wrong_function``: a good reply to another read function;
- ``too_few_values``: a well-formed reply with one register (or byte of bits) too few;
- ``undecodable``: a well-framed reply with a function code that does not exist;
- ``short``: a good reply cut short;
- ``bad_crc``: a good reply with a wrong CRC (RTU only);
- ``silent``: no reply at all;
- ``close``: the connection closed instead of a reply (TCP only).

`RogueTcpDevice` is a raw asyncio server on loopback. `RogueRtuDevice` plays the unit on
one end of a pty pair (sim.pty), the agent opening the other. Both count the requests they
got (`requests`); the TCP device counts the connections made to it too (`connections`).
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Literal, get_args

from pymodbus.framer import FramerRTU

Fault = Literal[
    "ok",
    "exception",
    "wrong_transaction",
    "wrong_unit",
    "wrong_function",
    "too_few_values",
    "undecodable",
    "short",
    "bad_crc",
    "silent",
    "close",
]
FAULTS: tuple[Fault, ...] = get_args(Fault)

LOOPBACK = "127.0.0.1"
REGISTER_VALUE = 7
UNKNOWN_FUNCTION = 0x41  # no Modbus function: pymodbus cannot decode a reply with it
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit id
_BIT_FUNCTIONS = (1, 2)
_OTHER_READ = {1: 2, 2: 1, 3: 4, 4: 3}  # the read function a `wrong_function` reply has
_RTU_REQUEST_SIZE = 8  # unit, function, address, count (or value), CRC: functions 1 to 6
_BITS_PER_BYTE = 8


def reply_pdu(fault: Fault, request: bytes, *, exception_code: int) -> bytes:
    """The PDU (function code onwards) a unit with `fault` answers to the PDU `request`."""
    function = request[0]
    if fault == "exception":
        return bytes([function | 0x80, exception_code])
    if fault == "undecodable":
        return bytes([UNKNOWN_FUNCTION, 0])
    if function not in _OTHER_READ:  # a write (5, 6): echoed, as a unit does
        return request[:5]
    count = int.from_bytes(request[3:5], "big")
    if function in _BIT_FUNCTIONS:
        data = b"\xff" * -(-count // _BITS_PER_BYTE)
    else:
        data = struct.pack(f">{count}H", *[REGISTER_VALUE] * count)
    if fault == "too_few_values":
        data = data[: -1 if function in _BIT_FUNCTIONS else -2]
    if fault == "wrong_function":
        function = _OTHER_READ[function]
    return bytes([function, len(data)]) + data


def tcp_reply(
    fault: Fault, transaction: int, unit: int, request: bytes, *, exception_code: int
) -> bytes:
    """The whole Modbus TCP frame; empty for `silent`."""
    if fault == "silent":
        return b""
    pdu = reply_pdu(fault, request, exception_code=exception_code)
    if fault == "wrong_transaction":
        transaction += 1
    if fault == "wrong_unit":
        unit += 1
    frame = _MBAP.pack(transaction, 0, len(pdu) + 1, unit) + pdu
    return frame[:-1] if fault == "short" else frame


def rtu_reply(fault: Fault, request: bytes, *, exception_code: int) -> bytes:
    """The whole RTU frame (unit, PDU, CRC) answering the RTU frame `request`."""
    if fault == "silent":
        return b""
    unit = request[0] + 1 if fault == "wrong_unit" else request[0]
    body = bytes([unit]) + reply_pdu(fault, request[1:-2], exception_code=exception_code)
    frame = body + FramerRTU.compute_CRC(body).to_bytes(2, "big")
    if fault == "bad_crc":
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    return frame[: len(frame) // 2] if fault == "short" else frame


class _Rogue:
    def __init__(self, fault: Fault, exception_code: int) -> None:
        self.fault: Fault = fault
        self.exception_code = exception_code
        self.requests = 0


class RogueTcpDevice(_Rogue):
    """A Modbus TCP "device" on loopback that answers as `fault` says."""

    def __init__(self, fault: Fault = "ok", *, exception_code: int = 2) -> None:
        super().__init__(fault, exception_code)
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> RogueTcpDevice:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._serving:  # each sees its connection end, and returns
            await asyncio.wait(self._serving)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> RogueTcpDevice:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(_MBAP.size)
                transaction, _, length, unit = _MBAP.unpack(header)
                request = await reader.readexactly(length - 1)
                self.requests += 1
                if self.fault == "close":
                    return
                writer.write(
                    tcp_reply(
                        self.fault, transaction, unit, request, exception_code=self.exception_code
                    )
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went
        finally:
            self._writers.discard(writer)
            self._serving.discard(task)
            writer.close()


class RogueRtuDevice(_Rogue):
    """A Modbus RTU "device" on `device` (a pty end) that answers as `fault` says.

    Understands the 8-byte requests (functions 1 to 6); `open` in a running loop.
    """

    def __init__(self, device: str, fault: Fault = "ok", *, exception_code: int = 2) -> None:
        super().__init__(fault, exception_code)
        self.device = device
        self._fd: int | None = None
        self._pending = b""

    def open(self) -> RogueRtuDevice:
        self._fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        return self

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def __enter__(self) -> RogueRtuDevice:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            self._pending += os.read(self._fd, 256)
        except BlockingIOError:
            return
        while len(self._pending) >= _RTU_REQUEST_SIZE:
            request = self._pending[:_RTU_REQUEST_SIZE]
            self._pending = self._pending[_RTU_REQUEST_SIZE:]
            self.requests += 1
            reply = rtu_reply(self.fault, request, exception_code=self.exception_code)
            if reply:
                os.write(self._fd, reply)
