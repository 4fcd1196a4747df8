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
from dataclasses import FrozenInstanceError, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

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
class PointSpec:
    """What a point is besides its id, location and alias: its bucket, type, decoding and
    filtering. Points are many and specs few (a device's points mostly differ only by id
    and address), so `resolve` gives every point with the same spec one object."""

    bucket: str
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
    unit: str | None = None
    publish: bool = True  # False: only an input of derived points and aggregates
    aggregate: Aggregate | None = None


_POINT_FIELDS = (
    "id",
    "bucket",
    "table",
    "address",
    "type",
    "length",
    "width",
    "bit",
    "byte_order",
    "scale",
    "offset",
    "shape",
    "deadband",
    "max_silence",
    "interval",
    "alias",
    "unit",
    "publish",
    "aggregate",
)


class Point:
    """One Modbus value to read and publish: frozen, equal and hashed by value, with
    every attribute it had as a dataclass (`bucket`, `table`, `address`, `type`, ...).

    Of its own it holds its id, its location and its alias (64 bytes; the dataclass of
    nineteen fields took 184); the rest is its `spec`. `resolve` builds it with
    `Point.sharing`, giving one location tuple to every point at the same register and
    one spec to every point alike, on whatever device (`resolve.Shared`): 20,000 points
    of 200 kinds hold 200 of each. Built field by field (`Point(id=..., bucket=...,
    ...)`), a point has a spec and a location of its own."""

    __slots__ = ("alias", "id", "location", "spec")

    if TYPE_CHECKING:  # its slots, read-only as a frozen dataclass's fields are

        @property
        def id(self) -> str: ...

        @property
        def location(self) -> tuple[Table, int]: ...  # its table and 0-based offset in it

        @property
        def alias(self) -> str | None: ...  # its data shape's, in the cloud

        @property
        def spec(self) -> PointSpec: ...

    def __init__(
        self,
        id: str,
        bucket: str,
        table: Table,
        address: int,
        type: PointType,
        length: int | None,
        width: int,
        bit: int | None,
        byte_order: ByteOrder,
        scale: float | None,
        offset: float | None,
        shape: ValueType,
        deadband: float | None,
        max_silence: float | None,
        interval: float | None,
        alias: str | None = None,
        unit: str | None = None,
        publish: bool = True,
        aggregate: Aggregate | None = None,
    ) -> None:
        spec = PointSpec(
            bucket,
            type,
            length,
            width,
            bit,
            byte_order,
            scale,
            offset,
            shape,
            deadband,
            max_silence,
            interval,
            unit,
            publish,
            aggregate,
        )
        _fill(self, id, (table, address), alias, spec)

    @classmethod
    def sharing(
        cls, id: str, location: tuple[Table, int], spec: PointSpec, alias: str | None = None
    ) -> Point:
        """A point that holds `location` and `spec` themselves (objects other points share)."""
        point = object.__new__(cls)
        _fill(point, id, location, alias, spec)
        return point

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled as its four objects: the pickle's memo keeps the shared ones shared.
        return (_unpickled, (self.id, self.location, self.spec, self.alias))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple[str, tuple[Table, int], str | None, PointSpec]:
        return self.id, self.location, self.alias, self.spec

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Point)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _POINT_FIELDS)
        return f"Point({shown})"

    @property
    def table(self) -> Table:
        return self.location[0]

    @property
    def address(self) -> int:  # 0-based offset in its table
        return self.location[1]

    @property
    def bucket(self) -> str:
        return self.spec.bucket

    @property
    def type(self) -> PointType:
        return self.spec.type

    @property
    def length(self) -> int | None:  # string and hex: registers
        return self.spec.length

    @property
    def width(self) -> int:  # registers (or bits) it occupies
        return self.spec.width

    @property
    def bit(self) -> int | None:
        return self.spec.bit

    @property
    def byte_order(self) -> ByteOrder:
        return self.spec.byte_order

    @property
    def scale(self) -> float | None:
        return self.spec.scale

    @property
    def offset(self) -> float | None:
        return self.spec.offset

    @property
    def shape(self) -> ValueType:
        return self.spec.shape

    @property
    def deadband(self) -> float | None:
        return self.spec.deadband

    @property
    def max_silence(self) -> float | None:
        return self.spec.max_silence

    @property
    def interval(self) -> float | None:  # None: every cycle of its device
        return self.spec.interval

    @property
    def unit(self) -> str | None:
        return self.spec.unit

    @property
    def publish(self) -> bool:  # False: only an input of derived points and aggregates
        return self.spec.publish

    @property
    def aggregate(self) -> Aggregate | None:
        return self.spec.aggregate


def _fill(
    point: Point, id: str, location: tuple[Table, int], alias: str | None, spec: PointSpec
) -> None:
    set_slot = object.__setattr__
    set_slot(point, "id", id)
    set_slot(point, "location", location)
    set_slot(point, "alias", alias)
    set_slot(point, "spec", spec)


def _unpickled(id: str, location: tuple[Table, int], spec: PointSpec, alias: str | None) -> Point:
    return Point.sharing(id, location, spec, alias)


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

    def __reduce__(self) -> tuple[object, ...]:
        # Its points by column, so that unpickled they leave nothing behind but
        # themselves: a point pickled on its own leaves the tuple of its arguments in the
        # unpickler's memo until the whole config is read, 20,000 tuples of 64 bytes
        # between the points, memory the process keeps (2.86 MiB resident for the
        # config of 20,000 points read this way, 3.88 MiB point by point).
        points = self.points
        rest = {field.name: getattr(self, field.name) for field in fields(self)}
        del rest["points"]
        columns = (
            tuple(point.id for point in points),
            tuple(point.location for point in points),
            tuple(point.spec for point in points),
            tuple(point.alias for point in points),
        )
        return (_unpickled_device, (rest, *columns))


def _unpickled_device(
    rest: dict[str, Any],
    ids: tuple[str, ...],
    locations: tuple[tuple[Table, int], ...],
    specs: tuple[PointSpec, ...],
    aliases: tuple[str | None, ...],
) -> Device:
    return Device(points=tuple(map(Point.sharing, ids, locations, specs, aliases)), **rest)


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
