"""Structured logging: logfmt or JSON lines to stdout (journald takes it from there).

One event name per kind of event, snake_case; context bound as keys. Configured once,
by the command line entry point, for the agent's own lines and for the standard
library's records (asyncio, pymodbus, gmqtt), which go through the same renderer.

Text from the cloud or from a device is hostile: every string of every line, nested
ones too, passes `EscapeStrings` before it is rendered, so that a control character or
a bidi override shows as an escape (`\\x00`, `\\u202e`) instead of reaching the journal,
and a long string is cut.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# pydantic_settings: its debug lines (PYDANTIC_SETTINGS_DEBUG=1) show every source's values,
# the secret too, so they never pass.
_NOISY_LIBRARIES = ("pymodbus", "gmqtt", "pydantic_settings")
_HANDLER_NAME = "agent.logs"  # our handler on the root logger, replaced by each configure()

MAX_STRING = 200
"""Characters of one string kept in a log line; the rest is replaced by a marker."""
MAX_DEPTH = 4
"""Levels of nested lists and dicts escaped one by one; deeper ones become one text."""
DEFAULT_MAX_KEYS = 1024
"""Keys a `Throttle` remembers; the least recently used is forgotten first."""

# C0, DEL and C1 controls, the Arabic letter mark, left-to-right and right-to-left marks,
# line and paragraph separators, bidi embeddings and overrides (U+202A-E) and isolates
# (U+2066-9), and lone surrogates (JSON allows "\ud800"; stdout cannot encode it).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Tracebacks: escaped but never cut, and their line breaks kept (JSON and logfmt encode
# them as \n; the console shows them).
_TRACEBACK_KEYS = frozenset({"exception", "stack", "stack_info"})


def configure(*, level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Set up logging for the process; safe to call again to change the level or format.
    `stream`: where the lines go, stdout by default (the commands other than `run` keep
    stdout for their own output and log to stderr)."""
    renderer = _renderer(fmt)
    escape = EscapeStrings(flatten=fmt != "json")
    timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamp,
            structlog.processors.format_exc_info,
            escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamp,
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, escape, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries log through the standard library: keep them quiet unless debugging.
    debugging = level == "debug"
    root.setLevel(logging.INFO if debugging else logging.WARNING)
    for noisy in _NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING if debugging else logging.CRITICAL)


class LogLevel:
    """The level in force, which the cloud may change (`log.level` setting)."""

    def __init__(self, level: str, fmt: str) -> None:
        self.level = level
        self._fmt = fmt

    def set_level(self, level: str) -> None:
        self.level = level
        configure(level=level, fmt=self._fmt)


def escape(text: str, *, limit: int | None = MAX_STRING) -> str:
    """`text` fit for one log line: cut to `limit` characters, unsafe ones escaped."""
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}…({len(text)} chars)"
    if text.isprintable():  # every unsafe character is unprintable: the usual case ends here
        return text
    return _UNSAFE.sub(_escape_character, text)


class EscapeStrings:
    """Processor: every string of an event, nested ones too, escaped and cut (`escape`).

    With `flatten`, a list or dict becomes one text, its strings escaped and quoted, for
    renderers (logfmt, console) that would print it with `repr` and escape it twice;
    without, it stays a structure of escaped strings (JSON). Other objects become their
    text, escaped. Numbers, booleans and None pass as they are.
    """

    def __init__(self, *, flatten: bool) -> None:
        self._flatten = flatten

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            if type(value) is str:
                if key in _TRACEBACK_KEYS:
                    event_dict[key] = _escape_traceback(value)
                elif len(value) > MAX_STRING or not value.isprintable():
                    event_dict[key] = escape(value)
            elif value is not None and not isinstance(value, bool | int | float):
                event_dict[key] = self._top(value)
        return event_dict

    def _top(self, value: object) -> object:
        if isinstance(value, str):  # a subclass of str (an enum member)
            return escape(value)
        if self._flatten:
            if isinstance(value, list | tuple | set | frozenset | dict):
                return _text(value, 0)
            return escape(str(value))  # what logfmt would print
        return _structure(value, 0)


def _structure(value: object, depth: int) -> object:
    """JSON's view of `value` with every string escaped."""
    if isinstance(value, str):
        return escape(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth < MAX_DEPTH:
        if isinstance(value, list | tuple | set | frozenset):
            return [_structure(item, depth + 1) for item in value]
        if isinstance(value, dict):
            return {
                escape(k) if isinstance(k, str) else k: _structure(v, depth + 1)
                for k, v in value.items()
            }
    return escape(repr(value))  # what the JSON renderer would print for an unknown object


def _text(value: object, depth: int) -> str:
    """`value` as Python would show it in a list, with our escaping of its strings."""
    if isinstance(value, str):
        return f"'{escape(value)}'"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if depth < MAX_DEPTH:
        if isinstance(value, dict):
            inner = ", ".join(
                f"{_text(k, depth + 1)}: {_text(v, depth + 1)}" for k, v in value.items()
            )
            return f"{{{inner}}}"
        if isinstance(value, tuple):
            return f"({', '.join(_text(item, depth + 1) for item in value)})"
        if isinstance(value, list | set | frozenset):
            return f"[{', '.join(_text(item, depth + 1) for item in value)}]"
    return escape(repr(value))


def _escape_traceback(text: str) -> str:
    if text.isprintable():
        return text
    return "\n".join(escape(line, limit=None) for line in text.split("\n"))


def _escape_character(match: re.Match[str]) -> str:
    character = match.group()
    named = _NAMED_ESCAPES.get(character)
    if named is not None:
        return named
    code = ord(character)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _renderer(fmt: str) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    return structlog.processors.LogfmtRenderer(
        key_order=["ts", "level", "event"], bool_as_flag=False
    )


@dataclass(slots=True)
class _Slot:
    at: float  # when a line for the key was last let through
    held: int = 0  # lines held back since


class Throttle:
    """Rate limit for repeated log lines: one per key per `interval` seconds.

    Memory is bounded: at most `max_keys` keys are remembered, the least recently used
    forgotten first (a forgotten key's next line goes through). A caller whose keys come
    from outside (the cloud, a device) must still keep its key space small itself, or a
    stream of new keys lets a line through for each.
    """

    def __init__(
        self,
        *,
        interval: float,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()

    def allow(self, key: Hashable) -> bool:
        """Whether a line for `key` may be logged now."""
        return self.admit(key) is not None

    def admit(self, key: Hashable) -> int | None:
        """None if a line for `key` went through less than `interval` ago; otherwise (the
        line may be logged) how many lines for `key` were held back since the last one."""
        now = self._clock()
        slots = self._slots
        slot = slots.get(key)
        if slot is None:
            slots[key] = _Slot(now)
            if len(slots) > self._max_keys:
                slots.popitem(last=False)
            return 0
        slots.move_to_end(key)
        if now - slot.at < self._interval:
            slot.held += 1
            return None
        held, slot.at, slot.held = slot.held, now, 0
        return held

    def __len__(self) -> int:
        """How many keys are remembered (never more than `max_keys`)."""
        return len(self._slots)


def suppressed(held: int) -> dict[str, int]:
    """Keys for a log line after `Throttle.admit`: `suppressed=N` when lines were held."""
    return {"suppressed": held} if held else {}
