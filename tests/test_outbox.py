"""agent.outbox.port.MemoryOutbox: oldest first, at least once, bounded by bytes."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from agent.clock import Clock
from agent.outbox.port import MemoryOutbox, Message, Outbox

TOPIC = "$thing/xY6Eie5hv/$data/sensorData"
GENEROUS = 5.0  # seconds; only reached when the behaviour under test is broken


class Wall:
    """A wall clock the test sets; CLOCK_BOOTTIME stays at 0."""

    ms = 0


CLOCK = Clock(wall_ms=lambda: Wall.ms, boot_ms=lambda: 0, boot_id="test-boot")


def put(outbox: MemoryOutbox, data: bytes, *, created: float) -> None:
    """Put a message made when the wall clock read `created` seconds."""
    Wall.ms = round(created * 1000)
    outbox.put(TOPIC, data)


def payload(n: int, size: int = 10) -> bytes:
    return f"{n:0{size}d}".encode()


async def take(outbox: MemoryOutbox) -> Message:
    return await asyncio.wait_for(outbox.take(), GENEROUS)


async def take_all(outbox: MemoryOutbox) -> list[Message]:
    return [await take(outbox) for _ in range(outbox.stats().depth - outbox.stats().in_flight)]


def test_memory_outbox_is_an_outbox() -> None:
    outbox: Outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)

    assert outbox.stats().depth == 0


async def test_messages_are_taken_oldest_first() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    for n in range(3):
        put(outbox, payload(n), created=100.0 + n)

    taken = await take_all(outbox)

    assert [(m.topic, m.payload, m.created) for m in taken] == [
        (TOPIC, payload(0), 100.0),
        (TOPIC, payload(1), 101.0),
        (TOPIC, payload(2), 102.0),
    ]
    assert [m.seq for m in taken] == sorted(m.seq for m in taken)


async def test_ack_removes_a_message_for_good() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    put(outbox, payload(1), created=101.0)
    first = await take(outbox)

    outbox.ack(first)

    stats = outbox.stats()
    assert (stats.depth, stats.depth_bytes, stats.in_flight, stats.sent_total) == (1, 10, 0, 1)
    assert (await take(outbox)).payload == payload(1)


async def test_a_taken_message_stays_counted_until_acknowledged() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)

    await take(outbox)

    stats = outbox.stats()
    assert (stats.depth, stats.depth_bytes, stats.in_flight, stats.oldest_created) == (
        1,
        10,
        1,
        100.0,
    )


async def test_second_ack_of_the_same_message_is_ignored() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    put(outbox, payload(1), created=101.0)
    message = await take(outbox)

    outbox.ack(message)
    outbox.ack(message)

    stats = outbox.stats()
    assert (stats.depth, stats.depth_bytes, stats.sent_total) == (1, 10, 1)


async def test_released_messages_go_back_to_the_front_in_order() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    for n in range(5):
        put(outbox, payload(n), created=100.0 + n)
    in_flight = [await take(outbox) for _ in range(3)]

    for message in reversed(in_flight):  # the connection drops; released in any order
        outbox.release(message)

    assert [m.payload for m in await take_all(outbox)] == [payload(n) for n in range(5)]


async def test_released_message_goes_back_between_older_and_newer_ones() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    for n in range(3):
        put(outbox, payload(n), created=100.0 + n)
    first, second = await take(outbox), await take(outbox)
    outbox.release(first)
    again = await take(outbox)  # the first one, again

    outbox.release(second)
    outbox.release(again)

    assert [m.payload for m in await take_all(outbox)] == [payload(0), payload(1), payload(2)]


async def test_release_of_an_acknowledged_message_is_ignored() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    message = await take(outbox)
    outbox.ack(message)

    outbox.release(message)

    assert outbox.stats().depth == 0


async def test_beyond_max_bytes_the_oldest_are_dropped_and_counted() -> None:
    outbox = MemoryOutbox(max_bytes=35, clock=CLOCK)

    with capture_logs() as logs:
        for n in range(6):
            put(outbox, payload(n), created=100.0 + n)

    stats = outbox.stats()
    assert (stats.depth, stats.depth_bytes, stats.queued_total, stats.dropped_total) == (
        3,
        30,
        6,
        3,
    )
    assert [m.payload for m in await take_all(outbox)] == [payload(3), payload(4), payload(5)]
    assert [(e["event"], e["log_level"], e["dropped_total"]) for e in logs] == [
        ("outbox_full_dropped_oldest", "warning", 1),
        ("outbox_full_dropped_oldest", "warning", 2),
        ("outbox_full_dropped_oldest", "warning", 3),
    ]


async def test_a_large_message_drops_several_old_ones_at_once() -> None:
    outbox = MemoryOutbox(max_bytes=40, clock=CLOCK)
    for n in range(4):
        put(outbox, payload(n), created=100.0 + n)

    put(outbox, payload(4, size=25), created=104.0)

    stats = outbox.stats()
    assert (stats.depth_bytes, stats.dropped_total) == (35, 3)
    assert [m.payload for m in await take_all(outbox)] == [payload(3), payload(4, size=25)]


async def test_the_newest_message_is_kept_even_alone_beyond_max_bytes() -> None:
    outbox = MemoryOutbox(max_bytes=16, clock=CLOCK)
    put(outbox, payload(0), created=100.0)

    put(outbox, payload(1, size=20), created=101.0)

    assert [m.payload for m in await take_all(outbox)] == [payload(1, size=20)]
    assert outbox.stats().dropped_total == 1


async def test_messages_in_flight_are_never_dropped() -> None:
    outbox = MemoryOutbox(max_bytes=30, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    in_flight = await take(outbox)

    for n in range(1, 5):
        put(outbox, payload(n), created=100.0 + n)
    outbox.ack(in_flight)

    assert [m.payload for m in await take_all(outbox)] == [payload(3), payload(4)]
    assert outbox.stats().sent_total == 1


async def test_take_waits_for_a_put() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    taker = asyncio.create_task(outbox.take())
    await asyncio.sleep(0)  # let it start waiting
    assert not taker.done()

    put(outbox, payload(0), created=100.0)

    message = await asyncio.wait_for(taker, GENEROUS)
    assert message.payload == payload(0)


async def test_take_waits_for_a_release() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    message = await take(outbox)
    taker = asyncio.create_task(outbox.take())
    await asyncio.sleep(0)
    assert not taker.done()

    outbox.release(message)

    assert (await asyncio.wait_for(taker, GENEROUS)).payload == payload(0)


async def test_two_takers_get_different_messages() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    takers = [asyncio.create_task(outbox.take()) for _ in range(2)]
    await asyncio.sleep(0)

    put(outbox, payload(0), created=100.0)
    put(outbox, payload(1), created=101.0)

    taken = await asyncio.wait_for(asyncio.gather(*takers), GENEROUS)
    assert sorted(m.payload for m in taken) == [payload(0), payload(1)]


async def test_wait_empty_returns_at_once_when_nothing_is_queued() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)

    await asyncio.wait_for(outbox.wait_empty(), GENEROUS)


async def test_wait_empty_waits_until_every_message_is_acknowledged() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    put(outbox, payload(1), created=101.0)
    waiter = asyncio.create_task(outbox.wait_empty())

    first = await take(outbox)
    outbox.ack(first)
    second = await take(outbox)
    outbox.release(second)  # taken but not acknowledged is not empty
    await asyncio.sleep(0)
    assert not waiter.done()

    outbox.ack(await take(outbox))

    await asyncio.wait_for(waiter, GENEROUS)
    assert outbox.stats().depth == 0


async def test_stats_report_the_oldest_message_in_flight_or_waiting() -> None:
    outbox = MemoryOutbox(max_bytes=1024, clock=CLOCK)
    put(outbox, payload(0), created=100.0)
    put(outbox, payload(1), created=101.0)
    assert outbox.stats().oldest_created == 100.0

    outbox.ack(await take(outbox))

    assert outbox.stats().oldest_created == 101.0
    outbox.ack(await take(outbox))
    assert outbox.stats().oldest_created is None
