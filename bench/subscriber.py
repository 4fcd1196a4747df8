"""The cloud side of the bench: counts and checks every reading that arrives.

:class:`Subscriber` is sim.cloud's application client (``app:{id}`` on ``$thing/#``, QoS 1)
that notes each message's arrival time and keeps nothing else of it: messages are parsed
later, in :meth:`Subscriber.process`, so that checking one message does not delay the
arrival time of the next.

Every reading is checked: a JSON object with a known ``id``, a ``value`` the plant can have
served to that point (:mod:`bench.values`) and a ``timestamp``. Its latency is the arrival
wall time minus the reading's timestamp (the time the agent received the response). A
reading whose timestamp is not later than the last one of its point is a duplicate (QoS 1
may deliver twice) or out of order, and is not counted as delivered.

Messages on the health bucket (the agent's own telemetry, ``[health]``) are kept apart:
:attr:`Subscriber.health` holds each id's (timestamp ms, value) series.

Per message it also keeps the arrival time and the payload's size (as received: the
uncompressed JSON), for the payload bytes of a window (:meth:`Subscriber.payload_bytes`),
and the arrival of the last message that brought a new reading
(:attr:`Subscriber.last_new_arrival`, when a backlog finished arriving). Data messages are
counted as they arrive (:attr:`Subscriber.data_messages`), before they are checked.

``late=True`` (the soak: after a broker restart the agent's backlog arrives behind live
data) also counts a reading older than its point's newest as delivered, once, when it is
not older than the newest by more than :data:`LATE_HORIZON_MS`: each point then keeps the
timestamps it delivered within that horizon.

``clean_session=False`` keeps the subscription in the broker across a restart (with a
broker started with persistence): what the agent publishes before the subscriber has
reconnected is queued for it, not lost.
"""

from __future__ import annotations

import bisect
import json
import time
import zlib
from array import array
from dataclasses import dataclass

from bench import values
from sim.broker import Broker
from sim.cloud import CloudClient

LATE_HORIZON_MS = 900_000  # late mode: older than this behind its point's newest: a repeat


@dataclass(slots=True)
class PointState:
    index: int
    kind: values.Kind
    last_timestamp: int = -1
    recent: array[int] | None = None  # late mode: timestamps delivered, sorted, in the horizon

    def deliver(self, timestamp: int) -> bool:
        """Note a reading's arrival: False when it is a repeat (or, late mode aside, out of
        order)."""
        recent = self.recent
        if timestamp > self.last_timestamp:
            self.last_timestamp = timestamp
            if recent is not None:
                recent.append(timestamp)
                if recent[0] < timestamp - 2 * LATE_HORIZON_MS:
                    del recent[: bisect.bisect_left(recent, timestamp - LATE_HORIZON_MS)]
            return True
        if recent is None or timestamp < self.last_timestamp - LATE_HORIZON_MS:
            return False
        index = bisect.bisect_left(recent, timestamp)
        if index < len(recent) and recent[index] == timestamp:
            return False
        recent.insert(index, timestamp)
        return True

    def delivered(self, timestamp: int) -> bool:
        """Whether a reading with this timestamp has arrived (as far as is known)."""
        if timestamp > self.last_timestamp:
            return False
        recent = self.recent
        if recent is None or timestamp < self.last_timestamp - LATE_HORIZON_MS:
            return True
        index = bisect.bisect_left(recent, timestamp)
        return index < len(recent) and recent[index] == timestamp


AGGREGATE_SUFFIXES = ("_avg", "_min", "_max")  # of --computations' aggregate ids


@dataclass(slots=True)
class Tally:
    messages: int = 0
    bytes: int = 0
    readings: int = 0  # delivered: well-formed, known, not a repeat
    malformed: int = 0  # not JSON, not an object of the right shape, or an unknown id
    wrong_value: int = 0  # a value the plant cannot have served to that point
    stale: int = 0  # a value more than values.MAX_FRESH_AGE seconds older than its timestamp
    repeated: int = 0  # duplicate or out of order
    late: int = 0  # late mode: delivered after a newer reading of its point
    computed: int = 0  # derived points' and aggregates' readings (--computations)


class Subscriber(CloudClient):
    """Records arrival times and payloads; :meth:`process` checks and counts them."""

    def __init__(
        self,
        broker: Broker,
        points: dict[str, PointState],
        *,
        health_bucket: str,
        computed_bucket: str = "",
        clean_session: bool = True,
        late: bool = False,
    ) -> None:
        super().__init__(
            host=broker.host,
            port=broker.port,
            app_id=broker.app_id,
            app_secret=broker.app_secret,
            clean_session=clean_session,
        )
        self.points = points
        if late:
            for point in points.values():
                point.recent = array("q")
        self.tally = Tally()
        self.last_arrival = time.monotonic()
        self._pending: list[tuple[float, str, bytes]] = []
        self._health_suffix = f"/$data/{health_bucket}"
        self._computed_suffix = f"/$data/{computed_bucket}" if computed_bucket else None
        self.health: dict[str, list[tuple[int, object]]] = {}
        # Per delivered reading: its timestamp (s) and latency (ms), for window statistics.
        self.timestamps = array("d")
        self.latencies_ms = array("d")
        # Per message checked (data and health): arrival wall time (s) and payload bytes.
        self.checked_arrivals = array("d")
        self.sizes = array("q")
        self.data_messages = 0  # data messages received, checked or not
        self.last_new_arrival: float | None = None  # wall time

    def _on_message(
        self, client: object, topic: str, payload: bytes, qos: int, properties: dict[str, object]
    ) -> int:
        # Overrides sim.cloud's recorder: keep the arrival time and the payload, nothing more.
        self._pending.append((time.time(), topic, bytes(payload)))
        self.last_arrival = time.monotonic()
        if not topic.endswith(self._health_suffix):
            self.data_messages += 1
        return 0

    def process(self) -> None:
        """Check and count every message received since the last call."""
        pending, self._pending = self._pending, []
        tally, points = self.tally, self.points
        for arrival, topic, payload in pending:
            self.checked_arrivals.append(arrival)
            self.sizes.append(len(payload))
            if self._aside(topic, payload):
                continue
            tally.messages += 1
            tally.bytes += len(payload)
            try:
                readings = json.loads(payload)
            except ValueError:
                tally.malformed += 1
                continue
            if not isinstance(readings, list):
                readings = [readings]
            for reading in readings:
                try:
                    point = points[reading["id"]]
                    value = reading["value"]
                    timestamp = int(reading["timestamp"])
                except (KeyError, TypeError, ValueError):
                    self._unknown(reading)
                    continue
                late = timestamp <= point.last_timestamp
                if not point.deliver(timestamp):
                    tally.repeated += 1
                    continue
                tally.late += late
                tally.readings += 1
                self.last_new_arrival = arrival
                age = values.age(point.kind, point.index, value, timestamp)
                if age is None:
                    tally.wrong_value += 1
                elif age > values.MAX_FRESH_AGE:
                    tally.stale += 1
                self.timestamps.append(timestamp / 1000)
                self.latencies_ms.append(arrival * 1000 - timestamp)

    def _unknown(self, reading: object) -> None:
        """A reading of no plant point: an aggregate's (counted), or malformed."""
        name = reading.get("id") if isinstance(reading, dict) else None
        if isinstance(name, str) and name.endswith(AGGREGATE_SUFFIXES):
            self.tally.computed += 1
        else:
            self.tally.malformed += 1

    def _aside(self, topic: str, payload: bytes) -> bool:
        """A message of the health bucket (noted) or the derived points' (counted): not
        the plant's points."""
        if topic.endswith(self._health_suffix):
            self._note_health(payload)
            return True
        if self._computed_suffix is None or not topic.endswith(self._computed_suffix):
            return False
        self.tally.computed += len(json.loads(payload))
        return True

    def _note_health(self, payload: bytes) -> None:
        try:
            readings = json.loads(payload)
            for reading in readings if isinstance(readings, list) else [readings]:
                series = self.health.setdefault(str(reading["id"]), [])
                series.append((int(reading["timestamp"]), reading["value"]))
        except (ValueError, KeyError, TypeError):
            self.tally.malformed += 1

    def undelivered(self, payloads: list[bytes]) -> int:
        """How many readings in `payloads` (the agent's queue at exit) never arrived.

        A point's readings arrive oldest first, so one newer than the last that arrived for
        its point did not arrive (in late mode, one not among those it delivered). A payload
        the queue stored compressed is inflated first.
        """
        count = 0
        for payload in payloads:
            try:
                readings = json.loads(_plain(payload))
            except ValueError:
                continue
            for reading in readings if isinstance(readings, list) else [readings]:
                try:
                    point = self.points[reading["id"]]
                    timestamp = int(reading["timestamp"])
                except (KeyError, TypeError, ValueError):
                    continue
                count += not point.delivered(timestamp)
        return count

    def payload_bytes(self, start: float, end: float) -> int:
        """Payload bytes (data and health, as received) of the messages checked so far that
        arrived from wall time `start` to `end`."""
        return sum(
            size
            for arrival, size in zip(self.checked_arrivals, self.sizes, strict=True)
            if start <= arrival < end
        )

    def quiet_for(self) -> float:
        """Seconds since the last message arrived."""
        return time.monotonic() - self.last_arrival


def _plain(payload: bytes) -> bytes:
    """A queued payload as JSON: as stored, or zlib-inflated if the queue compressed it."""
    if payload[:1] in (b"[", b"{"):
        return payload
    try:
        return zlib.decompress(payload)
    except zlib.error:
        return payload
