"""Structured logging: logfmt or JSON lines to stdout (journald takes it from there).

One event name per kind of event, snake_case; context bound as keys. Configured once,
by the command line entry point.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Hashable
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(*, level: str = "info", fmt: str = "logfmt") -> None:
    """Set up structlog for the process; safe to call again to change the level."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["ts", "level", "event"], bool_as_flag=False
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING if level != "debug" else logging.INFO,
                        stream=sys.stdout, format="level=%(levelname)s logger=%(name)s "
                        "event=%(message)r")
    for noisy in ("pymodbus", "gmqtt"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if level != "debug" else
                                          logging.WARNING)


class Throttle:
    """Rate limit for repeated log lines: one per key per `interval` seconds."""

    def __init__(self, *, interval: float) -> None:
        self._interval = interval
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._last[key] = now
        return True
