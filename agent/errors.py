"""One small tree of errors, rooted at AgentError, that tells the caller what to do next."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal


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
    file: str | None = None  # another file than the config's (one it includes)

    def render(self, path: str) -> str:
        path = self.file or path
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
    """A device request failed on the way: time-out, disconnect, garbled frame."""

    def __init__(self, message: str, *, connection: str, unit: int | None = None) -> None:
        self.connection = connection
        self.unit = unit
        super().__init__(message)


class DeviceTimeout(DeviceError):
    """The unit did not answer within the connection's time-out: the line stayed silent."""


class DeviceUnreachable(DeviceError):
    """The connection itself (socket or serial device) could not be opened or was lost."""


class DeviceProtocolError(DeviceError):
    """Something answered, but not with a reply to the request: a bad CRC, a short or garbled
    frame, another transaction's or another unit's reply, the wrong function, too few values.

    A line that answers garbage has a wiring, baud-rate or addressing problem, not a unit that
    is away; `received` holds what came in (as far as the adapter can tell), for the log.
    """

    def __init__(
        self, message: str, *, connection: str, unit: int | None = None, received: bytes = b""
    ) -> None:
        self.received = received
        super().__init__(message, connection=connection, unit=unit)


RefusalAction = Literal["retry", "split", "park"]


class DeviceRefused(AgentError):
    """The unit answered with a Modbus exception: it understood and said no.

    What to do next depends on the code (`action`, from the one table `ACTIONS`): "retry"
    (the unit cannot serve now: back off as for a time-out and ask again), "split" (the
    request covers addresses the unit lacks: read them in smaller pieces), "park" (the unit
    will not serve these points: leave them for a while).
    """

    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3
    SERVER_DEVICE_FAILURE = 4
    ACKNOWLEDGE = 5
    SERVER_DEVICE_BUSY = 6
    MEMORY_PARITY_ERROR = 8
    GATEWAY_PATH_UNAVAILABLE = 10
    GATEWAY_TARGET_FAILED_TO_RESPOND = 11

    # The Modbus application protocol's exception codes (V1.1b3, section 7), for the logs.
    MEANINGS: ClassVar[Mapping[int, str]] = {
        ILLEGAL_FUNCTION: "illegal function",
        ILLEGAL_DATA_ADDRESS: "illegal data address",
        ILLEGAL_DATA_VALUE: "illegal data value",
        SERVER_DEVICE_FAILURE: "server device failure",
        ACKNOWLEDGE: "acknowledge",
        SERVER_DEVICE_BUSY: "server device busy",
        MEMORY_PARITY_ERROR: "memory parity error",
        GATEWAY_PATH_UNAVAILABLE: "gateway path unavailable",
        GATEWAY_TARGET_FAILED_TO_RESPOND: "gateway target device failed to respond",
    }

    # What each code tells the poller to do (agent.sources.modbus.poller says how).
    ACTIONS: ClassVar[Mapping[int, RefusalAction]] = {
        ILLEGAL_FUNCTION: "park",  # this unit has no such table: no smaller request helps
        ILLEGAL_DATA_ADDRESS: "split",
        ILLEGAL_DATA_VALUE: "split",  # many units say it of a count that runs past their map
        SERVER_DEVICE_FAILURE: "retry",
        ACKNOWLEDGE: "retry",  # accepted, still working on something long: ask again later
        SERVER_DEVICE_BUSY: "retry",
        GATEWAY_PATH_UNAVAILABLE: "retry",  # the gateway is overloaded or being set up
        GATEWAY_TARGET_FAILED_TO_RESPOND: "retry",  # the gateway's time-out for the unit
        # Memory parity (defined for file records, never a read) says the unit needs service.
        MEMORY_PARITY_ERROR: "park",
    }
    # A code the standard does not define (a vendor's own, the obsolete 7) says nothing about
    # timing or layout. Parked, it costs the points of that one request the poller's
    # REFUSED_RETRY_CYCLES; retried like a busy unit, a code that a unit always gives for one
    # request would cut every cycle short there and keep the whole unit failing.
    UNKNOWN_ACTION: ClassVar[RefusalAction] = "park"

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
    def meaning(self) -> str:
        """What the code stands for: "illegal data address", ..."""
        return self.MEANINGS.get(self.code, "not a standard exception code")

    @property
    def action(self) -> RefusalAction:
        """What to do next: "retry", "split" or "park" (see `ACTIONS`)."""
        return self.ACTIONS.get(self.code, self.UNKNOWN_ACTION)

    @property
    def is_layout_problem(self) -> bool:
        """The request touched addresses the unit does not have: worth splitting."""
        return self.action == "split"


class BrokerError(TransientError):
    """The MQTT broker could not be reached, would not have us, or dropped us."""


class BrokerUnreachable(BrokerError):
    """No connection: refused, reset, timed out, a name that does not resolve, or closed
    before the broker said anything (its CONNACK)."""


class BrokerTlsError(BrokerError):
    """The TLS handshake failed: the broker's certificate is not trusted or is for another
    name, or the two ends share no protocol. A configuration problem more often than not."""


class BrokerRefused(BrokerError):
    """The broker answered the CONNECT with a refusal (a CONNACK return code)."""

    def __init__(self, message: str, *, code: int) -> None:
        self.code = code
        super().__init__(message)


class BrokerAuthRefused(BrokerRefused):
    """Refused for the credentials: bad user name or password, not authorised."""


class NotConnected(BrokerError):
    """No connection to the broker right now."""


class ConnectionLost(BrokerError):
    """The connection dropped before the broker acknowledged the message."""


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


class PaasError(AgentError):
    """The PaaS REST API refused a request or answered what cannot be used."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        self.status = status
        self.code = code  # the document's error code, e.g. "UNAUTHORIZED_ERROR"
        super().__init__(message)


class PaasAuthError(PaasError):
    """401 or 403: the API key or the client credentials are not accepted."""


class PaasUnavailable(PaasError):
    """5xx, time-outs or network errors, after the retries."""
