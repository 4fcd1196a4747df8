"""Cloud configuration messages: `$thing/{id}/$conf/$expected/{group}` → (group, entries).

Everything from the network is hostile until proven otherwise: size, encoding, JSON,
shape, nesting, NaN and infinities, and the group name in the topic are all checked
here, and any failure is one `RejectedInput` with a reason fit for one log line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.errors import RejectedInput

MAX_ENTRIES = 1000
MAX_GROUP_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    value: bool | int | float | str


def expected_prefix(thing_id: str) -> str:
    return f"$thing/{thing_id}/$conf/$expected/"


def reported_topic(thing_id: str, group: str) -> str:
    return f"$thing/{thing_id}/$conf/$reported/{group}"


def parse_expected(topic: str, payload: bytes, *, thing_id: str,
                   max_bytes: int) -> tuple[str, list[Entry]]:
    """The group named by the topic and the entries of the payload; RejectedInput if unfit."""
    prefix = expected_prefix(thing_id)
    if not topic.startswith(prefix):
        raise RejectedInput(f"not an expected-config topic: {_show(topic)}")
    group = topic[len(prefix):]
    if not group or len(group) > MAX_GROUP_LENGTH or any(
        c in "/+#" or ord(c) < 0x20 or ord(c) == 0x7F for c in group
    ):
        raise RejectedInput(f"unusable group name in topic: {_show(group)}")
    if len(payload) > max_bytes:
        raise RejectedInput(f"payload of {len(payload)} bytes is over the {max_bytes} limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedInput("payload is not UTF-8") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RejectedInput("payload is nested too deeply") from None
    except ValueError as exc:
        raise RejectedInput(f"payload is not JSON: {exc}") from None
    return group, _entries(document)


def _entries(document: Any) -> list[Entry]:
    if isinstance(document, dict):
        document = [document]  # the document allows one object where an array is usual
    if not isinstance(document, list):
        raise RejectedInput(f"payload must be an array of {{\"id\", \"value\"}}, "
                            f"not {type(document).__name__}")
    if len(document) > MAX_ENTRIES:
        raise RejectedInput(f"{len(document)} entries is over the {MAX_ENTRIES} limit")
    entries: list[Entry] = []
    for index, item in enumerate(document):
        if not isinstance(item, dict) or "id" not in item or "value" not in item:
            raise RejectedInput(f"entry {index} is not an object with \"id\" and \"value\"")
        key, value = item["id"], item.get("value")
        if not isinstance(key, str) or not key or len(key) > 128:
            raise RejectedInput(f"entry {index} has no usable \"id\"")
        if not isinstance(value, bool | int | float | str):
            raise RejectedInput(f"entry {index} ({_show(key)}): value must be a number, "
                                "a string or a boolean")
        entries.append(Entry(key, value))
    return entries


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _show(text: str, limit: int = 80) -> str:
    """Untrusted text made safe for one log line."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return repr(shown + ("…" if len(text) > limit else ""))
