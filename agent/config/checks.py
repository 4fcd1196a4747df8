"""The rules the field types alone cannot say, each problem as (key path, message).

`check(sections)` runs every rule over the sections that validated, so that one run
reports the problems of the whole file: a bad value in one connection does not hide a
duplicate name in another. Keys keep the file's indices (`modbus[1].devices[0].unit`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.config import derived, registers, templates
from agent.config.model import AgentKnob
from agent.config.registers import (
    SHAPES_FOR,
    Problems,
    decodes_to,
    location,
    point_type,
    register_problems,
    width,
)
from agent.config.schema import (
    AGENT_TARGETS,
    NMEA_FIELDS,
    ConfigGroupConfig,
    DerivedConfig,
    DeviceConfig,
    ModbusConfig,
    MqttConfig,
    PointConfig,
    SerialConfig,
    SerialPointConfig,
    SettingConfig,
    TemplateConfig,
)
from agent.sources.modbus.points import Table


@dataclass
class Sections:
    """The parts of a file that validated, each with its index in the file."""

    mqtt: MqttConfig | None = None
    modbus: Sequence[tuple[int, ModbusConfig]] = ()
    serial: Sequence[tuple[int, SerialConfig]] = ()
    config_groups: Sequence[tuple[int, ConfigGroupConfig]] = ()
    # Device and bucket names written in the file, valid or not: a setting naming a
    # device of a connection that failed validation is not also "no such device".
    named_devices: set[str] = field(default_factory=set)
    named_buckets: set[str] = field(default_factory=set)
    templates: Mapping[str, TemplateConfig] = field(default_factory=dict)
    named_templates: set[str] = field(default_factory=set)  # valid or not
    derived: Sequence[tuple[int, DerivedConfig]] = ()


@dataclass(frozen=True)
class _Context:
    """What a device's check needs beyond the device: the templates it may name."""

    templates: Mapping[str, TemplateConfig]
    named_templates: set[str]
    inputs: derived.Inputs = field(default_factory=derived.Inputs)


def check(sections: Sections) -> Problems:
    """Every rule that spans keys, over whatever validated."""
    found: Problems = []
    if sections.mqtt is not None:
        found += _check_mqtt(sections.mqtt)
    context = _Context(dict(sections.templates), sections.named_templates)
    for name, template in sections.templates.items():
        found += _check_template(name, template)
    devices: dict[str, str] = {}
    connections: set[str] = set()
    bucket_ids: dict[tuple[str, str], str] = {}
    for c, conn in sections.modbus:
        found += _check_connection(f"modbus[{c}]", conn, context, connections, devices, bucket_ids)
    modbus_devices = set(devices) | sections.named_devices
    for i, instrument in sections.serial:
        found += _check_serial(f"serial[{i}]", instrument, bucket_ids, context.inputs)
        if instrument.name in devices:
            found.append(
                (
                    f"serial[{i}].name",
                    f"name {instrument.name!r} is already used at {devices[instrument.name]}",
                )
            )
        devices.setdefault(instrument.name, f"serial[{i}]")
    found += _check_derived(sections.derived, context.inputs, bucket_ids)
    sources = set(devices) | sections.named_devices
    buckets = {bucket for bucket, _ in bucket_ids} | sections.named_buckets
    groups: dict[str, str] = {}
    for g, group in sections.config_groups:
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
            problems = setting_problems(setting, modbus_devices, sources, buckets)
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


def _check_mqtt(mqtt: MqttConfig) -> Problems:
    found: Problems = []
    if mqtt.tls is False and (mqtt.cert_file or mqtt.ca_file):
        found.append(("mqtt.tls", "ca_file/cert_file are set but tls = false"))
    if (mqtt.cert_file is None) != (mqtt.key_file is None):
        found.append(("mqtt.cert_file", "mutual TLS needs both cert_file and key_file"))
    return found


def _check_connection(
    here: str,
    conn: ModbusConfig,
    context: _Context,
    connections: set[str],
    devices: dict[str, str],
    bucket_ids: dict[tuple[str, str], str],
) -> Problems:
    found: Problems = []
    if conn.name in connections:
        found.append((f"{here}.name", f"connection name {conn.name!r} is used twice"))
    connections.add(conn.name)
    found += _transport_problems(here, conn)
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
                (f"{dev_key}.unit", f"unit {device.unit} appears twice on connection {conn.name!r}")
            )
        units.add(device.unit)
        found += _check_device(dev_key, device, context, bucket_ids)
    return found


def setting_problems(
    setting: SettingConfig, devices: set[str], sources: set[str], buckets: set[str]
) -> Problems:
    """(key, message) pairs for a setting's target and bounds."""
    if setting.agent is not None:
        return _agent_target_problems(setting, sources, buckets)
    if setting.device is None:
        return [("device", "a setting needs `device` and `address` (or `agent`)")]
    if setting.address is None:
        return [("address", "a setting on a device needs `address`")]
    found = register_problems(setting)
    if setting.device not in devices:
        found.append(
            (
                "device",
                f"no device named {setting.device!r} "
                f"(devices: {', '.join(sorted(devices)) or 'none'})",
            )
        )
    where = location(setting)
    if where is not None and not where[0].writable:
        found.append(
            (
                "address",
                f"the {where[0]} table is read-only; settings need a coil or holding register",
            )
        )
    if setting.bit is not None:
        found.append(("bit", "settings write whole registers or coils, not bits"))
    if setting.pattern is not None:
        try:
            re.compile(setting.pattern)
        except re.error as exc:
            found.append(("pattern", f"not a regular expression: {exc}"))
    if setting.min is not None and setting.max is not None and setting.min > setting.max:
        found.append(("min", f"min {setting.min:g} is above max {setting.max:g}"))
    return found


def agent_target(text: str) -> tuple[AgentKnob, str] | None:
    """ "device.meter1.interval" → ("device.interval", "meter1"); None if not a target."""
    if text == "log.level":
        return "log.level", ""
    kind, _, rest = text.partition(".")
    name, _, field = rest.rpartition(".")
    if not name:
        return None
    if (kind, field) == ("device", "interval"):
        return "device.interval", name
    if (kind, field) == ("bucket", "max_delay"):
        return "bucket.max_delay", name
    return None


def _agent_target_problems(
    setting: SettingConfig, sources: set[str], buckets: set[str]
) -> Problems:
    assert setting.agent is not None
    found: Problems = []
    if setting.device is not None or setting.address is not None:
        found.append(("agent", "a setting targets either the agent or a device, not both"))
    target = agent_target(setting.agent)
    if target is None:
        found.append(
            (
                "agent",
                f"unknown agent setting {setting.agent!r}; one of " + ", ".join(AGENT_TARGETS),
            )
        )
    elif target[0] == "device.interval" and target[1] not in sources:
        found.append(("agent", f"no device named {target[1]!r}"))
    elif target[0] == "bucket.max_delay" and target[1] not in buckets:
        found.append(("agent", f"no bucket named {target[1]!r}"))
    return found


def _check_serial(
    key: str,
    instrument: SerialConfig,
    bucket_ids: dict[tuple[str, str], str],
    inputs: derived.Inputs,
) -> Problems:
    found, groups = _pattern_problems(key, instrument)
    if instrument.timestamp == "gps" and instrument.format != "nmea":
        found.append((f"{key}.timestamp", "GPS time needs format nmea"))
    for k in ("request", "terminator"):
        text = getattr(instrument, k)
        if text is not None:
            try:
                unescape(text)
            except ValueError as exc:
                found.append((f"{key}.{k}", str(exc)))
    with contextlib.suppress(ValueError):
        if not unescape(instrument.terminator):
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
        found += _instrument_aggregate(point_key, point, instrument, bucket_ids)
        shape = registers.instrument_shape(point, instrument)
        inputs.add(point.id, shape, instrument.interval, key)  # as derived points name it
    return found


def _instrument_aggregate(
    key: str,
    point: SerialPointConfig,
    instrument: SerialConfig,
    bucket_ids: dict[tuple[str, str], str],
) -> Problems:
    """The point's id claimed in its bucket, and its aggregate's ids too."""
    bucket = point.bucket or instrument.bucket
    claimed = _claim_id(key, point.id, bucket, bucket_ids)
    if point.aggregate is None:
        return claimed
    shape = registers.instrument_shape(point, instrument)
    found = [(f"{key}.{sub}", m) for sub, m in derived.aggregate_problems(point.aggregate, shape)]
    if bucket is not None:
        for output in derived.aggregate_ids(point.id, point.aggregate).values():
            found += _claim_id(f"{key}.aggregate", output, bucket, bucket_ids)
    return claimed + found


def _pattern_problems(key: str, instrument: SerialConfig) -> tuple[Problems, set[str]]:
    """Problems of `pattern`, and the named groups it has."""
    if instrument.format != "regex":
        if instrument.pattern is not None:
            return [(f"{key}.pattern", "`pattern` applies to format regex")], set()
        return [], set()
    if instrument.pattern is None:
        return [(f"{key}.pattern", "format regex needs `pattern` with named groups")], set()
    try:
        groups = set(re.compile(instrument.pattern).groupindex)
    except re.error as exc:
        return [(f"{key}.pattern", f"not a regular expression: {exc}")], set()
    if not groups:
        return [(f"{key}.pattern", "the pattern has no named groups (?P<name>...)")], groups
    return [], groups


def _claim_id(
    key: str, point_id: str, bucket: str | None, bucket_ids: dict[tuple[str, str], str]
) -> Problems:
    """A point's id must be unique in its bucket; it needs a bucket to begin with."""
    if bucket is None:
        owner = "instrument" if key.startswith("serial") else "device"
        return [(f"{key}.bucket", f"no bucket: set `bucket` on the {owner} or the point")]
    previous = bucket_ids.setdefault((bucket, point_id), key)
    if previous != key:
        return [
            (
                f"{key}.id",
                f"point id {point_id!r} is already used in bucket {bucket!r} at {previous}",
            )
        ]
    return []


TCP_TRANSPORTS = frozenset({"tcp", "rtu-over-tcp"})
_SERIAL_ONLY = ("low_latency", "rs485", "inter_frame")


def _transport_problems(here: str, conn: ModbusConfig) -> Problems:
    if conn.transport in TCP_TRANSPORTS:
        found = [
            (f"{here}.{key}", f"`{key}` applies to a serial line, not to {conn.transport}")
            for key in _SERIAL_ONLY
            if key in conn.model_fields_set
        ]
        if not conn.host:
            article = "a" if conn.transport == "tcp" else "an"
            found.append((f"{here}.host", f"{article} {conn.transport} connection needs `host`"))
        return found
    if not conn.device:
        return [
            (f"{here}.device", f"an {conn.transport} connection needs `device` (e.g. /dev/ttyS1)")
        ]
    return []


INTERVAL_TOLERANCE = 1e-6  # of a point's interval, in its device's cycles


def _interval_problem(point: PointConfig, device: DeviceConfig) -> str | None:
    """A point's own interval must be a whole number of its device's cycles."""
    if point.interval is None:
        return None
    cycles = point.interval / device.interval
    if cycles < 1 - INTERVAL_TOLERANCE or abs(cycles - round(cycles)) > INTERVAL_TOLERANCE:
        return (
            f"{point.interval:g} s is not a whole multiple of the device's interval "
            f"({device.interval:g} s)"
        )
    return None


def unescape(text: str) -> str:
    """Backslash escapes of a TOML literal string: "READ\\r\\n" → "READ\r\n"."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad escape sequence: {exc.reason}") from None


def _check_device(
    dev_key: str, device: DeviceConfig, context: _Context, bucket_ids: dict[tuple[str, str], str]
) -> Problems:
    """A device as it will run, its template applied; a template point's own problems are
    reported at the template (and once, however many devices use it)."""
    if device.template in context.named_templates and device.template not in context.templates:
        return []  # the template is wrong itself: reported at the template
    applied = templates.apply(device, context.templates)
    found = [(f"{dev_key}.{key}", message) for key, message in applied.problems]
    run = applied.device
    if not run.points and device.template is None:
        found.append((f"{dev_key}.points", "a device needs `points` or a `template`"))
    keys = [
        origin if origin.startswith("templates.") else f"{dev_key}.{origin}"
        for origin in applied.origins
    ]
    found += _points_problems(keys, run.points)
    if device.template is not None:
        found += _twice_in_device(dev_key, run)
    for key, point in zip(keys, run.points, strict=True):
        found += _as_input(key, dev_key, point, run, context, bucket_ids)
        if key.startswith("templates."):
            found += _template_point_problems(f"{dev_key}.template", point, run, bucket_ids)
            continue
        interval = _interval_problem(point, run)
        if interval is not None:
            found.append((f"{key}.interval", interval))
        found += _claim_id(key, point.id, point.bucket or run.bucket, bucket_ids)
    return found


def _twice_in_device(dev_key: str, device: DeviceConfig) -> Problems:
    """Two of a device's points, as its template's names came out, with one id in one
    bucket (a template's "{device}" beside a point named like the device)."""
    seen: set[tuple[str | None, str]] = set()
    found: Problems = []
    for point in device.points:
        claim = (point.bucket or device.bucket, point.id)
        if claim in seen:
            found.append(
                (f"{dev_key}.template", f"point id {point.id!r} comes twice out of the template")
            )
        seen.add(claim)
    return found


def _as_input(
    key: str,
    dev_key: str,
    point: PointConfig,
    device: DeviceConfig,
    context: _Context,
    bucket_ids: dict[tuple[str, str], str],
) -> Problems:
    """A point as derived points may name it, and its aggregate's ids claimed."""
    where = location(point)
    if where is None or register_problems(point):
        return []
    shape = registers.shape(point, where[0])
    owner = f"{dev_key}.template" if key.startswith("templates.") else key
    context.inputs.add(point.id, shape, point.interval or device.interval, owner)
    if point.aggregate is None:
        return []
    found = [(f"{key}.{sub}", m) for sub, m in derived.aggregate_problems(point.aggregate, shape)]
    bucket = point.bucket or device.bucket
    if bucket is not None:
        for output in derived.aggregate_ids(point.id, point.aggregate).values():
            found += _claim_id(f"{owner}.aggregate", output, bucket, bucket_ids)
    return found


def _check_derived(
    entries: Sequence[tuple[int, DerivedConfig]],
    inputs: derived.Inputs,
    bucket_ids: dict[tuple[str, str], str],
) -> Problems:
    """Each derived point's expression against the points declared before it."""
    found: Problems = []
    for d, entry in entries:
        key = f"derived[{d}]"
        problems, expression = derived.derived_problems(entry, inputs)
        found += [(f"{key}.{sub}", message) for sub, message in problems]
        found += _claim_id(key, entry.id, entry.bucket, bucket_ids)
        if entry.aggregate is not None:
            for output in derived.aggregate_ids(entry.id, entry.aggregate).values():
                found += _claim_id(f"{key}.aggregate", output, entry.bucket, bucket_ids)
        if expression is not None:
            age = derived.max_input_age(entry, expression, inputs.intervals)
            inputs.add(entry.id, derived.result_shape(entry, expression), age / 2, key)
    return found


_SHARED_ID_HINT = "; put {device} in the template's id, or give each device a bucket of its own"


def _template_point_problems(
    key: str, point: PointConfig, device: DeviceConfig, bucket_ids: dict[tuple[str, str], str]
) -> Problems:
    """What depends on the device, for a template's point: said at the device's
    `template` key, naming the point."""
    said = f"template point {point.id!r}: "
    found: Problems = []
    interval = _interval_problem(point, device)
    if interval is not None:
        found.append((key, said + interval))
    bucket = point.bucket or device.bucket
    if bucket is None:
        return [*found, (key, said + "no bucket: set `bucket` on the device or the point")]
    # The same id twice in one template and bucket is said at the template.
    previous = bucket_ids.setdefault((bucket, point.id), key)
    if previous != key:
        message = f"point id {point.id!r} is already used in bucket {bucket!r} at {previous}"
        found.append((key, said + message + _SHARED_ID_HINT))
    return found


def _check_template(name: str, template: TemplateConfig) -> Problems:
    """A template's points on their own, whether or not a device uses it."""
    keys = [f"templates.{name}.points[{p}]" for p in range(len(template.points))]
    found = _points_problems(keys, template.points)
    seen: dict[tuple[str, str | None], str] = {}
    for key, point in zip(keys, template.points, strict=True):
        previous = seen.setdefault((point.id, point.bucket), key)
        if previous != key:
            found.append((f"{key}.id", f"point id {point.id!r} is already used at {previous}"))
    return found


def _points_problems(keys: Sequence[str], points: Sequence[PointConfig]) -> Problems:
    """Each point's register problems, and points that overlap in different ways."""
    found: Problems = []
    claimed: dict[tuple[Table, int], tuple[str, PointConfig]] = {}
    for key, point in zip(keys, points, strict=True):
        own = register_problems(point) + _shape_problems(point)
        found += [(f"{key}.{sub}", message) for sub, message in own]
        where = location(point)
        if own or where is None:
            continue
        table, start = where
        for address in range(start, start + width(point, table)):
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


def _shape_problems(point: PointConfig) -> Problems:
    where = location(point)
    if where is None or point.value_type is None or register_problems(point):
        return []
    decoded = decodes_to(point, where[0])
    if point.value_type in SHAPES_FOR[decoded]:
        return []
    return [
        (
            "value_type",
            f"a {point_type(point, where[0])} point cannot be published as "
            f"{point.value_type}; it can be {', '.join(sorted(SHAPES_FOR[decoded]))}",
        )
    ]


def _compatible(a: PointConfig, b: PointConfig) -> bool:
    """Two points may share registers when they read them the same way, or as separate bits."""
    if a.bit is not None or b.bit is not None:
        return True  # a status word and the alarm bits within it
    where = location(a)
    if where is None or where != location(b):
        return False
    table = where[0]
    return (point_type(a, table), a.length, a.byte_order) == (
        point_type(b, table),
        b.length,
        b.byte_order,
    )
