"""Delivery through a fake publisher: a message leaves the outbox only at its PUBACK.

The publisher is the port `agent.cloud.delivery.Publisher`; the outbox is the real in-memory
one; the test plays the broker (acknowledges, drops the connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.clock import FLOOR_MS, Clock, Stamp
from agent.cloud.delivery import Delivery
from agent.outbox.port import MemoryOutbox
from agent.testing import FakePublisher, settle

TOPIC = "$thing/gw/$data/b"
BOOT = "this-boot"


class Wall:
    """A wall clock the test sets; boot time does not move."""

    def __init__(self) -> None:
        self.ms = FLOOR_MS + 1_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def outbox(wall: Wall) -> MemoryOutbox:
    return MemoryOutbox(
        max_bytes=1_000_000, clock=Clock(wall_ms=wall, boot_ms=lambda: 0, boot_id=BOOT)
    )


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def delivery(
    outbox: MemoryOutbox, publisher: FakePublisher, wall: Wall
) -> AsyncIterator[Delivery]:
    sender = Delivery(
        outbox=outbox,
        publisher=publisher,
        window=2,
        clock=Clock(wall_ms=wall, boot_ms=lambda: 0, boot_id=BOOT),
    )
    task = asyncio.create_task(sender.run(), name="delivery")
    yield sender
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def reading(value: int, timestamp_ms: int) -> bytes:
    return b'[{"id":"v","value":%d,"timestamp":"%d"}]' % (value, timestamp_ms)


@pytest.mark.usefixtures("delivery")
async def test_a_message_leaves_the_outbox_only_when_the_broker_acknowledges_it(
    outbox: MemoryOutbox,
    publisher: FakePublisher,
) -> None:
    outbox.put(TOPIC, reading(1, FLOOR_MS))
    await publisher.wait_published(1)
    await settle()
    assert (1, 1, 0) == (outbox.stats().depth, outbox.stats().in_flight, outbox.stats().sent_total)

    publisher.ack()
    await asyncio.wait_for(outbox.wait_empty(), 5)

    assert [(TOPIC, reading(1, FLOOR_MS), False)] == [
        (p.topic, p.payload, p.retain) for p in publisher.published
    ]
    assert 1 == outbox.stats().sent_total


@pytest.mark.usefixtures("delivery")
async def test_no_more_than_the_window_is_in_flight(
    outbox: MemoryOutbox,
    publisher: FakePublisher,
) -> None:
    for value in range(5):
        outbox.put(TOPIC, reading(value, FLOOR_MS))
    await publisher.wait_published(2)
    await settle()
    assert 2 == len(publisher.published)

    publisher.ack()
    await publisher.wait_published(3)
    await settle()

    assert (3, 2) == (len(publisher.published), len(publisher.pending))


@pytest.mark.usefixtures("delivery")
async def test_a_message_whose_connection_dropped_before_its_puback_is_sent_again(
    outbox: MemoryOutbox,
    publisher: FakePublisher,
) -> None:
    outbox.put(TOPIC, reading(1, FLOOR_MS))
    outbox.put(TOPIC, reading(2, FLOOR_MS))
    await publisher.wait_published(2)

    publisher.disconnect()
    await settle()
    assert 2 == outbox.stats().depth  # released, not lost
    publisher.connect()
    await publisher.wait_published(4)
    publisher.ack(2)
    await asyncio.wait_for(outbox.wait_empty(), 5)

    assert [reading(1, FLOOR_MS), reading(2, FLOOR_MS)] * 2 == [
        p.payload for p in publisher.published
    ]  # oldest first, again


@pytest.mark.usefixtures("delivery")
async def test_timestamps_of_a_message_made_before_a_clock_step_are_shifted_by_it(
    outbox: MemoryOutbox,
    publisher: FakePublisher,
    wall: Wall,
) -> None:
    publisher.disconnect()
    made_at = wall.ms
    outbox.put(TOPIC, reading(1, made_at))
    wall.ms += 3_600_000  # NTP steps the clock an hour on
    publisher.connect()
    await publisher.wait_published(1)

    assert [reading(1, made_at + 3_600_000)] == [p.payload for p in publisher.published]


async def test_a_message_from_an_earlier_boot_without_a_set_clock_is_dropped_unsent(
    outbox: MemoryOutbox,
    publisher: FakePublisher,
    delivery: Delivery,
) -> None:
    outbox.put(TOPIC, reading(1, 5_000), Stamp("earlier-boot", wall_ms=5_000, boot_ms=5_000))
    outbox.put(TOPIC, reading(2, FLOOR_MS))
    await publisher.wait_published(1)

    assert [reading(2, FLOOR_MS)] == [p.payload for p in publisher.published]
    assert 1 == outbox.stats().dropped_total
    assert 0 == delivery.restamped
