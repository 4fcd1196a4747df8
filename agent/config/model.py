"""The config as the agent runs on it: frozen, every default, secret and target resolved.

Made once by `agent.config.resolve` from a file that passed every check. Nothing here
is Optional that the agent would have to narrow later: a point knows its bucket, table,
0-based address, type and byte order; a device its request limits; a setting its
target. Optional fields mean "not wanted" (no scale, no deadband, no health bucket).

Sections that need no resolving (queue, batch, log, health, mqtt, ...) are plain copies
of the schema's models (agent.config.sections). Nothing here imports pydantic: a
`Config` pickles without it (agent.config.confined).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from agent.config.sections import (
    MASK as MASK,
)
from agent.config.sections import (
    BatchSection,
    ControlSection,
    HealthSection,
    InstrumentLine,
    LogSection,
    MqttSection,
    PaasSection,
    QueueSection,
    Secret,
)
from agent.pipeline.expressions import Expression
from agent.pipeline.readings import ValueType
from agent.sources.modbus.plan import Limits
from agent.sources.modbus.points import ByteOrder, PointType, Table

# How requests are framed: MBAP (Modbus TCP), RTU (binary with CRC, on a serial line or
# a TCP socket), ASCII (hex text between ':' and CR LF, on a serial line).
Framing = Literal["mbap", "rtu", "ascii"]

RTU_CHAR_BITS = 11  # start, 8 data, parity or a second stop, stop: the specification's frame
RTU_FIXED_SILENCE = 0.00175  # seconds, above 19200 baud (Modbus over serial line, 2.5.1.1)


def rtu_silence(baudrate: int) -> float:
    """The inter-frame silence the Modbus serial line specification asks for: 3.5
    character times up to 19200 baud, a fixed 1.75 ms above (3.5 characters would be
    0.33 ms at 115200, shorter than many slaves keep)."""
    if baudrate > 19200:
        return RTU_FIXED_SILENCE
    return 3.5 * RTU_CHAR_BITS / baudrate


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A point's windowed aggregates (agent.pipeline.aggregates). One object serves every
    point with the same window, functions and names (a thousand points, one aggregate)."""

    window_s: int
    functions: tuple[str, ...]
    names: tuple[tuple[str, str], ...] = ()  # (function, the id it publishes instead)

    def ids(self, point_id: str) -> tuple[tuple[str, str], ...]:
        """(function, the id it publishes): `<point id>_<function>` unless `names` says."""
        names = dict(self.names)
        return tuple((f, names.get(f, f"{point_id}_{f}")) for f in self.functions)


@dataclass(frozen=True, slots=True)
class Point:
    """One Modbus value to read and publish."""

    id: str
    bucket: str
    table: Table
    address: int  # 0-based offset in its table
    type: PointType
    length: int | None  # string and hex: registers
    width: int  # registers (or bits) it occupies
    bit: int | None
    byte_order: ByteOrder
    scale: float | None
    offset: float | None
    shape: ValueType
    deadband: float | None
    max_silence: float | None
    interval: float | None  # None: every cycle of its device
    alias: str | None = None  # its data shape's, in the cloud
    unit: str | None = None
    publish: bool = True  # False: only an input of derived points and aggregates
    aggregate: Aggregate | None = None

    @property
    def location(self) -> tuple[Table, int]:
        return self.table, self.address


@dataclass(frozen=True, slots=True)
class Device:
    """One unit on a Modbus connection."""

    name: str
    unit: int
    interval: float
    byte_order: ByteOrder
    limits: Limits
    backoff_max: float
    points: tuple[Point, ...]
    template: str | None = None  # the template its points came from, if any


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """A serial line's device and framing (RTU connections; instruments have their own)."""

    device: str
    baudrate: int
    parity: Literal["N", "E", "O"]
    bytesize: Literal[7, 8]
    stopbits: Literal[1, 2]
    silence: float  # seconds of quiet line between frames (rtu_silence, or inter_frame)
    low_latency: bool  # the USB adapter's low-latency mode
    rs485: bool  # the kernel's RS-485 mode (RTS driven by the driver)

    def __str__(self) -> str:
        return self.device


@dataclass(frozen=True, slots=True)
class Connection:
    """One Modbus connection, a TCP endpoint or a serial line, and the units on it."""

    name: str
    endpoint: TcpEndpoint | SerialSettings
    framing: Framing
    timeout: float
    connect_delay: float
    request_delay: float
    close_after_cycle: bool
    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class InstrumentPoint:
    """One value taken from an instrument's lines."""

    id: str
    bucket: str
    field: str
    shape: ValueType
    scale: float | None
    offset: float | None
    deadband: float | None
    max_silence: float | None
    alias: str | None = None  # its data shape's, in the cloud
    unit: str | None = None
    publish: bool = True
    aggregate: Aggregate | None = None


@dataclass(frozen=True, slots=True)
class Instrument:
    """A serial instrument: its line settings (`line`), framing and points."""

    name: str
    line: InstrumentLine
    pattern: re.Pattern[str] | None
    request: bytes | None  # escapes resolved, encoded
    terminator: bytes
    points: tuple[InstrumentPoint, ...]


@dataclass(frozen=True, slots=True)
class Derived:
    """A point computed from others' latest values (agent.pipeline.derive)."""

    id: str
    bucket: str
    expression: Expression
    shape: ValueType
    deadband: float | None
    max_silence: float | None
    max_input_age: float
    alias: str | None
    unit: str | None
    publish: bool
    aggregate: Aggregate | None


@dataclass(frozen=True, slots=True)
class RegisterTarget:
    """A setting written to a coil or holding registers of a device."""

    device: str
    table: Table
    address: int
    type: PointType
    length: int | None
    byte_order: ByteOrder


AgentKnob = Literal["device.interval", "bucket.max_delay", "log.level"]


@dataclass(frozen=True, slots=True)
class AgentTarget:
    """One of the agent's own settings: `name` is the device or bucket ("" for log.level)."""

    knob: AgentKnob
    name: str

    def __str__(self) -> str:
        if self.knob == "log.level":
            return "log.level"
        kind, field = self.knob.split(".")
        return f"{kind}.{self.name}.{field}"


@dataclass(frozen=True, slots=True)
class Setting:
    """One value the cloud may set, with its bounds."""

    group: str
    id: str
    target: RegisterTarget | AgentTarget
    min: float | None
    max: float | None
    enum: tuple[bool | int | float | str, ...] | None
    pattern: re.Pattern[str] | None
    scale: float | None
    offset: float | None
    value_type: Literal["integer", "boolean"] | None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole agent's config."""

    thing_id: str
    secret: Secret
    mqtt: MqttSection
    queue: QueueSection
    batch: BatchSection
    log: LogSection
    health: HealthSection
    control: ControlSection
    paas: PaasSection
    connections: tuple[Connection, ...]
    instruments: tuple[Instrument, ...]
    settings: tuple[Setting, ...]
    derived: tuple[Derived, ...] = ()

    def all_devices(self) -> list[tuple[Connection, Device]]:
        return [(conn, device) for conn in self.connections for device in conn.devices]

    def groups(self) -> dict[str, list[Setting]]:
        found: dict[str, list[Setting]] = {}
        for setting in self.settings:
            found.setdefault(setting.group, []).append(setting)
        return found
