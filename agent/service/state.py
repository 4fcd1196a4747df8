"""The agent's state in one place, and the three ways it is shown.

`AgentState` reads what the parts already keep (the broker session, the clock, the
queue's stats, each source's `SourceStats` and each point's last report); it counts
nothing itself. `view()` is a consistent picture of the moment, taken by:

- `status_line`: systemd's STATUS= (`systemctl status orio-agent`),
- `stats_fields`: the `agent_stats` log line, every minute,
- `health_values`: the health readings the agent publishes about itself,

and next by the live status command. Whatever one of them shows, the others agree with.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.outbox.port import OutboxStats
from agent.pipeline.readings import Value
from agent.sources.modbus.meter import LineLoad, LineMeter
from agent.sources.source import Cadence, PointView, SourceStats


class Session(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def connected_at(self) -> float | None: ...

    @property
    def last_ack_at(self) -> float | None: ...

    @property
    def refused_subscriptions(self) -> set[str]: ...

    reconnects: int


class Delivering(Protocol):
    restamped: int  # messages whose timestamps were corrected after a clock step


class Configuring(Protocol):
    writes: int  # settings written to devices
    rejected: int  # cloud messages or settings refused


class Queue(Protocol):
    def stats(self) -> OutboxStats: ...


class TrustedClock(Protocol):
    def trusted(self) -> bool: ...

    def wall_ms(self) -> int: ...


class Line(Protocol):
    """A Modbus connection (agent.sources.modbus.client.ModbusLine)."""

    name: str

    @property
    def endpoint(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    meter: LineMeter


@dataclass(frozen=True, slots=True)
class LineView:
    name: str
    endpoint: str
    connected: bool
    load: LineLoad


class Tracked(Protocol):
    """A source as the state reads it (DevicePoller and Instrument are)."""

    name: str
    kind: str  # "device" or "instrument"
    where: str  # the connection a device is on, the port an instrument is on
    stats: SourceStats
    cadence: Cadence

    @property
    def interval(self) -> float: ...

    def point_views(self, now: float) -> Iterable[PointView]: ...


@dataclass(frozen=True, slots=True)
class SourceView:
    name: str
    kind: str
    where: str
    interval: float
    stats: SourceStats  # a copy, as it was when the view was taken
    points: tuple[PointView, ...]  # empty unless asked for
    achieved: tuple[float, float] | None  # the interval kept: median, 95th percentile
    next_in_s: float | None  # until the next cycle, while one is waited for


@dataclass(frozen=True, slots=True)
class BrokerView:
    connected_for_s: float | None  # None while not connected
    last_ack_age_s: float | None  # None before the first PUBACK
    refused_subscriptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AgentView:
    uptime_s: float
    connected: bool
    reconnects: int
    broker: BrokerView
    now: float  # monotonic, when the view was taken
    clock_trusted: bool
    wall_ms: int
    queue: OutboxStats
    lines: tuple[LineView, ...]
    sources: tuple[SourceView, ...]
    restamped: int
    settings_written: int
    config_rejected: int

    @property
    def failing(self) -> list[str]:
        return [s.name for s in self.sources if s.stats.failing]

    def total(self, counter: str) -> int:
        return sum(getattr(s.stats, counter) for s in self.sources)


class AgentState:
    def __init__(
        self, *, queue: Queue, clock: TrustedClock, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._queue = queue
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._session: Session | None = None
        self._delivery: Delivering | None = None
        self._sources: tuple[Tracked, ...] = ()
        self._lines: tuple[Line, ...] = ()
        self._configurator: Configuring | None = None

    def track_link(self, session: Session, delivery: Delivering) -> None:
        """The broker session and delivery in use (replaced when [thing] or [mqtt] change)."""
        self._session, self._delivery = session, delivery

    def track_sources(
        self, sources: Sequence[Tracked], lines: Sequence[Line], configurator: Configuring
    ) -> None:
        """The sources, their Modbus connections and the configurator now running
        (replaced on reload)."""
        self._sources, self._lines = tuple(sources), tuple(lines)
        self._configurator = configurator

    def view(self, *, points: bool = False) -> AgentView:
        now = self._monotonic()
        return AgentView(
            uptime_s=now - self._started,
            connected=self._session is not None and self._session.connected,
            reconnects=0 if self._session is None else self._session.reconnects,
            broker=self._broker(now),
            now=now,
            clock_trusted=self._clock.trusted(),
            wall_ms=self._clock.wall_ms(),
            queue=self._queue.stats(),
            lines=tuple(
                LineView(line.name, line.endpoint, line.connected, line.meter.snapshot(now))
                for line in self._lines
            ),
            sources=tuple(
                SourceView(
                    name=source.name,
                    kind=source.kind,
                    where=source.where,
                    interval=source.interval,
                    stats=dataclasses.replace(source.stats),
                    points=tuple(source.point_views(now)) if points else (),
                    achieved=source.cadence.achieved(),
                    next_in_s=_until(source.cadence.next_at, now),
                )
                for source in self._sources
            ),
            restamped=0 if self._delivery is None else self._delivery.restamped,
            settings_written=0 if self._configurator is None else self._configurator.writes,
            config_rejected=0 if self._configurator is None else self._configurator.rejected,
        )

    def _broker(self, now: float) -> BrokerView:
        session = self._session
        if session is None:
            return BrokerView(None, None, ())
        since, acked = session.connected_at, session.last_ack_at
        return BrokerView(
            connected_for_s=None if since is None else now - since,
            last_ack_age_s=None if acked is None else now - acked,
            refused_subscriptions=tuple(sorted(session.refused_subscriptions)),
        )


def status_line(view: AgentView) -> str:
    queue = view.queue
    text = "connected" if view.connected else "not connected"
    text += f"; queue {queue.depth} messages"
    if queue.backlog:
        text += f" ({queue.backlog} to replay)"
    if queue.disk != "ok":
        text += f"; queue disk {queue.disk}"
    if not view.clock_trusted:
        text += "; clock not set"
    failing = view.failing
    return text + (f"; not answering: {', '.join(failing)}" if failing else "")


def stats_fields(view: AgentView) -> dict[str, Any]:
    queue = view.queue
    oldest = _oldest_age(view)
    return {
        "connected": view.connected,
        "queue_depth": queue.depth,
        "queue_bytes": queue.depth_bytes,
        "queue_files_bytes": queue.files_bytes,
        "queue_disk": queue.disk,
        "oldest_age_s": None if oldest is None else round(oldest, 1),
        "backlog": queue.backlog,
        "in_flight": queue.in_flight,
        "queued": queue.queued_total,
        "sent": queue.sent_total,
        "dropped": queue.dropped_total,
        "restamped": view.restamped,
        "settings_written": view.settings_written,
        "config_rejected": view.config_rejected,
        "readings": view.total("readings"),
        "read_errors": view.total("read_errors"),
        "decode_errors": view.total("decode_errors"),
        "skipped_cycles": view.total("skipped_cycles"),
        "devices_failing": view.failing,
        "reconnects": view.reconnects,
    }


def health_values(view: AgentView) -> dict[str, Value]:
    """The health readings by data shape id (see agent.service.health for the table)."""
    queue = view.queue
    oldest = _oldest_age(view)
    values: dict[str, Value] = {
        "agent_uptime": round(view.uptime_s),
        "agent_connected": view.connected,
        "agent_reconnects": view.reconnects,
        "agent_queue_depth": queue.depth,
        "agent_queue_bytes": queue.depth_bytes,
        "agent_queue_oldest_age": 0 if oldest is None else max(0, round(oldest)),
        "agent_readings": view.total("readings"),
        "agent_messages_sent": queue.sent_total,
        "agent_messages_dropped": queue.dropped_total,
        "agent_queue_commits": queue.commits,
        "agent_devices_failing": len(view.failing),
    }
    for source in view.sources:
        values[f"agent_read_errors_{source.name}"] = source.stats.read_errors
    return values


def _oldest_age(view: AgentView) -> float | None:
    created = view.queue.oldest_created
    return None if created is None else view.wall_ms / 1000 - created


STATUS_VERSION = 1  # of status_document's shape; fields are only ever added within a version


def status_document(view: AgentView, *, version: str) -> dict[str, Any]:
    """`orio-agent status --json`: the view as plain JSON (documented in the README).

    Ages and durations are seconds, rounded to 0.1; None (null) where there is none yet.
    """
    queue = view.queue
    broker = view.broker
    return {
        "status_version": STATUS_VERSION,
        "agent": {"version": version, "uptime_s": _round(view.uptime_s)},
        "broker": {
            "connected": view.connected,
            "connected_for_s": _round(broker.connected_for_s),
            "last_puback_age_s": _round(broker.last_ack_age_s),
            "reconnects": view.reconnects,
            "refused_subscriptions": list(broker.refused_subscriptions),
        },
        "clock": {"trusted": view.clock_trusted},
        "queue": {
            "depth": queue.depth,
            "bytes": queue.depth_bytes,
            "oldest_age_s": _round(_oldest_age(view)),
            "backlog": queue.backlog,
            "in_flight": queue.in_flight,
            "sent": queue.sent_total,
            "dropped": queue.dropped_total,
            "disk": queue.disk,
        },
        "connections": [_line_document(line) for line in view.lines],
        "sources": [_source_document(source, view.now) for source in view.sources],
    }


def _line_document(line: LineView) -> dict[str, Any]:
    load = line.load
    return {
        "name": line.name,
        "endpoint": line.endpoint,
        "connected": line.connected,
        "requests_per_s": round(load.requests_per_s, 2),
        "utilisation_pct": round(100 * load.utilisation, 1),
        "rtt_ms": None
        if load.rtt_median_s is None or load.rtt_p95_s is None
        else {"median": round(load.rtt_median_s * 1000, 2), "p95": round(load.rtt_p95_s * 1000, 2)},
    }


def _source_document(source: SourceView, now: float) -> dict[str, Any]:
    stats = source.stats
    return {
        "name": source.name,
        "kind": source.kind,
        "where": source.where,
        "state": "failing" if stats.failing else ("ok" if stats.last_ok_at else "starting"),
        "interval_s": source.interval,
        "achieved_interval_s": None
        if source.achieved is None
        else {"median": _round3(source.achieved[0]), "p95": _round3(source.achieved[1])},
        # While failing: until the next try; 0 while it is trying.
        "backoff_remaining_s": _round(source.next_in_s or 0.0) if stats.failing else None,
        "last_good_age_s": _round(None if stats.last_ok_at is None else now - stats.last_ok_at),
        "failed_cycles": stats.consecutive_failures,
        "last_error": stats.last_error,
        "last_error_code": stats.last_error_code,
        "cycles": stats.cycles,
        "readings": stats.readings,
        "read_errors": stats.read_errors,
        "timeouts": stats.timeouts,
        "refused": stats.refused,
        "decode_errors": stats.decode_errors,
        "skipped_cycles": stats.skipped_cycles,
        "points": [
            {"id": p.id, "bucket": p.bucket, "value": p.value, "age_s": _round(p.age_s)}
            for p in source.points
        ],
    }


def _until(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, at - now)


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds), 1)


def _round3(seconds: float) -> float:
    return round(max(0.0, seconds), 3)
