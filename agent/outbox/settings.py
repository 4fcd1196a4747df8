"""The durable outbox's settings, as the service builds them from the config file.

Separate from agent.outbox.disk so that the parts of the outbox that need a setting
(agent.outbox.front) can name the type without importing the queue that uses them.
`QueueSettings` is imported by the service from agent.outbox.disk, where it stays
importable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class QueueSettings:
    path: Path
    max_bytes: int  # queue.db + -wal + -shm
    max_age: float
    replay_rate: float  # backlog messages per second; 0 = unlimited
    synchronous: str = "normal"
    commit_interval: float = 0.5
    sync_interval: float = 2.0
    memory_bytes: int = 8 * 1024 * 1024  # unwritten messages held while the disk fails
    commit_bytes: int = 512 * 1024  # a commit at once beyond this (a quarter of the cache)
    ack_batch: int = 32  # acknowledged messages that force a commit of their deletion
