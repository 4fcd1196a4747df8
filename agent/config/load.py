"""`load_config(path)`: the file, the environment and the secret, checked and resolved.

Read → sources (agent.config.sources) → validation (agent.config.schema) → checks
(agent.config.checks) → resolution (agent.config.resolve). Every problem found on the
way is collected and raised together as one ConfigError, naming file, key and line:
when validation fails, the sections that did validate are still checked, so that a
type error in one connection does not hide a duplicate name in another.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import agent.config.no_plugins  # noqa: F401  (first: before pydantic builds a model)

# isort: split
from pydantic import BaseModel, ValidationError

from agent.config import checks, include, resolve, tomlpos
from agent.config.model import MASK, Config
from agent.config.problems import located, syntax_problem, validation_problems
from agent.config.schema import (
    AgentSettings,
    ConfigGroupConfig,
    DerivedConfig,
    ModbusConfig,
    MqttConfig,
    SerialConfig,
    TemplateConfig,
)
from agent.config.sources import (
    EnvironmentSource,
    SecretSource,
    Snapshot,
    TomlSource,
    refused_variables,
)
from agent.errors import ConfigError, ConfigProblem


def load_config(path: str | Path) -> Config:
    """Read, validate, check and resolve a config file; ConfigError names every problem."""
    return resolve.resolve(load_settings(path))


def masked(settings: AgentSettings) -> dict[str, Any]:
    """The file's settings for display, defaults included, the secret as asterisks."""
    data = settings.model_dump(mode="json", exclude_none=True)
    data["thing"]["secret"] = MASK
    return data


def load_settings(path: str | Path) -> AgentSettings:
    """The file's settings, validated and checked (`load_config` resolves them)."""
    shown = str(path)
    text, data = _read(path)
    included = include.include(Path(path), text, data)
    environ = dict(os.environ)
    refused = refused_variables(environ)
    if refused:
        message = (
            "arrays of tables ([[modbus]], [[serial]], [[config_groups]]) cannot be "
            f"overridden from the environment; unset {', '.join(refused)}"
        )
        raise ConfigError(shown, [ConfigProblem("", message)])
    environment = EnvironmentSource(AgentSettings)
    secret = SecretSource(AgentSettings, environ)
    merged = Snapshot(AgentSettings)
    sources = (environment, TomlSource(AgentSettings, text, data), secret, merged)
    problems: list[ConfigProblem] = []
    settings: AgentSettings | None = None
    try:
        settings = AgentSettings(_build_sources=(sources, {}))
    except ValidationError as exc:
        problems += validation_problems(exc.errors(), text, environ)
    if environment.problem is not None:
        raise ConfigError(shown, [ConfigProblem("", environment.problem)])
    sections = _sections(settings, merged.data, text, environ)
    problems += [located(text, key, message) for key, message in checks.check(sections)]
    if secret.problem is not None:
        line = tomlpos.locate(text, ("thing",))
        problems.append(ConfigProblem("thing.secret", secret.problem, line))
    problems = included.problems + [included.relocate(problem) for problem in problems]
    if problems or settings is None:
        raise ConfigError(shown, _unique(problems))
    return settings


def _read(path: str | Path) -> tuple[str, dict[str, Any]]:
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(shown, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(shown, [ConfigProblem("", "not UTF-8 text")]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, [syntax_problem(exc)]) from None


def _sections(
    settings: AgentSettings | None, data: dict[str, Any], text: str, environ: Mapping[str, str]
) -> checks.Sections:
    """What to check: the whole file if it validated, else the sections that do alone."""
    if settings is not None:
        return checks.Sections(
            mqtt=settings.mqtt,
            templates=settings.templates,
            named_templates=set(settings.templates),
            modbus=list(enumerate(settings.modbus)),
            serial=list(enumerate(settings.serial)),
            config_groups=list(enumerate(settings.config_groups)),
            derived=list(enumerate(settings.derived)),
        )
    written = data.get("templates")
    templates = written if isinstance(written, dict) else {}
    valid = {name: _valid(TemplateConfig, value) for name, value in templates.items()}
    return checks.Sections(
        mqtt=_valid(MqttConfig, data.get("mqtt")),
        templates={name: template for name, template in valid.items() if template is not None},
        named_templates=set(templates),
        modbus=_valid_items(ModbusConfig, data.get("modbus")),
        serial=_valid_items(SerialConfig, data.get("serial")),
        config_groups=_valid_items(ConfigGroupConfig, data.get("config_groups")),
        derived=_valid_items(DerivedConfig, data.get("derived")),
        named_devices=_names(data, ("modbus", "devices"), ("serial",)),
        named_buckets=_buckets(data),
    )


M = TypeVar("M", bound=BaseModel)


def _valid(model: type[M], value: Any) -> M | None:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _valid_items(model: type[M], value: Any) -> list[tuple[int, M]]:
    if not isinstance(value, list):
        return []
    found = [(index, _valid(model, item)) for index, item in enumerate(value)]
    return [(index, item) for index, item in found if item is not None]


def _tables(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _names(data: dict[str, Any], *paths: tuple[str, ...]) -> set[str]:
    """Names written at each path of arrays of tables, e.g. modbus[*].devices[*].name."""
    names: set[str] = set()
    for path in paths:
        level = [data]
        for key in path:
            level = [item for table in level for item in _tables(table.get(key))]
        names |= {table["name"] for table in level if isinstance(table.get("name"), str)}
    return names


def _buckets(data: dict[str, Any]) -> set[str]:
    owners = [
        device for conn in _tables(data.get("modbus")) for device in _tables(conn.get("devices"))
    ]
    owners += _tables(data.get("serial"))
    found = {
        point.get("bucket") or owner.get("bucket")
        for owner in owners
        for point in _tables(owner.get("points"))
    }
    return {bucket for bucket in found if isinstance(bucket, str)}


def _unique(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """In the order of the files' lines; a key validated whole and again alone (or a
    template's point checked for each device that uses it) reports once."""
    problems = sorted(problems, key=lambda p: (p.file or "", p.line or 0))
    seen: set[tuple[str, str]] = set()
    kept = []
    for problem in problems:
        if (problem.key, problem.message) not in seen:
            seen.add((problem.key, problem.message))
            kept.append(problem)
    return kept
