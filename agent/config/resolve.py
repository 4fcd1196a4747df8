"""From the file's models to the agent's: every default, inheritance and target resolved.

Run once by `load_config`, and only on sections that passed `agent.config.checks`, so
nothing here reports a problem: what it narrows was checked there. The unit tests use
these functions to build a source from a section written inline.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Hashable, Mapping
from typing import TypeVar, cast

from agent.config import checks, derived, registers, templates
from agent.config.model import (
    AgentTarget,
    Aggregate,
    Config,
    Connection,
    Derived,
    Device,
    Framing,
    Instrument,
    InstrumentPoint,
    Point,
    PointSpec,
    RegisterTarget,
    SerialSettings,
    Setting,
    TcpEndpoint,
    rtu_silence,
)
from agent.config.schema import (
    AgentSettings,
    AggregateConfig,
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
    section,
)
from agent.sources.modbus.plan import Limits
from agent.sources.modbus.points import ByteOrder


def resolve(settings: AgentSettings) -> Config:
    """The agent's config from a checked file; its secret was filled by SecretSource."""
    assert settings.thing.secret is not None, "SecretSource fills it or reports why not"
    shared = Shared()
    connections = tuple(connection(conn, settings.templates, shared) for conn in settings.modbus)
    byte_orders = {device.name: device.byte_order for c in connections for device in c.devices}
    instruments = tuple(instrument(i) for i in settings.serial)
    return Config(
        thing_id=settings.thing.id,
        secret=Secret(settings.thing.secret.get_secret_value()),
        mqtt=mqtt(settings.mqtt),
        queue=section(QueueSection, settings.queue),
        batch=section(BatchSection, settings.batch),
        log=section(LogSection, settings.log),
        health=section(HealthSection, settings.health),
        control=section(ControlSection, settings.control),
        paas=section(PaasSection, settings.paas),
        connections=connections,
        instruments=instruments,
        settings=tuple(
            setting(group.name, s, byte_orders)
            for group in settings.config_groups
            for s in group.settings
        ),
        derived=derived_points(connections, instruments, settings.derived),
    )


def mqtt(config: MqttConfig) -> MqttSection:
    return section(MqttSection, config)


_FRAMING: dict[str, Framing] = {
    "tcp": "mbap",
    "rtu": "rtu",
    "rtu-over-tcp": "rtu",
    "ascii": "ascii",
}


H = TypeVar("H", bound=Hashable)


class Shared:
    """One object for each value met more than once: the first met, for every equal one.

    A config of many points holds few distinct point specs and locations (a hundred
    devices of the same two hundred registers: two hundred locations, one spec). The
    pickle the confined loader writes keeps an object met again as a reference, so the
    agent's process holds each of them once."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, Hashable] = {}

    def __call__(self, value: H) -> H:
        return cast(H, self._seen.setdefault(value, value))


def connection(
    conn: ModbusConfig,
    known: Mapping[str, TemplateConfig] | None = None,
    shared: Shared | None = None,
) -> Connection:
    """`known`: the templates its devices may name; `shared`: the objects its points may
    share with others' (this connection's own by default)."""
    if shared is None:
        shared = Shared()
    endpoint: TcpEndpoint | SerialSettings
    if conn.transport in checks.TCP_TRANSPORTS:
        assert conn.host, "checked by agent.config.checks"
        endpoint = TcpEndpoint(conn.host, conn.port)
    else:
        assert conn.device, "checked by agent.config.checks"
        # ASCII frames end with CR LF: no silence is needed between them.
        spec = rtu_silence(conn.baudrate) if conn.transport == "rtu" else 0.0
        endpoint = SerialSettings(
            conn.device,
            conn.baudrate,
            conn.parity,
            conn.bytesize,
            conn.stopbits,
            silence=conn.inter_frame if conn.inter_frame is not None else spec,
            low_latency=conn.low_latency,
            rs485=conn.rs485,
        )
    return Connection(
        name=conn.name,
        endpoint=endpoint,
        framing=_FRAMING[conn.transport],
        timeout=conn.timeout,
        connect_delay=conn.connect_delay,
        request_delay=conn.request_delay,
        close_after_cycle=conn.close_after_cycle,
        devices=tuple(_device(device, conn, known or {}, shared) for device in conn.devices),
    )


def _device(
    written: DeviceConfig,
    conn: ModbusConfig,
    known: Mapping[str, TemplateConfig],
    shared: Shared,
) -> Device:
    device = templates.apply(written, known).device
    limits = Limits(
        max_gap=device.max_gap if device.max_gap is not None else conn.max_gap,
        max_registers=device.max_registers or conn.max_registers,
        max_bits=device.max_bits or conn.max_bits,
        one_per_point=device.one_request_per_point,
    )
    return Device(
        name=device.name,
        unit=device.unit,
        interval=device.interval,
        byte_order=device.byte_order,
        limits=limits,
        backoff_max=device.backoff_max,
        points=tuple(_point(point, device, shared) for point in device.points),
        template=written.template,
    )


def _point(point: PointConfig, device: DeviceConfig, shared: Shared) -> Point:
    where = registers.location(point)
    bucket = point.bucket or device.bucket
    assert where is not None, "checked by agent.config.checks"
    assert bucket is not None, "checked by agent.config.checks"
    table, address = where
    spec = PointSpec(
        bucket=sys.intern(bucket),  # each device's from the file is a string of its own
        type=registers.point_type(point, table),
        length=point.length,
        width=registers.width(point, table),
        bit=point.bit,
        byte_order=point.byte_order or device.byte_order,
        scale=point.scale,
        offset=point.offset,
        shape=registers.shape(point, table),
        deadband=point.deadband if point.deadband is not None else device.deadband,
        max_silence=point.max_silence if point.max_silence is not None else device.max_silence,
        interval=None if _same(point.interval, device.interval) else point.interval,
        unit=None if point.unit is None else sys.intern(point.unit),
        publish=point.publish,
        aggregate=aggregate(point.id, point.aggregate),
    )
    return Point.sharing(point.id, shared((table, address)), shared(spec), point.alias)


def aggregate(point_id: str, config: AggregateConfig | None) -> Aggregate | None:
    if config is None:
        return None
    ids = derived.aggregate_ids(point_id, config)
    renamed = tuple((f, output) for f, output in ids.items() if output != f"{point_id}_{f}")
    return _shared_aggregate(config.window, tuple(ids), renamed)


@functools.lru_cache(maxsize=256)
def _shared_aggregate(
    window_s: int, functions: tuple[str, ...], names: tuple[tuple[str, str], ...]
) -> Aggregate:
    """One object for every point with the same aggregate (points are many, kinds few)."""
    return Aggregate(window_s, functions, names)


def derived_points(
    connections: tuple[Connection, ...],
    instruments: tuple[Instrument, ...],
    entries: list[DerivedConfig],
) -> tuple[Derived, ...]:
    """The `[[derived]]` points, compiled against the points declared before each."""
    inputs = derived.Inputs()
    for conn in connections:
        for device in conn.devices:
            for point in device.points:
                inputs.add(point.id, point.shape, point.interval or device.interval, device.name)
    for instrument in instruments:
        for ipoint in instrument.points:
            inputs.add(ipoint.id, ipoint.shape, instrument.line.interval, instrument.name)
    found = []
    for entry in entries:
        expression = derived.compile_derived(entry, inputs)
        shape = derived.result_shape(entry, expression)
        age = derived.max_input_age(entry, expression, inputs.intervals)
        inputs.add(entry.id, shape, age / 2, entry.id)
        found.append(
            Derived(
                id=entry.id,
                bucket=entry.bucket,
                expression=expression,
                shape=shape,
                deadband=entry.deadband,
                max_silence=entry.max_silence,
                max_input_age=age,
                alias=entry.alias,
                unit=entry.unit,
                publish=entry.publish,
                aggregate=aggregate(entry.id, entry.aggregate),
            )
        )
    return tuple(found)


def _same(interval: float | None, device: float) -> bool:
    """A point's interval that is its device's (within the checks' tolerance)."""
    return interval is None or abs(interval / device - 1) <= checks.INTERVAL_TOLERANCE


def instrument(config: SerialConfig) -> Instrument:
    return Instrument(
        name=config.name,
        line=section(InstrumentLine, config),
        pattern=re.compile(config.pattern) if config.pattern else None,
        request=checks.unescape(config.request).encode(config.encoding) if config.request else None,
        terminator=checks.unescape(config.terminator).encode("latin-1"),
        points=tuple(_instrument_point(point, config) for point in config.points),
    )


def _instrument_point(point: SerialPointConfig, config: SerialConfig) -> InstrumentPoint:
    bucket = point.bucket or config.bucket
    assert bucket is not None, "checked by agent.config.checks"
    shape = registers.instrument_shape(point, config)
    return InstrumentPoint(
        id=point.id,
        bucket=bucket,
        field=point.field,
        shape=shape,
        scale=point.scale,
        offset=point.offset,
        deadband=point.deadband,
        max_silence=point.max_silence,
        alias=point.alias,
        unit=point.unit,
        publish=point.publish,
        aggregate=aggregate(point.id, point.aggregate),
    )


def setting(group: str, config: SettingConfig, byte_orders: dict[str, ByteOrder]) -> Setting:
    """`byte_orders`: each device's, for a setting that does not give its own."""
    return Setting(
        group=group,
        id=config.id,
        target=_target(config, byte_orders),
        min=config.min,
        max=config.max,
        enum=tuple(config.enum) if config.enum is not None else None,
        pattern=re.compile(config.pattern) if config.pattern is not None else None,
        scale=config.scale,
        offset=config.offset,
        value_type=config.value_type,
    )


def _target(
    config: SettingConfig, byte_orders: dict[str, ByteOrder]
) -> RegisterTarget | AgentTarget:
    if config.agent is not None:
        knob = checks.agent_target(config.agent)
        assert knob is not None, "checked by agent.config.checks"
        return AgentTarget(*knob)
    where = registers.location(config)
    assert config.device is not None, "checked by agent.config.checks"
    assert where is not None, "checked by agent.config.checks"
    table, address = where
    return RegisterTarget(
        device=config.device,
        table=table,
        address=address,
        type=registers.point_type(config, table),
        length=config.length,
        byte_order=config.byte_order or byte_orders.get(config.device, "ABCD"),
    )
