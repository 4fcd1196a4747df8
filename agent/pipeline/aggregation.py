"""Every aggregated point's open window, fed by the taps, closed on time, kept durable.

`Aggregation.add` takes a point's value (polled or derived); a window that closes,
because a later sample came or because `close_due` found its end past, gives its
results, which `emit` receives per bucket with the window's end as their timestamp.
The agent puts them straight into the outbox (not through a batch), so that a window's
results and the state that no longer holds it are committed together.

`state()` is every open window as one JSON document, `restore()` the reverse: the agent
stores it with the queue's commits (agent.outbox) and restores it at start-up, so a
kill or a restart mid-window resumes the window with the samples it had; one whose end
passed while the agent was down is closed at start-up with what it had (its `count`
says how many).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from agent.config.model import Aggregate
from agent.pipeline.aggregates import Aggregator, Result, WindowSpec
from agent.pipeline.readings import Value

log = structlog.get_logger("agent.aggregates")

STATE_VERSION = 1


class Aggregation:
    def __init__(
        self,
        points: Sequence[tuple[str, str, Aggregate]],  # (bucket, point id, its aggregate)
        *,
        emit: Callable[[str, list[Result]], None],
    ) -> None:
        self._emit = emit
        self._windows: dict[tuple[str, str], Aggregator] = {}
        for bucket, point_id, aggregate in points:
            spec = WindowSpec(
                point_id,
                float(aggregate.window_s),
                aggregate.functions,
                names=dict(aggregate.ids),
            )
            self._windows[(bucket, point_id)] = Aggregator(spec)
        self.dirty = False  # state changed since `state()` was last taken

    def __bool__(self) -> bool:
        return bool(self._windows)

    def tap(self, bucket: str, point_id: str) -> Callable[[Value | None, int], None]:
        """What a poller calls with each value of that point."""
        window = self._windows[(bucket, point_id)]

        def add(value: Value | None, timestamp_ms: int) -> None:
            if value is None or isinstance(value, bool) or not isinstance(value, int | float):
                return  # a failed read, or a value the checks keep from an aggregate
            results = window.add(value, timestamp_ms)
            self.dirty = True
            if results:
                self._emit(bucket, results)

        return add

    def close_due(self, now_ms: int) -> None:
        for (bucket, _), window in self._windows.items():
            results = window.close_due(now_ms)
            if results:
                self.dirty = True
                self._emit(bucket, results)

    def next_close_ms(self) -> int | None:
        due = [t for w in self._windows.values() if (t := w.next_close_ms()) is not None]
        return min(due, default=None)

    def state(self) -> bytes:
        """Every open window, for the queue's next commit."""
        self.dirty = False
        windows = [
            {"bucket": bucket, "point": point, "state": window.state()}
            for (bucket, point), window in self._windows.items()
        ]
        return json.dumps({"version": STATE_VERSION, "windows": windows}).encode()

    def restore(self, saved: bytes) -> None:
        """The windows as `state()` left them; what no longer fits the config is dropped."""
        try:
            data: Any = json.loads(saved)
            entries = data["windows"] if data.get("version") == STATE_VERSION else []
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("aggregates_state_unusable", reason="not the agent's state document")
            return
        restored = 0
        for entry in entries:
            key = (str(entry.get("bucket")), str(entry.get("point")))
            window = self._windows.get(key)
            if window is None:
                continue
            try:
                self._windows[key] = Aggregator.restore(window.spec, entry["state"])
                restored += 1
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("aggregate_state_dropped", point=key[1], reason=str(exc))
        log.info("aggregates_restored", windows=restored)
