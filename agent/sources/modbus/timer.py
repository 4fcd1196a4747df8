"""Waiting until a moment to within tens of microseconds: a serial line's silences.

`asyncio.sleep` wakes up to a millisecond late: the selector rounds its time-out up to
whole milliseconds (epoll_wait counts in them) and the kernel adds its timer slack (50 µs).
The 1.75 ms an RTU line keeps between frames above 19,200 baud lasted 2.09 ms so (median
of 2,000 waits, 341 µs late). A Linux timerfd armed for the deadline and watched by the
event loop woke it 36 µs late (median; 73-86 µs at the 95th percentile) for the same CPU
per wait as `asyncio.sleep` (33-36 µs against 37-38). Sleeping to within a millisecond
and spinning the rest was never late, but spinning took a quarter of a core in a loop of
such waits. (Measured on the bench's machine; bench/README.md, "rtu".)

Without timerfd (not Linux, no descriptor left) a `Timer` falls back to `asyncio.sleep`:
longer by up to a millisecond, never shorter.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time

_CLOCK_MONOTONIC = 1  # time.monotonic's clock (Linux <time.h>)
_TFD_TIMER_ABSTIME = 1
_NANOSECONDS = 1_000_000_000
_EXPIRATIONS = 8  # bytes a timerfd read gives: the count of expirations since the last


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc_timerfd() -> tuple[ctypes._NamedFuncPointer, ctypes._NamedFuncPointer] | None:
    """libc's timerfd_create and timerfd_settime, or None where there are none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    create.restype = ctypes.c_int
    settime.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.POINTER(_Itimerspec),
    ]
    settime.restype = ctypes.c_int
    return create, settime


_TIMERFD = _libc_timerfd()


class Timer:
    """One timerfd, watched by the running loop and armed again for each wait.

    For one waiter at a time (a line's requests are one at a time). Made in a running loop
    and closed in it; a closed timer makes a new descriptor at its next wait.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._due: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._when = _Itimerspec()

    async def sleep_until(self, deadline: float) -> None:
        """Return at `deadline` (a `time.monotonic()` value), at once if it has passed.

        Nothing is awaited when it has passed: the caller goes on without giving up the
        event loop.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if not self._arm(deadline):
            await asyncio.sleep(remaining)
            return
        self._deadline = deadline
        due = self._due = asyncio.get_running_loop().create_future()
        try:
            await due
        finally:
            self._due = None  # cancelled: the timer may still expire, and is read then

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _arm(self, deadline: float) -> bool:
        """Set the timer to expire at `deadline`; False when there is no timerfd."""
        fd = self._fd if self._fd is not None else self._open()
        if fd is None or _TIMERFD is None:
            return False
        value = self._when.it_value
        value.tv_sec, value.tv_nsec = divmod(int(deadline * _NANOSECONDS), _NANOSECONDS)
        return int(_TIMERFD[1](fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._when), None)) == 0

    def _open(self) -> int | None:
        """A new timerfd, watched by the running loop; None when there is none to have."""
        if _TIMERFD is None:
            return None
        fd = int(_TIMERFD[0](_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            return None
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._expired, fd)
        return fd

    def _expired(self, fd: int) -> None:
        try:
            os.read(fd, _EXPIRATIONS)
        except BlockingIOError:  # armed again since, for later
            return
        # Before the deadline: an earlier arming's expiry (a cancelled wait), not this one's.
        if self._due is not None and not self._due.done() and time.monotonic() >= self._deadline:
            self._due.set_result(None)
