"""agent.pipeline.batches: per-bucket JSON arrays flushed at max_readings, max_bytes or max_delay."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.pipeline.batches import Batch, Batcher
from agent.pipeline.readings import Reading

Sent = list[Batch]


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sent() -> list[Batch]:
    return []


def batcher(
    sent: list[Batch],
    clock: FakeClock,
    *,
    max_readings: int = 100,
    max_bytes: int = 65536,
    max_delay: float = 1.0,
) -> Batcher:
    return Batcher(
        sink=sent.append,
        max_readings=max_readings,
        max_bytes=max_bytes,
        max_delay=max_delay,
        clock=clock,
    )


def reading(n: int, bucket: str = "sensorData", value: object = None) -> Reading:
    return Reading(
        bucket,
        f"p{n}",
        n if value is None else value,  # type: ignore[arg-type]
        1590128899000 + n,
    )


def ids(batch: Batch) -> list[str]:
    return [item["id"] for item in json.loads(batch.payload)]


def test_batch_payload_is_a_json_array_of_platform_objects(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock)
    batches.add(Reading("sensorData", "temperature", 21.5, 1590128899000))
    batches.add(Reading("sensorData", "running", True, 1590128899001))

    batches.flush_all()

    assert sent == [
        Batch(
            "sensorData",
            b'[{"id":"temperature","value":21.5,"timestamp":"1590128899000"},'
            b'{"id":"running","value":true,"timestamp":"1590128899001"}]',
            2,
        )
    ]


def test_flushed_at_max_readings(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_readings=3)

    for n in range(7):
        batches.add(reading(n))

    assert [ids(b) for b in sent] == [["p0", "p1", "p2"], ["p3", "p4", "p5"]]
    assert [b.count for b in sent] == [3, 3]
    assert batches.open_readings == 1


def test_flushed_before_a_reading_would_pass_max_bytes(sent: Sent, clock: FakeClock) -> None:
    fragment = len(reading(0).fragment())
    # Room for exactly two readings: "[" + a + "," + b + "]".
    batches = batcher(sent, clock, max_bytes=2 * fragment + 3 + fragment // 2)

    for n in range(5):
        batches.add(reading(n))

    assert [ids(b) for b in sent] == [["p0", "p1"], ["p2", "p3"]]
    assert all(len(b.payload) <= 2 * fragment + 3 for b in sent)


def test_flushed_as_soon_as_max_bytes_is_reached_exactly(sent: Sent, clock: FakeClock) -> None:
    fragment = len(reading(0).fragment())
    batches = batcher(sent, clock, max_bytes=2 * fragment + 3)

    batches.add(reading(0))
    batches.add(reading(1))

    assert [ids(b) for b in sent] == [["p0", "p1"]]
    assert len(sent[0].payload) == 2 * fragment + 3
    assert batches.open_readings == 0


def test_reading_larger_than_max_bytes_travels_alone(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_bytes=300)

    batches.add(reading(0))
    batches.add(reading(1, value="x" * 400))
    batches.add(reading(2))

    assert [ids(b) for b in sent] == [["p0"], ["p1"]]
    assert batches.open_readings == 1


def test_flushed_at_max_delay_after_the_first_reading(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_delay=1.0)
    batches.add(reading(0))
    clock.now += 0.5
    batches.add(reading(1))
    clock.now += 0.25

    assert batches.flush_due() == 1001.0  # not yet: the next deadline
    assert sent == []

    clock.now += 0.25
    assert batches.flush_due() is None

    assert [ids(b) for b in sent] == [["p0", "p1"]]


def test_a_hurried_batch_goes_within_the_settle_time_and_takes_what_comes_meanwhile(
    sent: Sent, clock: FakeClock
) -> None:
    """A poll cycle ended: its batch waits only for the cycles ending with it."""
    batches = batcher(sent, clock, max_delay=30.0)
    announced: list[float] = []
    batches.on_new_deadline = announced.append
    batches.add(reading(0))
    batches.add(reading(1, bucket="other"))
    batches.hurry(0.02, quiet_for=60)
    clock.now += 0.01
    batches.add(reading(2))  # another device's cycle, ending a moment later
    batches.hurry(0.02, quiet_for=60)  # does not push the first one's deadline back

    assert batches.flush_due() == 1000.02
    clock.now += 0.01
    assert batches.flush_due() is None
    assert [["p0", "p2"], ["p1"]] == [ids(b) for b in sent]
    assert [1030.0, 1030.0, 1000.02, 1000.02] == announced


def test_a_batch_the_next_cycle_can_join_is_not_hurried(sent: Sent, clock: FakeClock) -> None:
    """A source polled every 0.1 s with max_delay 1: its cycles pack into one message."""
    batches = batcher(sent, clock, max_delay=1.0)
    batches.add(reading(0))
    batches.hurry(0.02, quiet_for=0.1)

    assert batches.flush_due() == 1001.0
    clock.now += 0.1
    batches.add(reading(1))
    clock.now += 0.9
    batches.flush_due()
    assert [["p0", "p1"]] == [ids(b) for b in sent]


def test_a_new_batch_starts_its_own_delay(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_delay=2.0)
    batches.add(reading(0))
    clock.now += 2.0
    batches.flush_due()
    clock.now += 5.0

    batches.add(reading(1))

    assert batches.flush_due() == clock.now + 2.0
    assert [ids(b) for b in sent] == [["p0"]]


def test_max_delay_zero_flushes_at_the_next_tick(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_delay=0.0)
    batches.add(reading(0))
    batches.add(reading(1))

    assert batches.flush_due() is None
    assert [ids(b) for b in sent] == [["p0", "p1"]]


def test_buckets_are_batched_separately(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_readings=2)

    batches.add(reading(0, "sensorData"))
    batches.add(reading(1, "position"))
    batches.add(reading(2, "sensorData"))
    batches.add(reading(3, "totals"))

    assert [(b.bucket, ids(b)) for b in sent] == [("sensorData", ["p0", "p2"])]
    assert batches.open_readings == 2


def test_each_bucket_has_its_own_deadline(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_delay=1.0)
    batches.add(reading(0, "a"))
    clock.now += 0.5
    batches.add(reading(1, "b"))
    clock.now += 0.5

    assert batches.flush_due() == 1001.5
    assert [b.bucket for b in sent] == ["a"]


def test_bucket_specific_delay(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_delay=1.0)
    batches.set_delay("slow", 10.0)
    batches.add(reading(0, "slow"))
    batches.add(reading(1, "fast"))
    clock.now += 1.0

    assert batches.flush_due() == 1010.0
    assert [b.bucket for b in sent] == ["fast"]


def test_new_deadline_is_announced_for_each_new_batch(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock, max_delay=1.0, max_readings=2)
    deadlines: list[float] = []
    batches.on_new_deadline = deadlines.append

    batches.add(reading(0))
    clock.now += 0.25
    batches.add(reading(1))  # fills the batch
    batches.add(reading(2))
    batches.add(reading(3, "other"))

    assert deadlines == [1001.0, 1001.25, 1001.25]


def test_flush_all_empties_every_bucket(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock)
    batches.add(reading(0, "a"))
    batches.add(reading(1, "b"))
    batches.add(reading(2, "a"))

    batches.flush_all()

    assert sorted((b.bucket, b.count) for b in sent) == [("a", 2), ("b", 1)]
    assert batches.open_readings == 0
    assert batches.flush_due() is None


def test_nothing_is_sent_without_readings(sent: Sent, clock: FakeClock) -> None:
    batches = batcher(sent, clock)

    batches.flush_all()

    assert batches.flush_due() is None
    assert sent == []


@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=60),
    max_readings=st.integers(1, 10),
    max_bytes=st.integers(256, 1024),
)
def test_every_reading_is_sent_once_in_order_within_the_limits(
    sizes: list[int], max_readings: int, max_bytes: int
) -> None:
    sent: list[Batch] = []
    clock = FakeClock()
    batches = batcher(sent, clock, max_readings=max_readings, max_bytes=max_bytes)
    readings = [reading(n, value="x" * size) for n, size in enumerate(sizes)]

    for item in readings:
        batches.add(item)
    batches.flush_all()

    assert [i for b in sent for i in ids(b)] == [r.id for r in readings]
    for batch in sent:
        items = json.loads(batch.payload)
        assert batch.count == len(items)
        assert 1 <= batch.count <= max_readings
        assert len(batch.payload) <= max_bytes


def one_at_a_time(
    responses: list[list[bytes]], *, max_readings: int, max_bytes: int
) -> list[list[bytes]]:
    """The batches that adding each part alone gives: the rule, written out."""
    done: list[list[bytes]] = []
    parts: list[bytes] = []
    size = 2  # the brackets
    for response in responses:
        for part in response:
            if parts and size + 1 + len(part) > max_bytes:
                done.append(parts)
                parts, size = [], 2
            size += len(part) + (1 if parts else 0)
            parts.append(part)
            if len(parts) >= max_readings or size >= max_bytes:
                done.append(parts)
                parts, size = [], 2
    return done + ([parts] if parts else [])


@given(
    st.lists(st.lists(st.binary(min_size=1, max_size=60), max_size=30), max_size=8),
    st.integers(1, 12),
    st.integers(256, 600),
)
def test_a_response_added_at_once_makes_the_batches_its_parts_would_one_at_a_time(
    responses: list[list[bytes]], max_readings: int, max_bytes: int
) -> None:
    sent: list[Batch] = []
    batches = batcher(sent, FakeClock(), max_readings=max_readings, max_bytes=max_bytes)
    for response in responses:
        batches.add_encoded("b", response)
    batches.flush_all()

    expected = one_at_a_time(responses, max_readings=max_readings, max_bytes=max_bytes)
    assert [b"[" + b",".join(parts) + b"]" for parts in expected] == [b.payload for b in sent]
