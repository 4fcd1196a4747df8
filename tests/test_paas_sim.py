"""The PaaS REST simulator (sim.paas) against the API document, over real HTTP on loopback.

Each test names the documented behaviour it checks; the HTTP client is the standard
library's, so the simulator is checked apart from the agent's own REST client.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.broker import DEFAULT_THING_ID, Broker
from sim.cloud import CloudClient, data_topic, expected_topic, reported_topic, thing_client
from sim.paas import VALUE_TYPES, ConfigValue, Dropped, PaasSimulator

THING = DEFAULT_THING_ID
API_KEY = "ApiKey test-api-key"
SHAPE_FIELDS = {"id", "alias", "unit", "valueType", "createdAt", "updatedAt"}
BUCKET_FIELDS = {"id", "description", "dataShapes", "createdAt", "updatedAt"}
PAGING_FIELDS = {"beforeCursor", "afterCursor", "previousLink", "nextLink"}
TOKEN_REQUEST = {
    "grant_type": "client_credentials",
    "client_id": "test-client",
    "client_secret": "test-client-secret",
    "redirect_uri": "http://localhost/callback",
}
REPO = Path(__file__).resolve().parents[1]
CLI_START_TIMEOUT = 10.0


def call(
    paas: PaasSimulator,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: str | None = API_KEY,
    content_type: str = "application/json",
    raw_body: bytes | None = None,
) -> tuple[int, Any]:
    """One request: ``path`` relative to the API base, or a full URL (a nextLink)."""
    url = path if path.startswith("http") else paas.url + path
    data = raw_body if raw_body is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if auth is not None:
        request.add_header("Authorization", auth)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def token(paas: PaasSimulator) -> str:
    status, body = call(paas, "POST", "oauth/token", TOKEN_REQUEST, auth=None)
    assert 200 == status
    return str(body["access_token"])


def bucket_body(bucket_id: str, **shapes: str) -> dict[str, Any]:
    return {
        "id": bucket_id,
        "dataShapes": [{"id": shape, "valueType": kind} for shape, kind in shapes.items()],
    }


@pytest.fixture
def paas() -> Iterator[PaasSimulator]:
    with PaasSimulator() as simulator:
        yield simulator


# -- authentication ---------------------------------------------------------------------


def test_client_credentials_grant_answers_the_documented_token(paas: PaasSimulator) -> None:
    status, body = call(paas, "POST", "oauth/token", TOKEN_REQUEST, auth=None)

    assert 200 == status
    assert {"access_token", "token_type", "expires_in"} == set(body)
    assert "Bearer" == body["token_type"]
    assert 3600 == body["expires_in"]
    assert 200 == call(paas, "GET", "things", auth=f"Bearer {body['access_token']}")[0]


def test_token_request_takes_the_documents_json_body_only(paas: PaasSimulator) -> None:
    form = b"grant_type=client_credentials&client_id=test-client&client_secret=test-client-secret"
    as_form = call(
        paas,
        "POST",
        "oauth/token",
        raw_body=form,
        auth=None,
        content_type="application/x-www-form-urlencoded",
    )
    no_redirect = {k: v for k, v in TOKEN_REQUEST.items() if k != "redirect_uri"}
    password_grant = {**TOKEN_REQUEST, "grant_type": "password"}

    assert 400 == as_form[0]
    assert "BAD_REQUEST_ERROR" == as_form[1]["code"]
    assert (400, {"code": "BAD_REQUEST_ERROR", "message": '"redirect_uri" is required.'}) == call(
        paas, "POST", "oauth/token", no_redirect, auth=None
    )
    assert 400 == call(paas, "POST", "oauth/token", password_grant, auth=None)[0]


def test_wrong_client_secret_is_401_with_the_error_body(paas: PaasSimulator) -> None:
    wrong = {**TOKEN_REQUEST, "client_secret": "guess"}

    assert (401, {"code": "UNAUTHORIZED_ERROR", "message": "Client authentication failed."}) == (
        call(paas, "POST", "oauth/token", wrong, auth=None)
    )


def test_api_key_is_accepted_and_a_wrong_one_is_401(paas: PaasSimulator) -> None:
    assert 200 == call(paas, "GET", f"things/{THING}")[0]
    assert (401, {"code": "UNAUTHORIZED_ERROR", "message": "API key is invalid."}) == call(
        paas, "GET", f"things/{THING}", auth="ApiKey nope"
    )


def test_no_credential_is_401_with_the_documents_example_body(paas: PaasSimulator) -> None:
    expected = {"code": "UNAUTHORIZED_ERROR", "message": "Access token is required."}

    assert (401, expected) == call(paas, "GET", "things", auth=None)


def test_unknown_and_expired_tokens_are_401() -> None:
    with PaasSimulator() as paas:
        fresh = token(paas)
        assert 200 == call(paas, "GET", "things", auth=f"Bearer {fresh}")[0]
        paas.expire_tokens()  # as its lifetime running out would, without a sleep

        assert (401, {"code": "UNAUTHORIZED_ERROR", "message": "Access token is expired."}) == (
            call(paas, "GET", "things", auth=f"Bearer {fresh}")
        )
        assert (401, {"code": "UNAUTHORIZED_ERROR", "message": "Access token is invalid."}) == (
            call(paas, "GET", "things", auth="Bearer made-up")
        )


def test_expire_tokens_ends_every_token_issued(paas: PaasSimulator) -> None:
    bearer = f"Bearer {token(paas)}"
    paas.expire_tokens()

    assert 401 == call(paas, "GET", "things", auth=bearer)[0]
    assert 200 == call(paas, "GET", "things", auth=f"Bearer {token(paas)}")[0]


# -- things -----------------------------------------------------------------------------


def test_get_thing_has_the_documents_fields(paas: PaasSimulator) -> None:
    status, body = call(paas, "GET", f"things/{THING}")

    assert 200 == status
    assert {
        "id",
        "secret",
        "modelName",
        "serialNumber",
        "name",
        "description",
        "coordinates",
        "timezone",
        "isEon",
        "isOnline",
        "status",
        "visibility",
        "lastDataTime",
        "lastCmdTime",
        "lastBirthTime",
        "lastDeathTime",
        "lastOnlineTime",
        "labels",
        "createdAt",
        "updatedAt",
    } == set(body["data"])
    assert (THING, "orio-01") == (body["data"]["id"], body["data"]["name"])


def test_unknown_thing_is_404_and_another_organisations_is_403() -> None:
    with PaasSimulator(things={"t1": "one"}, foreign_things={"theirs"}) as paas:
        assert (404, {"code": "NOT_FOUND_ERROR", "message": "Thing nope not found."}) == call(
            paas, "GET", "things/nope/data-buckets"
        )
        status, body = call(paas, "GET", "things/theirs/configs")

    assert 403 == status
    assert "FORBIDDEN_ERROR" == body["code"]


# -- data buckets and shapes ----------------------------------------------------------------


def test_create_bucket_answers_201_with_its_shapes_in_request_order(paas: PaasSimulator) -> None:
    request = {
        "id": "sensorData",
        "description": "description",
        "dataShapes": [
            {"id": "floatType", "valueType": "float", "alias": "my alias", "unit": "unit"},
            {"id": "hexType", "valueType": "hex"},
        ],
    }
    status, body = call(paas, "POST", f"things/{THING}/data-buckets", request)

    assert 201 == status
    created = body["data"]
    assert BUCKET_FIELDS == set(created)
    assert ("sensorData", "description") == (created["id"], created["description"])
    assert [SHAPE_FIELDS, SHAPE_FIELDS] == [set(shape) for shape in created["dataShapes"]]
    assert [("floatType", "float", "my alias", "unit"), ("hexType", "hex", None, None)] == [
        (s["id"], s["valueType"], s["alias"], s["unit"]) for s in created["dataShapes"]
    ]
    assert {"sensorData": {"floatType": "float", "hexType": "hex"}} == paas.buckets(THING)


def test_get_bucket_lists_its_shapes_newest_first_as_the_document(paas: PaasSimulator) -> None:
    call(paas, "POST", f"things/{THING}/data-buckets", bucket_body("b", first="float"))
    call(
        paas,
        "POST",
        f"things/{THING}/data-buckets/b/data-shapes",
        {"id": "second", "valueType": "boolean"},
    )

    status, body = call(paas, "GET", f"things/{THING}/data-buckets/b")

    assert 200 == status
    assert ["second", "first"] == [shape["id"] for shape in body["data"]["dataShapes"]]


def test_create_shape_answers_201_with_the_shape(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {})
    shape = {"id": "floatType2", "alias": "alias", "unit": "unit", "valueType": "float"}

    status, body = call(paas, "POST", f"things/{THING}/data-buckets/b/data-shapes", shape)

    assert 201 == status
    assert SHAPE_FIELDS == set(body["data"])
    assert shape == {key: body["data"][key] for key in shape}


def test_an_existing_bucket_or_shape_is_409(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"s": "float"})

    bucket = call(paas, "POST", f"things/{THING}/data-buckets", bucket_body("b"))
    shape = call(
        paas,
        "POST",
        f"things/{THING}/data-buckets/b/data-shapes",
        {"id": "s", "valueType": "float"},
    )

    assert (409, {"code": "CONFLICT_ERROR", "message": "Data bucket b already exists."}) == bucket
    assert (409, {"code": "CONFLICT_ERROR", "message": "Data shape s already exists."}) == shape


def test_value_type_outside_the_documents_set_is_400(paas: PaasSimulator) -> None:
    status, body = call(paas, "POST", f"things/{THING}/data-buckets", bucket_body("b", s="double"))

    assert 400 == status
    assert "BAD_REQUEST_ERROR" == body["code"]
    assert all(kind in body["message"] for kind in VALUE_TYPES)
    assert {} == paas.buckets(THING)


def test_every_documented_value_type_is_taken(paas: PaasSimulator) -> None:
    shapes = {kind: kind for kind in VALUE_TYPES}

    assert 201 == call(paas, "POST", f"things/{THING}/data-buckets", bucket_body("b", **shapes))[0]
    assert {"b": shapes} == paas.buckets(THING)


def test_a_bucket_needs_an_id_and_a_data_shapes_array(paas: PaasSimulator) -> None:
    assert 400 == call(paas, "POST", f"things/{THING}/data-buckets", {"dataShapes": []})[0]
    assert 400 == call(paas, "POST", f"things/{THING}/data-buckets", {"id": "b"})[0]
    assert 400 == call(paas, "POST", f"things/{THING}/data-buckets", bucket_body("a/b"))[0]


def test_delete_shape_and_bucket_answer_ok_then_404(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"s": "float", "t": "string"})

    assert (200, {"message": "ok"}) == call(
        paas, "DELETE", f"things/{THING}/data-buckets/b/data-shapes/s"
    )
    assert {"b": {"t": "string"}} == paas.buckets(THING)
    assert (200, {"message": "ok"}) == call(paas, "DELETE", f"things/{THING}/data-buckets/b")
    assert 404 == call(paas, "GET", f"things/{THING}/data-buckets/b")[0]
    assert 404 == call(paas, "DELETE", f"things/{THING}/data-buckets/b")[0]


def test_add_bucket_keeps_alias_and_unit(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"v": {"valueType": "float", "alias": "Volts", "unit": "V"}})

    shape = paas.shapes(THING, "b")["v"]

    assert ("float", "Volts", "V") == (shape["valueType"], shape["alias"], shape["unit"])


# -- pagination ---------------------------------------------------------------------------


def test_a_list_is_followed_through_next_link_until_null(paas: PaasSimulator) -> None:
    for index in range(5):
        paas.add_bucket(THING, f"b{index}", {})
    seen: list[str] = []
    url: str | None = f"things/{THING}/data-buckets"
    pages = []
    while url is not None:
        status, body = call(paas, "GET", url)
        assert 200 == status
        assert PAGING_FIELDS == set(body["paging"])
        assert {"total": 5} == body["metadata"]
        seen += [bucket["id"] for bucket in body["data"]]
        pages.append(body["paging"])
        url = body["paging"]["nextLink"]

    assert ["b4", "b3", "b2", "b1", "b0"] == seen  # newest first, as the document lists them
    assert 3 == len(pages)
    assert pages[0]["nextLink"].startswith(paas.url + f"things/{THING}/data-buckets?limit=2&")
    assert (None, None) == (pages[0]["beforeCursor"], pages[0]["previousLink"])
    assert (None, None) == (pages[-1]["afterCursor"], pages[-1]["nextLink"])
    followed = [request.query for request in paas.requests[1:]]
    assert [
        {"limit": "2", "afterCursor": pages[0]["afterCursor"]},
        {"limit": "2", "afterCursor": pages[1]["afterCursor"]},
    ] == followed


def test_next_link_carries_every_current_parameter(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"temperature": "float", "humidity": "float"})
    paas.record(
        THING,
        "b",
        [
            {"id": "temperature", "value": 20.5, "timestamp": str(1589444402000 + n)}
            for n in range(3)
        ],
    )
    path = f"things/{THING}/data-buckets/b/timeline?dataShapes=temperature%2Chumidity&order=desc&limit=1"

    first = call(paas, "GET", path)[1]
    second = call(paas, "GET", first["paging"]["nextLink"])[1]

    assert (
        paas.url + f"things/{THING}/data-buckets/b/timeline"
        "?dataShapes=temperature%2Chumidity&limit=1&order=desc&afterCursor=dGltZXN0YW1wOjE1ODk0NDQ0MDIwMDI%3D"
    ) == first["paging"]["nextLink"]  # base64 of "timestamp:1589444402002", as the document's
    assert ["2020-05-14T08:20:02.001Z"] == [row["timestamp"] for row in second["data"]]


def test_previous_link_goes_back_a_page(paas: PaasSimulator) -> None:
    for index in range(4):
        paas.add_bucket(THING, f"b{index}", {})
    first = call(paas, "GET", f"things/{THING}/data-buckets")[1]
    second = call(paas, "GET", first["paging"]["nextLink"])[1]

    back = call(paas, "GET", second["paging"]["previousLink"])[1]

    assert [b["id"] for b in first["data"]] == [b["id"] for b in back["data"]]


def test_limit_out_of_range_or_a_bad_cursor_is_400(paas: PaasSimulator) -> None:
    for query in ("limit=0", "limit=101", "limit=two", "afterCursor=garbage"):
        status, body = call(paas, "GET", f"things/{THING}/data-buckets?{query}")
        assert (400, "BAD_REQUEST_ERROR") == (status, body["code"]), query


def test_page_size_is_configurable() -> None:
    with PaasSimulator(page_size=10) as paas:
        for index in range(5):
            paas.add_bucket(THING, f"b{index}", {})
        body = call(paas, "GET", f"things/{THING}/data-buckets")[1]

    assert (5, None) == (len(body["data"]), body["paging"]["nextLink"])


# -- telemetry ------------------------------------------------------------------------------


def test_last_telemetries_has_each_shapes_latest_reading_by_timestamp(
    paas: PaasSimulator,
) -> None:
    paas.add_bucket(
        THING, "sensorData", {"temperature": "float", "humidity": "float", "idle": "integer"}
    )
    paas.record(
        THING,
        "sensorData",
        [
            {"id": "temperature", "value": 25.01, "timestamp": "1589447623615"},
            {"id": "temperature", "value": 19.0, "timestamp": "1589447000000"},  # older, later
            {"id": "humidity", "value": 0.8, "timestamp": "1589447623615"},
        ],
    )

    status, body = call(
        paas, "GET", f"things/{THING}/data-buckets/sensorData/last-telemetries?limit=10"
    )

    assert 200 == status
    assert [
        {
            "id": "temperature",
            "value": 25.01,
            "valueType": "float",
            "alias": None,
            "unit": None,
            "timestamp": "2020-05-14T09:13:43.615Z",
        },
        {
            "id": "humidity",
            "value": 0.8,
            "valueType": "float",
            "alias": None,
            "unit": None,
            "timestamp": "2020-05-14T09:13:43.615Z",
        },
    ] == body["data"]


def test_readings_the_bucket_cannot_hold_are_dropped_and_noted(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"n": "integer", "h": "hex", "c": "coordinate", "f": "boolean"})
    readings: list[dict[str, Any]] = [
        {"id": "n", "value": 10.0, "timestamp": "1"},  # JSON's 10.0 is the integer 10
        {"id": "n", "value": 10.5, "timestamp": "2"},
        {"id": "h", "value": "00FF", "timestamp": "3"},
        {"id": "h", "value": "xyz", "timestamp": "4"},
        {"id": "c", "value": [25.03, 121.56], "timestamp": "5"},
        {"id": "f", "value": 1, "timestamp": "6"},
        {"id": "unknown", "value": 1, "timestamp": "7"},
        {"id": "n", "value": 1, "timestamp": "yesterday"},
    ]
    paas.record(THING, "b", readings)
    paas.record(THING, "missing", [{"id": "n", "value": 1}])

    assert [
        {"id": "n", "value": 10, "timestamp": "1"},
        {"id": "h", "value": "00FF", "timestamp": "3"},
        {"id": "c", "value": [25.03, 121.56], "timestamp": "5"},
    ] == paas.readings(THING, "b")
    assert [
        ("value does not fit valueType integer", readings[1]),
        ("value does not fit valueType hex", readings[3]),
        ("value does not fit valueType boolean", readings[5]),
        ("no such data shape", readings[6]),
        ("timestamp is not milliseconds since the epoch", readings[7]),
        ("no such data bucket", {"id": "n", "value": 1}),
    ] == [(dropped.reason, dropped.item) for dropped in paas.dropped]
    assert f"$thing/{THING}/$data/b" == paas.dropped[0].topic


def test_timeline_rows_by_timestamp_newest_first_within_the_range(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"temperature": "float", "humidity": "float"})
    paas.record(
        THING,
        "b",
        [
            {"id": "temperature", "value": 20.5, "timestamp": "1589447623615"},
            {"id": "humidity", "value": 0.9, "timestamp": "1589447623615"},
            {"id": "temperature", "value": 20.4, "timestamp": "1589447623533"},
            {"id": "temperature", "value": 20.3, "timestamp": "1589444402963"},
        ],
    )
    path = f"things/{THING}/data-buckets/b/timeline?dataShapes=temperature,humidity&limit=10"

    newest_first = call(paas, "GET", path)[1]
    ranged = call(paas, "GET", path + "&order=asc&begin=2020-05-14T09:00:00.000Z")[1]

    assert [
        {
            "timestamp": "2020-05-14T09:13:43.615Z",
            "values": [{"id": "temperature", "value": 20.5}, {"id": "humidity", "value": 0.9}],
        },
        {"timestamp": "2020-05-14T09:13:43.533Z", "values": [{"id": "temperature", "value": 20.4}]},
        {"timestamp": "2020-05-14T08:20:02.963Z", "values": [{"id": "temperature", "value": 20.3}]},
    ] == newest_first["data"]
    assert {"total": 3} == newest_first["metadata"]
    assert ["2020-05-14T09:13:43.533Z", "2020-05-14T09:13:43.615Z"] == [
        row["timestamp"] for row in ranged["data"]
    ]


def test_timeline_needs_data_shapes_and_a_valid_order(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"t": "float"})
    timeline = f"things/{THING}/data-buckets/b/timeline"

    assert 400 == call(paas, "GET", timeline)[0]
    assert 400 == call(paas, "GET", timeline + "?dataShapes=t&order=up")[0]
    assert 400 == call(paas, "GET", timeline + "?dataShapes=t&begin=yesterday")[0]
    assert 400 == call(paas, "GET", timeline + "?dataShapes=nope")[0]


# -- configs --------------------------------------------------------------------------------


def test_configs_list_get_and_name_filter_have_the_documents_shape(paas: PaasSimulator) -> None:
    paas.set_config(
        THING,
        "gw-1-setting",
        expected={"GW1_40806": 0, "GW1_40807": 600},
        reported={"GW1_40807": 600},
    )
    paas.set_config(THING, "gw-1-mode", expected={"GW1_00800": 1}, reported={"GW1_00800": 1})

    listed = call(paas, "GET", f"things/{THING}/configs?limit=10")[1]
    filtered = call(paas, "GET", f"things/{THING}/configs?name=gw-1-setting")[1]
    status, one = call(paas, "GET", f"things/{THING}/configs/gw-1-setting")

    assert ["gw-1-mode", "gw-1-setting"] == [group["name"] for group in listed["data"]]
    assert ["gw-1-setting"] == [group["name"] for group in filtered["data"]]
    assert 200 == status
    assert {"name", "configs", "lastConfigTime", "lastReportTime"} == set(one["data"])
    assert [
        {"key": "GW1_40806", "expectedValue": 0, "reportedValue": None},
        {"key": "GW1_40807", "expectedValue": 600, "reportedValue": 600},
    ] == one["data"]["configs"]
    assert 404 == call(paas, "GET", f"things/{THING}/configs/nope")[0]


def test_put_config_replaces_or_partially_updates(paas: PaasSimulator) -> None:
    group = f"things/{THING}/configs/config1"
    status, created = call(
        paas, "PUT", group, {"configs": {"foo": "bar", "number": 1, "boolean": True}}
    )
    call(paas, "PUT", group, {"configs": {"number": 2}, "partialUpdate": True})
    partial = paas.configs(THING)["config1"]
    call(paas, "PUT", group, {"configs": {"number": 3}, "partialUpdate": False})

    assert 200 == status
    assert [
        {"key": "foo", "expectedValue": "bar", "reportedValue": None},
        {"key": "number", "expectedValue": 1, "reportedValue": None},
        {"key": "boolean", "expectedValue": True, "reportedValue": None},
    ] == created["data"]["configs"]
    assert created["data"]["lastConfigTime"].endswith("Z")
    assert created["data"]["lastReportTime"] is None
    assert {"foo": ("bar", None), "number": (2, None), "boolean": (True, None)} == partial
    assert {"config1": {"number": ConfigValue(3, None)}} == paas.configs(THING)
    assert 400 == call(paas, "PUT", group, {"configs": [1, 2]})[0]


def test_delete_config_answers_ok(paas: PaasSimulator) -> None:
    paas.set_config(THING, "g", expected={"k": 1})

    assert (200, {"message": "ok"}) == call(paas, "DELETE", f"things/{THING}/configs/g")
    assert {} == paas.configs(THING)


# -- faults ---------------------------------------------------------------------------------


def test_injected_failures_answer_first_then_the_api_does(paas: PaasSimulator) -> None:
    paas.fail_next(503, count=2, path_prefix=f"things/{THING}/data-buckets")

    other = call(paas, "GET", f"things/{THING}")
    failed = [call(paas, "GET", f"things/{THING}/data-buckets")[0] for _ in range(2)]
    then = call(paas, "GET", f"things/{THING}/data-buckets")

    assert 200 == other[0]
    assert [503, 503] == failed
    assert 200 == then[0]

    paas.fail_next(500)
    status, body = call(paas, "GET", "things", auth=None)  # a fault comes before authentication
    assert (500, "INTERNAL_SERVER_ERROR") == (status, body["code"])


def test_a_delayed_reply_times_a_client_out_then_the_next_is_prompt(paas: PaasSimulator) -> None:
    paas.delay_next(0.5, path_prefix="/v4/things")
    connection = http.client.HTTPConnection(paas.host, paas.port, timeout=0.2)
    try:
        connection.request("GET", "/v4/things", headers={"Authorization": API_KEY})
        with pytest.raises(TimeoutError):
            connection.getresponse()
    finally:
        connection.close()

    started = time.monotonic()
    assert 200 == call(paas, "GET", "things")[0]
    assert time.monotonic() - started < 0.2


def test_a_delay_holds_the_reply_back(paas: PaasSimulator) -> None:
    paas.delay_next(0.3)

    started = time.monotonic()
    status = call(paas, "GET", "things")[0]

    assert 200 == status
    assert time.monotonic() - started >= 0.3


def test_a_restart_keeps_the_port_and_the_state(paas: PaasSimulator) -> None:
    paas.add_bucket(THING, "b", {"s": "float"})
    url = paas.url
    paas.stop()
    with pytest.raises(urllib.error.URLError):
        call(paas, "GET", "things")

    paas.start()

    assert url == paas.url
    assert 200 == call(paas, "GET", f"things/{THING}/data-buckets/b")[0]


# -- the MQTT bridge ------------------------------------------------------------------------


async def test_data_a_thing_publishes_shows_in_last_telemetries(
    paas: PaasSimulator, broker: Broker
) -> None:
    paas.add_bucket(THING, "sensorData", {"temperature": "float", "humidity": "float"})
    readings = [
        {"id": "temperature", "value": 25.01, "timestamp": "1590128899000"},
        {"id": "humidity", "value": 0.75, "timestamp": "1590128899000"},
    ]
    async with paas.bridge(broker), thing_client(broker) as thing:
        await thing.publish(data_topic(THING, "sensorData"), readings)
        await thing.publish(data_topic(THING, "sensorData"), {"id": "humidity", "value": 0.8})
        await paas.wait_until_async(lambda: len(paas.readings(THING, "sensorData")) == 3)

    status, body = await asyncio.to_thread(
        call, paas, "GET", f"things/{THING}/data-buckets/sensorData/last-telemetries"
    )
    assert 200 == status
    assert [("temperature", 25.01), ("humidity", 0.8)] == [
        (row["id"], row["value"]) for row in body["data"]
    ]
    assert "2020-05-22T06:28:19.000Z" == body["data"][0]["timestamp"]


async def test_data_for_a_missing_bucket_is_dropped(paas: PaasSimulator, broker: Broker) -> None:
    async with paas.bridge(broker), thing_client(broker) as thing:
        await thing.publish(data_topic(THING, "nowhere"), [{"id": "t", "value": 1}])
        await paas.wait_until_async(lambda: bool(paas.dropped))

    assert [
        Dropped(f"$thing/{THING}/$data/nowhere", {"id": "t", "value": 1}, "no such data bucket")
    ] == paas.dropped


async def test_put_config_publishes_the_expected_config_and_reports_come_back(
    paas: PaasSimulator, broker: Broker
) -> None:
    async with paas.bridge(broker), thing_client(broker) as thing:
        status, _ = await asyncio.to_thread(
            call, paas, "PUT", f"things/{THING}/configs/gw-1-mode", {"configs": {"GW1_00800": 1}}
        )
        [message] = await thing.wait_for_topic(expected_topic(THING, "gw-1-mode"), timeout=5)
        await thing.publish(reported_topic(THING, "gw-1-mode"), [{"id": "GW1_00800", "value": 1}])
        await paas.wait_until_async(
            lambda: paas.configs(THING)["gw-1-mode"]["GW1_00800"].reported == 1
        )
        _, shown = await asyncio.to_thread(call, paas, "GET", f"things/{THING}/configs/gw-1-mode")

    assert 200 == status
    assert [{"id": "GW1_00800", "value": 1}] == message.json()
    assert [{"key": "GW1_00800", "expectedValue": 1, "reportedValue": 1}] == shown["data"][
        "configs"
    ]
    assert shown["data"]["lastReportTime"] is not None


async def test_an_expected_config_the_application_publishes_is_recorded(
    paas: PaasSimulator, broker: Broker
) -> None:
    async with paas.bridge(broker), CloudClient.for_broker(broker) as cloud:
        await cloud.publish_expected("gw-1-setting", [{"id": "GW1_40807", "value": 600}])
        await paas.wait_until_async(lambda: "gw-1-setting" in paas.configs(THING))

    assert {"gw-1-setting": {"GW1_40807": ConfigValue(600, None)}} == paas.configs(THING)


# -- the command line -------------------------------------------------------------------


def test_command_line_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.paas", "--port", "0", "--page-size", "3"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        url = lines[-1].split()[2]
        request = urllib.request.Request(url + "things", headers={"Authorization": API_KEY})
        with urllib.request.urlopen(request, timeout=CLI_START_TIMEOUT) as response:
            body = json.loads(response.read())
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=CLI_START_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert lines[-1].startswith("paas on http://127.0.0.1:")
    assert lines[-1].rstrip().endswith("/v4/ api_key=test-api-key")
    assert [THING] == [thing["id"] for thing in body["data"]]
    assert 0 == process.returncode, err
    assert "paas: stopped\n" == out
