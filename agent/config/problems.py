"""pydantic's and tomllib's errors reworded as the agent's config problems.

Each problem names its key path and, where the file has it, its line (found by
`agent.config.tomlpos`). A value set by an environment variable says so. A secret's
value is never shown.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from pydantic_core import ErrorDetails

from agent.config import tomlpos
from agent.config.schema import ENV_DELIMITER, ENV_PREFIX
from agent.errors import ConfigProblem

Key = tuple[str | int, ...]

_SHOULD_BE = "Input should be "
_GOT = re.compile(r" \(got .*\)$")


def syntax_problem(exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    # Python 3.11 puts the position in the message: "Invalid value (at line 3, column 7)".
    message = str(exc)
    line = getattr(exc, "lineno", None)
    if line is None and "(at line " in message:
        head, _, tail = message.rpartition(" (at line ")
        number = tail.split(",")[0].rstrip(")")
        if number.isdigit():
            line, message = int(number), head
    return ConfigProblem("", f"TOML syntax: {message}", line)


def validation_problems(
    errors: list[ErrorDetails], source: str, environ: Mapping[str, str], *, under: Key = ()
) -> list[ConfigProblem]:
    """One problem per key, from pydantic's errors for the part of the file at `under`."""
    problems = [_validation_problem(error, source, environ, under) for error in errors]
    return _merge_union_problems(problems)


def _validation_problem(
    error: ErrorDetails, source: str, environ: Mapping[str, str], under: Key
) -> ConfigProblem:
    loc = under + tuple(part for part in error["loc"] if not _is_union_tag(part))
    key = join_key(loc)
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and section)"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif "secret" not in key and "input" in error and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    variable = environment_variable(loc, environ)
    if variable is not None:
        message += f" (set by environment variable {variable})"
    return ConfigProblem(key, message, tomlpos.locate(source, loc))


def environment_variable(loc: Key, environ: Mapping[str, str]) -> str | None:
    """The variable that set the value at `loc`, if one did (names are case-insensitive)."""
    wanted = (ENV_PREFIX + ENV_DELIMITER.join(str(part) for part in loc)).upper()
    return next((name for name in environ if name.upper() == wanted), None)


def located(source: str, key: str, message: str) -> ConfigProblem:
    return ConfigProblem(key, message, tomlpos.locate(source, split_key(key)))


def _merge_union_problems(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """One line per key: a union's members each report, e.g. "a valid string", "a valid integer"."""
    merged: dict[tuple[str, int | None], list[str]] = {}
    for problem in problems:
        merged.setdefault((problem.key, problem.line), []).append(problem.message)
    result = []
    for (key, line), messages in merged.items():
        if len(messages) > 1 and all(m.startswith(_SHOULD_BE) for m in messages):
            got = _GOT.search(messages[0])
            wanted = [_GOT.sub("", m).removeprefix(_SHOULD_BE) for m in messages]
            message = _SHOULD_BE + " or ".join(wanted) + (got.group(0) if got else "")
        else:
            message = "; ".join(messages)
        result.append(ConfigProblem(key, message, line))
    return result


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the member type into the loc of a union error: ('address', 'str').
    return isinstance(part, str) and part in ("str", "int", "float", "bool")


def join_key(loc: Key) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def split_key(key: str) -> Key:
    parts: list[str | int] = []
    for chunk in key.replace("]", "").split("."):
        name, *indices = chunk.split("[")
        parts.append(name)
        parts += [int(index) for index in indices]
    return tuple(parts)
