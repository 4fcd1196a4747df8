"""Clock safety: is the wall clock trustworthy, and how to correct times taken before it was.

Gateways without a battery-backed clock boot in 1970, or at the time they were switched
off, until NTP sets the clock. Every queued message keeps the boot it was made in and
the wall clock's offset from CLOCK_BOOTTIME (which counts from boot, suspend included,
and is never stepped). When the offset has changed since — the clock was stepped — the
message's timestamps are shifted by the difference before it is sent: the clock as it
is now is believed. Nothing is sent while the wall clock is before `FLOOR_MS`, a date
this build of the agent cannot predate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FLOOR_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z: no clock reading before this is true
STEP_TOLERANCE_MS = 2_000  # offset changes below this are drift, not a step
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
_TIMESTAMP = re.compile(rb'"timestamp":"(\d+)"')


def read_boot_id() -> str:
    try:
        return _BOOT_ID_PATH.read_text().strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Stamp:
    """When a message was made, in terms that survive a clock step."""

    boot_id: str
    wall_ms: int  # the wall clock then
    boot_ms: int  # CLOCK_BOOTTIME then

    @property
    def offset_ms(self) -> int:
        return self.wall_ms - self.boot_ms


class Clock:
    def __init__(
        self,
        *,
        wall_ms: Callable[[], int] | None = None,
        boot_ms: Callable[[], int] | None = None,
        boot_id: str | None = None,
        floor_ms: int = FLOOR_MS,
    ) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._boot_ms = boot_ms or (lambda: time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000)
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self.floor_ms = floor_ms

    def wall_ms(self) -> int:
        """Wall-clock milliseconds since the epoch: what readings are timestamped with."""
        return self._wall_ms()

    def stamp(self) -> Stamp:
        return Stamp(self.boot_id, self._wall_ms(), self._boot_ms())

    def trusted(self) -> bool:
        return self._wall_ms() >= self.floor_ms

    def correction_ms(self, made: Stamp) -> int | None:
        """Milliseconds to add to the timestamps of a message made at `made`.

        0 when the clock has not been stepped since; None when the message's time cannot
        be known: it was made in another boot with a clock that was not yet set.
        """
        if made.boot_id != self.boot_id:
            # Another boot: its offset cannot be compared with ours. Its times are right
            # if its clock was set when it was made.
            return 0 if made.wall_ms >= self.floor_ms else None
        delta = (self._wall_ms() - self._boot_ms()) - made.offset_ms
        return delta if abs(delta) > STEP_TOLERANCE_MS else 0


def shift_timestamps(payload: bytes, delta_ms: int) -> bytes:
    """Add `delta_ms` to every "timestamp" in a data payload the agent encoded."""
    return _TIMESTAMP.sub(lambda m: b'"timestamp":"%d"' % (int(m.group(1)) + delta_ms), payload)
