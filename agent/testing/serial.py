"""A serial line with the test at its other end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.errors import DeviceUnreachable


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
