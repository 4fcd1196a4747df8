"""agent.diskqueue.DiskOutbox against a real SQLite file: order, ack, bounds, replay, recovery."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.clock import Clock
from agent.diskqueue import DiskOutbox, QueueSettings, unpack_payload
from agent.outbox import Message

TOPIC = "$thing/xY6Eie5hv/$data/b"
GENEROUS = 5.0


class Wall:
    ms = 1_800_000_000_000


CLOCK = Clock(wall_ms=lambda: Wall.ms, boot_ms=lambda: 1000, boot_id="boot-1")


def settings(path: Path, **overrides: object) -> QueueSettings:
    values: dict[str, object] = {
        "path": path, "max_bytes": 10_000_000, "max_age": 3600.0, "replay_rate": 0.0,
        "commit_interval": 0.05,
    }
    values.update(overrides)
    return QueueSettings(**values)  # type: ignore[arg-type]


def open_queue(path: Path, **overrides: object) -> DiskOutbox:
    return DiskOutbox(settings(path, **overrides), clock=CLOCK)


async def take(queue: DiskOutbox) -> Message:
    return await asyncio.wait_for(queue.take(), GENEROUS)


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def rows(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        return [unpack_payload(r[0], r[1])
                for r in db.execute("SELECT payload, codec FROM messages ORDER BY seq")]


async def test_a_message_is_committed_before_it_can_be_taken(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path, commit_interval=60)
    queue.put(TOPIC, b"[1]")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.take(), 0.2)
    queue.commit()

    assert [b"[1]"] == rows(path)
    assert b"[1]" == (await take(queue)).payload
    queue.close()


async def test_messages_go_oldest_first_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path)
    for n in range(5):
        queue.put(TOPIC, b"%d" % n)
    queue.close()

    reopened = open_queue(path)
    taken = [await take(reopened) for _ in range(5)]

    assert [b"0", b"1", b"2", b"3", b"4"] == [m.payload for m in taken]
    reopened.close()


async def test_only_acknowledged_messages_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path)
    for n in range(3):
        queue.put(TOPIC, b"%d" % n)
    queue.commit()
    first, second = await take(queue), await take(queue)

    queue.ack(first)
    queue.release(second)
    queue.close()

    assert [b"1", b"2"] == rows(path)


async def test_a_released_message_is_sent_again_before_newer_ones(tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "q.db")
    for n in range(3):
        queue.put(TOPIC, b"%d" % n)
    queue.commit()
    first, second = await take(queue), await take(queue)

    queue.release(second)
    queue.release(first)

    assert [b"0", b"1", b"2"] == [(await take(queue)).payload for _ in range(3)]
    queue.close()


async def test_beyond_max_bytes_exactly_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path, max_bytes=100)
    with capture_logs() as logs:
        for n in range(15):
            queue.put(TOPIC, b"%010d" % n)  # 10 bytes each
        queue.commit()

    assert [b"%010d" % n for n in range(5, 15)] == rows(path)
    assert 5 == queue.stats().dropped_total
    dropped = [e for e in logs if e["event"] == "queue_dropped_oldest"]
    assert [("max_bytes", 5, 50)] == [(e["reason"], e["messages"], e["bytes"]) for e in dropped]
    queue.close()


async def test_messages_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path, max_age=60.0)
    Wall.ms -= 120_000
    queue.put(TOPIC, b"old")
    Wall.ms += 120_000
    queue.put(TOPIC, b"new")
    queue.commit()

    assert [b"new"] == rows(path)
    assert 1 == queue.stats().dropped_total
    queue.close()


async def test_messages_in_flight_are_never_dropped_for_space(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path, max_bytes=20)
    queue.put(TOPIC, b"%010d" % 0)
    queue.commit()
    in_flight = await take(queue)
    for n in range(1, 4):
        queue.put(TOPIC, b"%010d" % n)
    queue.commit()

    assert [in_flight.payload, b"%010d" % 3] == rows(path)
    queue.close()


async def test_backlog_is_replayed_at_the_rate_while_live_messages_pass(tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "q.db", replay_rate=5.0)
    for n in range(20):
        queue.put(TOPIC, b"old%d" % n)
    queue.commit()
    queue.mark_backlog()
    queue.put(TOPIC, b"live")
    queue.commit()

    loop = asyncio.get_running_loop()
    start = loop.time()
    taken = [(await take(queue)).payload for _ in range(6)]
    elapsed = loop.time() - start

    assert b"live" in taken[:2], "the live message does not wait for the backlog"
    assert [b"old0", b"old1", b"old2", b"old3", b"old4"] == [p for p in taken if p != b"live"]
    assert elapsed >= 0.5, "5 backlog messages at 5/s take most of a second"
    queue.close()


async def test_unlimited_replay_rate_sends_the_backlog_at_once(tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "q.db", replay_rate=0.0)
    for n in range(300):
        queue.put(TOPIC, b"%d" % n)
    queue.commit()
    queue.mark_backlog()

    taken = [(await take(queue)).payload for _ in range(300)]

    assert [b"%d" % n for n in range(300)] == taken
    queue.close()


async def test_a_corrupt_file_is_moved_aside_and_a_new_queue_started(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not a database, it is garbage" * 100)

    with capture_logs() as logs:
        queue = open_queue(path)
    queue.put(TOPIC, b"fresh")
    queue.commit()

    aside = [p for p in tmp_path.iterdir() if p.name.startswith("q.db.corrupt-")]
    assert 1 == len(aside)
    assert b"garbage" in file_bytes(aside[0])
    [event] = [e for e in logs if e["event"] == "queue_corrupt_moved_aside"]
    assert (str(path), str(aside[0])) == (event["path"], event["moved_to"])
    assert "error" == event["log_level"]
    assert [b"fresh"] == rows(path)
    queue.close()


async def test_inserts_and_deletes_are_grouped_into_few_commits(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path, commit_interval=0.2, ack_batch=1000)
    for n in range(100):
        queue.put(TOPIC, b"%d" % n)
    taken = [await take(queue) for _ in range(100)]  # the first waits for the timed commit
    for message in taken:
        queue.ack(message)
    queue.close()  # commits the deletions

    assert 2 == queue.commits
    assert [] == rows(path)


async def test_large_payloads_are_stored_compressed_and_come_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path)
    payload = b"[" + b",".join(
        b'{"id":"temperature_%d","value":21.5,"timestamp":"1800000000000"}' % n
        for n in range(100)) + b"]"
    queue.put(TOPIC, payload)
    queue.commit()

    with sqlite3.connect(path) as db:
        stored, codec = db.execute("SELECT payload, codec FROM messages").fetchone()
    assert 1 == codec
    assert len(stored) * 4 < len(payload)
    assert payload == (await take(queue)).payload
    queue.close()


async def test_depth_and_bytes_follow_the_file_through_acks_drops_and_supersedes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    queue = open_queue(path, max_bytes=100)
    for n in range(15):
        queue.put(TOPIC, b"%010d" % n)  # 10 bytes each, stored raw: 5 dropped for space
    queue.put("$thing/gw/$conf/$reported/g", b"first-report")
    queue.commit()
    queue.ack(await take(queue))
    queue.put("$thing/gw/$conf/$reported/g", b"newer-report", replace=True)
    queue.commit()

    with sqlite3.connect(path) as db:
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()
    stats = queue.stats()
    assert (count, size) == (stats.depth, stats.depth_bytes)
    queue.close()
