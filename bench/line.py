"""A Modbus RTU line's physical limit: bits on the wire per read request and response.

Each character is 11 bits (start, 8 data, parity or a second stop bit, stop: the spec's
frame), a read request is 8 bytes (unit, function, address, count, CRC), its response
5 + 2 x count bytes (unit, function, byte count, data, CRC), and each frame is followed
by 3.5 characters of silence. (Above 19,200 baud the spec allows a fixed 1.75 ms silence
instead; the agent and this figure both use 3.5 characters at every speed.)
"""

from __future__ import annotations

BITS_PER_CHAR = 11
SILENCE_CHARS = 3.5
REQUEST_BYTES = 8
RESPONSE_OVERHEAD_BYTES = 5


def response_bytes(registers: int) -> int:
    return RESPONSE_OVERHEAD_BYTES + 2 * registers


def transaction_bits(registers: int) -> float:
    """Bits a read of `registers` registers occupies the line: both frames and silences."""
    return BITS_PER_CHAR * (REQUEST_BYTES + response_bytes(registers) + 2 * SILENCE_CHARS)


def max_requests_per_second(baudrate: int, registers: int) -> float:
    """The most reads per second the line can carry, back to back."""
    return baudrate / transaction_bits(registers)


def unit_turnaround(baudrate: int, registers: int) -> float:
    """Seconds from a request's first byte to its response's last on a real line.

    The request, the silence before the unit answers, and the response; the silence after
    the response is the master's to keep (the agent's `request_delay`).
    """
    chars = REQUEST_BYTES + SILENCE_CHARS + response_bytes(registers)
    return BITS_PER_CHAR * chars / baudrate
