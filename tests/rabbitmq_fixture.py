"""The ``rabbitmq`` fixture: a second, real broker, RabbitMQ with its MQTT plugin.

One node per test session (:class:`sim.rabbitmq.RabbitMqBroker`: several seconds to
start), with the users and topic permissions of ``sim.broker``'s mosquitto. Tests share
it: what a test leaves retained there, it clears (``tests/test_subscriptions.py`` does so
through its cloud client). A node that died is started again for the next test.

``tests/conftest.py`` imports it, so every test module has it. Without RabbitMQ
(``scripts/setup.sh`` installs it) the fixture raises: the tests error out, they are not
skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim.rabbitmq import RabbitMqBroker

# A second thing, that may not read one group's expected config: its SUBSCRIBE to that
# group's topic is refused (tests/test_suback.py).
NARROW_THING = "nArrow0thing"
NARROW_SECRET = "n4rrow-s3cret"
NARROW_DENIED = "gw-1-mode"
_NARROW_READ = rf"^\$thing\.{NARROW_THING}\.\$conf\.\$expected\.(?!{NARROW_DENIED}$)"


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMqBroker]:
    node = RabbitMqBroker(
        tmp_path_factory.mktemp("rabbitmq"),
        extra_things={NARROW_THING: NARROW_SECRET},
        reads={NARROW_THING: _NARROW_READ},
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture
def rabbitmq(rabbitmq_node: RabbitMqBroker) -> RabbitMqBroker:
    """The session's RabbitMQ node, running, with the document's thing and application."""
    if not rabbitmq_node.running:
        rabbitmq_node.start()
    return rabbitmq_node
