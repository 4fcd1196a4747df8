"""Logging: hostile text escaped, library records in the same format, a bounded rate limit.

What a user sees is the rendered line on stdout, so most tests configure the real
pipeline (`logs.configure`) and read what it printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog

from agent.config import load_config
from agent.service import logs
from agent.service.logs import MAX_STRING, EscapeStrings, Throttle, escape

UNSAFE = [
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9f",
    "\u061c",
    "\u200e",
    "\u200f",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\ud800",
]


@contextmanager
def restored_logging() -> Iterator[None]:
    """Undo `logs.configure`: structlog's config, the root handlers and library levels."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: logging.getLogger(name).level for name in ("pymodbus", "gmqtt")}
    try:
        yield
    finally:
        structlog.configure(**saved)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        for name, library_level in libraries.items():
            logging.getLogger(name).setLevel(library_level)


@pytest.fixture
def configure() -> Iterator[Callable[..., None]]:
    """`logs.configure`, with the global logging state restored after the test."""
    with restored_logging():
        yield logs.configure


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


# -- escape -----------------------------------------------------------------------------------


@pytest.mark.parametrize("character", UNSAFE)
def test_control_characters_bidi_controls_and_surrogates_become_visible_escapes(
    character: str,
) -> None:
    code = ord(character)
    shown = f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    assert f"id{shown}x" == escape(f"id{character}x")


def test_tab_newline_and_carriage_return_are_escaped_by_name() -> None:
    assert "a\\tb\\nc\\rd" == escape("a\tb\nc\rd")


def test_ordinary_text_is_returned_as_it_is_without_a_copy() -> None:
    text = 'Zürich 温度 \\x00 already-escaped text, quotes " and spaces'

    assert text is escape(text)


def test_a_long_string_is_cut_with_a_marker_before_escaping() -> None:
    assert "x" * MAX_STRING + "…(1000 chars)" == escape("x" * 1000)
    assert "\\x00" * MAX_STRING + f"…({MAX_STRING + 1} chars)" == escape("\x00" * (MAX_STRING + 1))


def test_the_processor_escapes_nested_strings_and_dict_keys_for_json() -> None:
    event = {
        "event": "e",
        "ids": ["a\x00", ("b\u202e", 1)],
        "map": {"k\x1b": {"v": "\x7f"}},
        "n": 3,
        "f": 1.5,
        "flag": True,
        "none": None,
    }

    assert {
        "event": "e",
        "ids": ["a\\x00", ["b\\u202e", 1]],
        "map": {"k\\x1b": {"v": "\\x7f"}},
        "n": 3,
        "f": 1.5,
        "flag": True,
        "none": None,
    } == EscapeStrings(flatten=False)(None, "warning", event)


def test_the_processor_flattens_containers_to_one_escaped_text_for_logfmt() -> None:
    event = {"event": "e", "ids": ["a\x00", "b"], "map": {"k": ("\u202e", None)}, "n": 3}

    assert {
        "event": "e",
        "ids": "['a\\x00', 'b']",
        "map": "{'k': ('\\u202e', None)}",
        "n": 3,
    } == EscapeStrings(flatten=True)(None, "warning", event)


def test_objects_become_their_escaped_text_and_deep_nesting_one_text() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "Odd(\x00)"

        def __str__(self) -> str:
            return "odd\u202e"

    deep: list[object] = ["\x00"]
    for _ in range(10):
        deep = [deep]
    event = {"event": "e", "odd": Odd(), "deep": deep}

    escaped = EscapeStrings(flatten=False)(None, "warning", dict(event))
    assert "Odd(\\x00)" == escaped["odd"]
    assert "\x00" not in json.dumps(escaped["deep"])
    assert "odd\\u202e" == EscapeStrings(flatten=True)(None, "warning", dict(event))["odd"]


# -- the configured pipeline --------------------------------------------------------------------

HOSTILE_ID = "bad\x00id\u202e"


def test_logfmt_lines_carry_hostile_text_escaped_on_one_line(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="info", fmt="logfmt")

    structlog.get_logger("t").warning(
        "config_settings_unknown", group="g\u2066", ids=[HOSTILE_ID], note="two\nlines"
    )

    [line] = lines(capsys)
    assert line.endswith(
        " level=warning event=config_settings_unknown group=g\\u2066 "
        "ids=['bad\\x00id\\u202e'] note=two\\nlines"
    )


def test_json_lines_carry_hostile_text_escaped(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="info", fmt="json")

    structlog.get_logger("t").warning("config_settings_unknown", ids=[HOSTILE_ID], reason="x" * 500)

    [line] = lines(capsys)
    record = json.loads(line)
    assert ["bad\\x00id\\u202e"] == record["ids"]
    assert "x" * MAX_STRING + "…(500 chars)" == record["reason"]


@pytest.mark.parametrize("fmt", ["logfmt", "json", "console"])
def test_no_unsafe_character_reaches_stdout_in_any_format(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    configure(level="info", fmt=fmt)
    hostile = "".join(UNSAFE)

    structlog.get_logger("t").warning("e", value=hostile, nested={"k": [hostile]})
    logging.getLogger("asyncio").warning("library %s", hostile)

    out = capsys.readouterr().out
    assert [] == [c for c in UNSAFE if c in out]
    assert 2 == len(out.splitlines())


def test_standard_library_records_are_rendered_like_the_agents_own(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="info", fmt="json")

    structlog.get_logger("t").warning("agent_event")
    logging.getLogger("asyncio").warning("slow callback %s", "x\x00")

    own, library = (json.loads(line) for line in lines(capsys))
    assert {"event", "level", "ts"} == set(own)
    assert {"event": "slow callback x\\x00", "level": "warning", "logger": "asyncio"} == {
        key: library[key] for key in ("event", "level", "logger")
    }
    assert set(own) | {"logger"} == set(library)


async def test_asyncio_errors_come_out_as_logfmt_lines_with_their_logger(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="info", fmt="logfmt")

    asyncio.get_running_loop().call_exception_handler({"message": "unhandled \u202e"})

    [line] = lines(capsys)
    assert line.startswith("ts=")
    assert ' level=error event="unhandled \\\\u202e" logger=asyncio' in line


def test_a_library_traceback_stays_one_line(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="info", fmt="logfmt")

    try:
        raise ValueError("bad\x1b[2J")
    except ValueError:
        logging.getLogger("asyncio").exception("callback failed")

    [line] = lines(capsys)
    assert 'level=error event="callback failed" logger=asyncio exception=' in line
    assert "ValueError: bad\\\\x1b[2J" in line


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_library_chatter_is_shown_only_when_debugging(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    level: str,
    shown: bool,
) -> None:
    configure(level=level, fmt="logfmt")

    logging.getLogger("gmqtt.client").warning("reconnecting")
    logging.getLogger("pymodbus.logging").warning("retrying")
    logging.getLogger("pymodbus.logging").info("frame")

    expected = ["event=reconnecting logger=gmqtt.client", "event=retrying logger=pymodbus.logging"]
    assert (expected if shown else []) == [line.split(" ", 2)[2] for line in lines(capsys)]


def test_configuring_again_changes_the_level_without_doubling_library_lines(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="info", fmt="logfmt")
    configure(level="warning", fmt="logfmt")

    structlog.get_logger("t").info("hidden_now")
    structlog.get_logger("t").warning("shown")
    logging.getLogger("asyncio").warning("once")

    assert ["event=shown", "event=once logger=asyncio"] == [
        line.split(" ", 2)[2] for line in lines(capsys)
    ]


# -- Throttle -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_one_line_per_interval_and_learns_how_many_were_held() -> None:
    clock = FakeClock()
    throttle = Throttle(interval=10.0, clock=clock)

    assert 0 == throttle.admit("k")
    assert [False, False, False] == [throttle.allow("k") for _ in range(3)]
    clock.now += 10.0
    assert 3 == throttle.admit("k")
    assert throttle.admit("k") is None


def test_fifty_thousand_distinct_keys_keep_the_throttle_at_its_bound() -> None:
    clock = FakeClock()
    throttle = Throttle(interval=10.0, max_keys=100, clock=clock)
    throttle.allow("busy")

    refused = 0
    for number in range(50_000):
        assert throttle.allow(("made-up", number))
        refused += not throttle.allow("busy")  # a key in use is never the one forgotten

    assert 100 == len(throttle)
    assert 50_000 == refused


def test_the_least_recently_used_key_is_forgotten_first() -> None:
    throttle = Throttle(interval=10.0, max_keys=2, clock=FakeClock())
    throttle.allow("a")
    throttle.allow("b")
    throttle.allow("a")  # refused, but used: "b" is now the oldest

    throttle.allow("c")

    assert (False, True) == (throttle.allow("a"), throttle.allow("b"))


def test_the_default_bound_holds_for_callers_that_give_only_an_interval() -> None:
    throttle = Throttle(interval=60.0)

    for number in range(50_000):
        throttle.allow(number)

    assert logs.DEFAULT_MAX_KEYS == len(throttle)


def test_pydantic_settings_debug_output_never_shows_the_secret(
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "vjn6u1.~EQrKuOP4"
    path = tmp_path / "config.toml"
    path.write_text(f'[thing]\nid = "gw"\nsecret = "{secret}"\n[mqtt]\nhost = "broker"\n')
    monkeypatch.setenv("PYDANTIC_SETTINGS_DEBUG", "1")  # it logs every source's values
    configure(level="debug", fmt="logfmt")

    load_config(path)

    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    # What keeps it so, whatever the root logger's level: the library's own is capped.
    assert logging.getLogger("pydantic_settings").level >= logging.WARNING
