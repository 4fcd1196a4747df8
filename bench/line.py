"""A Modbus RTU line's physical limit: bits on the wire per read request and response.

Each character is 11 bits (start, 8 data, parity or a second stop bit, stop: the spec's
frame), a read request is 8 bytes (unit, function, address, count, CRC), its response
5 + 2 x count bytes (unit, function, byte count, data, CRC), and each frame is followed
by the specification's silence: 3.5 characters up to 19,200 baud, 1.75 ms above
(`agent.config.model.rtu_silence`, which the agent keeps too).
"""

from __future__ import annotations

from agent.config.model import RTU_CHAR_BITS as BITS_PER_CHAR
from agent.config.model import rtu_silence

REQUEST_BYTES = 8
RESPONSE_OVERHEAD_BYTES = 5


def response_bytes(registers: int) -> int:
    return RESPONSE_OVERHEAD_BYTES + 2 * registers


def transaction_seconds(baudrate: int, registers: int) -> float:
    """Seconds a read of `registers` registers occupies the line: both frames and silences."""
    frames = BITS_PER_CHAR * (REQUEST_BYTES + response_bytes(registers)) / baudrate
    return frames + 2 * rtu_silence(baudrate)


def transaction_bits(baudrate: int, registers: int) -> float:
    """The same in bit times of the line."""
    return transaction_seconds(baudrate, registers) * baudrate


def max_requests_per_second(baudrate: int, registers: int) -> float:
    """The most reads per second the line can carry, back to back."""
    return 1 / transaction_seconds(baudrate, registers)


def unit_turnaround(baudrate: int, registers: int) -> float:
    """Seconds from a request's first byte to its response's last on a real line.

    The request, the silence before the unit answers, and the response; the silence after
    the response is the master's to keep (the agent's inter-frame silence).
    """
    frames = BITS_PER_CHAR * (REQUEST_BYTES + response_bytes(registers)) / baudrate
    return frames + rtu_silence(baudrate)
