"""The ORing PaaS REST API, simulated: a test double of the remote SaaS.

The platform cannot be reached from here, so this serves its documented REST API
(``reference/000_ea4ff6d52ffc0fa7.txt``) on loopback, with the standard library's
``ThreadingHTTPServer`` in a thread. It follows the document's paths, JSON shapes,
field names and error body; where the document is silent the choices are written
down in the README ("The PaaS simulator").

- Authentication: ``Authorization: ApiKey {api_key}``, or ``Bearer {access_token}``
  with a token from ``POST /v4/oauth/token`` (the client-credentials grant, a JSON
  body). A missing, unknown or expired credential answers 401.
- Lists are cursor-paginated (``limit``, ``afterCursor``, ``beforeCursor``) with a
  small default page (2), so a client must follow ``paging.nextLink`` to null.
- Things (read only), Data Logger (buckets, shapes, last telemetries, timeline) and
  Configs (list, get, put, delete).
- Faults: :meth:`PaasSimulator.fail_next` answers the next requests with a 5xx,
  :meth:`PaasSimulator.delay_next` holds them back.
- :meth:`PaasSimulator.bridge` connects it to a broker (:mod:`sim.broker`) as the
  platform would be: data messages become telemetry, config messages become the
  configs' expected and reported values, and a PUT config publishes the expected one.

``python -m sim.paas --port N [--page-size 2] [--broker-port P]`` serves it until
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from sim.broker import (
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_THING_ID,
    DEFAULT_THING_SECRET,
    LOOPBACK,
)
from sim.cloud import ALL_THINGS, MqttClient

if TYPE_CHECKING:
    from sim.broker import Broker

API_ROOT = "/v4/"
TOKEN_PATH = "/v4/oauth/token"
VALUE_TYPES = ("string", "integer", "float", "hex", "boolean", "coordinate")
DEFAULT_THINGS: Mapping[str, str] = {DEFAULT_THING_ID: "orio-01"}  # the document's thing
DEFAULT_API_KEY = "test-api-key"
DEFAULT_CLIENT_ID = "test-client"
DEFAULT_CLIENT_SECRET = "test-client-secret"
DEFAULT_PAGE_SIZE = 2  # small, so that a client must follow nextLink
DEFAULT_TOKEN_LIFETIME = 3600.0
MAX_LIMIT = 100  # the document's range for `limit` is 1 ~ 100
PUBLISH_TIMEOUT = 10.0  # seconds for the broker's PUBACK of an expected config
BRIDGE_TIMEOUT = 10.0  # seconds to connect or disconnect the bridge
WAIT_TIMEOUT = 10.0
_SHUTDOWN_POLL = 0.05  # serve_forever's check for shutdown(), seconds
_FORBIDDEN_IN_ID = frozenset("/+#\0")  # ids become MQTT topic levels
_HEX = re.compile(r"(0[xX])?[0-9A-Fa-f]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_PARAMS = ("afterCursor", "beforeCursor")


class RecordedRequest(NamedTuple):
    """One request as received: header names lower-case, query values the last given."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Dropped(NamedTuple):
    """Something the platform received and threw away: a reading or a config message.

    ``topic`` is where it came from (for :meth:`PaasSimulator.record`, the data topic it
    stands for), ``item`` the reading or payload, ``reason`` why it was not kept.
    """

    topic: str
    item: Any
    reason: str


class ConfigValue(NamedTuple):
    """One key of a config group, as the API shows it."""

    expected: Any
    reported: Any


class _ApiError(Exception):
    """An error reply in the document's body: ``{"code": ..., "message": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def reply(self) -> _Reply:
        return _Reply(self.status, {"code": error_code(self.status), "message": self.message})


class _Reply(NamedTuple):
    status: int
    body: Any


def error_code(status: int) -> str:
    """The error body's ``code`` for a status: the document shows ``UNAUTHORIZED_ERROR``
    for 401; the others follow the same pattern (``NOT_FOUND_ERROR``, ``CONFLICT_ERROR``,
    ``INTERNAL_SERVER_ERROR``)."""
    try:
        name = HTTPStatus(status).name
    except ValueError:
        name = "UNKNOWN"
    return name if name.endswith("_ERROR") else f"{name}_ERROR"


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as the API writes times: ``2020-05-14T09:13:43.615Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the platform's state ---------------------------------------------------------------


@dataclass(kw_only=True)
class _Shape:
    id: str
    value_type: str
    alias: str | None
    unit: str | None
    seq: int
    created: str

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alias": self.alias,
            "unit": self.unit,
            "valueType": self.value_type,
            "createdAt": self.created,
            "updatedAt": self.created,
        }


@dataclass(kw_only=True)
class _Bucket:
    id: str
    description: str | None
    seq: int
    created: str
    updated: str
    shapes: dict[str, _Shape] = field(default_factory=dict)
    series: dict[str, dict[int, Any]] = field(default_factory=dict)  # shape → ms → value

    def json(self, *, newest_first: bool = True) -> dict[str, Any]:
        # The document lists a bucket's shapes newest first, but answers a create in the
        # request's order.
        shapes = sorted(self.shapes.values(), key=lambda shape: shape.seq, reverse=newest_first)
        return {
            "id": self.id,
            "description": self.description,
            "dataShapes": [shape.json() for shape in shapes],
            "createdAt": self.created,
            "updatedAt": self.updated,
        }


@dataclass
class _Setting:
    expected: Any = None
    reported: Any = None
    is_expected: bool = False  # set by a config, not only reported by the thing


@dataclass(kw_only=True)
class _ConfigGroup:
    name: str
    seq: int
    settings: dict[str, _Setting] = field(default_factory=dict)
    last_config: str | None = None
    last_report: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "configs": [
                {"key": key, "expectedValue": setting.expected, "reportedValue": setting.reported}
                for key, setting in self.settings.items()
            ],
            "lastConfigTime": self.last_config,
            "lastReportTime": self.last_report,
        }

    def expect(self, values: Mapping[str, Any], *, replace: bool, when: str) -> None:
        """New expected values; ``replace`` drops the keys ``values`` does not name."""
        if replace:
            self.settings = {
                key: setting for key, setting in self.settings.items() if key in values
            }
        for key, value in values.items():
            setting = self.settings.setdefault(key, _Setting())
            setting.expected, setting.is_expected = value, True
        self.last_config = when

    def report(self, values: Mapping[str, Any], *, when: str) -> None:
        for key, value in values.items():
            self.settings.setdefault(key, _Setting()).reported = value
        self.last_report = when

    def expected_payload(self) -> list[dict[str, Any]]:
        """The expected config as the config topic carries it: ``[{"id", "value"}]``."""
        return [
            {"id": key, "value": setting.expected}
            for key, setting in self.settings.items()
            if setting.is_expected
        ]


@dataclass(kw_only=True)
class _Thing:
    id: str
    name: str
    secret: str
    seq: int
    created: str
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    configs: dict[str, _ConfigGroup] = field(default_factory=dict)
    last_data: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "secret": self.secret,
            "modelName": "ORIO",
            "serialNumber": self.id,
            "name": self.name,
            "description": None,
            "coordinates": [0, 0],
            "timezone": "Etc/GMT",
            "isEon": False,
            "isOnline": False,
            "status": "active",
            "visibility": "private",
            "lastDataTime": self.last_data,
            "lastCmdTime": None,
            "lastBirthTime": None,
            "lastDeathTime": None,
            "lastOnlineTime": None,
            "labels": [],
            "createdAt": self.created,
            "updatedAt": self.created,
        }


class _ShapeSpec(NamedTuple):
    id: str
    value_type: str
    alias: str | None = None
    unit: str | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    # JSON has one number type: 10.0 is the integer 10 to a JavaScript server.
    return _is_number(value) and float(value).is_integer()


def _is_coordinate(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(_is_number(part) for part in value)
        and -90 <= value[0] <= 90
        and -180 <= value[1] <= 180
    )


_FITS: Mapping[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "integer": _is_integer,
    "float": _is_number,
    "hex": lambda value: isinstance(value, str) and _HEX.fullmatch(value) is not None,
    "boolean": lambda value: isinstance(value, bool),
    "coordinate": _is_coordinate,
}


def _timestamp_ms(reading: Mapping[str, Any], received: int) -> int | None:
    """A reading's time: its ``timestamp`` (ms, a string as in the document, or a number),
    else when it was received; None when it is not a time."""
    stamp = reading.get("timestamp")
    if stamp is None:
        return received
    if isinstance(stamp, str) and stamp.isascii() and stamp.isdigit():
        return int(stamp)
    if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp >= 0:
        return stamp
    return None


class _Platform:
    """Things, their data buckets and configs, behind one lock.

    ``changed`` is that lock (a Condition over an RLock): hold it across several calls
    for a consistent view; every change notifies it.
    """

    def __init__(self, things: Mapping[str, str], foreign_things: Collection[str]) -> None:
        self.changed = threading.Condition(threading.RLock())
        self.dropped: list[Dropped] = []
        self._seq = itertools.count(1)
        self._foreign = frozenset(foreign_things)
        created = iso_time(now_ms())
        self.things = {
            thing_id: _Thing(
                id=thing_id,
                name=name,
                secret=DEFAULT_THING_SECRET
                if thing_id == DEFAULT_THING_ID
                else secrets.token_urlsafe(12),
                seq=next(self._seq),
                created=created,
            )
            for thing_id, name in things.items()
        }

    # -- look-ups (404 and 403) ------------------------------------------------------

    def thing(self, thing_id: str) -> _Thing:
        if thing_id in self._foreign:
            raise _ApiError(403, f"You have no access to thing {thing_id}.")
        thing = self.things.get(thing_id)
        if thing is None:
            raise _ApiError(404, f"Thing {thing_id} not found.")
        return thing

    def bucket(self, thing_id: str, bucket_id: str) -> _Bucket:
        bucket = self.thing(thing_id).buckets.get(bucket_id)
        if bucket is None:
            raise _ApiError(404, f"Data bucket {bucket_id} not found.")
        return bucket

    def config(self, thing_id: str, group: str) -> _ConfigGroup:
        found = self.thing(thing_id).configs.get(group)
        if found is None:
            raise _ApiError(404, f"Config {group} not found.")
        return found

    # -- data buckets and shapes ------------------------------------------------------

    def create_bucket(
        self,
        thing_id: str,
        bucket_id: str,
        description: str | None,
        shapes: Sequence[_ShapeSpec],
    ) -> dict[str, Any]:
        with self.changed:
            thing = self.thing(thing_id)
            if bucket_id in thing.buckets:
                raise _ApiError(409, f"Data bucket {bucket_id} already exists.")
            when = iso_time(now_ms())
            bucket = self._new_bucket(bucket_id, description, when)
            for spec in shapes:
                self._add_shape(bucket, spec, when)
            thing.buckets[bucket_id] = bucket
            self.changed.notify_all()
            return bucket.json(newest_first=False)

    def create_shape(self, thing_id: str, bucket_id: str, spec: _ShapeSpec) -> dict[str, Any]:
        with self.changed:
            bucket = self.bucket(thing_id, bucket_id)
            if spec.id in bucket.shapes:
                raise _ApiError(409, f"Data shape {spec.id} already exists.")
            shape = self._add_shape(bucket, spec, iso_time(now_ms()))
            bucket.updated = shape.created
            self.changed.notify_all()
            return shape.json()

    def delete_bucket(self, thing_id: str, bucket_id: str) -> None:
        with self.changed:
            self.bucket(thing_id, bucket_id)
            del self.things[thing_id].buckets[bucket_id]
            self.changed.notify_all()

    def delete_shape(self, thing_id: str, bucket_id: str, shape_id: str) -> None:
        """The shape and its telemetry go."""
        with self.changed:
            bucket = self.bucket(thing_id, bucket_id)
            if bucket.shapes.pop(shape_id, None) is None:
                raise _ApiError(404, f"Data shape {shape_id} not found.")
            bucket.series.pop(shape_id, None)
            bucket.updated = iso_time(now_ms())
            self.changed.notify_all()

    def preset_bucket(self, thing_id: str, bucket_id: str, shapes: Sequence[_ShapeSpec]) -> None:
        """Create the bucket if needed; add or replace the shapes named."""
        with self.changed:
            thing = self.thing(thing_id)
            when = iso_time(now_ms())
            bucket = thing.buckets.get(bucket_id)
            if bucket is None:
                bucket = thing.buckets[bucket_id] = self._new_bucket(bucket_id, None, when)
            for spec in shapes:
                bucket.shapes.pop(spec.id, None)
                self._add_shape(bucket, spec, when)
            self.changed.notify_all()

    def _new_bucket(self, bucket_id: str, description: str | None, when: str) -> _Bucket:
        return _Bucket(
            id=bucket_id, description=description, seq=next(self._seq), created=when, updated=when
        )

    def _add_shape(self, bucket: _Bucket, spec: _ShapeSpec, when: str) -> _Shape:
        shape = _Shape(
            id=spec.id,
            value_type=spec.value_type,
            alias=spec.alias,
            unit=spec.unit,
            seq=next(self._seq),
            created=when,
        )
        bucket.shapes[spec.id] = shape
        return shape

    # -- telemetry ----------------------------------------------------------------------

    def record(self, thing_id: str, bucket_id: str, readings: Sequence[Any]) -> None:
        """Keep each reading that fits a shape of the bucket; drop (and note) the others."""
        topic = f"$thing/{thing_id}/$data/{bucket_id}"
        received = now_ms()
        with self.changed:
            thing = self.things.get(thing_id)
            bucket = thing.buckets.get(bucket_id) if thing is not None else None
            if thing is None or bucket is None:
                reason = "no such thing" if thing is None else "no such data bucket"
                self.dropped += [Dropped(topic, reading, reason) for reading in readings]
            else:
                kept = [self._keep(bucket, topic, reading, received) for reading in readings]
                if any(kept):
                    thing.last_data = iso_time(received)
            self.changed.notify_all()

    def _keep(self, bucket: _Bucket, topic: str, reading: Any, received: int) -> bool:
        problem = _reading_problem(bucket, reading)
        stamp = _timestamp_ms(reading, received) if problem is None else None
        if stamp is None:
            reason = problem or "timestamp is not milliseconds since the epoch"
            self.dropped.append(Dropped(topic, reading, reason))
            return False
        shape = bucket.shapes[reading["id"]]
        value = reading["value"]
        if shape.value_type == "integer":
            value = int(value)
        bucket.series.setdefault(shape.id, {})[stamp] = value
        return True

    # -- configs ------------------------------------------------------------------------

    def group(self, thing: _Thing, name: str) -> _ConfigGroup:
        """The thing's config group, created empty if it has none of that name."""
        found = thing.configs.get(name)
        if found is None:
            found = thing.configs[name] = _ConfigGroup(name=name, seq=next(self._seq))
        return found

    def put_config(
        self, thing_id: str, name: str, values: Mapping[str, Any], *, replace: bool
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Set the expected config; the group's JSON and its expected payload."""
        with self.changed:
            group = self.group(self.thing(thing_id), name)
            group.expect(values, replace=replace, when=iso_time(now_ms()))
            self.changed.notify_all()
            return group.json(), group.expected_payload()

    def delete_config(self, thing_id: str, name: str) -> None:
        with self.changed:
            self.config(thing_id, name)
            del self.things[thing_id].configs[name]
            self.changed.notify_all()


def _reading_problem(bucket: _Bucket, reading: Any) -> str | None:
    """Why a reading cannot be kept in the bucket, or None."""
    if not isinstance(reading, Mapping) or not isinstance(reading.get("id"), str):
        return "not an object with a string id"
    if "value" not in reading:
        return "no value"
    shape = bucket.shapes.get(reading["id"])
    if shape is None:
        return "no such data shape"
    if not _FITS[shape.value_type](reading["value"]):
        return f"value does not fit valueType {shape.value_type}"
    return None


# -- request validation ---------------------------------------------------------------


def _required_id(body: Mapping[str, Any], name: str, *, where: str = "") -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _ApiError(400, f'"{where}{name}" is required and must be a non-empty string.')
    if _FORBIDDEN_IN_ID & set(value):
        raise _ApiError(400, f'"{where}{name}" must not contain "/", "+", "#" or NUL.')
    return value


def _optional_text(body: Mapping[str, Any], name: str, *, where: str = "") -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _ApiError(400, f'"{where}{name}" must be a string.')
    return value


def _shape_spec(body: Any, shape_id: str | None = None, *, where: str = "") -> _ShapeSpec:
    """A data shape from a request (Create Data Bucket's dataShapes, Create Data Shape);
    ``shape_id`` is one given apart from the body."""
    if not isinstance(body, Mapping):
        raise _ApiError(400, f'"{where.rstrip(".") or "body"}" must be an object.')
    if shape_id is not None:
        body = {**body, "id": shape_id}
    value_type = body.get("valueType")
    if value_type not in VALUE_TYPES:
        raise _ApiError(
            400,
            f'"{where}valueType" must be one of the following values: {", ".join(VALUE_TYPES)}.',
        )
    return _ShapeSpec(
        id=_required_id(body, "id", where=where),
        value_type=value_type,
        alias=_optional_text(body, "alias", where=where),
        unit=_optional_text(body, "unit", where=where),
    )


def _bucket_shapes(body: Mapping[str, Any]) -> list[_ShapeSpec]:
    listed = body.get("dataShapes")
    if not isinstance(listed, list):
        raise _ApiError(400, '"dataShapes" is required and must be an array.')
    specs = [_shape_spec(item, where=f"dataShapes[{index}].") for index, item in enumerate(listed)]
    repeated = [shape_id for shape_id, count in Counter(s.id for s in specs).items() if count > 1]
    if repeated:
        raise _ApiError(400, f'"dataShapes" names data shape {repeated[0]} more than once.')
    return specs


def _limit(query: Mapping[str, str], default: int) -> int:
    text = query.get("limit")
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise _ApiError(400, f'"limit" must be a number between 1 and {MAX_LIMIT}.')
    return int(text)


def _cursor(name: str, key: int) -> str:
    """The document's cursors are base64 of ``_id:89`` or ``timestamp:1589444402963``."""
    return base64.b64encode(f"{name}:{key}".encode()).decode()


def _cursor_key(query: Mapping[str, str], param: str, name: str) -> int | None:
    text = query.get(param)
    if text is None:
        return None
    try:
        prefix, _, key = base64.b64decode(text, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        prefix, key = "", ""
    if prefix != name or not key.isdigit():
        raise _ApiError(400, f'"{param}" is not a valid cursor.')
    return int(key)


def _time_param(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _ApiError(400, f'"{name}" must be in YYYY-MM-DDTHH:mm:ss.sssZ format.') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round((moment - _EPOCH) / timedelta(milliseconds=1))


def _first_index(keys: Sequence[int], predicate: Callable[[int], bool]) -> int:
    return next((index for index, key in enumerate(keys) if predicate(key)), len(keys))


def _window(
    keys: Sequence[int],
    limit: int,
    after: int | None,
    before: int | None,
    *,
    descending: bool,
) -> tuple[int, int]:
    """The page's [start, stop) in a list ordered by ``keys``, from the cursors."""
    if after is not None:
        start = _first_index(keys, lambda key: key < after if descending else key > after)
        return start, min(len(keys), start + limit)
    if before is not None:
        stop = _first_index(keys, lambda key: key <= before if descending else key >= before)
        return max(0, stop - limit), stop
    return 0, min(len(keys), limit)


# -- the HTTP API -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Call:
    """One routed request: the path's parameters, the query and the raw body."""

    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json_object(self) -> dict[str, Any]:
        """The JSON object body; 400 when it is missing, not JSON or not an object."""
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _ApiError(400, "The request body must be JSON (Content-Type: application/json).")
        try:
            body = json.loads(self.body or b"null")
        except ValueError:
            raise _ApiError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "The request body must be a JSON object.")
        return body


_Route = Callable[[_Call], _Reply]
_THING = "/v4/things/(?P<thing>[^/]+)"
_BUCKET = _THING + "/data-buckets/(?P<bucket>[^/]+)"
_GROUP = _THING + "/configs/(?P<group>[^/]+)"
_OK = {"message": "ok"}


def _same(given: str, known: str) -> bool:
    return secrets.compare_digest(given.encode(), known.encode())


class _Tokens:
    """OAuth 2.0 access tokens issued, and when each expires (monotonic seconds)."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + self.lifetime
        return token

    def check(self, token: str) -> None:
        with self._lock:
            expiry = self._expiry.get(token)
        if expiry is None:
            raise _ApiError(401, "Access token is invalid.")
        if time.monotonic() >= expiry:
            raise _ApiError(401, "Access token is expired.")

    def expire_all(self) -> None:
        with self._lock:
            self._expiry = dict.fromkeys(self._expiry, 0.0)


class _Api:
    """Routes, authentication and pagination over a :class:`_Platform`."""

    def __init__(self, simulator: PaasSimulator, platform: _Platform, tokens: _Tokens) -> None:
        self._simulator = simulator
        self._platform = platform
        self._tokens = tokens
        routes: list[tuple[str, str, _Route]] = [
            ("POST", TOKEN_PATH, self._issue_token),
            ("GET", "/v4/things", self._list_things),
            ("GET", _THING, self._get_thing),
            ("GET", _THING + "/data-buckets", self._list_buckets),
            ("POST", _THING + "/data-buckets", self._create_bucket),
            ("GET", _BUCKET, self._get_bucket),
            ("DELETE", _BUCKET, self._delete_bucket),
            ("POST", _BUCKET + "/data-shapes", self._create_shape),
            ("DELETE", _BUCKET + "/data-shapes/(?P<shape>[^/]+)", self._delete_shape),
            ("GET", _BUCKET + "/last-telemetries", self._last_telemetries),
            ("GET", _BUCKET + "/timeline", self._timeline),
            ("GET", _THING + "/configs", self._list_configs),
            ("GET", _GROUP, self._get_config),
            ("PUT", _GROUP, self._put_config),
            ("DELETE", _GROUP, self._delete_config),
        ]
        self._routes = [
            (method, re.compile(pattern + "/?"), handler) for method, pattern, handler in routes
        ]

    def dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Reply:
        """Authenticate (all but the token endpoint), route and answer; raises _ApiError."""
        if path.rstrip("/") != TOKEN_PATH:
            self._authenticate(headers.get("authorization"))
        for route_method, pattern, handler in self._routes:
            matched = pattern.fullmatch(path)
            if matched is not None and route_method == method:
                params = {name: unquote(value) for name, value in matched.groupdict().items()}
                call = _Call(path=path, params=params, query=query, headers=headers, body=body)
                return handler(call)
        raise _ApiError(404, f"Cannot {method} {path}.")

    def _authenticate(self, header: str | None) -> None:
        if not header:
            raise _ApiError(401, "Access token is required.")
        scheme, _, credential = header.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "apikey":
            if not _same(credential, self._simulator.api_key):
                raise _ApiError(401, "API key is invalid.")
        elif scheme.lower() == "bearer":
            self._tokens.check(credential)
        else:
            raise _ApiError(
                401, "Authorization must be 'Bearer {access_token}' or 'ApiKey {api_key}'."
            )

    # -- OAuth 2.0 ------------------------------------------------------------------------

    def _issue_token(self, call: _Call) -> _Reply:
        """The client-credentials grant; the document's request is a JSON body."""
        body = call.json_object()
        for name in ("grant_type", "client_id", "client_secret", "redirect_uri"):
            if not isinstance(body.get(name), str):
                raise _ApiError(400, f'"{name}" is required.')
        if body["grant_type"] != "client_credentials":
            raise _ApiError(400, '"grant_type" must be client_credentials.')
        simulator = self._simulator
        if not (
            _same(body["client_id"], simulator.client_id)
            and _same(body["client_secret"], simulator.client_secret)
        ):
            raise _ApiError(401, "Client authentication failed.")
        return _Reply(
            200,
            {
                "access_token": self._tokens.issue(),
                "token_type": "Bearer",
                "expires_in": math.ceil(self._tokens.lifetime),
            },
        )

    # -- things ---------------------------------------------------------------------------

    def _list_things(self, call: _Call) -> _Reply:
        with self._platform.changed:
            entries = [(thing.seq, thing.json()) for thing in self._platform.things.values()]
        return self._page(call, entries, descending=False)

    def _get_thing(self, call: _Call) -> _Reply:
        with self._platform.changed:
            return _Reply(200, {"data": self._platform.thing(call.params["thing"]).json()})

    # -- data buckets and shapes ------------------------------------------------------------

    def _list_buckets(self, call: _Call) -> _Reply:
        with self._platform.changed:
            buckets = self._platform.thing(call.params["thing"]).buckets.values()
            entries = [(bucket.seq, bucket.json()) for bucket in buckets]
        entries.sort(key=lambda entry: entry[0], reverse=True)  # newest first, as the document
        return self._page(call, entries, descending=True)

    def _create_bucket(self, call: _Call) -> _Reply:
        body = call.json_object()
        created = self._platform.create_bucket(
            call.params["thing"],
            _required_id(body, "id"),
            _optional_text(body, "description"),
            _bucket_shapes(body),
        )
        return _Reply(201, {"data": created})

    def _get_bucket(self, call: _Call) -> _Reply:
        with self._platform.changed:
            bucket = self._platform.bucket(call.params["thing"], call.params["bucket"])
            return _Reply(200, {"data": bucket.json()})

    def _delete_bucket(self, call: _Call) -> _Reply:
        self._platform.delete_bucket(call.params["thing"], call.params["bucket"])
        return _Reply(200, _OK)

    def _create_shape(self, call: _Call) -> _Reply:
        spec = _shape_spec(call.json_object())
        created = self._platform.create_shape(call.params["thing"], call.params["bucket"], spec)
        return _Reply(201, {"data": created})

    def _delete_shape(self, call: _Call) -> _Reply:
        params = call.params
        self._platform.delete_shape(params["thing"], params["bucket"], params["shape"])
        return _Reply(200, _OK)

    # -- telemetry --------------------------------------------------------------------------

    def _last_telemetries(self, call: _Call) -> _Reply:
        """The latest reading (by its timestamp) of each shape that has one."""
        with self._platform.changed:
            bucket = self._platform.bucket(call.params["thing"], call.params["bucket"])
            shapes = sorted(bucket.shapes.values(), key=lambda shape: shape.seq)
            entries = []
            for shape in shapes:
                series = bucket.series.get(shape.id)
                if series:
                    latest = max(series)
                    entries.append((shape.seq, _telemetry(shape, series[latest], latest)))
        return self._page(call, entries, descending=False)

    def _timeline(self, call: _Call) -> _Reply:
        query = call.query
        shape_ids = [name for name in query.get("dataShapes", "").split(",") if name]
        if not shape_ids:
            raise _ApiError(400, '"dataShapes" is required: comma separated data shape ids.')
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _ApiError(400, '"order" must be asc or desc.')
        span = (_time_param(query, "begin"), _time_param(query, "end"))
        with self._platform.changed:
            bucket = self._platform.bucket(call.params["thing"], call.params["bucket"])
            unknown = [name for name in shape_ids if name not in bucket.shapes]
            if unknown:
                raise _ApiError(400, f'"dataShapes": no data shape {unknown[0]} in this bucket.')
            entries = _timeline_entries(bucket, shape_ids, span, descending=order == "desc")
        return self._page(call, entries, cursor_name="timestamp", descending=order == "desc")

    # -- configs ------------------------------------------------------------------------------

    def _list_configs(self, call: _Call) -> _Reply:
        name = call.query.get("name")
        with self._platform.changed:
            groups = self._platform.thing(call.params["thing"]).configs.values()
            entries = [
                (group.seq, group.json()) for group in groups if name is None or group.name == name
            ]
        entries.sort(key=lambda entry: entry[0], reverse=True)  # newest first, as the document
        return self._page(call, entries, descending=True)

    def _get_config(self, call: _Call) -> _Reply:
        with self._platform.changed:
            group = self._platform.config(call.params["thing"], call.params["group"])
            return _Reply(200, {"data": group.json()})

    def _put_config(self, call: _Call) -> _Reply:
        body = call.json_object()
        values = body.get("configs")
        if not isinstance(values, dict):
            raise _ApiError(400, '"configs" is required and must be a JSON object.')
        partial = body.get("partialUpdate", False)
        if not isinstance(partial, bool):
            raise _ApiError(400, '"partialUpdate" must be a boolean.')
        thing_id, name = call.params["thing"], call.params["group"]
        shown, payload = self._platform.put_config(thing_id, name, values, replace=not partial)
        self._simulator.deliver_expected(thing_id, name, payload)
        return _Reply(200, {"data": shown})

    def _delete_config(self, call: _Call) -> _Reply:
        thing_id, name = call.params["thing"], call.params["group"]
        self._platform.delete_config(thing_id, name)
        self._simulator.deliver_expected(thing_id, name, None)
        return _Reply(200, _OK)

    # -- pagination ---------------------------------------------------------------------------

    def _page(
        self,
        call: _Call,
        entries: Sequence[tuple[int, Any]],
        *,
        cursor_name: str = "_id",
        descending: bool,
    ) -> _Reply:
        """One page of ``entries`` (key, item), in their order, with the document's paging."""
        limit = _limit(call.query, self._simulator.page_size)
        after = _cursor_key(call.query, "afterCursor", cursor_name)
        before = _cursor_key(call.query, "beforeCursor", cursor_name) if after is None else None
        keys = [key for key, _ in entries]
        start, stop = _window(keys, limit, after, before, descending=descending)
        paging: dict[str, str | None] = dict.fromkeys(
            ("beforeCursor", "afterCursor", "previousLink", "nextLink")
        )
        if 0 < start < stop:  # something before this page
            first = _cursor(cursor_name, keys[start])
            paging["beforeCursor"] = first
            paging["previousLink"] = self._link(call, limit, "beforeCursor", first)
        if start < stop < len(keys):  # something after it
            last = _cursor(cursor_name, keys[stop - 1])
            paging["afterCursor"] = last
            paging["nextLink"] = self._link(call, limit, "afterCursor", last)
        items = [item for _, item in entries[start:stop]]
        return _Reply(200, {"paging": paging, "metadata": {"total": len(keys)}, "data": items})

    def _link(self, call: _Call, limit: int, param: str, cursor: str) -> str:
        """The same call for another page: every current parameter, sorted, with the
        effective ``limit``, then the cursor, as the document's nextLink examples."""
        params = {name: value for name, value in call.query.items() if name not in _CURSOR_PARAMS}
        params["limit"] = str(limit)
        query = urlencode([*sorted(params.items()), (param, cursor)])
        return f"{self._simulator.origin}{call.path}?{query}"


def _telemetry(shape: _Shape, value: Any, ms: int) -> dict[str, Any]:
    return {
        "id": shape.id,
        "value": value,
        "valueType": shape.value_type,
        "alias": shape.alias,
        "unit": shape.unit,
        "timestamp": iso_time(ms),
    }


def _timeline_entries(
    bucket: _Bucket,
    shape_ids: Sequence[str],
    span: tuple[int | None, int | None],
    *,
    descending: bool,
) -> list[tuple[int, Any]]:
    """The timeline's rows: one per timestamp in [begin, end], with the shapes' values."""
    begin, end = span
    series = [(shape_id, bucket.series.get(shape_id, {})) for shape_id in shape_ids]
    moments = {
        ms
        for _, values in series
        for ms in values
        if (begin is None or ms >= begin) and (end is None or ms <= end)
    }
    return [
        (
            ms,
            {
                "timestamp": iso_time(ms),
                "values": [
                    {"id": shape_id, "value": values[ms]}
                    for shape_id, values in series
                    if ms in values
                ],
            },
        )
        for ms in sorted(moments, reverse=descending)
    ]


# -- faults ---------------------------------------------------------------------------


@dataclass
class _Fault:
    remaining: int
    prefix: str
    status: int = 0
    seconds: float = 0.0


class _Faults:
    """Injected failures and delays, each for the next N requests matching a path prefix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: list[_Fault] = []
        self.delays: list[_Fault] = []

    def add(self, queue: list[_Fault], fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            queue.append(fault)

    def take(self, queue: list[_Fault], path: str) -> _Fault | None:
        """The first fault of ``queue`` for ``path``, used once."""
        with self._lock:
            for fault in queue:
                if path.startswith(fault.prefix):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        queue.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self.failures.clear()
            self.delays.clear()


def _absolute_prefix(prefix: str) -> str:
    """A path prefix as given, or one relative to ``/v4/`` (``"things/x"``)."""
    return prefix if prefix.startswith("/") or not prefix else API_ROOT + prefix


# -- the simulator --------------------------------------------------------------------


class PaasSimulator:
    """The ORing PaaS REST API on loopback, with its state open to tests.

    ``things`` maps each thing id to its name (default: the document's ``xY6Eie5hv``);
    ``foreign_things`` exist but belong to another organisation: every request about
    them answers 403. ``port=0`` picks a free port on :meth:`start`; a restart keeps it,
    and the state. Usable as a context manager (started on enter, stopped on exit).
    """

    def __init__(
        self,
        *,
        things: Mapping[str, str] | None = None,
        api_key: str = DEFAULT_API_KEY,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        page_size: int = DEFAULT_PAGE_SIZE,
        host: str = LOOPBACK,
        port: int = 0,
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
        foreign_things: Collection[str] = (),
        log_requests: bool = False,
    ) -> None:
        if not 1 <= page_size <= MAX_LIMIT:
            raise ValueError(f"page_size must be between 1 and {MAX_LIMIT}")
        self.api_key = api_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.page_size = page_size
        self.host = host
        self.log_requests = log_requests
        self.requests: list[RecordedRequest] = []
        self._port = port
        self._platform = _Platform(DEFAULT_THINGS if things is None else things, foreign_things)
        self._tokens = _Tokens(token_lifetime)
        self._faults = _Faults()
        self._api = _Api(self, self._platform, self._tokens)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bridge: PaasBridge | None = None
        self._echoes: Counter[tuple[str, bytes]] = Counter()  # expected configs we published

    # -- addresses and lifecycle ----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the simulator picks its port on start(); start it first")
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port``: what nextLink and previousLink start with."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API's base, with its trailing slash: ``http://127.0.0.1:43211/v4/``."""
        return self.origin + API_ROOT

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> PaasSimulator:
        """Listen, and serve from a thread; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._stopping.clear()
        server = _Server((self.host, self._port), self)
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL},
            name=f"paas-sim:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection; delayed requests end now."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PaasSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------

    def fail_next(self, status: int = 503, *, count: int = 1, path_prefix: str = "") -> None:
        """Answer the next ``count`` requests whose path starts with ``path_prefix``
        (absolute, ``"/v4/oauth/token"``, or relative to ``/v4/``) with ``status`` and the
        document's error body, before authentication, as a failing front end would."""
        if not 400 <= status <= 599:
            raise ValueError(f"a fault is an error status (4xx or 5xx), not {status}")
        fault = _Fault(remaining=count, prefix=_absolute_prefix(path_prefix), status=status)
        self._faults.add(self._faults.failures, fault)

    def delay_next(self, seconds: float, *, count: int = 1, path_prefix: str = "") -> None:
        """Hold back the next ``count`` matching requests ``seconds`` before answering them."""
        fault = _Fault(remaining=count, prefix=_absolute_prefix(path_prefix), seconds=seconds)
        self._faults.add(self._faults.delays, fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def expire_tokens(self) -> None:
        """Every access token issued so far expires now (the next use answers 401)."""
        self._tokens.expire_all()

    # -- state, for tests -------------------------------------------------------------------

    @property
    def dropped(self) -> list[Dropped]:
        """Readings and config messages received but not kept, oldest first."""
        with self._platform.changed:
            return list(self._platform.dropped)

    def buckets(self, thing_id: str) -> dict[str, dict[str, str]]:
        """The thing's buckets: bucket id → {shape id → valueType}."""
        with self._platform.changed:
            return {
                bucket.id: {shape.id: shape.value_type for shape in bucket.shapes.values()}
                for bucket in self._platform.thing(thing_id).buckets.values()
            }

    def shapes(self, thing_id: str, bucket_id: str) -> dict[str, dict[str, Any]]:
        """A bucket's shapes as the API shows them: shape id → its JSON."""
        with self._platform.changed:
            bucket = self._platform.bucket(thing_id, bucket_id)
            return {shape.id: shape.json() for shape in bucket.shapes.values()}

    def add_bucket(
        self,
        thing_id: str,
        bucket_id: str,
        shapes: Mapping[str, str | Mapping[str, Any]],
    ) -> None:
        """Preset a bucket (made if missing) with shapes: shape id → valueType, or
        → ``{"valueType", "alias", "unit"}``. A shape of the same id is replaced."""
        with _plain_errors():
            _required_id({"id": bucket_id}, "id")
            specs = [
                _shape_spec({"valueType": spec} if isinstance(spec, str) else spec, shape_id)
                for shape_id, spec in shapes.items()
            ]
            self._platform.preset_bucket(thing_id, bucket_id, specs)

    def record(self, thing_id: str, bucket_id: str, readings: Sequence[Mapping[str, Any]]) -> None:
        """Take readings as the platform takes a data message: ``{"id", "value",
        "timestamp"?}`` (ms since the epoch, a string as the agent sends it). A reading
        for an unknown thing, bucket or shape, or whose value does not fit its shape's
        valueType, is not kept but noted in :attr:`dropped`."""
        self._platform.record(thing_id, bucket_id, readings)

    def readings(self, thing_id: str, bucket_id: str) -> list[dict[str, Any]]:
        """Every reading kept in the bucket, as published (timestamp a string of ms),
        by timestamp then shape."""
        with self._platform.changed:
            bucket = self._platform.bucket(thing_id, bucket_id)
            rows = [
                (ms, shape.seq, {"id": shape.id, "value": value, "timestamp": str(ms)})
                for shape in bucket.shapes.values()
                for ms, value in bucket.series.get(shape.id, {}).items()
            ]
        return [row for _, _, row in sorted(rows, key=lambda row: row[:2])]

    def set_config(
        self,
        thing_id: str,
        group: str,
        *,
        expected: Mapping[str, Any] | None = None,
        reported: Mapping[str, Any] | None = None,
    ) -> None:
        """Preset a config group (made if missing): the keys given are merged in. Nothing
        is published; a PUT through the API is what delivers an expected config."""
        when = iso_time(now_ms())
        with self._platform.changed:
            found = self._platform.group(self._platform.thing(thing_id), group)
            if expected is not None:
                found.expect(expected, replace=False, when=when)
            if reported is not None:
                found.report(reported, when=when)
            self._platform.changed.notify_all()

    def configs(self, thing_id: str) -> dict[str, dict[str, ConfigValue]]:
        """The thing's config groups: group → key → (expected, reported)."""
        with self._platform.changed:
            return {
                group.name: {
                    key: ConfigValue(setting.expected, setting.reported)
                    for key, setting in group.settings.items()
                }
                for group in self._platform.thing(thing_id).configs.values()
            }

    def wait_until(self, predicate: Callable[[], bool], *, timeout: float = WAIT_TIMEOUT) -> None:
        """Block until ``predicate()`` (checked on every change of the state) is true."""
        with self._platform.changed:
            if not self._platform.changed.wait_for(predicate, timeout):
                raise TimeoutError(f"the PaaS state did not get there in {timeout} s")

    async def wait_until_async(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109 - the wait is in a thread, timed there
    ) -> None:
        """:meth:`wait_until` without blocking the event loop."""
        await asyncio.to_thread(self.wait_until, predicate, timeout=timeout)

    # -- the MQTT side -------------------------------------------------------------------

    def bridge(
        self,
        broker: Broker | None = None,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
    ) -> PaasBridge:
        """The platform's MQTT side, on ``broker`` (or ``host``/``port``) with the
        application's credentials; use ``with`` or ``async with`` to connect it."""
        if broker is not None:
            host, port = broker.host, broker.port
            app_id, app_secret = broker.app_id, broker.app_secret
        if port is None:
            raise ValueError("a port (or a broker) is needed")
        return PaasBridge(self, host=host, port=port, app_id=app_id, app_secret=app_secret)

    def receive(self, topic: str, payload: bytes) -> None:
        """One MQTT message as the platform takes it: data into telemetry, expected and
        reported config into the configs. Called by the bridge; tests may call it too."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != "$thing":
            return
        if parts[2] == "$data" and len(parts) == 4:
            self._receive_data(topic, parts[1], parts[3], payload)
        elif parts[2] == "$conf" and len(parts) == 5 and parts[3] in ("$expected", "$reported"):
            self._receive_config(topic, parts[1], parts[3], parts[4], payload)

    def deliver_expected(
        self, thing_id: str, group: str, settings: list[dict[str, Any]] | None
    ) -> None:
        """Publish a group's expected config, retained, through the bridge if connected;
        None clears the retained message (a deleted config)."""
        bridge = self._bridge
        if bridge is None:
            return
        topic = f"$thing/{thing_id}/$conf/$expected/{group}"
        payload = b"" if settings is None else json.dumps(settings, separators=(",", ":")).encode()
        with self._platform.changed:
            self._echoes[(topic, payload)] += 1
        try:
            bridge.publish(topic, payload)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            # The config is stored; the platform would deliver it later. Say so, loudly.
            print(f"paas: could not publish {topic}: {exc!r}", file=sys.stderr, flush=True)

    def _receive_data(self, topic: str, thing_id: str, bucket_id: str, payload: bytes) -> None:
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            decoded = [decoded]
        if not isinstance(decoded, list):
            with self._platform.changed:
                self._platform.dropped.append(
                    Dropped(topic, payload, "not a JSON object or array of objects")
                )
            return
        self._platform.record(thing_id, bucket_id, decoded)

    def _receive_config(
        self, topic: str, thing_id: str, kind: str, group: str, payload: bytes
    ) -> None:
        with self._platform.changed:
            if self._echoes[(topic, payload)] > 0:
                self._echoes[(topic, payload)] -= 1  # our own publish, already applied
                return
            thing = self._platform.things.get(thing_id)
            if thing is None:
                self._platform.dropped.append(Dropped(topic, payload, "no such thing"))
            elif not payload:
                if kind == "$expected":  # the retained config cleared: the config is gone
                    thing.configs.pop(group, None)
            else:
                self._apply_config(thing, topic, kind, group, payload)
            self._platform.changed.notify_all()

    def _apply_config(
        self, thing: _Thing, topic: str, kind: str, group: str, payload: bytes
    ) -> None:
        """An expected message replaces the group's expected config (a retained message is
        the whole of it); a reported one updates the keys it names."""
        values = _config_values(payload)
        if values is None:
            self._platform.dropped.append(Dropped(topic, payload, "not an array of {id, value}"))
            return
        when = iso_time(now_ms())
        if kind == "$reported":
            self._platform.group(thing, group).report(values, when=when)
        else:
            self._platform.group(thing, group).expect(values, replace=True, when=when)

    # -- one request --------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Record, delay or fail as injected, then answer (any 4xx in the document's body)."""
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        self.requests.append(RecordedRequest(method, path, query, headers, body))
        delay = self._faults.take(self._faults.delays, path)
        if delay is not None:
            self._stopping.wait(delay.seconds)
        failure = self._faults.take(self._faults.failures, path)
        if failure is not None:
            return _ApiError(
                failure.status, f"{_phrase(failure.status)} (an injected fault)."
            ).reply()
        try:
            return self._api.dispatch(method, path, query, headers, body)
        except _ApiError as exc:
            return exc.reply()

    def __repr__(self) -> str:
        where = self.origin if self._port else "(no port yet)"
        return f"PaasSimulator({where}, running={self.running})"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    """For the test-facing methods: an unknown thing or bucket is a KeyError, bad
    input a ValueError, as Python callers expect, not an HTTP error."""
    try:
        yield
    except _ApiError as exc:
        kind = ValueError if exc.status == 400 else KeyError
        raise kind(exc.message) from None


def _config_values(payload: bytes) -> dict[str, Any] | None:
    """A config message's ``[{"id", "value"}]`` as key → value; None when it is not one."""
    try:
        decoded = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(decoded, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), str) and "value" in item
        for item in decoded
    ):
        return None
    return {item["id"]: item["value"] for item in decoded}


# -- HTTP plumbing ---------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections, to close them on stop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: PaasSimulator) -> None:
        self.simulator = simulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up with getfqdn(), which can wait on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open)
        for connection in open_now:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (a time-out on a delayed reply): not our error
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a client's connection pool expects

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._send(_ApiError(400, "Content-Length is not a number.").reply())
            return
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            reply = server.simulator.handle(self.command, self.path, headers, body)
        except Exception:  # a bug in the simulator: answer 500 and show it, do not hang up
            traceback.print_exc()
            reply = _ApiError(500, "The simulator failed; see its stderr.").reply()
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        server = self.server
        if isinstance(server, _Server) and server.simulator.log_requests:
            super().log_message(format, *args)


# -- the bridge ----------------------------------------------------------------------


class _PlatformClient(MqttClient):
    """An MQTT client that hands every message over instead of keeping it."""

    def __init__(self, *, deliver: Callable[[str, bytes], None], **options: Any) -> None:
        super().__init__(**options)
        self._deliver = deliver

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        self._deliver(topic, bytes(payload))
        return 0


class PaasBridge:
    """The simulator on a broker, as the platform is: subscribed to ``$thing/#`` with the
    application's credentials (client id ``app:{app_id}:paas-sim``, so that a test's own
    ``app:{app_id}`` client is not kicked off), in a thread with its own event loop, so
    that it works under a sync or an async test alike.

    ``with paas.bridge(broker):`` or ``async with paas.bridge(broker):``.
    """

    def __init__(
        self, simulator: PaasSimulator, *, host: str, port: int, app_id: str, app_secret: str
    ) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self.app_id = app_id
        self.client_id = f"app:{app_id}:paas-sim"
        self._app_secret = app_secret
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _PlatformClient | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def start(self, *, timeout: float = BRIDGE_TIMEOUT) -> PaasBridge:
        """Connect and subscribe (retained configs arrive then); raise if it cannot."""
        if self._thread is not None:
            raise RuntimeError("the bridge is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._run(ready),), name="paas-bridge", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self.stop()
            raise
        self.simulator._bridge = self
        return self

    def stop(self, *, timeout: float = BRIDGE_TIMEOUT) -> None:
        if self.simulator._bridge is self:
            self.simulator._bridge = None
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish from any thread but the bridge's; returns after the PUBACK."""
        loop, client = self._loop, self._client
        if loop is None or client is None:
            raise RuntimeError("the bridge is not connected")
        future = asyncio.run_coroutine_threadsafe(
            client.publish(topic, payload, retain=retain, timeout=PUBLISH_TIMEOUT), loop
        )
        future.result(PUBLISH_TIMEOUT + 1.0)

    def __enter__(self) -> PaasBridge:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> PaasBridge:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _run(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = _PlatformClient(
            deliver=self.simulator.receive,
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            username=self.app_id,
            password=self._app_secret,
            subscriptions=(ALL_THINGS,),
        )
        try:
            await client.connect()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._client = client
        ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            self._client = None
            await client.disconnect()

    def __repr__(self) -> str:
        return f"PaasBridge({self.client_id} on {self.host}:{self.port})"


# -- the command line -------------------------------------------------------------------


def _things_argument(text: str) -> tuple[str, str]:
    thing_id, _, name = text.partition("=")
    return thing_id, name or thing_id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.paas", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument(
        "--thing",
        action="append",
        type=_things_argument,
        metavar="ID[=NAME]",
        help=f"a thing of the account (repeat; default {DEFAULT_THING_ID})",
    )
    parser.add_argument("--broker-host", default=LOOPBACK)
    parser.add_argument("--broker-port", type=int, help="bridge to this broker's MQTT port")
    parser.add_argument("--app-id", default=DEFAULT_APP_ID)
    parser.add_argument("--app-secret", default=DEFAULT_APP_SECRET)
    parser.add_argument("--log-requests", action="store_true", help="one stderr line a request")
    return parser


@contextlib.contextmanager
def _maybe_bridge(paas: PaasSimulator, args: argparse.Namespace) -> Iterator[None]:
    if args.broker_port is None:
        yield
        return
    bridge = paas.bridge(
        host=args.broker_host, port=args.broker_port, app_id=args.app_id, app_secret=args.app_secret
    )
    with bridge:
        print(
            f"paas: bridged to mqtt://{bridge.host}:{bridge.port} as {bridge.client_id}", flush=True
        )
        yield


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)  # its reconnect chatter is not data
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    paas = PaasSimulator(
        things=dict(args.thing) if args.thing else None,
        api_key=args.api_key,
        client_id=args.client_id,
        client_secret=args.client_secret,
        page_size=args.page_size,
        host=args.host,
        port=args.port,
        log_requests=args.log_requests,
    )
    with paas, _maybe_bridge(paas, args):
        print(
            f"paas: oauth client_id={paas.client_id} client_secret={paas.client_secret}", flush=True
        )
        print(f"paas on {paas.url} api_key={paas.api_key}", flush=True)
        stopping.wait()
    print("paas: stopped", flush=True)


if __name__ == "__main__":
    main()
