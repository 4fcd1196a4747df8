"""What the config file may say: its sections and keys, their types, bounds and defaults.

These pydantic models are the file's shape and nothing more. They are frozen, and a
model here is never handed to the rest of the agent as it is when something in it
still needs resolving (a point's table and offset, a bucket inherited from its device,
a setting's target): `agent.config.resolve` turns them into the frozen objects of
`agent.config.model`, once, after `agent.config.checks` has found nothing wrong.

`AgentSettings` is the root. It is a pydantic-settings `BaseSettings` so that the file,
the environment and the secret arrive through settings sources (`agent.config.sources`);
it is never built from the environment implicitly (see `load_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import agent.config.no_plugins  # noqa: F401  (first: before pydantic builds a model)

# isort: split
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.pipeline.readings import ValueType
from agent.sources.modbus.points import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    ByteOrder,
    PointType,
    Table,
)

ENV_PREFIX = "ORIO_AGENT_"
ENV_DELIMITER = "__"

Seconds = Annotated[float, Field(gt=0)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/#+\s\x00-\x1f]+$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThingConfig(_Section):
    id: Name
    secret: SecretStr | None = None
    secret_file: Path | None = None


class MqttConfig(_Section):
    host: str = Field(min_length=1)
    port: int = Field(8083, ge=1, le=65535)
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = Field(60, ge=5, le=65535)
    connect_timeout: Seconds = 10.0
    backoff_min: Seconds = 1.0
    backoff_max: Seconds = 30.0
    max_inflight: int = Field(32, ge=1, le=65535)  # QoS 1 messages awaiting PUBACK
    max_config_payload: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)


class QueueConfig(_Section):
    path: str = "/var/lib/orio-agent/queue.db"
    max_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024)
    max_age: Seconds = 7 * 24 * 3600.0
    replay_rate: float = Field(50.0, ge=0)  # messages/s; 0 = unlimited
    synchronous: Literal["normal", "full"] = "normal"
    commit_interval: float = Field(0.5, ge=0, le=60)
    sync_interval: float = Field(2.0, gt=0, le=3600)  # "normal": WAL synced this often
    memory_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)  # held while the disk fails


class BatchConfig(_Section):
    max_readings: int = Field(100, ge=1, le=100_000)
    max_bytes: int = Field(65536, ge=256, le=256 * 1024 * 1024)
    max_delay: float = Field(1.0, ge=0, le=3600)
    # A poll cycle's readings go out when it ends, not max_delay later: fresh data. False
    # packs several cycles into each message (fewer, larger ones on a metered link).
    flush_at_cycle_end: bool = True


class HealthConfig(_Section):
    """The agent's own readings (uptime, queue, errors), published like any device's."""

    bucket: Name | None = None  # no bucket: no health readings
    interval: Seconds = 60.0


class ControlConfig(_Section):
    """The local control channel (agent.service.control): the socket `status`,
    `poll-once` and the other commands use to ask the running agent."""

    socket: str = Field("/run/orio-agent/control.sock", min_length=1)
    group: str = Field("orio-agent", min_length=1)  # given the socket, when it exists
    enabled: bool = True


class PaasConfig(_Section):
    """The ORing PaaS REST API, for `orio-agent cloud ...` (the agent itself never calls it).

    Credentials: an API key (`auth = "api_key"`) or an OAuth 2.0 application's client
    credentials (`auth = "oauth"`). The secret comes from `api_key` / `client_secret`
    (or ORIO_AGENT_PAAS__API_KEY / __CLIENT_SECRET), `api_key_file` / `client_secret_file`,
    or the systemd credential `paas-api-key` / `paas-client-secret`; never a command line.
    """

    url: str = Field("https://api.paas.oringnet.cloud/v4/", pattern=r"^https?://")
    auth: Literal["api_key", "oauth"] = "api_key"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    redirect_uri: str = "http://localhost/"  # the token request requires one
    timeout: Seconds = 10.0
    retries: int = Field(3, ge=0, le=10)  # of a 5xx or a network error


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json", "console"] = "logfmt"


class RegisterRef(_Section):
    """Where a value lives in a device and how its registers are read.

    Either classic notation (`address = "40001"`) or `table` with a 0-based integer
    `address`; `agent.config.checks` says which combinations are wrong, and where an
    address may be left out (an agent setting, a change to a template's point).
    """

    address: StrictStr | StrictInt | None = None
    table: Table | None = None
    type: PointType | None = None  # default: bool in coil/discrete tables, uint16 otherwise
    length: int | None = Field(None, ge=1, le=MAX_READ_REGISTERS)
    bit: int | None = Field(None, ge=0, le=15)
    byte_order: ByteOrder | None = None
    scale: float | None = None
    offset: float | None = None


AGGREGATE_FUNCTIONS = ("avg", "min", "max", "sum", "count", "first", "last", "integral")


class AggregateConfig(_Section):
    """A point's windowed aggregates: each function's value over every `window` seconds,
    windows aligned to the wall clock (agent.pipeline.aggregates)."""

    window: int = Field(ge=1, le=86400)  # whole seconds
    functions: list[Literal["avg", "min", "max", "sum", "count", "first", "last", "integral"]] = (
        Field(min_length=1)
    )
    # function -> the published id; default "<point id>_<function>"
    names: dict[str, Name] = {}


class PointConfig(RegisterRef):
    """One value read from a device and published as a reading.

    `address` may be left out only by a device point that changes a template point of the
    same id (see agent.config.templates); everywhere else it is required.
    """

    id: Name
    bucket: Name | None = None
    deadband: float | None = Field(None, ge=0)
    max_silence: Seconds | None = None
    value_type: ValueType | None = None
    # Read every `interval` seconds rather than every device cycle: a whole multiple of
    # the device's interval (see agent.config.checks).
    interval: Seconds | None = None
    # The data shape's alias and unit in the cloud (`orio-agent cloud plan`).
    alias: str | None = Field(None, max_length=256)
    unit: str | None = Field(None, max_length=64)
    # false: the readings are not published; the point still feeds derived points and
    # its aggregates.
    publish: bool = True
    aggregate: AggregateConfig | None = None


class TemplateConfig(_Section):
    """A register map shared by devices that say `template = "<name>"`: its points, and
    the request workarounds the model needs. Point ids and buckets may hold `{device}`
    and `{unit}`, replaced by each device's name and unit."""

    description: str | None = None
    byte_order: ByteOrder | None = None
    max_gap: int | None = Field(None, ge=0, le=MAX_READ_REGISTERS - 1)
    max_registers: int | None = Field(None, ge=1, le=MAX_READ_REGISTERS)
    max_bits: int | None = Field(None, ge=1, le=MAX_READ_BITS)
    one_request_per_point: bool | None = None
    points: list[PointConfig] = Field(min_length=1)


class DeviceConfig(_Section):
    """One unit on a Modbus connection: its own points, a template's, or both."""

    name: Name
    template: Name | None = None
    unit: int = Field(1, ge=0, le=255)
    interval: Seconds = 1.0
    bucket: Name | None = None
    byte_order: ByteOrder = "ABCD"
    max_gap: int | None = Field(None, ge=0, le=MAX_READ_REGISTERS - 1)
    max_registers: int | None = Field(None, ge=1, le=MAX_READ_REGISTERS)
    max_bits: int | None = Field(None, ge=1, le=MAX_READ_BITS)
    one_request_per_point: bool = False
    deadband: float | None = Field(None, ge=0)
    max_silence: Seconds | None = None
    backoff_max: Seconds = 60.0
    points: list[PointConfig] = []  # with no template, at least one (agent.config.checks)


class ModbusConfig(_Section):
    """One Modbus connection: a TCP endpoint or a serial line, shared by its devices."""

    name: Name
    # tcp: Modbus TCP (MBAP). rtu: RTU on a serial line. rtu-over-tcp: RTU frames, CRC
    # included, over a TCP socket (a serial device server). ascii: Modbus ASCII on a serial line.
    transport: Literal["tcp", "rtu", "rtu-over-tcp", "ascii"]
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    device: str | None = None
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    timeout: Seconds = 1.0
    max_gap: int = Field(8, ge=0, le=MAX_READ_REGISTERS - 1)
    max_registers: int = Field(MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS)
    max_bits: int = Field(MAX_READ_BITS, ge=1, le=MAX_READ_BITS)
    connect_delay: float = Field(0.0, ge=0, le=60)
    request_delay: float = Field(0.0, ge=0, le=60)
    # RTU: the silence between frames, seconds; default the specification's (see
    # agent.config.model.rtu_silence).
    inter_frame: float | None = Field(None, ge=0, le=1)
    # Serial: the USB adapter's low-latency mode (FTDI holds short replies up to 16 ms).
    low_latency: bool = False
    # Serial: the kernel's RS-485 mode, the driver driving RTS around each frame.
    rs485: bool = False
    close_after_cycle: bool = False
    devices: list[DeviceConfig] = Field(min_length=1)


NMEA_FIELDS = ("coordinate", "altitude", "satellites", "fix_quality", "speed", "course")


class SerialPointConfig(_Section):
    """One value taken from an instrument's lines: an NMEA field or a regex group."""

    id: Name
    field: str = Field(min_length=1)
    value_type: ValueType | None = None  # default: coordinate for coordinates, else float
    scale: float | None = None
    offset: float | None = None
    deadband: float | None = Field(None, ge=0)
    max_silence: Seconds | None = None
    bucket: Name | None = None
    alias: str | None = Field(None, max_length=256)  # the data shape's, in the cloud
    unit: str | None = Field(None, max_length=64)
    publish: bool = True  # false: only its aggregate is published
    aggregate: AggregateConfig | None = None


class SerialConfig(_Section):
    """A plain serial instrument speaking lines of ASCII."""

    name: Name
    device: str = Field(min_length=1)
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    bucket: Name | None = None
    format: Literal["nmea", "regex"]
    pattern: str | None = None
    request: str | None = None  # sent every interval (escapes like \r\n allowed)
    interval: Seconds = 1.0  # polled: request period; streaming: sampling period
    timeout: Seconds = 1.0  # polled: how long to wait for the reply
    terminator: str = "\n"  # end of a line (escapes allowed); a trailing \r is dropped
    encoding: str = "ascii"
    max_line: int = Field(1024, ge=16, le=1024 * 1024)
    timestamp: Literal["arrival", "gps"] = "arrival"  # nmea: the GPS's own UTC time
    backoff_max: Seconds = 60.0
    points: list[SerialPointConfig] = Field(min_length=1)


class DerivedConfig(_Section):
    """A point computed from other points' values (agent.pipeline.expressions)."""

    id: Name
    bucket: Name
    expression: str = Field(min_length=1, max_length=1000)
    value_type: ValueType | None = None  # default: float for a number, boolean for a test
    deadband: float | None = Field(None, ge=0)
    max_silence: Seconds | None = None
    # Seconds an input's last value may be old; default twice the slowest input's interval.
    max_input_age: Seconds | None = None
    alias: str | None = Field(None, max_length=256)
    unit: str | None = Field(None, max_length=64)
    publish: bool = True
    aggregate: AggregateConfig | None = None


AGENT_TARGETS = ("device.<name>.interval", "bucket.<name>.max_delay", "log.level")


class SettingConfig(RegisterRef):
    """One value the cloud may set, with its bounds.

    Its target is a Modbus value (`device` plus `address` or `table` + `address`) or
    one of the agent's own settings (`agent`, one of AGENT_TARGETS).
    """

    id: Name
    device: Name | None = None
    agent: str | None = None
    min: float | None = None
    max: float | None = None
    enum: list[StrictBool | StrictInt | StrictFloat | StrictStr] | None = None
    pattern: str | None = None
    # How a coil is reported when the cloud has not said: 1/0 (the document's example)
    # or true/false.
    value_type: Literal["integer", "boolean"] | None = None


class ConfigGroupConfig(_Section):
    name: Name
    settings: list[SettingConfig] = Field(min_length=1)


class AgentSettings(BaseSettings):
    """The whole file. Environment variables ORIO_AGENT_<SECTION>__<KEY> override it
    (see `agent.config.sources`)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
    )

    # Files holding more [templates.<name>] tables (globs; relative to this file).
    include: list[StrictStr] = []
    thing: ThingConfig
    mqtt: MqttConfig
    queue: QueueConfig = QueueConfig()
    batch: BatchConfig = BatchConfig()
    log: LogConfig = LogConfig()
    health: HealthConfig = HealthConfig()
    control: ControlConfig = ControlConfig()
    paas: PaasConfig = PaasConfig()
    templates: dict[Name, TemplateConfig] = {}
    modbus: list[ModbusConfig] = []
    serial: list[SerialConfig] = []
    derived: list[DerivedConfig] = []
    config_groups: list[ConfigGroupConfig] = []


# Sections that are arrays of tables: the environment cannot address their elements.
LIST_SECTIONS = ("modbus", "serial", "config_groups", "derived")
