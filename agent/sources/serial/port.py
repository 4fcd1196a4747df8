"""The serial adapter: a pyserial port read without blocking the event loop.

The port is opened and configured by pyserial; its file descriptor is then watched by
the event loop (`add_reader`), so a silent instrument costs nothing and a chatty one is
read as it talks. A vanished device (USB adapter pulled, pty closed) surfaces as
`DeviceUnreachable` from `wait_lost`, and the caller reopens it with back-off.

`on_data` runs as the loop's reader callback, where an exception would go to the
loop's exception handler and the port would go on being read as if nothing happened.
So the callback boundary catches it: reading stops and `wait_lost` raises it, as it is,
to the task that owns the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import serial

from agent.config.schema import SerialConfig
from agent.errors import DeviceUnreachable

READ_CHUNK = 4096


class SerialPort:
    def __init__(self, config: SerialConfig, on_data: Callable[[bytes], None]) -> None:
        self._config = config
        self._on_data = on_data
        self._port: serial.Serial | None = None
        self._lost: asyncio.Future[None] | None = None

    def open(self) -> None:
        config = self._config
        try:
            port = serial.Serial(
                config.device,
                baudrate=config.baudrate,
                parity=config.parity,
                bytesize=config.bytesize,
                stopbits=config.stopbits,
                timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnreachable(
                f"cannot open {config.device}: {exc}", connection=config.name
            ) from exc
        fd = port.fileno()
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        loop.add_reader(fd, self._readable, fd)
        self._port = port

    async def wait_lost(self) -> None:
        """Until reading stops: raises DeviceUnreachable when the device goes away, or
        what `on_data` raised."""
        assert self._lost is not None
        await asyncio.shield(self._lost)

    def write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise DeviceUnreachable("port is closed", connection=self._config.name)
        try:
            os.write(port.fileno(), data)
        except OSError as exc:
            self._fail(exc)
            raise DeviceUnreachable(f"write failed: {exc}", connection=self._config.name) from exc

    def discard_input(self) -> None:
        if self._port is not None:
            self._port.reset_input_buffer()

    def close(self) -> None:
        port, self._port = self._port, None
        lost, self._lost = self._lost, None
        if lost is not None and lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: whoever waited for it has stopped waiting
        elif lost is not None:
            lost.cancel()
        if port is None:
            return
        with contextlib.suppress(ValueError, OSError):  # gone with the device already
            asyncio.get_running_loop().remove_reader(port.fileno())
        port.close()

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the device (or the pty's other end) went away
            self._fail(exc)
            return
        if not data:
            self._fail(EOFError("end of file"))
            return
        try:
            self._on_data(data)
        except Exception as exc:  # the callback boundary: handed to wait_lost, not lost
            self._stop_reading(exc)

    def _fail(self, exc: BaseException) -> None:
        self._stop_reading(
            DeviceUnreachable(
                f"{self._config.device} went away: {exc}", connection=self._config.name
            )
        )

    def _stop_reading(self, error: Exception) -> None:
        if self._port is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._port.fileno())
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(error)
