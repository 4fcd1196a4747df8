"""MQTT over TLS end to end: the real agent against a real mosquitto listening with TLS.

Each broker has a TLS listener (``broker.tls_port``) for the agent and a plain one
(``broker.port``) for the cloud side, sharing one password file and ACL. Certificates
come from the session's throwaway CAs (``tls_pki``, tests/tls_fixture.py). A refusal is
checked where a user would see it: the agent's ``mqtt_connect_failed`` line, its session
staying down while it retries, and the broker never seeing the thing log in.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sim.broker import Broker, BrokerFactory, KeyPair
from sim.cloud import CloudClient
from sim.plant import PlantServer, SimUnit
from tests.helpers import agent_toml, device, poll_until, running_agent, tcp_connection
from tests.tls_fixture import Pki

WAIT = 10.0
VALUE = 4242  # holding register 0 of the simulated unit, published as reading "v"
BUCKET = "b"
BACKOFF_MIN = 0.2  # agent_toml's: attempt n waits uniform(ceiling / 2, ceiling),
BACKOFF_MAX = 1.0  # ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** n)

Logs = list[MutableMapping[str, Any]]  # structlog's event dicts


def tls_agent_toml(
    broker: Broker,
    plant: PlantServer,
    *,
    ca_file: Path,
    host: str | None = None,
    client: KeyPair | None = None,
    secret: str | None = None,
) -> str:
    """`agent_toml` for one device, its `[mqtt]` pointed at the broker's TLS listener."""
    text = agent_toml(broker, tcp_connection(plant, device(interval=0.2, bucket=BUCKET)))
    plain = f'host = "{broker.host}"\nport = {broker.port}\ntls = false\n'
    assert plain in text, "agent_toml's [mqtt] lines changed"
    lines = [
        f'host = "{host or broker.host}"',
        f"port = {broker.tls_port}",
        "tls = true",
        f'ca_file = "{ca_file}"',
    ]
    if client is not None:
        lines += [f'cert_file = "{client.cert}"', f'key_file = "{client.key}"']
    text = text.replace(plain, "\n".join(lines) + "\n")
    if secret is not None:
        text = text.replace(f'secret = "{broker.thing_secret}"', f'secret = "{secret}"')
    return text


def events(logs: Logs, event: str) -> Logs:
    return [entry for entry in logs if entry["event"] == event]


def thing_logged_in(broker: Broker) -> bool:
    return f"as thing:{broker.thing_id}" in broker.log_text()


async def wait_for_event(logs: Logs, event: str, *, count: int = 1) -> Logs:
    await poll_until(
        lambda: len(events(logs, event)) >= count, timeout=WAIT, what=f"{count} x {event} logged"
    )
    return events(logs, event)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_with_the_ca_file_the_agent_connects_over_tls_and_the_cloud_gets_readings(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    tls_pki: Pki,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    host: str,
) -> None:
    """The server certificate names IP:127.0.0.1 and DNS:localhost: either host works."""
    broker = broker_factory(tls=tls_pki.server)
    sim_unit.set_registers("holding", 0, [VALUE])
    config = tls_agent_toml(broker, tcp_plant, ca_file=tls_pki.ca_file, host=host)
    with capture_logs() as logs:
        async with (
            CloudClient.for_broker(broker) as cloud,
            running_agent(tmp_path, config) as agent,
        ):
            await cloud.wait_for(lambda _: bool(cloud.readings(BUCKET)), timeout=WAIT)
            assert agent.session.connected

    assert VALUE == cloud.readings(BUCKET)[0]["value"]
    assert [True] == [entry["tls"] for entry in events(logs, "mqtt_connected")]
    assert f"on port {broker.tls_port}." in broker.log_text()  # came in through TLS


async def test_a_server_certificate_from_another_ca_is_refused_and_retried_with_back_off(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    tls_pki: Pki,
    tcp_plant: PlantServer,
) -> None:
    broker = broker_factory(tls=tls_pki.server)
    config = tls_agent_toml(broker, tcp_plant, ca_file=tls_pki.other_ca.cert)
    with capture_logs() as logs:
        async with running_agent(tmp_path, config) as agent:
            first, second = (await wait_for_event(logs, "mqtt_connect_failed", count=2))[:2]
            assert not agent.session.connected

    assert "warning" == first["log_level"]
    assert "CERTIFICATE_VERIFY_FAILED" in first["error"]
    assert "certificate verify failed" in first["error"]
    assert BACKOFF_MIN <= first["retry_in"] <= 2 * BACKOFF_MIN  # attempt 1
    assert ("debug", 2) == (second["log_level"], second["attempt"])  # repeats: DEBUG
    assert 2 * BACKOFF_MIN <= second["retry_in"] <= 4 * BACKOFF_MIN  # doubled
    assert [] == events(logs, "mqtt_connected")
    assert 0 == agent.session.reconnects
    assert not thing_logged_in(broker)


async def test_a_server_certificate_for_another_name_is_refused(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    tls_pki: Pki,
    tcp_plant: PlantServer,
) -> None:
    """Signed by the trusted CA, but for DNS:other.invalid: the agent dials 127.0.0.1."""
    broker = broker_factory(tls=tls_pki.wrong_name)
    config = tls_agent_toml(broker, tcp_plant, ca_file=tls_pki.ca_file)
    with capture_logs() as logs:
        async with running_agent(tmp_path, config) as agent:
            failed = await wait_for_event(logs, "mqtt_connect_failed")
            assert not agent.session.connected

    assert "CERTIFICATE_VERIFY_FAILED" in failed[0]["error"]
    assert "not valid for '127.0.0.1'" in failed[0]["error"]
    assert [] == events(logs, "mqtt_connected")
    assert not thing_logged_in(broker)


@pytest.mark.parametrize(
    "client", [None, "other_client"], ids=["no-certificate", "certificate-from-another-ca"]
)
async def test_mutual_tls_refuses_an_agent_without_a_client_certificate_the_broker_trusts(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    tls_pki: Pki,
    tcp_plant: PlantServer,
    client: str | None,
) -> None:
    """With TLS 1.3 the broker refuses after the client's side of the handshake is done:
    the agent learns it from the connection closing before the CONNACK, at once (not
    after `connect_timeout`), and retries."""
    broker = broker_factory(tls=tls_pki.mutual)
    pair = None if client is None else getattr(tls_pki, client)
    config = tls_agent_toml(broker, tcp_plant, ca_file=tls_pki.ca_file, client=pair)
    broker_says = (
        "peer did not return a certificate" if client is None else "certificate verify failed"
    )
    with capture_logs() as logs:
        async with running_agent(tmp_path, config) as agent:
            # Two attempts within WAIT: neither waited for connect_timeout (10 s).
            failed = await wait_for_event(logs, "mqtt_connect_failed", count=2)
            assert not agent.session.connected
            await poll_until(
                lambda: broker_says in broker.log_text(),
                timeout=WAIT,
                what=f"broker log: {broker_says}",
            )

    assert "the broker closed the connection before its CONNACK" in failed[0]["error"]
    assert "client certificate" in failed[0]["error"]
    assert [] == events(logs, "mqtt_connected")
    assert not thing_logged_in(broker)


async def test_mutual_tls_accepts_an_agent_with_a_client_certificate_from_the_ca(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    tls_pki: Pki,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    broker = broker_factory(tls=tls_pki.mutual)
    sim_unit.set_registers("holding", 0, [VALUE])
    config = tls_agent_toml(broker, tcp_plant, ca_file=tls_pki.ca_file, client=tls_pki.client)
    async with CloudClient.for_broker(broker) as cloud, running_agent(tmp_path, config) as agent:
        await cloud.wait_for(lambda _: bool(cloud.readings(BUCKET)), timeout=WAIT)
        assert agent.session.connected

    assert VALUE == cloud.readings(BUCKET)[0]["value"]
    assert thing_logged_in(broker)


async def test_mutual_tls_still_checks_the_thing_secret(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    tls_pki: Pki,
    tcp_plant: PlantServer,
) -> None:
    """A trusted client certificate is not a login: user = thing id, password = secret."""
    broker = broker_factory(tls=tls_pki.mutual)
    config = tls_agent_toml(
        broker, tcp_plant, ca_file=tls_pki.ca_file, client=tls_pki.client, secret="not-the-secret"
    )
    with capture_logs() as logs:
        async with running_agent(tmp_path, config) as agent:
            refused = await wait_for_event(logs, "mqtt_auth_refused")
            assert not agent.session.connected

    assert "broker refused the connection" in refused[0]["error"]
    assert BACKOFF_MAX / 2 <= refused[0]["retry_in"] <= BACKOFF_MAX  # straight to the cap
    assert [] == events(logs, "mqtt_connect_failed")
