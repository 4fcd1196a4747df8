"""Configuration from the cloud: expected → validated → written → read back → reported.

The MQTT callback only parses and queues (`on_message`); one task (`run`) applies
messages in order, through the same serialized Modbus connections the pollers use, so
a slow device or a flood of messages never stalls the data path.

Applying is idempotent. What the cloud asked for is kept (`SettingsState`, a JSON file
beside the queue); a retained message that arrives again (every reconnect, every
restart) writes nothing when the device still holds the value. When the device holds
something else — someone changed it at the panel — the value is written again and the
log says so (`setting_drift_corrected`). The report always carries what the device
holds after the write, read back, not what was asked: a refused write shows in the
cloud as expected ≠ reported.

Hostile input is bounded in effect. A message's entries are reduced to the last value
per id before anything is validated or written, so a setting is written at most once
per message. Unknown and refused entries are summed up in one line per message, and
every warning about cloud input is rate-limited on a key from a small fixed set (per
declared group and kind; one key for all undeclared groups), whatever names the cloud
makes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.cloud.messages import (
    Entry,
    RejectedMessage,
    expected_prefix,
    latest_per_id,
    parse_expected,
    reported_topic,
)
from agent.cloud.remembered import SettingsState
from agent.cloud.settings import (
    AgentSetting,
    JsonScalar,
    RegisterSetting,
    RejectedSetting,
    Setting,
    form_of,
    setting_for,
)
from agent.config.model import AgentTarget, Config
from agent.errors import AgentError, DeviceError, DeviceRefused
from agent.outbox.port import Outbox
from agent.service.logs import Throttle, suppressed
from agent.sources.modbus.points import Table

log = structlog.get_logger("agent.config")

REFUSALS_KEPT = 100  # per group: what `cloud config` shows as refused

LOG_INTERVAL = 10.0
"""Seconds between two warnings of one kind about one group's cloud input."""
SHOWN_IDS = 5
"""Ids named in a summary line; the count says how many there were."""


class Bus(Protocol):
    """What the configurator needs of a Modbus connection."""

    async def read(
        self, unit: int, table: Table, start: int, count: int
    ) -> list[int] | list[bool]: ...

    async def write_registers(self, unit: int, start: int, values: list[int]) -> None: ...

    async def write_coil(self, unit: int, address: int, value: bool) -> None: ...


class Tunable(Protocol):
    """A source whose interval the cloud may set (a device or an instrument)."""

    @property
    def interval(self) -> float: ...

    def set_interval(self, interval: float) -> None: ...


class Delays(Protocol):
    """The batcher's per-bucket max_delay."""

    def delay_for(self, bucket: str) -> float: ...

    def set_delay(self, bucket: str, delay: float) -> None: ...


class LogLevel(Protocol):
    @property
    def level(self) -> str: ...

    def set_level(self, level: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceRoute:
    bus: Bus
    unit: int


class Configurator:
    def __init__(
        self,
        *,
        config: Config,
        routes: dict[str, DeviceRoute],
        sources: Mapping[str, Tunable],
        batcher: Delays,
        log_level: LogLevel,
        outbox: Outbox,
        state: SettingsState,
    ) -> None:
        self._thing_id = config.thing_id
        self._prefix = expected_prefix(config.thing_id)
        self._max_bytes = config.mqtt.max_config_payload
        self._routes = routes
        self._sources = sources
        self._batcher = batcher
        self._log_level = log_level
        self._outbox = outbox
        self._state = state
        self.groups: dict[str, dict[str, Setting]] = {
            group: {s.id: setting_for(s) for s in settings}
            for group, settings in config.groups().items()
        }
        # Work waiting, per group: entries to apply, or None for "report only". The newest
        # message for a group replaces one still waiting, so a flood cannot pile up.
        self._pending: dict[str, list[Entry] | None] = {}
        self._wake = asyncio.Event()
        self._throttle = Throttle(interval=LOG_INTERVAL)
        self.writes = 0
        # What the agent last reported per group and setting, and what it last refused
        # (with why): `orio-agent cloud config` shows them beside the cloud's.
        self.reported: dict[str, dict[str, JsonScalar]] = {}
        self.refusals: dict[str, dict[str, str]] = {}
        self.rejected = 0

    @property
    def throttled_keys(self) -> int:
        """Keys the log rate limit holds: bounded by the declaration, not by the cloud."""
        return len(self._throttle)

    # -- from the MQTT callback (synchronous, never blocks) ---------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            group, entries = parse_expected(
                topic, payload, thing_id=self._thing_id, max_bytes=self._max_bytes
            )
        except RejectedMessage as exc:
            self.rejected += 1
            held = self._throttle.admit(("message_rejected", self._declared(topic), exc.kind))
            if held is not None:
                log.warning(
                    "config_message_rejected",
                    topic=topic,
                    kind=exc.kind,
                    reason=str(exc),
                    **suppressed(held),
                )
            return
        if group not in self.groups:
            self.rejected += 1
            held = self._throttle.admit(("group_unknown",))  # one key for any made-up name
            if held is not None:
                log.warning(
                    "config_group_unknown",
                    group=group,
                    declared=sorted(self.groups),
                    **suppressed(held),
                )
            return
        self._pending.pop(group, None)
        self._pending[group] = entries
        self._wake.set()

    def on_connected(self) -> None:
        """After every (re)connect: report the state of every declared group."""
        for group in self.groups:
            self._pending.setdefault(group, None)
        self._wake.set()

    def restore_agent_settings(self) -> None:
        """At start-up: what the cloud set on the agent itself applies before any message."""
        for group, settings in self.groups.items():
            for setting in settings.values():
                saved = self._state.get(group, setting.id)
                if not isinstance(setting, AgentSetting) or saved is None:
                    continue
                with contextlib.suppress(RejectedSetting):
                    self._set_agent(setting.target, setting.accept(saved["value"]))

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.process_pending()

    async def process_pending(self) -> None:
        """Apply or report every group with work waiting, oldest request first."""
        while self._pending:
            group = next(iter(self._pending))
            entries = self._pending.pop(group)
            if entries is None:
                await self.report(group)
            else:
                await self.apply(group, entries)

    async def apply(self, group: str, entries: list[Entry]) -> None:
        """Validate the last value per id, write what the declaration allows, report."""
        settings = self.groups[group]
        accepted: list[tuple[Setting, JsonScalar, str | None]] = []
        unknown: list[str] = []
        refused: list[tuple[str, str]] = []
        for entry in latest_per_id(entries):
            setting = settings.get(entry.id)
            if setting is None:
                unknown.append(entry.id)
                continue
            try:
                accepted.append((setting, setting.accept(entry.value), form_of(entry.value)))
            except RejectedSetting as exc:
                refused.append((entry.id, str(exc)))
        self.rejected += len(unknown) + len(refused)
        said = self.refusals.setdefault(group, {})
        for key in unknown:  # the newest last, so that the oldest go first
            said.pop(key, None)
            said[key] = "not declared in this group"
        said.update(dict(refused))
        for setting, _, _ in accepted:
            said.pop(setting.id, None)
        while len(said) > REFUSALS_KEPT:  # ids the cloud made up: no end to them
            del said[next(iter(said))]
        self._summarize(group, unknown, refused)
        for setting, value, form in accepted:
            await self._apply_one(setting, value, form)
        self._state.save()
        await self.report(group)

    async def report(self, group: str) -> None:
        """Publish what every setting of the group holds now (through the durable queue)."""
        values = []
        held: dict[str, JsonScalar] = {}
        for setting in self.groups[group].values():
            saved = self._state.get(group, setting.id)
            try:
                value = await self._current(setting, saved["form"] if saved else None)
            except AgentError as exc:
                log.warning(
                    "config_readback_failed", group=group, setting=setting.id, error=str(exc)
                )
                continue
            values.append({"id": setting.id, "value": value})
            held[setting.id] = value
        self.reported[group] = held
        payload = json.dumps(values, separators=(",", ":"), allow_nan=False).encode()
        self._outbox.put(reported_topic(self._thing_id, group), payload, replace=True)
        log.info("config_reported", group=group, settings=len(values))

    # -- what was not applied ---------------------------------------------------------------

    def _summarize(self, group: str, unknown: list[str], refused: list[tuple[str, str]]) -> None:
        """One line each for a message's unknown and refused entries, rate-limited per group."""
        if unknown:
            held = self._throttle.admit(("settings_unknown", group))
            if held is not None:
                log.warning(
                    "config_settings_unknown",
                    group=group,
                    count=len(unknown),
                    ids=unknown[:SHOWN_IDS],
                    **suppressed(held),
                )
        if refused:
            held = self._throttle.admit(("settings_rejected", group))
            if held is not None:
                log.warning(
                    "config_settings_rejected",
                    group=group,
                    count=len(refused),
                    ids=[key for key, _ in refused[:SHOWN_IDS]],
                    reason=refused[0][1],
                    **suppressed(held),
                )

    def _declared(self, topic: str) -> str | None:
        """The declared group a topic names, or None (one rate-limit key for all others)."""
        group = topic[len(self._prefix) :] if topic.startswith(self._prefix) else None
        return group if group in self.groups else None

    # -- applying one setting ---------------------------------------------------------------

    async def _apply_one(self, setting: Setting, value: JsonScalar, form: str | None) -> None:
        group = setting.group
        previous = self._state.get(group, setting.id)
        self._state.put(group, setting.id, value, form)
        if isinstance(setting, AgentSetting):
            self._set_agent(setting.target, value)
            log.info(
                "agent_setting_applied",
                group=group,
                setting=setting.id,
                target=str(setting.target),
                value=value,
            )
            return
        wanted = setting.encode(value)
        try:
            held = await self._read(setting)
        except AgentError as exc:
            held = None
            log.warning("config_read_failed", group=group, setting=setting.id, error=str(exc))
        if held is not None and _same(held, wanted):
            return  # the device holds it already: nothing to write
        if previous is not None and previous["value"] == value and held is not None:
            try:
                device_held: JsonScalar = setting.decode(held, form=form)
            except AgentError as exc:
                device_held = str(exc)
            log.warning(
                "setting_drift_corrected",
                group=group,
                setting=setting.id,
                expected=value,
                device_held=device_held,
            )
        await self._write(setting, wanted, value)

    async def _write(
        self, setting: RegisterSetting, wanted: list[int] | bool, value: JsonScalar
    ) -> None:
        target = setting.target
        route = self._routes[target.device]
        try:
            if isinstance(wanted, bool):
                await route.bus.write_coil(route.unit, target.address, wanted)
            else:
                await route.bus.write_registers(route.unit, target.address, wanted)
        except (DeviceRefused, DeviceError) as exc:
            log.warning(
                "setting_write_failed",
                group=setting.group,
                setting=setting.id,
                value=value,
                error=str(exc),
            )
            return
        self.writes += 1
        log.info(
            "setting_written",
            group=setting.group,
            setting=setting.id,
            value=value,
            device=target.device,
            address=target.address,
        )

    async def _read(self, setting: RegisterSetting) -> list[int] | list[bool]:
        target = setting.target
        route = self._routes[target.device]
        return await route.bus.read(route.unit, target.table, target.address, setting.count)

    async def _current(self, setting: Setting, form: str | None) -> JsonScalar:
        if isinstance(setting, AgentSetting):
            return self._agent_value(setting.target)
        return setting.decode(await self._read(setting), form=form)

    # -- the agent's own settings -----------------------------------------------------------

    def _agent_value(self, target: AgentTarget) -> JsonScalar:
        if target.knob == "device.interval":
            return self._sources[target.name].interval
        if target.knob == "bucket.max_delay":
            return self._batcher.delay_for(target.name)
        return self._log_level.level

    def _set_agent(self, target: AgentTarget, value: JsonScalar) -> None:
        """`value` was accepted by the setting: a number of seconds, or a log level."""
        if target.knob == "device.interval":
            self._sources[target.name].set_interval(float(value))
        elif target.knob == "bucket.max_delay":
            self._batcher.set_delay(target.name, float(value))
        else:
            self._log_level.set_level(str(value))


def _same(held: list[int] | list[bool], wanted: list[int] | bool) -> bool:
    if isinstance(wanted, bool):
        return bool(held[0]) == wanted
    return [int(v) for v in held] == wanted
