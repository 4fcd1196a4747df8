"""structlog's events captured as dicts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog
from structlog.testing import capture_logs


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog's events as dicts, from loggers bound inside the block.

    structlog's defaults apply meanwhile (every level, whatever an earlier `configure`
    chose) and the configuration in place before is restored after.
    """
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with capture_logs() as events:
            yield events
    finally:
        structlog.configure(**saved)
