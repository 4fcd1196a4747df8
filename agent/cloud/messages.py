"""Cloud configuration messages: `$thing/{id}/$conf/$expected/{group}` → (group, entries).

Everything from the network is hostile until proven otherwise: size, encoding, JSON,
shape, nesting, NaN and infinities, and the group name in the topic are all checked
here, and any failure is one `RejectedMessage` with a reason fit for one log line and
a `kind` from a small fixed set (what a log rate limit can key on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import RejectedInput

MAX_ENTRIES = 1000
MAX_GROUP_LENGTH = 128
MAX_ID_LENGTH = 128

Fault = Literal[
    "topic", "group", "size", "encoding", "json", "nesting", "shape", "entries", "entry"
]


class RejectedMessage(RejectedInput):
    """A message unfit as a whole; `kind` names the check it failed."""

    def __init__(self, kind: Fault, reason: str) -> None:
        super().__init__(reason)
        self.kind: Fault = kind


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    value: bool | int | float | str


def expected_prefix(thing_id: str) -> str:
    return f"$thing/{thing_id}/$conf/$expected/"


def reported_topic(thing_id: str, group: str) -> str:
    return f"$thing/{thing_id}/$conf/$reported/{group}"


def latest_per_id(entries: Iterable[Entry]) -> list[Entry]:
    """One entry per id, the last given, in the order the last ones came.

    What applying the entries in turn would leave, without the writes in between: a
    message that alternates a setting's value 1,000 times writes it once.
    """
    latest: dict[str, Entry] = {}
    for entry in entries:
        latest.pop(entry.id, None)
        latest[entry.id] = entry
    return list(latest.values())


def parse_expected(
    topic: str, payload: bytes, *, thing_id: str, max_bytes: int
) -> tuple[str, list[Entry]]:
    """The group named by the topic and the entries of the payload; RejectedMessage if unfit."""
    prefix = expected_prefix(thing_id)
    if not topic.startswith(prefix):
        raise RejectedMessage("topic", f"not an expected-config topic: {_show(topic)}")
    group = topic[len(prefix) :]
    if (
        not group
        or len(group) > MAX_GROUP_LENGTH
        or any(c in "/+#" or ord(c) < 0x20 or ord(c) == 0x7F for c in group)
    ):
        raise RejectedMessage("group", f"unusable group name in topic: {_show(group)}")
    if len(payload) > max_bytes:
        raise RejectedMessage(
            "size", f"payload of {len(payload)} bytes is over the {max_bytes} limit"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedMessage("encoding", "payload is not UTF-8") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RejectedMessage("nesting", "payload is nested too deeply") from None
    except ValueError as exc:
        raise RejectedMessage("json", f"payload is not JSON: {exc}") from None
    return group, _entries(document)


def _entries(document: Any) -> list[Entry]:
    if isinstance(document, dict):
        document = [document]  # the document allows one object where an array is usual
    if not isinstance(document, list):
        raise RejectedMessage(
            "shape", f'payload must be an array of {{"id", "value"}}, not {type(document).__name__}'
        )
    if len(document) > MAX_ENTRIES:
        raise RejectedMessage("entries", f"{len(document)} entries is over the {MAX_ENTRIES} limit")
    entries: list[Entry] = []
    for index, item in enumerate(document):
        if not isinstance(item, dict) or "id" not in item or "value" not in item:
            raise RejectedMessage("entry", f'entry {index} is not an object with "id" and "value"')
        key, value = item["id"], item.get("value")
        if not isinstance(key, str) or not key or len(key) > MAX_ID_LENGTH:
            raise RejectedMessage("entry", f'entry {index} has no usable "id"')
        if not isinstance(value, bool | int | float | str):
            raise RejectedMessage(
                "entry",
                f"entry {index} ({_show(key)}): value must be a number, a string or a boolean",
            )
        entries.append(Entry(key, value))
    return entries


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _show(text: str, limit: int = 80) -> str:
    """Untrusted text made safe for one log line."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return repr(shown + ("…" if len(text) > limit else ""))
