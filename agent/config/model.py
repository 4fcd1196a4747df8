"""The TOML config file as typed models, validated once at the edge.

The file is parsed with tomllib (so that a syntax error names its line), environment
overrides are laid over it (`apply_environment`), and pydantic validates the result.
pydantic-settings did the overlay at first; it was dropped because it added 3 MiB of
resident memory for what these few lines do, and took the agent over its 45 MB budget.

`load_config(path)` returns an `AgentConfig` or raises `ConfigError` listing every
problem with the file, the key path and the line. The rest of the agent receives
typed objects and never looks at a dict.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from agent.config import tomlpos
from agent.errors import ConfigError, ConfigProblem
from agent.pipeline.readings import ValueType
from agent.sources.modbus.points import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    ByteOrder,
    PointType,
    Table,
    natural_value_type,
    parse_classic_address,
    register_count,
)

DEFAULT_PATH = Path("/etc/orio-agent/config.toml")
ENV_PREFIX = "ORIO_AGENT_"
CREDENTIAL_NAME = "thing-secret"  # systemd LoadCredential= name
MASK = "**********"
_LIST_SECTION_PREFIXES = (f"{ENV_PREFIX}MODBUS", f"{ENV_PREFIX}CONFIG_GROUPS")

Seconds = Annotated[float, Field(gt=0)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/#+\s\x00-\x1f]+$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class HealthConfig(_Section):
    """The agent's own readings (uptime, queue, errors), published like any device's."""

    bucket: Name | None = None  # no bucket: no health readings
    interval: Seconds = 60.0


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json", "console"] = "logfmt"


class RegisterRef(_Section):
    """Where a value lives in a device and how its registers are read."""

    address: StrictStr | StrictInt
    table: Table | None = None
    type: PointType | None = None  # default: bool in coil/discrete tables, uint16 otherwise
    length: int | None = Field(None, ge=1, le=MAX_READ_REGISTERS)
    bit: int | None = Field(None, ge=0, le=15)
    byte_order: ByteOrder | None = None
    scale: float | None = None
    offset: float | None = None

    _offset: int = PrivateAttr(-1)
    _table_given: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _resolve_location(self) -> Self:
        # Only what can be resolved is resolved; `problems()` reports the rest with its key.
        self._table_given = self.table is not None
        if isinstance(self.address, str) and self.table is None:
            with contextlib.suppress(ValueError):
                self.table, self._offset = parse_classic_address(self.address)
        elif (
            isinstance(self.address, int)
            and self.table is not None
            and (0 <= self.address <= 65535)
        ):
            self._offset = self.address
        if self.type is None and self.table is not None:
            self.type = "bool" if self.table.is_bits else "uint16"
        return self

    @property
    def location(self) -> tuple[Table, int]:
        """(table, 0-based offset); valid once `load_config` has accepted the file."""
        assert self.table is not None
        assert self._offset >= 0
        return self.table, self._offset

    @property
    def point_type(self) -> PointType:
        assert self.type is not None
        return self.type

    @property
    def width(self) -> int:
        """Registers (or bits) this value occupies."""
        return (
            1
            if self.table is not None and self.table.is_bits
            else register_count(self.point_type, self.length)
        )

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) pairs for what the field types alone cannot catch."""
        found: list[tuple[str, str]] = []
        if isinstance(self.address, str):
            if self._table_given:
                found.append(
                    (
                        "address",
                        "with `table`, give a 0-based integer address; "
                        'a string address is classic notation ("40001")',
                    )
                )
            elif self._offset < 0:
                try:
                    parse_classic_address(self.address)
                except ValueError as exc:
                    found.append(("address", str(exc)))
        elif self.table is None:
            found.append(
                ("table", "an integer address needs `table` (coil, discrete, input or holding)")
            )
        elif not 0 <= self.address <= 65535:
            found.append(("address", f"{self.address} is outside 0..65535"))
        if self.table is None or self._offset < 0:
            return found
        if self.table.is_bits:
            if self.type != "bool":
                found.append(("type", f"the {self.table} table holds bits: type must be bool"))
            if self.bit is not None:
                found.append(
                    (
                        "bit",
                        f"`bit` selects a bit of a register; the {self.table} "
                        "table already holds single bits",
                    )
                )
        if self.type == "string" and self.length is None:
            found.append(("length", "type string needs `length` in registers"))
        if self.type not in ("string", "hex") and self.length is not None:
            found.append(("length", "`length` applies to string and hex only"))
        if self._offset + self.width > 65536:
            found.append(("address", "the value runs past the end of the table"))
        for key in ("scale", "offset"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                found.append((key, "must be a finite number"))
        if self.bit is not None and (self.scale is not None or self.offset is not None):
            found.append(("scale", "a bit is true or false: scale and offset do not apply"))
        if self.bit is not None and self.type not in ("bool", "int16", "uint16"):
            found.append(("bit", "`bit` selects a bit of one register: use type bool"))
        if self.scale == 0:
            found.append(("scale", "must not be 0"))
        if (self.scale is not None or self.offset is not None) and self.type in (
            "bool",
            "string",
            "hex",
        ):
            found.append(("scale", f"scale and offset apply to numbers, not {self.type}"))
        return found


class PointConfig(RegisterRef):
    """One value read from a device and published as a reading."""

    id: Name
    bucket: Name | None = None
    deadband: float | None = Field(None, ge=0)
    max_silence: Seconds | None = None
    value_type: ValueType | None = None

    @property
    def shape_type(self) -> ValueType:
        """The data shape type the cloud sees."""
        if self.value_type is not None:
            return self.value_type
        if self.bit is not None:
            return "boolean"
        scaled = self.scale is not None or self.offset is not None
        return natural_value_type(self.point_type, scaled=scaled and self.bit is None)


# The data shape types a point may be published as, by what it decodes to.
_SHAPES_FOR: dict[str, frozenset[str]] = {
    "integer": frozenset({"integer", "float", "string", "boolean", "hex"}),
    "float": frozenset({"float", "integer", "string"}),
    "bool": frozenset({"boolean", "integer", "string"}),
    "string": frozenset({"string"}),
    "hex": frozenset({"hex", "string"}),
}


def _decodes_to(point: RegisterRef) -> str:
    if point.bit is not None or point.type == "bool":
        return "bool"
    if point.type in ("string", "hex"):
        return point.point_type
    return "float" if point.point_type.startswith("float") else "integer"


class DeviceConfig(_Section):
    """One unit on a Modbus connection."""

    name: Name
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
    points: list[PointConfig] = Field(min_length=1)


class ModbusConfig(_Section):
    """One Modbus connection: a TCP endpoint or a serial line, shared by its devices."""

    name: Name
    transport: Literal["tcp", "rtu"]
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


AGENT_TARGETS = ("device.<name>.interval", "bucket.<name>.max_delay", "log.level")


class SettingConfig(RegisterRef):
    """One value the cloud may set, with its bounds.

    Its target is a Modbus value (`device` plus `address` or `table` + `address`) or
    one of the agent's own settings (`agent`, one of AGENT_TARGETS).
    """

    id: Name
    address: StrictStr | StrictInt | None = None  # type: ignore[assignment]
    device: Name | None = None
    agent: str | None = None
    min: float | None = None
    max: float | None = None
    enum: list[StrictBool | StrictInt | StrictFloat | StrictStr] | None = None
    pattern: str | None = None
    # How a coil is reported when the cloud has not said: 1/0 (the document's example)
    # or true/false.
    value_type: Literal["integer", "boolean"] | None = None

    def target_problems(
        self, devices: set[str], sources: set[str], buckets: set[str]
    ) -> list[tuple[str, str]]:
        """(key, message) pairs for the setting's target and bounds."""
        found: list[tuple[str, str]] = []
        if self.agent is not None:
            if self.device is not None or self.address is not None:
                found.append(("agent", "a setting targets either the agent or a device, not both"))
            kind, _, name = self.agent.partition(".")
            name, _, field = name.rpartition(".")
            if self.agent == "log.level":
                pass
            elif kind == "device" and field == "interval":
                if name not in sources:
                    found.append(("agent", f"no device named {name!r}"))
            elif kind == "bucket" and field == "max_delay":
                if name not in buckets:
                    found.append(("agent", f"no bucket named {name!r}"))
            else:
                found.append(
                    (
                        "agent",
                        f"unknown agent setting {self.agent!r}; one of " + ", ".join(AGENT_TARGETS),
                    )
                )
            return found
        if self.device is None:
            return [("device", "a setting needs `device` and `address` (or `agent`)")]
        if self.address is None:
            return [("address", "a setting on a device needs `address`")]
        found += self.problems()
        if self.device not in devices:
            found.append(
                (
                    "device",
                    f"no device named {self.device!r} "
                    f"(devices: {', '.join(sorted(devices)) or 'none'})",
                )
            )
        if self.table is not None and not self.table.writable:
            found.append(
                (
                    "address",
                    f"the {self.table} table is read-only; "
                    "settings need a coil or holding register",
                )
            )
        if self.bit is not None:
            found.append(("bit", "settings write whole registers or coils, not bits"))
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                found.append(("pattern", f"not a regular expression: {exc}"))
        if self.min is not None and self.max is not None and self.min > self.max:
            found.append(("min", f"min {self.min:g} is above max {self.max:g}"))
        return found


class ConfigGroupConfig(_Section):
    name: Name
    settings: list[SettingConfig] = Field(min_length=1)


class AgentConfig(_Section):
    """The whole file. Environment variables ORIO_AGENT_<SECTION>__<KEY> override scalars
    (see `apply_environment`)."""

    thing: ThingConfig
    mqtt: MqttConfig
    queue: QueueConfig = QueueConfig()
    batch: BatchConfig = BatchConfig()
    log: LogConfig = LogConfig()
    health: HealthConfig = HealthConfig()
    modbus: list[ModbusConfig] = []
    serial: list[SerialConfig] = []
    config_groups: list[ConfigGroupConfig] = []

    def secret(self) -> str:
        """The thing's MQTT password, resolved by `load_config`."""
        assert self.thing.secret is not None
        return self.thing.secret.get_secret_value()

    def masked(self) -> dict[str, Any]:
        """The resolved config for display: the secret replaced by asterisks."""
        data = self.model_dump(mode="json", exclude_none=True)
        if "secret" in data["thing"]:
            data["thing"]["secret"] = MASK
        return data

    def all_devices(self) -> list[tuple[ModbusConfig, DeviceConfig]]:
        return [(conn, device) for conn in self.modbus for device in conn.devices]


def load_config(path: str | Path) -> AgentConfig:
    """Read, validate and cross-check a config file; raise ConfigError naming every problem."""
    shown = str(path)
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(shown, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(shown, [ConfigProblem("", "not UTF-8 text")]) from None
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, [_syntax_problem(exc)]) from None
    listed = [name for name in os.environ if name.upper().startswith(_LIST_SECTION_PREFIXES)]
    if listed:
        message = (
            "arrays of tables ([[modbus]], [[config_groups]]) cannot be overridden from "
            f"the environment; unset {', '.join(sorted(listed))}"
        )
        raise ConfigError(shown, [ConfigProblem("", message)])
    environment_problem = apply_environment(data, os.environ)
    if environment_problem is not None:
        raise ConfigError(shown, [ConfigProblem("", environment_problem)])
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = _merge_union_problems(
            [_validation_problem(error, source) for error in exc.errors()]
        )
        raise ConfigError(shown, problems) from None
    problems = [
        ConfigProblem(key, message, tomlpos.locate(source, _split_key(key)))
        for key, message in cross_check(config)
    ]
    secret_problem = _resolve_secret(config)
    if secret_problem is not None:
        problems.append(
            ConfigProblem("thing.secret", secret_problem, tomlpos.locate(source, ("thing",)))
        )
    if problems:
        raise ConfigError(shown, problems)
    return config


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> str | None:
    """Overlay ORIO_AGENT_<SECTION>__<KEY>=value onto the file's data; a problem or None.

    Names are case-insensitive. A value is a string that the models convert like a TOML
    value ("1883", "false", "2.5"). ORIO_AGENT_<SECTION> alone takes a JSON object merged
    into the section. Arrays of tables are refused earlier, by name.
    """
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        value: Any = environ[name]
        if len(path) == 1:
            try:
                value = json.loads(value)
            except ValueError:
                return f"environment variable {name} is not a JSON object"
            if not isinstance(value, dict):
                return f"environment variable {name} is not a JSON object"
        section: Any = data
        for key in path[:-1]:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                return f"environment variable {name}: {key} is not a section"
        existing = section.get(path[-1])
        if isinstance(existing, dict) and isinstance(value, dict):
            existing.update(value)
        else:
            section[path[-1]] = value
    return None


def cross_check(config: AgentConfig) -> list[tuple[str, str]]:
    """Rules that span keys: (key path, message) for each violation."""
    found: list[tuple[str, str]] = []
    if config.mqtt.tls is False and (config.mqtt.cert_file or config.mqtt.ca_file):
        found.append(("mqtt.tls", "ca_file/cert_file are set but tls = false"))
    if (config.mqtt.cert_file is None) != (config.mqtt.key_file is None):
        found.append(("mqtt.cert_file", "mutual TLS needs both cert_file and key_file"))
    devices: dict[str, str] = {}
    connections: set[str] = set()
    bucket_ids: dict[tuple[str, str], str] = {}
    for c, conn in enumerate(config.modbus):
        here = f"modbus[{c}]"
        if conn.name in connections:
            found.append((f"{here}.name", f"connection name {conn.name!r} is used twice"))
        connections.add(conn.name)
        if conn.transport == "tcp" and not conn.host:
            found.append((f"{here}.host", "a tcp connection needs `host`"))
        if conn.transport == "rtu" and not conn.device:
            found.append((f"{here}.device", "an rtu connection needs `device` (e.g. /dev/ttyS1)"))
        units: set[int] = set()
        for d, device in enumerate(conn.devices):
            dev_key = f"{here}.devices[{d}]"
            if device.name in devices:
                found.append(
                    (
                        f"{dev_key}.name",
                        f"device name {device.name!r} is already used at {devices[device.name]}",
                    )
                )
            devices.setdefault(device.name, dev_key)
            if device.unit in units:
                found.append(
                    (
                        f"{dev_key}.unit",
                        f"unit {device.unit} appears twice on connection {conn.name!r}",
                    )
                )
            units.add(device.unit)
            found += _check_points(dev_key, device, bucket_ids)
    modbus_devices = set(devices)
    for i, instrument in enumerate(config.serial):
        found += _check_serial(f"serial[{i}]", instrument, bucket_ids)
        if instrument.name in devices:
            found.append(
                (
                    f"serial[{i}].name",
                    f"name {instrument.name!r} is already used at {devices[instrument.name]}",
                )
            )
        devices.setdefault(instrument.name, f"serial[{i}]")
    buckets = {bucket for bucket, _ in bucket_ids}
    groups: dict[str, str] = {}
    for g, group in enumerate(config.config_groups):
        if group.name in groups:
            found.append(
                (
                    f"config_groups[{g}].name",
                    f"group {group.name!r} is already declared at {groups[group.name]}",
                )
            )
        groups.setdefault(group.name, f"config_groups[{g}]")
        settings: dict[str, str] = {}
        for s, setting in enumerate(group.settings):
            key = f"config_groups[{g}].settings[{s}]"
            problems = setting.target_problems(modbus_devices, set(devices), buckets)
            found += [(f"{key}.{sub}", message) for sub, message in problems]
            if setting.id in settings:
                found.append(
                    (
                        f"{key}.id",
                        f"setting id {setting.id!r} is already declared at {settings[setting.id]}",
                    )
                )
            settings.setdefault(setting.id, key)
    return found


def _check_serial(
    key: str, instrument: SerialConfig, bucket_ids: dict[tuple[str, str], str]
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    groups: set[str] = set()
    if instrument.format == "regex":
        if instrument.pattern is None:
            found.append((f"{key}.pattern", "format regex needs `pattern` with named groups"))
        else:
            try:
                groups = set(re.compile(instrument.pattern).groupindex)
            except re.error as exc:
                found.append((f"{key}.pattern", f"not a regular expression: {exc}"))
            else:
                if not groups:
                    found.append(
                        (f"{key}.pattern", "the pattern has no named groups (?P<name>...)")
                    )
    elif instrument.pattern is not None:
        found.append((f"{key}.pattern", "`pattern` applies to format regex"))
    if instrument.timestamp == "gps" and instrument.format != "nmea":
        found.append((f"{key}.timestamp", "GPS time needs format nmea"))
    for k in ("request", "terminator"):
        text = getattr(instrument, k)
        if text is not None:
            try:
                unescape(text)
            except ValueError as exc:
                found.append((f"{key}.{k}", str(exc)))
    if not unescape(instrument.terminator or "x"):
        found.append((f"{key}.terminator", "must not be empty"))
    try:
        "".encode(instrument.encoding)
    except LookupError:
        found.append((f"{key}.encoding", f"unknown encoding {instrument.encoding!r}"))
    for p, point in enumerate(instrument.points):
        point_key = f"{key}.points[{p}]"
        known = NMEA_FIELDS if instrument.format == "nmea" else tuple(sorted(groups))
        if point.field not in known and (instrument.format == "nmea" or groups):
            found.append(
                (f"{point_key}.field", f"unknown field {point.field!r}; one of {', '.join(known)}")
            )
        is_coordinate = point.field == "coordinate" and instrument.format == "nmea"
        if (point.value_type == "coordinate") != is_coordinate and point.value_type:
            found.append(
                (
                    f"{point_key}.value_type",
                    "coordinate is for the NMEA `coordinate` field, which is always a coordinate",
                )
            )
        bucket = point.bucket or instrument.bucket
        if bucket is None:
            found.append(
                (f"{point_key}.bucket", "no bucket: set `bucket` on the instrument or the point")
            )
        elif (bucket, point.id) in bucket_ids:
            found.append(
                (
                    f"{point_key}.id",
                    f"point id {point.id!r} is already used in "
                    f"bucket {bucket!r} at {bucket_ids[(bucket, point.id)]}",
                )
            )
        else:
            bucket_ids[(bucket, point.id)] = point_key
    return found


def unescape(text: str) -> str:
    """Backslash escapes of a TOML literal string: "READ\\r\\n" → "READ\r\n"."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad escape sequence: {exc.reason}") from None


def _check_points(
    dev_key: str, device: DeviceConfig, bucket_ids: dict[tuple[str, str], str]
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    claimed: dict[tuple[Table, int], tuple[str, PointConfig]] = {}
    for p, point in enumerate(device.points):
        key = f"{dev_key}.points[{p}]"
        own = point.problems()
        if not own and point.value_type is not None:
            decoded = _decodes_to(point)
            if point.value_type not in _SHAPES_FOR[decoded]:
                own.append(
                    (
                        "value_type",
                        f"a {point.point_type} point cannot be published as "
                        f"{point.value_type}; it can be "
                        f"{', '.join(sorted(_SHAPES_FOR[decoded]))}",
                    )
                )
        found += [(f"{key}.{sub}", message) for sub, message in own]
        bucket = point.bucket or device.bucket
        if bucket is None:
            found.append((f"{key}.bucket", "no bucket: set `bucket` on the device or the point"))
        else:
            previous = bucket_ids.get((bucket, point.id))
            if previous is not None:
                found.append(
                    (
                        f"{key}.id",
                        f"point id {point.id!r} is already used in bucket {bucket!r} at {previous}",
                    )
                )
            bucket_ids.setdefault((bucket, point.id), key)
        if own:
            continue
        table, start = point.location
        for address in range(start, start + point.width):
            other = claimed.get((table, address))
            if other is not None and not _compatible(other[1], point):
                found.append(
                    (
                        f"{key}.address",
                        f"overlaps {other[0]} ({other[1].id!r}) "
                        "with a different type or byte order",
                    )
                )
                break
            claimed.setdefault((table, address), (key, point))
    return found


def _compatible(a: PointConfig, b: PointConfig) -> bool:
    """Two points may share registers when they read them the same way, or as separate bits."""
    if a.bit is not None or b.bit is not None:
        return True  # a status word and the alarm bits within it
    same_start = a.location == b.location
    return same_start and (a.type, a.length, a.byte_order) == (b.type, b.length, b.byte_order)


def _resolve_secret(config: AgentConfig) -> str | None:
    """Fill thing.secret from secret, secret_file or the systemd credential; None when done."""
    thing = config.thing
    if thing.secret is not None and thing.secret_file is not None:
        return "give either `secret` or `secret_file`, not both"
    if thing.secret is not None:
        return None if thing.secret.get_secret_value() else "the secret is empty"
    candidates: list[Path] = []
    if thing.secret_file is not None:
        candidates.append(thing.secret_file)
    elif os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    for candidate in candidates:
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return f"cannot read secret file {candidate}: {reason}"
        if not text:
            return f"secret file {candidate} is empty"
        thing.secret = SecretStr(text)
        return None
    return (
        "no secret: set `secret`, `secret_file`, or the systemd credential "
        f"{CREDENTIAL_NAME!r} (LoadCredential=)"
    )


def _syntax_problem(exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    # Python 3.11 puts the position in the message: "Invalid value (at line 3, column 7)".
    message = str(exc)
    line = getattr(exc, "lineno", None)
    if line is None and "(at line " in message:
        head, _, tail = message.rpartition(" (at line ")
        number = tail.split(",")[0].rstrip(")")
        if number.isdigit():
            line, message = int(number), head
    return ConfigProblem("", f"TOML syntax: {message}", line)


def _validation_problem(error: Any, source: str) -> ConfigProblem:
    loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
    key = _join_key(loc)
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and section)"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif "secret" not in key and "input" in error and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    env_name = ENV_PREFIX + "__".join(str(part) for part in loc).upper()
    if env_name in os.environ:
        message += f" (set by environment variable {env_name})"
    return ConfigProblem(key, message, tomlpos.locate(source, loc))


def _merge_union_problems(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """One line per key: a union's members each report, e.g. "a valid string", "a valid integer"."""
    merged: dict[tuple[str, int | None], list[str]] = {}
    for problem in problems:
        merged.setdefault((problem.key, problem.line), []).append(problem.message)
    result = []
    for (key, line), messages in merged.items():
        if len(messages) > 1 and all(m.startswith(_SHOULD_BE) for m in messages):
            got = _GOT.search(messages[0])
            wanted = [_GOT.sub("", m).removeprefix(_SHOULD_BE) for m in messages]
            message = _SHOULD_BE + " or ".join(wanted) + (got.group(0) if got else "")
        else:
            message = "; ".join(messages)
        result.append(ConfigProblem(key, message, line))
    return result


_SHOULD_BE = "Input should be "
_GOT = re.compile(r" \(got .*\)$")


def _is_union_tag(part: object) -> bool:
    # pydantic inserts the member type into the loc of a union error: ('address', 'str').
    return isinstance(part, str) and part in ("str", "int", "float", "bool")


def _join_key(loc: tuple[str | int, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _split_key(key: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for chunk in key.replace("]", "").split("."):
        name, *indices = chunk.split("[")
        parts.append(name)
        parts += [int(index) for index in indices]
    return tuple(parts)
