"""The config's plain sections, as the running agent holds them: no pydantic.

The file is validated by the pydantic models of `agent.config.schema`; the agent runs on
these frozen, slotted copies of the sections that need no resolving (`agent.config.resolve`
makes them, `section(cls, model)` field by field). pydantic is needed to check a file, not
to run on it: a config made of these (and of `agent.config.model`'s objects) pickles
without a pydantic class in it, so the agent can have its config validated by a process
that exits afterwards (`agent.config.confined`) and never import pydantic itself.

Each class has the fields of the schema model of the same section; defaults, bounds and
the keys' meaning are the schema's (one place to read them).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

MASK = "**********"


class Secret:
    """A string never shown: its repr and str are asterisks (pydantic's SecretStr's
    interface, without pydantic)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return Secret, (self._value,)


@dataclass(frozen=True, slots=True)
class MqttSection:
    host: str
    port: int
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    keepalive: int
    connect_timeout: float
    backoff_min: float
    backoff_max: float
    max_inflight: int
    max_config_payload: int


@dataclass(frozen=True, slots=True)
class QueueSection:
    path: str
    max_bytes: int
    max_age: float
    replay_rate: float
    synchronous: Literal["normal", "full"]
    commit_interval: float
    sync_interval: float
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class BatchSection:
    max_readings: int
    max_bytes: int
    max_delay: float
    flush_at_cycle_end: bool


@dataclass(frozen=True, slots=True)
class HealthSection:
    bucket: str | None
    interval: float


@dataclass(frozen=True, slots=True)
class ControlSection:
    socket: str
    group: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class PaasSection:
    url: str
    auth: Literal["api_key", "oauth"]
    api_key: Secret | None
    api_key_file: Path | None
    client_id: str | None
    client_secret: Secret | None
    client_secret_file: Path | None
    redirect_uri: str
    timeout: float
    retries: int


@dataclass(frozen=True, slots=True)
class LogSection:
    level: Literal["debug", "info", "warning", "error"]
    format: Literal["logfmt", "json", "console"]


@dataclass(frozen=True, slots=True)
class InstrumentLine:
    """A serial instrument's line and timing (its points and framing are the
    Instrument's, resolved)."""

    name: str
    device: str
    baudrate: int
    parity: Literal["N", "E", "O"]
    bytesize: Literal[7, 8]
    stopbits: Literal[1, 2]
    bucket: str | None
    format: Literal["nmea", "regex"]
    interval: float
    timeout: float
    encoding: str
    max_line: int
    timestamp: Literal["arrival", "gps"]
    backoff_max: float


Section = TypeVar("Section")


def section(cls: type[Section], model: object) -> Section:
    """`cls` with the same-named fields of `model` (a schema model); a secret stays one."""
    values: dict[str, Any] = {}
    for field in fields(cls):  # type: ignore[arg-type]
        value: Any = getattr(model, field.name)
        if hasattr(value, "get_secret_value"):
            value = Secret(value.get_secret_value())
        values[field.name] = value
    return cls(**values)
