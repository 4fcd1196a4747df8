"""Lines from a serial instrument: framing with a bounded buffer, regex field extraction.

Pure code over bytes and strings: the serial adapter feeds `LineFramer` whatever the
port gives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(slots=True)
class FramerStats:
    lines: int = 0
    overlong: int = 0  # lines dropped because they passed max_line without a terminator


class LineFramer:
    """Bytes in, complete lines out. Memory stays within `max_line` whatever comes in.

    A line longer than `max_line` is dropped whole, up to its terminator, and counted.
    A trailing carriage return is dropped (instruments end lines with \\r\\n).
    """

    def __init__(self, *, terminator: bytes, max_line: int) -> None:
        self._terminator = terminator
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False
        self.stats = FramerStats()

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        self._buffer += data
        while True:
            end = self._buffer.find(self._terminator)
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + len(self._terminator)]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self._max_line:
                self.stats.overlong += 1
                continue
            self.stats.lines += 1
            lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self._buffer) > self._max_line:
            if not self._discarding:
                self.stats.overlong += 1
            self._discarding = True
            # Keep only what could be the start of the terminator.
            del self._buffer[: len(self._buffer) - len(self._terminator) + 1]
        return lines

    def reset(self) -> None:
        self._buffer.clear()
        self._discarding = False


def regex_fields(pattern: re.Pattern[str], line: str) -> dict[str, str] | None:
    """The named groups of a line that matches in full; None when it does not."""
    match = pattern.fullmatch(line)
    if match is None:
        return None
    return {name: value for name, value in match.groupdict().items() if value is not None}
