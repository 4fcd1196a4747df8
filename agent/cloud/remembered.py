"""What the cloud last asked for, remembered across restarts (settings.json).

At start-up the agent's own settings (a device's interval, a bucket's delay, the log
level) are restored from it before any message arrives; a device setting's last value
tells a drift (the device changed behind the cloud's back) from a new request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

from agent.cloud.settings import JsonScalar

log = structlog.get_logger("agent.config")


class SettingsState:
    """The last value the cloud asked for, per group and id, and how it was written."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._values: dict[str, dict[str, dict[str, Any]]] = {}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.error("settings_state_unreadable", path=str(path), error=str(exc))
            else:
                self._values, ignored = _entries(loaded)
                if ignored:  # a hand edit, another version: the rest still applies
                    log.error("settings_state_entries_ignored", path=str(path), count=ignored)

    def get(self, group: str, key: str) -> dict[str, Any] | None:
        return self._values.get(group, {}).get(key)

    def put(self, group: str, key: str, value: JsonScalar, form: str | None) -> None:
        self._values.setdefault(group, {})[key] = {"value": value, "form": form}

    def save(self) -> None:
        """Write the file anew (a temporary, synced, then renamed over the old one).

        A disk that refuses (full, read-only, failing) is logged and the values kept in
        memory: the devices hold what was written, and the next save tries again.
        """
        if self._path is None:
            return
        temporary = self._path.with_suffix(".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as file:
                json.dump(self._values, file)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(self._path)
        except OSError as exc:
            log.error("settings_state_not_saved", path=str(self._path), error=str(exc))


def _entries(loaded: object) -> tuple[dict[str, dict[str, dict[str, Any]]], int]:
    """The well-formed entries of a loaded file ({group: {id: {"value", "form"}}}), and
    how many others there were: start-up reads these, and must not fail on the rest."""
    if not isinstance(loaded, dict):
        return {}, 1
    kept: dict[str, dict[str, dict[str, Any]]] = {}
    ignored = 0
    for group, entries in loaded.items():
        if not isinstance(entries, dict):
            ignored += 1
            continue
        for key, entry in entries.items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("value"), bool | int | float | str)
                and isinstance(entry.get("form"), str | None)
            ):
                kept.setdefault(group, {})[key] = {
                    "value": entry["value"],
                    "form": entry.get("form"),
                }
            else:
                ignored += 1
    return kept, ignored
