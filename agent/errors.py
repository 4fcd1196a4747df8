"""One small tree of errors, rooted at AgentError, that tells the caller what to do next."""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Anything orio-agent raises on purpose."""


class TransientError(AgentError):
    """Back off and try again: a broker that is away, a device that did not answer."""


class RejectedInput(AgentError):
    """Input that will never be accepted as it is: a bad config file, a bad cloud message."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file, located as precisely as we can."""

    key: str  # e.g. "modbus[0].devices[1].points[3].type"
    message: str
    line: int | None = None

    def render(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(RejectedInput):
    """The config file is unusable; every problem found is listed, not just the first."""

    exit_code = 78  # EX_CONFIG

    def __init__(self, path: str, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problem.render(path) for problem in problems))


class DeviceError(TransientError):
    """A Modbus request failed on the way: time-out, disconnect, garbled frame."""

    def __init__(self, message: str, *, connection: str, unit: int | None = None) -> None:
        self.connection = connection
        self.unit = unit
        super().__init__(message)


class DeviceTimeout(DeviceError):
    """The unit did not answer within the connection's time-out."""


class DeviceUnreachable(DeviceError):
    """The connection itself (socket or serial device) could not be opened or was lost."""


class DeviceRefused(AgentError):
    """The unit answered with a Modbus exception: it understood and said no."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3

    def __init__(
        self, code: int, *, connection: str, unit: int, function: int, address: int, count: int
    ) -> None:
        self.code = code
        self.connection = connection
        self.unit = unit
        self.function = function
        self.address = address
        self.count = count
        super().__init__(
            f"unit {unit} refused function {function} at {address} (count {count}):"
            f" exception code {code}"
        )

    @property
    def is_layout_problem(self) -> bool:
        """The request touched addresses the unit does not have: worth splitting."""
        return self.code in (self.ILLEGAL_DATA_ADDRESS, self.ILLEGAL_DATA_VALUE)


class QueueError(AgentError):
    """The queue's file cannot do what was asked; the outbox carries on from memory."""

    partial: object = None  # what a failed write did change before it failed


class QueueDiskFull(QueueError):
    """No space left for the queue's file (SQLITE_FULL, ENOSPC)."""


class QueueIOError(QueueError):
    """The disk failed a read or a write (SQLITE_IOERR, cannot open, anything unforeseen)."""


class QueueCorrupt(QueueError):
    """The file is not a healthy database (SQLITE_CORRUPT, SQLITE_NOTADB, a failed check)."""


class QueueReadOnly(QueueError):
    """The file or its file system cannot be written (SQLITE_READONLY, EROFS, EACCES)."""
