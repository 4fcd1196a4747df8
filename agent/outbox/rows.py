"""A message as the queue's file holds it: the table, the row, the packed payload.

Separate from agent.outbox.store (which runs the SQL) and from the outbox (which writes
messages and hands rows out) because all of them, and the tools that read a queue file,
need the same format: the column order, the codec of a payload, and the conversions
between a row and a `Message`. Plain data and pure functions; no SQLite call is made
here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from agent.clock import Stamp
from agent.outbox.port import Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL,
    wall_ms INTEGER NOT NULL,
    boot_ms INTEGER NOT NULL
)
"""
COLUMNS = "seq, topic, payload, codec, boot_id, wall_ms, boot_ms"
# What the agent keeps beside its messages, committed with them (aggregates' open windows).
STATE_SCHEMA = "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value BLOB NOT NULL)"
JOURNAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state_journal"
    " (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, value BLOB NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class StateWrite:
    """What one commit keeps of a state: a snapshot (replacing the last one and its
    journal), and/or entries appended to its journal."""

    snapshot: bytes | None = None
    journal: tuple[bytes, ...] = ()  # entries to append, oldest first


# A state's provider: its write for the next commit; with `whole`, a snapshot of all it
# holds (after a commit that failed, whatever that commit's write held is not on disk).
StateProvider = Callable[[bool], StateWrite]


# A row as stored and read back: (seq, topic, packed payload, codec, boot_id, wall_ms, boot_ms)
Row = tuple[int, str, bytes, int, str, int, int]
# A message to store: (seq, topic, payload as put, boot_id, wall_ms, boot_ms); packed by
# the store, in the I/O thread (zlib releases the GIL: compression costs the event loop
# nothing).
Unpacked = tuple[int, str, bytes, str, int, int]

_RAW, _ZLIB = 0, 1
_ZLIB_LEVEL = 1  # fast; JSON batches shrink 4-8x even at this level


def unpack_payload(payload: bytes, codec: int) -> bytes:
    """A stored payload as it was put (also for tools reading the file)."""
    return zlib.decompress(payload) if codec == _ZLIB else bytes(payload)


def pack_payload(payload: bytes) -> tuple[bytes, int]:
    """What is written: zlib when it saves space (flash wear), the payload as it is if not."""
    packed = zlib.compress(payload, _ZLIB_LEVEL)
    return (packed, _ZLIB) if len(packed) < len(payload) else (payload, _RAW)


def packed_row(message: Unpacked) -> Row:
    """A message to store as the row written for it."""
    seq, topic, payload, boot_id, wall_ms, boot_ms = message
    return (seq, topic, *pack_payload(payload), boot_id, wall_ms, boot_ms)


def unpacked(message: Message) -> Unpacked:
    """A message as it is handed to the store to be written."""
    stamp = message.stamp
    return (
        message.seq,
        message.topic,
        message.payload,
        stamp.boot_id,
        stamp.wall_ms,
        stamp.boot_ms,
    )


def message_of(row: Row) -> Message:
    """A row read back as the message that was put."""
    seq, topic, packed, codec, boot_id, wall_ms, boot_ms = row
    return Message(seq, topic, unpack_payload(packed, codec), Stamp(boot_id, wall_ms, boot_ms))
