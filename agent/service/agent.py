"""The running agent: sources → readings → batches → outbox → MQTT, wired and supervised.

`Agent.run` owns one TaskGroup with a named task per concern. Shutdown goes in a fixed
order: stop the pollers, flush open batches into the outbox, give delivery a moment to
send what it can (in-memory queue only), disconnect from the broker, close the device
connections. SIGHUP reloads the file: sources, batching, config groups and log level
are rebuilt; the queue stays, and so does the broker session unless [thing] or [mqtt]
changed. A file that does not load leaves the running config in place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.clock import Clock
from agent.cloud.configurator import Configurator, DeviceRoute
from agent.cloud.delivery import Delivery
from agent.cloud.messages import expected_prefix
from agent.cloud.mqtt import MqttSession
from agent.cloud.remembered import SettingsState
from agent.config import Config, confined
from agent.config.model import InstrumentPoint, Point, SerialSettings
from agent.config.sections import QueueSection
from agent.errors import ConfigError, ConfigProblem
from agent.outbox.disk import DiskOutbox, QueueSettings
from agent.outbox.port import MemoryOutbox, Outbox
from agent.pipeline.aggregation import Aggregation
from agent.pipeline.batches import Batch, Batcher
from agent.pipeline.derive import Calculator
from agent.pipeline.readings import Value
from agent.service import heap, logs
from agent.service.control import VERSION as CONTROL_VERSION
from agent.service.control import ControlError, ControlServer
from agent.service.health import health_readings
from agent.service.state import AgentState, stats_fields, status_document, status_line
from agent.service.supervise import supervise
from agent.service.systemd import Notifier
from agent.sources.modbus.client import ModbusLine
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import DevicePoller, Tap
from agent.sources.serial.instrument import Instrument
from agent.sources.serial.port import SerialPort

log = structlog.get_logger("agent.service")

DRAIN_ON_STOP = 5.0  # seconds delivery gets to empty an in-memory outbox at shutdown
STATS_INTERVAL = 60.0
STATUS_INTERVAL = 5.0  # seconds between STATUS= updates
CANCEL_ATTEMPTS = 5
CANCEL_WAIT = 1.0  # seconds, growing with each attempt
SOURCE_BACKOFF_MIN = 1.0  # seconds: a failed source's first restart within 0..1 s
SOURCE_BACKOFF_MAX = 60.0  # seconds: the cap
SETTINGS_STATE_FILE = "settings.json"  # beside the queue: what the cloud last asked for
AGGREGATES = "aggregates"  # the name of the aggregates' state in the queue's file
WINDOW_CHECK = 1.0  # seconds: the longest the window timer sleeps
# After a poll cycle, its batches wait this long for the cycles ending with it (devices
# polled on one grid answer within milliseconds of each other): one message, not twenty.
CYCLE_SETTLE = 0.02
MAX_SCAN = 255 * 8 * 3  # addresses by speeds by parities a scan through the agent may ask


def open_outbox(config: QueueSection, clock: Clock) -> Outbox:
    """The durable SQLite queue, or memory for `path = ":memory:"` (lost on restart)."""
    if config.path == ":memory:":
        return MemoryOutbox(max_bytes=config.max_bytes, clock=clock)
    settings = QueueSettings(
        path=Path(config.path),
        max_bytes=config.max_bytes,
        max_age=config.max_age,
        replay_rate=config.replay_rate,
        synchronous=config.synchronous,
        commit_interval=config.commit_interval,
        sync_interval=config.sync_interval,
        memory_bytes=config.memory_bytes,
    )
    return DiskOutbox(settings, clock=clock)


async def _first(*events: asyncio.Event) -> None:
    """Until one of the events is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait. Python 3.11's wait_for (inside pymodbus) can lose a cancellation
    that races with a response; tasks still running after a moment are cancelled again."""
    for attempt in range(CANCEL_ATTEMPTS):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=CANCEL_WAIT * (attempt + 1))
    stuck = [task.get_name() for task in tasks if not task.done()]
    if stuck:
        log.error("tasks_did_not_stop", tasks=stuck)


def _both(taps: list[Tap]) -> Tap:
    def tap(value: Value | None, timestamp_ms: int) -> None:
        for each in taps:
            each(value, timestamp_ms)

    return tap


def _no_device(name: str | None, known: list[str]) -> str:
    from agent.service.commission import no_device

    return no_device(name, known)


def _no_progress(done: int, total: int) -> None:
    """A scan inside the agent shows no progress bar."""


def data_topic(thing_id: str, bucket: str) -> str:
    return f"$thing/{thing_id}/$data/{bucket}"


class Agent:
    """The whole agent. Long-lived: the clock, the queue and (while its settings hold) the
    broker session. Rebuilt on reload: batches, device connections, pollers, instruments,
    the configurator."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        config_path: Path | None = None,
        control_path: Path | None = None,
    ) -> None:
        """`control_path`: the control socket, instead of the config's `[control] socket`."""
        self.config = config
        self.config_path = config_path
        self.control: ControlServer | None = None
        if config.control.enabled or control_path is not None:
            self.control = ControlServer(
                control_path or Path(config.control.socket),
                {
                    "hello": self._hello,
                    "status": self._status,
                    "poll_once": self._poll_once,
                    "read": self._read,
                    "write": self._write,
                    "settings": self._settings,
                    "scan": self._scan,
                },
                group=config.control.group,
            )
        self._notifier = Notifier()
        self.clock = clock or Clock()
        self.outbox = open_outbox(config.queue, self.clock)
        self._flush_wake = asyncio.Event()
        self._topics: dict[str, str] = {}
        self._state = SettingsState(
            None
            if config.queue.path == ":memory:"
            else (Path(config.queue.path).parent / SETTINGS_STATE_FILE)
        )
        self.state = AgentState(queue=self.outbox, clock=self.clock)
        self._build_sources(config)
        self._build_link(config)

    def _build_sources(self, config: Config) -> None:
        """Everything a reload replaces: batches, devices, instruments, the configurator."""
        self.batcher = Batcher(
            sink=self._queue_batch,
            max_readings=config.batch.max_readings,
            max_bytes=config.batch.max_bytes,
            max_delay=config.batch.max_delay,
            clock=asyncio.get_running_loop().time,
            wall=self.clock,
        )
        self.batcher.on_new_deadline = lambda _deadline: self._flush_wake.set()
        self.log_level = logs.LogLevel(config.log.level, config.log.format)
        self.lines = {conn.name: ModbusLine(conn) for conn in config.connections}
        self.pollers = [
            DevicePoller(
                device=device,
                bus=self.lines[conn.name],
                emit=self.batcher.add_encoded,
                wall_ms=self.clock.wall_ms,
                room=self.outbox.wait_room,
            )
            for conn, device in config.all_devices()
        ]
        self.instruments = [
            Instrument(
                config=instrument,
                open_line=SerialPort,
                emit=self.batcher.add,
                wall_ms=self.clock.wall_ms,
            )
            for instrument in config.instruments
        ]
        sources: list[DevicePoller | Instrument] = [*self.pollers, *self.instruments]
        self._build_computations(config)
        self.configurator = Configurator(
            config=config,
            routes={
                device.name: DeviceRoute(self.lines[conn.name], device.unit)
                for conn, device in config.all_devices()
            },
            sources={source.name: source for source in sources},
            batcher=self.batcher,
            log_level=self.log_level,
            outbox=self.outbox,
            state=self._state,
        )
        self.configurator.restore_agent_settings()
        shown: list[DevicePoller | Instrument | Calculator] = [*sources]
        if config.derived:
            shown.append(self.calculator)
        self.state.track_sources(shown, list(self.lines.values()), self.configurator)

    def _build_computations(self, config: Config) -> None:
        """Derived points and aggregates, fed by the pollers' taps (a reload keeps the
        open windows of the aggregates it keeps)."""
        aggregated = [
            (point.bucket, point.id, point.aggregate)
            for _, device in config.all_devices()
            for point in device.points
            if point.aggregate is not None
        ]
        aggregated += [
            (point.bucket, point.id, point.aggregate)
            for instrument in config.instruments
            for point in instrument.points
            if point.aggregate is not None
        ]
        aggregated += [(d.bucket, d.id, d.aggregate) for d in config.derived if d.aggregate]
        previous: Aggregation | None = getattr(self, "aggregation", None)
        if previous is not None:
            previous.flush()  # the results of windows closed in a cycle the reload cut
        self.aggregation = Aggregation(aggregated, emit=self._put_aggregates)
        snapshot, journal = self.outbox.saved_states.get(AGGREGATES, (None, []))
        if previous is not None:
            self.aggregation.adopt(previous)
        elif snapshot is not None and self.aggregation:
            self.aggregation.restore(snapshot, journal)
        self.outbox.keep_state(AGGREGATES, self.aggregation.write)
        self.calculator = Calculator(config.derived, emit=self.batcher.add_encoded)
        for entry in config.derived:
            if entry.aggregate is not None:
                self.calculator.set_tap(entry.id, self.aggregation.tap(entry.bucket, entry.id))
        for poller in self.pollers:
            self._tap(poller, poller.device.points)
        for instrument, its in zip(self.instruments, config.instruments, strict=True):
            self._tap(instrument, its.points)

    def _tap(
        self, source: DevicePoller | Instrument, points: Iterable[Point | InstrumentPoint]
    ) -> None:
        """Give the calculator and the aggregates the values they need of this source."""
        inputs = self.calculator.inputs
        if isinstance(source, DevicePoller):
            # Its taps are made only for values that come point by point, not in rows.
            source.set_inputs(self.calculator if inputs else None)
            source.set_aggregates(self.aggregation if self.aggregation else None)
        else:
            for point in points:
                tap = self.calculator.tap(point.id) if point.id in inputs else None
                aggregate = None
                if point.aggregate is not None:
                    aggregate = self.aggregation.tap(point.bucket, point.id)
                if tap is not None or aggregate is not None:
                    taps = [each for each in (tap, aggregate) if each is not None]
                    source.set_tap(point.id, taps[0] if len(taps) == 1 else _both(taps))
        if inputs or self.aggregation or self.config.batch.flush_at_cycle_end:
            ended = partial(self._after_cycle, source)
            if isinstance(source, DevicePoller):
                source.on_cycle = ended
            else:
                source.on_report = ended

    def _after_cycle(self, source: DevicePoller | Instrument) -> None:
        """A source's cycle (or an instrument's report) ended: its derived points worked
        out, its aggregates kept, and its readings sent if no more of them can join the
        batch before it would go anyway (the next cycle comes after its max_delay)."""
        self.calculator.evaluate()
        if self.aggregation:
            self._keep_aggregates()
        if self.config.batch.flush_at_cycle_end:
            self.batcher.hurry(CYCLE_SETTLE, quiet_for=source.interval)

    def _keep_aggregates(self) -> None:
        """Closed windows' results into the queue, and the open ones into its next commit."""
        self.aggregation.flush()
        if self.aggregation.dirty:
            self.outbox.state_changed()

    def _put_aggregates(self, bucket: str, parts: list[bytes]) -> None:
        """Windows' results straight into the queue, with the state that closed them."""
        topic = self._topics.get(bucket) or data_topic(self.config.thing_id, bucket)
        self.outbox.put(topic, b"[" + b",".join(parts) + b"]", self.clock.stamp())
        self.outbox.state_changed()

    async def _close_windows(self) -> None:
        """Close each aggregate's window at its end (and at start-up, one that ended while
        the agent was down)."""
        while True:
            now = self.clock.wall_ms()
            self.aggregation.close_due(now)
            self._keep_aggregates()  # the state of the windows close_due closed
            due = self.aggregation.next_close_ms()
            wait = WINDOW_CHECK if due is None else min(WINDOW_CHECK, max(0, due - now) / 1000)
            await asyncio.sleep(wait)

    def _build_link(self, config: Config) -> None:
        """The broker session and delivery: replaced only when their settings change."""
        expected = expected_prefix(config.thing_id)
        self.session = MqttSession(
            thing_id=config.thing_id,
            secret=config.secret.get_secret_value(),
            config=config.mqtt,
            # Each declared group's own topic, since RabbitMQ sends a retained message to
            # no wildcard subscription; and the wildcard, so that messages for undeclared
            # groups are seen and rejected. Asked at every connect, of the current groups.
            subscriptions=lambda: [
                *(expected + g for g in self.configurator.groups),
                expected + "#",
            ],
            on_message=lambda topic, payload: self.configurator.on_message(topic, payload),
            on_connect=lambda: self.configurator.on_connected(),
        )
        self.delivery = Delivery(
            outbox=self.outbox,
            publisher=self.session,
            clock=self.clock,
            window=config.mqtt.max_inflight,
        )
        self.state.track_link(self.session, self.delivery)

    async def run(self, stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
        """Run until `stop` is set, reloading the config file whenever `reload` is set."""
        reload = reload or asyncio.Event()
        heap.settle()
        self._notifier.notify("READY=1")
        log.info(
            "agent_started",
            thing=self.config.thing_id,
            devices=len(self.pollers),
            instruments=len(self.instruments),
            points=sum(len(p.device.points) for p in self.pollers),
        )
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                queue = group.create_task(self.outbox.run(), name="queue")
                steady = [
                    group.create_task(self._flush_timer(), name="batch-timer"),
                    group.create_task(self._report(), name="stats-log"),
                    group.create_task(self._keepalive(), name="systemd"),
                ]
                if self.control is not None:
                    steady.append(group.create_task(self.control.run(), name="control"))
                link = self._start_link()
                sources = self._start_sources()
                while True:
                    await _first(stop, reload)
                    if stop.is_set():
                        break
                    reload.clear()
                    sources, link = await self._reload(sources, link)
                self._notifier.notify("STOPPING=1")
                log.info("agent_stopping")
                # The control channel first: a scan or a poll-once holding a line ends now.
                await _cancel([t for t in steady if t.get_name() == "control"])
                await _cancel(sources)
                self.batcher.flush_all()
                self._keep_aggregates()
                await self._drain(DRAIN_ON_STOP)
                await self._stop_link(link)
                await _cancel([*steady, queue])
        finally:
            # Whatever stopped the agent: what the batches hold goes into the queue, and
            # the queue commits it before the file is closed.
            self.batcher.flush_all()
            await self.outbox.aclose()
            self._notifier.close()
        stats = self.outbox.stats()
        log.info("agent_stopped", unsent_messages=stats.depth, sent=stats.sent_total)

    # -- reload -----------------------------------------------------------------------------

    async def _reload(
        self, sources: list[asyncio.Task[None]], link: list[asyncio.Task[None]]
    ) -> tuple[list[asyncio.Task[None]], list[asyncio.Task[None]]]:
        """SIGHUP: read the file again; a bad file keeps the running config."""
        self._notifier.notify("RELOADING=1")
        try:
            if self.config_path is None:
                raise ConfigError("<none>", [ConfigProblem("", "no config file to reload")])
            new = await confined.load_async(self.config_path)
        except (ConfigError, confined.ConfinedLoadFailed) as exc:
            problems = (
                [p.render(str(self.config_path)) for p in exc.problems]
                if isinstance(exc, ConfigError)
                else [str(exc)]  # no process, or one that died: the running config stays
            )
            log.error("config_reload_failed", file=str(self.config_path), problems=problems)
            self._notifier.notify("READY=1")
            return sources, link
        old, self.config = self.config, new
        if new.queue != old.queue:
            log.warning(
                "config_reload_queue_unchanged",
                reason="[queue] settings take effect at the next restart",
            )
        await _cancel(sources)
        self.batcher.flush_all()
        for line in self.lines.values():
            await line.close()
        relink = (new.thing_id, new.secret, new.mqtt) != (old.thing_id, old.secret, old.mqtt)
        if relink:
            await self._stop_link(link)
            self._build_sources(new)
            self._build_link(new)
            link = self._start_link()
        else:
            self._build_sources(new)
            self.session.resubscribe()  # the groups declared now, a new one's retained config
            if self.session.connected:
                self.configurator.on_connected()  # report the groups as they are now
        logs.configure(level=self.log_level.level, fmt=new.log.format)  # the cloud's, if it set one
        sources = self._start_sources()
        log.info(
            "config_reloaded",
            file=str(self.config_path),
            devices=len(self.pollers),
            instruments=len(self.instruments),
            broker_session="new" if relink else "kept",
        )
        heap.settle()
        self._notifier.notify("READY=1")
        return sources, link

    def _start_sources(self) -> list[asyncio.Task[None]]:
        """Each source under supervision: an unexpected failure is logged with its
        traceback and the source restarted with back-off; the others never notice."""
        group = self._group

        def start(
            name: str, factory: Callable[[], Coroutine[Any, Any, None]]
        ) -> asyncio.Task[None]:
            return group.create_task(
                supervise(
                    name, factory, backoff_min=SOURCE_BACKOFF_MIN, backoff_max=SOURCE_BACKOFF_MAX
                ),
                name=name,
            )

        tasks = [start(f"poll[{p.name}]", p.run) for p in self.pollers]
        tasks += [start(f"serial[{i.name}]", i.run) for i in self.instruments]
        tasks.append(start("configurator", self.configurator.run))
        if self.aggregation:
            tasks.append(start("aggregates", self._close_windows))
        bucket = self.config.health.bucket
        if bucket is not None:
            tasks.append(start("health", partial(self._health, bucket)))
        return tasks

    def _start_link(self) -> list[asyncio.Task[None]]:
        return [
            self._group.create_task(self.session.run(), name="mqtt"),
            self._group.create_task(self.delivery.run(), name="delivery"),
        ]

    async def _stop_link(self, link: list[asyncio.Task[None]]) -> None:
        await _cancel(link)
        await self.session.close()
        for line in self.lines.values():
            await line.close()

    def _queue_batch(self, batch: Batch) -> None:
        topic = self._topics.get(batch.bucket)
        if topic is None:
            topic = self._topics[batch.bucket] = data_topic(self.config.thing_id, batch.bucket)
        self.outbox.put(topic, batch.payload, batch.stamp)

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
            log.info("agent_stats", **stats_fields(self.state.view()))

    async def _health(self, bucket: str) -> None:
        while True:
            await asyncio.sleep(self.config.health.interval)
            for reading in health_readings(self.state.view(), bucket):
                self.batcher.add(reading)

    async def _keepalive(self) -> None:
        """WATCHDOG=1 from the event loop itself, and a STATUS= line kept current."""
        watchdog = self._notifier.watchdog_interval()
        interval = min(watchdog, STATUS_INTERVAL) if watchdog else STATUS_INTERVAL
        while True:
            if watchdog:
                self._notifier.notify("WATCHDOG=1")
            self._notifier.status(self.status_line())
            await asyncio.sleep(interval)

    def status_line(self) -> str:
        return status_line(self.state.view())

    # -- the control channel's operations (agent.service.control) ------------------------

    async def _hello(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        assert self.control is not None
        return {
            "agent": "orio-agent",
            "version": __version__,
            "protocol": CONTROL_VERSION,
            "thing": self.config.thing_id,
            "config": None if self.config_path is None else str(self.config_path),
        }

    async def _poll_once(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """`orio-agent poll-once` on the agent's own connections, between its pollers'
        requests (a connection's lock serializes them)."""
        name, publish = args.get("device"), args.get("publish", False)
        if not isinstance(name, str | None) or not isinstance(publish, bool):
            raise ControlError("bad_request", '"device" must be a name, "publish" a boolean')
        devices = self.config.all_devices()
        chosen = [(c, d) for c, d in devices if name is None or d.name == name]
        if not chosen:
            raise ControlError("no_device", _no_device(name, [d.name for _, d in devices]))
        log.info("poll_once_requested", device=name or "all", publish=publish)
        from agent.service.probing import probe_on  # the commands' parts: loaded when asked
        from agent.sources.modbus.probe import fragments

        answer: dict[str, Any] = {"devices": await probe_on(self.lines, chosen)}
        if publish:
            batches = fragments(answer["devices"])
            for bucket, parts in batches.items():
                self.batcher.add_encoded(bucket, parts)
            count = sum(len(parts) for parts in batches.values())
            answer["published"] = {"ok": True, "message": f"{count} readings into the queue"}
        return answer

    async def _read(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if "values" in args:
            raise ControlError("bad_request", 'a read takes "count", not "values"')
        return await self._exchange(args)

    async def _write(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(args.get("values"), list):
            raise ControlError("bad_request", 'a write takes "values", a list')
        if args.get("table") not in ("coil", "holding"):
            raise ControlError("bad_request", "only coils and holding registers are written")
        return await self._exchange(args)

    async def _exchange(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """`orio-agent read`/`write` on the agent's connection of that name or endpoint,
        between its pollers' requests. A write is logged at warning: it was not the cloud."""
        line = self._line_for(args.get("connection"), args.get("endpoint"))
        try:
            table = Table(str(args.get("table")))
            unit, start = int(args["unit"]), int(args["start"])
        except (KeyError, TypeError, ValueError):
            raise ControlError("bad_request", "needs unit, table and start") from None
        size = len(args["values"]) if isinstance(args.get("values"), list) else args.get("count")
        if not (0 <= unit <= 255 and isinstance(size, int) and 0 < size <= 2000):
            raise ControlError("bad_request", "unit 0..255, and a count or values 1..2000")
        if not 0 <= start <= 65536 - size:
            raise ControlError("bad_request", "the addresses run outside 0..65535")
        if "values" in args:
            values = args["values"]
            if not all(isinstance(v, int) and 0 <= v <= 0xFFFF for v in values):
                raise ControlError("bad_request", '"values" must be integers 0..65535')
            log.warning(
                "control_write",
                connection=line.name,
                unit=unit,
                table=str(table),
                start=start,
                values=values,
            )
        from agent.service.probing import exchange_on

        return await exchange_on(line, args)

    def _line_for(self, name: object, endpoint: object) -> ModbusLine:
        for line in self.lines.values():
            if line.name == name or (endpoint is not None and line.endpoint == endpoint):
                return line
        raise ControlError("no_connection", f"the agent holds no connection {name or endpoint!r}")

    async def _scan(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """`orio-agent scan` of a line the agent polls: that connection paused meanwhile."""
        line = self._line_for(args.get("connection"), None)
        conn = next(c for c in self.config.connections if c.name == line.name)
        try:
            speeds = [int(b) for b in args["baudrates"]]
            parities = [str(p) for p in args["parities"]]
            units = [int(u) for u in args["units"]]
            turnaround = float(args["turnaround"])
            if len(speeds) * len(parities) * len(units) > MAX_SCAN or not 0 < turnaround <= 5:
                raise ValueError("too large a scan")
        except (KeyError, TypeError, ValueError):
            raise ControlError(
                "bad_request", "needs baudrates, parities, units and turnaround, within bounds"
            ) from None
        if not isinstance(conn.endpoint, SerialSettings) or conn.framing != "rtu":
            raise ControlError("bad_request", f"{line.name!r} is not an RTU line")
        log.warning("scan_pauses_connection", connection=line.name, addresses=len(units))
        async with line.paused():
            from agent.service.probing import scan_line
            from agent.service.scan import to_json as scan_to_json

            found = await scan_line(conn, speeds, parities, units, turnaround, _no_progress)
        log.info("scan_done", connection=line.name, found=[f.unit for f in found.found])
        return scan_to_json(found)

    async def _settings(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        """What the agent last reported per config group and setting, and what it refused."""
        configurator = self.configurator
        return {
            group: {
                "reported": configurator.reported.get(group, {}),
                "refused": configurator.refusals.get(group, {}),
            }
            for group in configurator.groups
        }

    async def _status(self, args: Mapping[str, Any]) -> dict[str, Any]:
        points = args.get("points", True)
        if not isinstance(points, bool):
            raise ControlError("bad_request", '"points" must be true or false')
        return status_document(self.state.view(points=points), version=__version__)

    async def _drain(self, limit: float) -> None:
        """Let delivery empty the outbox while connected, for at most `limit` seconds."""
        if not isinstance(self.outbox, MemoryOutbox) or not self.session.connected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.outbox.wait_empty()
