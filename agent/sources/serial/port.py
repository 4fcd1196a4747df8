"""The serial adapter: a pyserial port read without blocking the event loop.

The port is opened and configured by pyserial; its file descriptor is then watched by
the event loop (`add_reader`), so a silent instrument costs nothing and a chatty one is
read as it talks. A vanished device (USB adapter pulled, pty closed) surfaces as
`DeviceUnreachable` from `wait_lost`, and the caller reopens it with back-off.

`on_data` runs as the loop's reader callback, where an exception would go to the
loop's exception handler and the port would go on being read as if nothing happened.
So the callback boundary catches it: reading stops and `wait_lost` raises it, as it is,
to the task that owns the port.

What pyserial and the OS raise is translated in one place, `SerialPort._error`: the type by
the table `ERRORS`, the reason by the error number (`REASONS`), never by the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
from collections.abc import Callable, Mapping

import serial

from agent.config.sections import InstrumentLine
from agent.errors import DeviceError, DeviceUnreachable

READ_CHUNK = 4096

# What opening, reading or writing a port raises, as the agent's errors; looked up along the
# exception's MRO. Each means the port cannot be used now: it is closed and reopened with
# back-off. What is not here is a bug and propagates.
ERRORS: Mapping[type[BaseException], type[DeviceError]] = {
    # pyserial's own (an OSError): cannot open, lock or configure (serialposix.py:320-401).
    serial.SerialException: DeviceUnreachable,
    # os.read / os.write on the descriptor: EIO once the device (or a pty's other end) is gone.
    OSError: DeviceUnreachable,
    # A setting pyserial or the driver will not take (an unsupported baud rate, ...).
    ValueError: DeviceUnreachable,
    # End of file on a read: the other end closed.
    EOFError: DeviceUnreachable,
}

# Why, by the error number the OS gave (on the exception or the one behind it), for the log.
REASONS: Mapping[int, str] = {
    errno.ENOENT: "no such device (unplugged, or a wrong path)",
    errno.ENODEV: "no such device (the adapter is gone)",
    errno.ENXIO: "no such device or address (the adapter is gone)",
    errno.EIO: "input/output error (the device was unplugged, or its other end closed)",
    errno.EACCES: "permission denied (is the agent's user in the device's group, dialout?)",
    errno.EPERM: "operation not permitted (is the agent's user in the device's group?)",
    errno.EBUSY: "device busy (another program has it open)",
    errno.ENOTTY: "not a serial port",
}


class SerialPort:
    def __init__(self, config: InstrumentLine, on_data: Callable[[bytes], None]) -> None:
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
        except Exception as exc:
            error = self._error("open", exc)
            if error is None:
                raise
            raise error from exc
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
            self._fail("write", exc)
            error = self._error("write", exc)
            if error is None:
                raise
            raise error from exc

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
            self._fail("read", exc)
            return
        if not data:
            self._fail("read", EOFError("end of file: the other end closed"))
            return
        try:
            self._on_data(data)
        except Exception as exc:  # the callback boundary: handed to wait_lost, not lost
            self._stop_reading(exc)

    def _fail(self, doing: str, exc: Exception) -> None:
        """Reading stops; `wait_lost` raises the agent's error for `exc`."""
        self._stop_reading(self._error(doing, exc) or exc)

    def _error(self, doing: str, exc: BaseException) -> DeviceError | None:
        """The agent's error for what `doing` the port raised; None if ERRORS does not know it."""
        kind = error_type(exc)
        if kind is None:
            return None
        device = self._config.device
        error = kind(f"cannot {doing} {device}: {describe(exc)}", connection=self._config.name)
        error.__cause__ = exc
        return error

    def _stop_reading(self, error: Exception) -> None:
        if self._port is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._port.fileno())
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(error)


def error_type(exc: BaseException) -> type[DeviceError] | None:
    """The agent's error type for `exc`, by the first of its classes that ERRORS lists."""
    return next((ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS), None)


def describe(exc: BaseException) -> str:
    """`exc` for the log: the reason for its error number first, when REASONS has one."""
    reason = REASONS.get(errno_of(exc) or 0)
    said = str(exc) or type(exc).__name__
    return f"{reason} ({said})" if reason else said


def errno_of(exc: BaseException) -> int | None:
    """The OS's error number on `exc` or on the error it was raised from (pyserial raises
    its own over termios's, whose number is its first argument)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        if isinstance(seen, termios.error) and seen.args and isinstance(seen.args[0], int):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None
