"""Where settings come from, as pydantic-settings sources, highest priority first.

1. `EnvironmentSource`: ORIO_AGENT_<SECTION>__<KEY>=value (names case-insensitive; a
   value is converted like the TOML value it replaces, "1883", "false", "2.5"), or
   ORIO_AGENT_<SECTION>='{...}', a JSON object merged into the section. Arrays of
   tables cannot be addressed and are refused by name (`refused_variables`).
2. `TomlSource`: the file, parsed by tomllib. It keeps the text, so that a problem can
   be given the line its key is on.
3. `SecretSource`: the thing's secret from `thing.secret_file` or the systemd credential
   `thing-secret` (LoadCredential=), when neither of the above gave `thing.secret`.
   It reads the state the sources above made (`current_state`).

A problem a source finds (a variable that is not JSON, an unreadable secret file) is
recorded on the source and reported with the others; sources never raise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from agent.config.schema import ENV_DELIMITER, ENV_PREFIX, LIST_SECTIONS

CREDENTIAL_NAME = "thing-secret"  # systemd LoadCredential= name


class _NoFields(PydanticBaseSettingsSource):
    """A source that gives whole sections rather than a value per field."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False


class TomlSource(_NoFields):
    def __init__(self, settings_cls: type[BaseSettings], text: str, data: dict[str, Any]):
        super().__init__(settings_cls)
        self.text = text
        self._data = data

    def __call__(self) -> dict[str, Any]:
        return self._data


class EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, with its problems named by variable."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.problem: str | None = None

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            # Only a whole section is decoded here: the arrays of tables are refused before.
            self.problem = self.problem or (
                f"environment variable {ENV_PREFIX}{field_name.upper()} is not a JSON object"
            )
            return {}
        return decoded


def refused_variables(environ: Mapping[str, str]) -> list[str]:
    """Variables that would address an element of an array of tables."""
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].split(ENV_DELIMITER)[0].lower() in LIST_SECTIONS
    )


class SecretSource(_NoFields):
    """thing.secret from a file, unless a source above gave it."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ
        self.problem: str | None = None

    def __call__(self) -> dict[str, Any]:
        thing = self.current_state.get("thing")
        if not isinstance(thing, dict):
            return {}  # reported by validation: thing is required
        given = thing.get("secret")
        named = thing.get("secret_file")
        if given is not None and named is not None:
            self.problem = "give either `secret` or `secret_file`, not both"
            return {}
        if given is not None:
            if given == "":
                self.problem = "the secret is empty"
            return {}
        if named is not None and not isinstance(named, str):
            return {}  # reported by validation: not a path
        path = self._path(named)
        if path is None:
            self.problem = (
                "no secret: set `secret`, `secret_file`, or the systemd credential "
                f"{CREDENTIAL_NAME!r} (LoadCredential=)"
            )
            return {}
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self.problem = f"cannot read secret file {path}: {reason}"
            return {}
        if not text:
            self.problem = f"secret file {path} is empty"
            return {}
        return {"thing": {"secret": text}}

    def _path(self, named: str | None) -> Path | None:
        if named is not None:
            return Path(named)
        directory = self._environ.get("CREDENTIALS_DIRECTORY")
        return Path(directory) / CREDENTIAL_NAME if directory else None


class Snapshot(_NoFields):
    """Last: keeps the data the sources above made, merged, for checks after a failure."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.data: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        self.data = self.current_state
        return {}
