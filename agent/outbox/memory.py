"""What the durable outbox holds in memory, with the accounting that goes with it.

Three kinds of collection, each with its bytes and seqs kept right here, so that the
outbox (agent.outbox.front and agent.outbox.disk) can decide when messages come and go
without counting them by hand: the memory lanes (messages not handed out yet: backlog
and live), the messages not yet on disk, and the lanes of rows read back from disk.
Plain bookkeeping: no disk, no clock, no event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from agent.outbox.port import Message
from agent.outbox.rows import Row

# Picks messages out by (seq, topic): the ones to drop or to forget.
Doomed = Callable[[int, str], bool]
# Picks out by (seq, when it was put) the unwritten messages a commit leaves for later.
Spared = Callable[[int, float], bool]


class MemoryLanes:
    """Messages in memory, not handed out, oldest first: backlog (made before the last
    connection came up) and live (made since); with their seqs and their bytes."""

    __slots__ = ("backlog", "bytes", "live", "resident")

    def __init__(self) -> None:
        self.backlog: deque[Message] = deque()
        self.live: deque[Message] = deque()
        self.resident: set[int] = set()  # seqs in the two deques
        self.bytes = 0

    def __iter__(self) -> Iterator[Message]:
        yield from self.backlog
        yield from self.live

    def add_live(self, message: Message) -> None:
        self.live.append(message)
        self.resident.add(message.seq)
        self.bytes += len(message.payload)

    def pop(self, lane: deque[Message]) -> Message:
        """The oldest message of `lane` (backlog or live), out of memory."""
        message = lane.popleft()
        self.resident.discard(message.seq)
        self.bytes -= len(message.payload)
        return message

    def to_backlog(self) -> None:
        """A connection came up: what is live now is backlog."""
        self.backlog.extend(self.live)
        self.live.clear()

    def discard(self, doomed: Doomed) -> None:
        """Take the messages `doomed(seq, topic)` picks out of both lanes."""
        for lane in (self.backlog, self.live):
            for message in [m for m in lane if doomed(m.seq, m.topic)]:
                lane.remove(message)
                self.resident.discard(message.seq)
                self.bytes -= len(message.payload)


class Unwritten:
    """Messages not on disk (yet), oldest first, with their bytes and when each was put."""

    __slots__ = ("bytes", "made", "messages")

    def __init__(self) -> None:
        self.messages: dict[int, Message] = {}
        self.made: dict[int, float] = {}  # seq -> the queue's time when it was put
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.messages)

    def __contains__(self, seq: int) -> bool:
        return seq in self.messages

    def add(self, message: Message, made: float) -> None:
        self.messages[message.seq] = message
        self.made[message.seq] = made
        self.bytes += len(message.payload)

    def pop(self, seq: int) -> Message | None:
        """The message `seq` off the list (None if it is not on it)."""
        message = self.messages.pop(seq, None)
        if message is not None:
            del self.made[seq]
            self.bytes -= len(message.payload)
        return message

    def first(self) -> Message | None:
        return next(iter(self.messages.values()), None)

    def first_made(self) -> float | None:
        """When the oldest was put (None: the list is empty)."""
        return next(iter(self.made.values()), None)

    def on_topic(self, topic: str) -> list[Message]:
        return [m for m in self.messages.values() if m.topic == topic]

    def batch(
        self, limit: int, *, upto: int | None = None, spare: Spared | None = None
    ) -> tuple[list[Message], bool]:
        """The oldest messages up to `limit` bytes (at least one), none newer than `upto`,
        none that `spare(seq, made)` spares; and whether any it could have taken are left."""
        batch: list[Message] = []
        size = 0
        for seq, message in self.messages.items():
            if upto is not None and seq > upto:
                break
            if spare is not None and spare(seq, self.made[seq]):
                continue
            if batch and size + len(message.payload) > limit:
                return batch, True
            batch.append(message)
            size += len(message.payload)
        return batch, False

    def restore(self, messages: Iterable[Message]) -> None:
        """Put `messages` back on the list (those not on it), keeping it oldest first;
        they are due for writing at once."""
        for message in messages:
            if message.seq not in self.messages:
                self.add(message, 0.0)
        self.messages = dict(sorted(self.messages.items()))
        self.made = {seq: self.made[seq] for seq in self.messages}


class ReadLane:
    """Committed messages read back from disk, oldest first, beyond `read`."""

    __slots__ = ("read", "rows")

    def __init__(self, read: int) -> None:
        self.read = read
        self.rows: deque[Row] = deque()

    def discard(self, doomed: Doomed) -> None:
        """Take the rows `doomed(seq, topic)` picks out."""
        self.rows = deque(r for r in self.rows if not doomed(r[0], r[1]))
