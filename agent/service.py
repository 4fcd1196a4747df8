"""The running agent: sources → readings → batches → outbox → MQTT, wired and supervised.

`Agent.run` owns one TaskGroup with a named task per concern. Shutdown goes in a fixed
order: stop the pollers, flush open batches into the outbox, give delivery a moment to
send what it can, disconnect from the broker, close the device connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog

from agent import logs
from agent.batches import Batch, Batcher
from agent.clock import Clock
from agent.config import AgentConfig, QueueConfig
from agent.configurator import Configurator, DeviceRoute, SettingsState
from agent.confmsg import expected_prefix
from agent.delivery import Delivery
from agent.diskqueue import DiskOutbox, QueueSettings
from agent.instrument import Instrument
from agent.modbus import ModbusLine
from agent.mqtt import MqttSession
from agent.outbox import MemoryOutbox, Outbox
from agent.poller import DevicePoller
from agent.settings import JsonScalar
from agent.systemd import Notifier

log = structlog.get_logger("agent.service")

DRAIN_ON_STOP = 5.0  # seconds delivery gets to empty an in-memory outbox at shutdown
STATS_INTERVAL = 60.0
SETTINGS_STATE_FILE = "settings.json"  # beside the queue: what the cloud last asked for


def open_outbox(config: QueueConfig, clock: Clock) -> Outbox:
    """The durable SQLite queue, or memory for `path = ":memory:"` (lost on restart)."""
    if config.path == ":memory:":
        return MemoryOutbox(max_bytes=config.max_bytes, clock=clock)
    settings = QueueSettings(path=Path(config.path), max_bytes=config.max_bytes,
                             max_age=config.max_age, replay_rate=config.replay_rate,
                             synchronous=config.synchronous,
                             commit_interval=config.commit_interval)
    return DiskOutbox(settings, clock=clock)


class _Knobs:
    """The agent's own settings, as the cloud may set them (see SettingConfig.agent)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def get(self, target: str) -> JsonScalar:
        kind, name = _split_target(target)
        if kind == "log":
            return self._agent.log_level
        if kind == "device":
            return self._poller(name).interval
        return self._agent.batcher.delay_for(name)

    def set(self, target: str, value: JsonScalar) -> None:
        kind, name = _split_target(target)
        if kind == "log":
            assert isinstance(value, str)
            self._agent.log_level = value
            logs.configure(level=value, fmt=self._agent.config.log.format)
        elif kind == "device":
            self._poller(name).set_interval(float(value))
        else:
            self._agent.batcher.set_delay(name, float(value))

    def _poller(self, name: str) -> DevicePoller | Instrument:
        sources: list[DevicePoller | Instrument] = [*self._agent.pollers,
                                                    *self._agent.instruments]
        return next(source for source in sources if source.name == name)


def _split_target(target: str) -> tuple[str, str]:
    """"device.meter1.interval" → ("device", "meter1"); "log.level" → ("log", "")."""
    kind, _, rest = target.partition(".")
    return kind, rest.rpartition(".")[0]


def data_topic(thing_id: str, bucket: str) -> str:
    return f"$thing/{thing_id}/$data/{bucket}"


class Agent:
    def __init__(self, config: AgentConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.log_level: str = config.log.level
        self._notifier = Notifier()
        self.clock = clock or Clock()
        self.outbox = open_outbox(config.queue, self.clock)
        loop_clock = asyncio.get_running_loop().time
        self.batcher = Batcher(
            sink=self._queue_batch,
            max_readings=config.batch.max_readings,
            max_bytes=config.batch.max_bytes,
            max_delay=config.batch.max_delay,
            clock=loop_clock,
            wall=self.clock,
        )
        self._flush_wake = asyncio.Event()
        self.batcher.on_new_deadline = lambda _deadline: self._flush_wake.set()
        self.lines = {conn.name: ModbusLine(conn) for conn in config.modbus}
        self.pollers = [
            DevicePoller(device=device, connection=conn, bus=self.lines[conn.name],
                         emit=self.batcher.add, wall_ms=self.clock.wall_ms)
            for conn, device in config.all_devices()
        ]
        self.instruments = [
            Instrument(config=instrument, emit=self.batcher.add, wall_ms=self.clock.wall_ms)
            for instrument in config.serial
        ]
        state_path = None if config.queue.path == ":memory:" else (
            Path(config.queue.path).parent / SETTINGS_STATE_FILE
        )
        self.configurator = Configurator(
            config=config,
            routes={device.name: DeviceRoute(self.lines[conn.name], device.unit)
                    for conn, device in config.all_devices()},
            knobs=_Knobs(self),
            outbox=self.outbox,
            state=SettingsState(state_path),
        )
        self.configurator.restore_agent_settings()
        self.session = MqttSession(
            thing_id=config.thing.id, secret=config.secret(), config=config.mqtt,
            subscriptions=[expected_prefix(config.thing.id) + "#"],
            on_message=self.configurator.on_message,
            on_connect=self.configurator.on_connected,
        )
        self.delivery = Delivery(outbox=self.outbox, publisher=self.session, clock=self.clock,
                                 window=config.mqtt.max_inflight)
        self._topics: dict[str, str] = {}
        self.batches_queued = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order."""
        self._notifier.notify("READY=1")
        log.info("agent_started", thing=self.config.thing.id, devices=len(self.pollers),
                 instruments=len(self.instruments),
                 points=sum(len(p.device.points) for p in self.pollers))
        async with asyncio.TaskGroup() as group:
            session = group.create_task(self.session.run(), name="mqtt")
            delivery = group.create_task(self.delivery.run(), name="delivery")
            flusher = group.create_task(self._flush_timer(), name="batch-timer")
            reporter = group.create_task(self._report(), name="stats-log")
            configurator = group.create_task(self.configurator.run(), name="configurator")
            pollers = [group.create_task(p.run(), name=f"poll[{p.name}]") for p in self.pollers]
            pollers += [group.create_task(i.run(), name=f"serial[{i.name}]")
                        for i in self.instruments]
            await stop.wait()
            self._notifier.notify("STOPPING=1")
            log.info("agent_stopping")
            for task in pollers:
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            flusher.cancel()
            reporter.cancel()
            configurator.cancel()
            self.batcher.flush_all()
            await self._drain(DRAIN_ON_STOP)
            delivery.cancel()
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)
            await self.session.close()
        for line in self.lines.values():
            await line.close()
        stats = self.outbox.stats()
        self.outbox.close()
        log.info("agent_stopped", unsent_messages=stats.depth, sent=stats.sent_total)
        self._notifier.close()

    def _queue_batch(self, batch: Batch) -> None:
        topic = self._topics.get(batch.bucket)
        if topic is None:
            topic = self._topics[batch.bucket] = data_topic(self.config.thing.id, batch.bucket)
        self.outbox.put(topic, batch.payload, batch.stamp)
        self.batches_queued += 1

    async def _flush_timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.batcher.flush_due()
            self._flush_wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._flush_wake.wait()

    async def _report(self) -> None:
        """A periodic log line with the queue's and the devices' state."""
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            stats = self.outbox.stats()
            age = None if stats.oldest_created is None else round(
                time.time() - stats.oldest_created, 1)
            failing = [p.name for p in self.pollers if p.stats.consecutive_failures]
            log.info("agent_stats", connected=self.session.connected, queue_depth=stats.depth,
                     queue_bytes=stats.depth_bytes, oldest_age_s=age, backlog=stats.backlog,
                     sent=stats.sent_total, dropped=stats.dropped_total,
                     readings=sum(p.stats.readings for p in self.pollers),
                     devices_failing=failing, reconnects=self.session.reconnects)

    async def _drain(self, limit: float) -> None:
        """Let delivery empty the outbox while connected, for at most `limit` seconds."""
        if not isinstance(self.outbox, MemoryOutbox) or not self.session.connected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.outbox.wait_empty()
