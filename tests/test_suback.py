"""A subscription the broker refuses is said, and does not take the link down.

A broker whose permissions do not let the thing read one of its groups' topics either
answers that filter's SUBACK with 0x80 or, as RabbitMQ's MQTT plugin (3.10) does, closes
the connection at the SUBSCRIBE. The agent says so at ERROR (`subscription_refused`,
with the filter), leaves that filter out, and stays connected: readings flow and the
other groups' configuration still lands in the device (agent.cloud.subscriber).
mosquitto 2.0 grants every subscription and applies its ACL at delivery, so this runs on
RabbitMQ; the SUBACK code path is unit-tested in tests/test_subscriber_unit.py.
"""

from __future__ import annotations

from pathlib import Path

from agent.testing import captured_logs
from sim.cloud import CloudClient, expected_topic
from sim.plant import PlantServer, SimUnit
from sim.rabbitmq import RabbitMqBroker
from tests.helpers import poll_until, running_agent
from tests.rabbitmq_fixture import NARROW_DENIED, NARROW_SECRET, NARROW_THING
from tests.test_cloudconfig import THING, WAIT, config_text

SETPOINT_REGISTER = 806  # "40807", GW1_40807 of group gw-1-setting, which the thing may read


async def test_a_refused_subscription_is_logged_and_the_rest_keeps_working(
    tmp_path: Path, sim_unit: SimUnit, tcp_plant: PlantServer, rabbitmq: RabbitMqBroker
) -> None:
    text = config_text(rabbitmq, tcp_plant, tmp_path, interval=0.2)
    text = text.replace(f'id = "{THING}"', f'id = "{NARROW_THING}"')
    text = text.replace(f'secret = "{rabbitmq.thing_secret}"', f'secret = "{NARROW_SECRET}"')
    cloud = CloudClient.for_broker(rabbitmq, clean_session=True)
    await cloud.connect()
    allowed = expected_topic(NARROW_THING, "gw-1-setting")
    try:
        with captured_logs() as logs:
            async with running_agent(tmp_path, text) as agent:
                await poll_until(
                    lambda: any(e["event"] == "subscription_refused" for e in logs),
                    timeout=WAIT,
                    what="the refused filter logged",
                )
                seen = len(cloud.readings(thing_id=NARROW_THING))
                await cloud.publish(allowed, [{"id": "GW1_40807", "value": 600}])
                await poll_until(
                    lambda: sim_unit.get_registers("holding", SETPOINT_REGISTER)[0] == 600,
                    timeout=WAIT,
                    what="the allowed group's setting written to the device",
                )
                await cloud.wait_for(
                    lambda m: len(cloud.readings(thing_id=NARROW_THING)) > seen + 5,
                    timeout=WAIT,
                )
                refused_now = agent.session.refused_subscriptions
                reconnects = agent.session.reconnects
    finally:
        await cloud.publish(allowed, b"")
        await cloud.disconnect()

    refused = {e["topic"]: e["code"] for e in logs if e["event"] == "subscription_refused"}
    assert {expected_topic(NARROW_THING, NARROW_DENIED): "connection closed"} == refused
    assert {expected_topic(NARROW_THING, NARROW_DENIED)} == refused_now
    assert all(e["log_level"] == "error" for e in logs if e["event"] == "subscription_refused")
    # one lost at the first, whole SUBSCRIBE; two at the denied filter's own
    assert 3 == reconnects
