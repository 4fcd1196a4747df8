"""agent.outbox.disk.DiskOutbox against a real SQLite file: order, ack, bounds, replay, recovery."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.clock import Clock
from agent.errors import QueueIOError
from agent.outbox.budget import SHM_BYTES, wal_limit_for
from agent.outbox.disk import DiskOutbox, QueueSettings, unpack_payload
from agent.outbox.port import Message
from agent.outbox.rows import StateWrite
from tests.helpers import poll_until, running_queue

TOPIC = "$thing/xY6Eie5hv/$data/b"
GENEROUS = 5.0


class Wall:
    ms = 1_800_000_000_000
    boot_ms = 1000


CLOCK = Clock(wall_ms=lambda: Wall.ms, boot_ms=lambda: Wall.boot_ms, boot_id="boot-1")


def settings(path: Path, **overrides: object) -> QueueSettings:
    values: dict[str, object] = {
        "path": path,
        "max_bytes": 10_000_000,
        "max_age": 3600.0,
        "replay_rate": 0.0,
        "commit_interval": 0.05,
    }
    values.update(overrides)
    return QueueSettings(**values)  # type: ignore[arg-type]


def running(path: Path, **overrides: object) -> AbstractAsyncContextManager[DiskOutbox]:
    """A queue with its task running, closed (committing) on exit."""
    return running_queue(settings(path, **overrides), clock=CLOCK)


async def take(queue: DiskOutbox) -> Message:
    return await asyncio.wait_for(queue.take(), GENEROUS)


async def until(condition: Callable[[], bool]) -> None:
    """For conditions that have no event (the queue's counters)."""
    async with asyncio.timeout(GENEROUS):
        while not condition():  # noqa: ASYNC110 - counters have no event to await
            await asyncio.sleep(0.01)


def rows(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        return [
            unpack_payload(r[0], r[1])
            for r in db.execute("SELECT payload, codec FROM messages ORDER BY seq")
        ]


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


def failing_writes(queue: DiskOutbox, times: int | None = None) -> None:
    """The queue's writes of messages fail (`times` of them, or all): a disk that refuses
    them (the age sweep, which writes none, still goes through)."""
    real = queue._store.write
    left = [times]

    def write(messages: Any, *args: Any, **kwargs: Any) -> Any:
        if messages and (left[0] is None or left[0] > 0):
            left[0] = None if left[0] is None else left[0] - 1
            raise QueueIOError("injected: the disk refused")
        return real(messages, *args, **kwargs)

    queue._store.write = write  # type: ignore[method-assign]


class HeldWrite:
    """The queue's writes of messages held in the I/O thread until `let_go`: what the
    event loop does meanwhile (take, ack) happens while such a commit is under way."""

    def __init__(self, queue: DiskOutbox) -> None:
        self._real = queue._store.write
        self._started = threading.Event()
        self._go = threading.Event()
        queue._store.write = self._write  # type: ignore[method-assign]

    def _write(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        if messages:
            self._started.set()
            self._go.wait(GENEROUS)
        return self._real(messages, *args, **kwargs)

    async def started(self) -> None:
        assert await asyncio.to_thread(self._started.wait, GENEROUS), "no write started"

    def let_go(self) -> None:
        self._go.set()


def files_bytes(path: Path) -> int:
    return sum(
        os.stat(f"{path}{s}").st_size for s in ("", "-wal", "-shm") if os.path.exists(f"{path}{s}")
    )


async def test_a_message_acknowledged_before_its_commit_never_touches_the_disk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    async with running(path, commit_interval=0.2) as queue:
        queue.put(TOPIC, b"acked")
        queue.put(TOPIC, b"unsent")
        acked = await take(queue)  # at once: no commit before delivery
        queue.ack(acked)
        await until(lambda: count(path) == 1)  # the timed commit

        assert [b"unsent"] == rows(path)
        assert b"acked" == acked.payload


async def test_a_message_in_flight_too_long_is_written_by_its_commit(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path, commit_interval=0.1) as queue:
        queue.put(TOPIC, b"[1]")
        assert b"[1]" == (await take(queue)).payload
        await until(lambda: count(path) == 1)  # never acknowledged: written all the same

        assert [b"[1]"] == rows(path)


async def test_a_commit_leaves_messages_in_flight_less_than_half_its_interval(
    tmp_path: Path,
) -> None:
    """The acknowledgement of a message just sent is expected before the commit: it is
    left for the next, due when it is commit_interval old (durability as before)."""
    now = [0.0]
    path = tmp_path / "q.db"
    async with running_queue(
        settings(path, commit_interval=60), clock=CLOCK, loop_time=lambda: now[0]
    ) as queue:
        queue.put(TOPIC, b"waiting")
        queue.put(TOPIC, b"sent")
        waiting, sent = await take(queue), await take(queue)
        queue.release(waiting)  # not in flight: due whatever its age
        now[0] = 20.0  # both put 20 s ago: less than half of 60
        async with queue._busy:
            await queue._write()
        assert [b"waiting"] == rows(path)
        assert 60.0 == queue._commit_at  # when `sent` is commit_interval old

        now[0] = 31.0
        async with queue._busy:
            await queue._write()
        assert [b"waiting", b"sent"] == rows(path)
        assert (b"waiting", b"sent") == (waiting.payload, sent.payload)


async def test_a_commit_leaves_a_new_message_delivery_is_waiting_to_take(
    tmp_path: Path,
) -> None:
    """Delivery waiting in take() takes what is put as soon as the loop comes round: a
    commit in between does not write it. Nobody waiting (the broker away): written."""
    now = [0.0]
    path = tmp_path / "q.db"
    async with running_queue(
        settings(path, commit_interval=60), clock=CLOCK, loop_time=lambda: now[0]
    ) as queue:
        taker = asyncio.create_task(queue.take())
        await until(lambda: queue._taker_waiting)
        queue.put(TOPIC, b"taken soon")
        async with queue._busy:  # before the taker runs again
            await queue._write()
        assert [] == rows(path)
        assert b"taken soon" == (await asyncio.wait_for(taker, GENEROUS)).payload

        queue.put(TOPIC, b"nobody waiting")
        async with queue._busy:
            await queue._write()
        assert [b"nobody waiting"] == rows(path)


async def test_messages_go_oldest_first_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path) as queue:
        for n in range(5):
            queue.put(TOPIC, b"%d" % n)

    async with running(path) as reopened:
        taken = [await take(reopened) for _ in range(5)]

    assert [b"0", b"1", b"2", b"3", b"4"] == [m.payload for m in taken]


async def test_only_acknowledged_messages_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path) as queue:
        for n in range(3):
            queue.put(TOPIC, b"%d" % n)
        first, second = await take(queue), await take(queue)

        queue.ack(first)
        queue.release(second)

    assert [b"1", b"2"] == rows(path)


async def test_a_released_message_is_sent_again_before_newer_ones(tmp_path: Path) -> None:
    async with running(tmp_path / "q.db") as queue:
        for n in range(3):
            queue.put(TOPIC, b"%d" % n)
        first, second = await take(queue), await take(queue)

        queue.release(second)
        queue.release(first)

        assert [b"0", b"1", b"2"] == [(await take(queue)).payload for _ in range(3)]


@pytest.mark.parametrize("max_bytes", [64 * 1024, 1024 * 1024])
async def test_the_files_stay_within_max_bytes_and_exactly_the_oldest_are_dropped(
    tmp_path: Path,
    max_bytes: int,
) -> None:
    path = tmp_path / "q.db"
    size = 1000
    count = 3 * max_bytes // size
    peak = 0
    async with running(path, max_bytes=max_bytes) as queue:
        for n in range(count):
            queue.put(TOPIC, b"%06d" % n + os.urandom(size - 6))  # incompressible
            if n % 20 == 19:
                await queue.flush()
                peak = max(peak, files_bytes(path))
        await queue.flush()
        dropped = queue.stats().dropped_total
        kept = [int(p[:6]) for p in rows(path)]

    assert list(range(count - len(kept), count)) == kept, "a contiguous run of the newest"
    assert count - len(kept) == dropped
    allowance = max(64 * 1024, max_bytes // 16)
    assert peak <= max_bytes + allowance, f"files reached {peak} for max_bytes {max_bytes}"
    assert len(kept) * size > (max_bytes - wal_limit_for(max_bytes) - SHM_BYTES) // 3


async def test_messages_older_than_max_age_are_dropped_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path, max_age=60.0) as queue:
        Wall.ms -= 120_000
        queue.put(TOPIC, b"old")
        Wall.ms += 120_000
        queue.put(TOPIC, b"new")
        await queue.flush()
        await until(lambda: queue.stats().dropped_total == 1)  # the first sweep, at once

        assert [b"new"] == rows(path)


async def test_a_message_past_max_age_when_it_is_taken_is_dropped_not_sent(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path, max_age=5.0) as queue:
        queue.put(TOPIC, b"made-before-the-outage")
        await queue.flush()
        Wall.boot_ms += 6_000  # six seconds later, by the clock that is never stepped
        queue.put(TOPIC, b"fresh")
        with capture_logs() as logs:
            taken = await take(queue)
            await until(lambda: any(e["event"] == "queue_dropped_oldest" for e in logs))

        assert b"fresh" == taken.payload
        assert 1 == queue.stats().dropped_total
        [event] = [e for e in logs if e["event"] == "queue_dropped_oldest"]
        assert ("max_age", 1) == (event["reason"], event["messages"])
    Wall.boot_ms = 1000


async def test_messages_in_flight_are_never_dropped_for_space(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path, max_bytes=64 * 1024) as queue:
        queue.put(TOPIC, b"%06d" % 0 + os.urandom(994))
        in_flight = await take(queue)
        for n in range(1, 300):
            queue.put(TOPIC, b"%06d" % n + os.urandom(994))
        await queue.flush()
        kept = [int(p[:6]) for p in rows(path)]

    assert 0 == kept[0], "the message in flight stays"
    assert 299 == kept[-1]
    assert in_flight.payload == rows(path)[0]


async def test_backlog_is_replayed_at_the_rate_while_live_messages_pass(tmp_path: Path) -> None:
    async with running(tmp_path / "q.db", replay_rate=5.0) as queue:
        for n in range(20):
            queue.put(TOPIC, b"old%d" % n)
        await queue.flush()
        queue.mark_backlog()
        queue.put(TOPIC, b"live")
        await queue.flush()

        loop = asyncio.get_running_loop()
        start = loop.time()
        taken = [(await take(queue)).payload for _ in range(6)]
        elapsed = loop.time() - start

    assert b"live" in taken[:2], "the live message does not wait for the backlog"
    assert [b"old0", b"old1", b"old2", b"old3", b"old4"] == [p for p in taken if p != b"live"]
    assert elapsed >= 0.5, "5 backlog messages at 5/s take most of a second"


async def test_live_messages_do_not_wait_behind_a_long_backlog(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path, replay_rate=50.0) as queue:
        for n in range(6000):
            queue.put(TOPIC, b'[{"id":"n","value":%d}]' % n)
        await queue.flush()
    async with running(path, replay_rate=50.0) as queue:  # restarted with the backlog
        queue.mark_backlog()
        loop = asyncio.get_running_loop()
        latencies = []
        for n in range(5):
            queue.put(TOPIC, b"live%d" % n)
            made = loop.time()
            while (message := await take(queue)).payload != b"live%d" % n:
                queue.ack(message)  # backlog interleaved at its rate
            queue.ack(message)
            latencies.append(loop.time() - made)
        backlog = queue.stats().backlog

    assert max(latencies) < 1.0, f"live waited {max(latencies):.2f} s behind the backlog"
    assert backlog > 5000, "the backlog is still being replayed behind the live data"


async def test_unlimited_replay_rate_sends_the_backlog_at_once(tmp_path: Path) -> None:
    async with running(tmp_path / "q.db", replay_rate=0.0) as queue:
        for n in range(300):
            queue.put(TOPIC, b"%d" % n)
        await queue.flush()
        queue.mark_backlog()

        taken = [(await take(queue)).payload for _ in range(300)]

    assert [b"%d" % n for n in range(300)] == taken


async def test_a_long_outage_is_replayed_whole_from_disk_and_memory(tmp_path: Path) -> None:
    """More than memory holds: the oldest are read back from the file, nothing twice."""
    async with running(tmp_path / "q.db", replay_rate=0.0) as queue:
        for n in range(3000):
            queue.put(TOPIC, b"%05d" % n + os.urandom(1000))  # 3 MB: most leave memory
            if n % 100 == 99:
                await queue.flush()
        await queue.flush()
        queue.mark_backlog()
        taken = []
        for _ in range(3000):
            message = await take(queue)
            taken.append(int(message.payload[:5]))
            queue.ack(message)

    assert list(range(3000)) == taken


async def test_a_reconnect_during_replay_starts_the_backlog_over_without_repeats(
    tmp_path: Path,
) -> None:
    async with running(tmp_path / "q.db", replay_rate=0.0) as queue:
        for n in range(1000):
            queue.put(TOPIC, b"%05d" % n)
        await queue.flush()
        queue.mark_backlog()
        sent = []
        for _ in range(400):
            message = await take(queue)
            sent.append(int(message.payload))
            queue.ack(message)
        in_flight = [await take(queue) for _ in range(10)]
        for message in in_flight:
            queue.release(message)  # the connection dropped
        queue.mark_backlog()
        for _ in range(600):
            message = await take(queue)
            sent.append(int(message.payload))
            queue.ack(message)

    assert list(range(1000)) == sent


async def test_a_corrupt_file_is_moved_aside_and_a_new_queue_started(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not a database, it is garbage" * 100)

    with capture_logs() as logs:
        async with running(path) as queue:
            queue.put(TOPIC, b"fresh")
            await queue.flush()
            assert [b"fresh"] == rows(path)

    aside = [p for p in tmp_path.iterdir() if p.name.startswith("q.db.corrupt-")]
    assert 1 == len(aside)
    assert b"garbage" in aside[0].read_bytes()
    [event] = [e for e in logs if e["event"] == "queue_corrupt_moved_aside"]
    assert (str(path), str(aside[0])) == (event["path"], event["moved_to"])
    assert "error" == event["log_level"]


async def test_inserts_and_deletes_are_grouped_into_few_commits(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with running(path, commit_interval=0.2, ack_batch=1000) as queue:
        for n in range(100):
            queue.put(TOPIC, b"%d" % n)
        await until(lambda: count(path) == 100)  # nothing taken: all in the timed commit
        taken = [await take(queue) for _ in range(100)]
        for message in taken:
            queue.ack(message)
    # closing commits the deletions

    assert 2 == queue.commits
    assert [] == rows(path)


async def test_large_payloads_are_stored_compressed_and_come_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    payload = (
        b"["
        + b",".join(
            b'{"id":"temperature_%d","value":21.5,"timestamp":"1800000000000"}' % n
            for n in range(100)
        )
        + b"]"
    )
    async with running(path) as queue:
        queue.put(TOPIC, payload)
        await queue.flush()

        with sqlite3.connect(path) as db:
            stored, codec = db.execute("SELECT payload, codec FROM messages").fetchone()
        assert 1 == codec
        assert len(stored) * 4 < len(payload)
        assert payload == (await take(queue)).payload


async def test_depth_and_bytes_follow_the_file_through_acks_drops_and_supersedes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    async with running(path, max_bytes=64 * 1024) as queue:
        for _ in range(150):
            queue.put(TOPIC, os.urandom(1000))  # some dropped for space
        queue.put("$thing/gw/$conf/$reported/g", b"first-report")
        await queue.flush()
        queue.ack(await take(queue))
        queue.put("$thing/gw/$conf/$reported/g", b"newer-report", replace=True)
        await queue.flush()

        with sqlite3.connect(path) as db:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
            reports = db.execute(
                "SELECT COUNT(*) FROM messages WHERE topic LIKE '%reported%'"
            ).fetchone()[0]
        stats = queue.stats()
        assert (count, size) == (stats.depth, stats.depth_bytes)
        assert 1 == reports
        assert 0 < stats.dropped_total


async def test_delivery_keeps_up_while_messages_keep_coming_faster_than_memory_holds(
    tmp_path: Path,
) -> None:
    """A producer that never pauses for long: the queue's task must still read back what
    had to leave memory (it once kept committing what came in and never read)."""
    count, size = 1500, 8000  # 12 MB: most of it leaves memory and is read back
    async with running(
        tmp_path / "q.db", commit_interval=0.05, max_bytes=256 * 1024 * 1024
    ) as queue:
        queue.mark_backlog()  # connected: all of it is live

        async def produce() -> None:
            for n in range(count):
                queue.put(TOPIC, b"%05d" % n + os.urandom(size))
                await asyncio.sleep(0)

        producer = asyncio.create_task(produce())
        taken: list[int] = []
        async with asyncio.timeout(60):
            while len(taken) < count:
                message = await queue.take()
                taken.append(int(message.payload[:5]))
                queue.ack(message)
        await producer

    assert list(range(count)) == sorted(taken)
    assert len(set(taken)) == count


async def test_the_pollers_wait_while_the_disk_is_behind_and_nothing_is_dropped(
    tmp_path: Path,
) -> None:
    """More put than 3/4 of memory_bytes before the disk could take it: wait_room holds the
    pollers until a commit catches up; no message is dropped for memory."""
    async with running(tmp_path / "q.db", memory_bytes=64 * 1024, commit_interval=60) as queue:
        for n in range(55):
            queue.put(TOPIC, b"%05d" % n + os.urandom(1000))  # 55 KB: over 3/4 of 64 KiB
        waiting = asyncio.create_task(queue.wait_room())
        await asyncio.sleep(0)
        assert not waiting.done(), "the pollers go on while the disk is behind"
        await asyncio.wait_for(waiting, GENEROUS)  # the commit the bytes forced, caught up
        dropped = queue.stats().dropped_total
        kept = len(rows(tmp_path / "q.db"))

    assert (0, 55) == (dropped, kept)


async def test_a_state_whose_commit_failed_is_written_whole_at_the_next(tmp_path: Path) -> None:
    """A failed commit's state write is not on disk: the next one is a whole snapshot, and
    nothing piles up in memory however long the disk fails."""
    asked: list[bool] = []

    def provider(whole: bool) -> StateWrite:
        asked.append(whole)
        return StateWrite(snapshot=b"all") if whole else StateWrite(journal=(b"part",))

    path = tmp_path / "q.db"
    async with running(path) as queue:
        queue.keep_state("s", provider)
        real, failures = queue._store.write, [QueueIOError("injected: the disk refused")]

        def write(*args: Any, **kwargs: Any) -> Any:
            if failures and kwargs.get("states"):
                raise failures.pop()
            return real(*args, **kwargs)

        queue._store.write = write  # type: ignore[method-assign]  # the commit of the state fails
        queue.state_changed()
        await poll_until(lambda: len(asked) >= 2, timeout=30.0, what="the retried commit")

    assert [False, True] == asked[:2]
    reopened = DiskOutbox(settings(path), clock=CLOCK)
    try:
        assert (b"all", []) == reopened.saved_states["s"]
    finally:
        await reopened.aclose()


async def test_a_state_changed_once_at_start_up_is_written(tmp_path: Path) -> None:
    """The age sweep at start-up commits without messages; it leaves the state due."""
    path = tmp_path / "q.db"
    async with running(path) as queue:
        queue.keep_state("s", lambda whole: StateWrite(snapshot=b"once"))
        queue.state_changed()
        await poll_until(
            lambda: (
                sqlite3.connect(path)
                .execute("SELECT count(*) FROM sqlite_master WHERE name = 'state'")
                .fetchone()[0]
            ),
            timeout=30.0,
            what="the state table",
        )

    reopened = DiskOutbox(settings(path), clock=CLOCK)
    try:
        assert (b"once", []) == reopened.saved_states["s"]
    finally:
        await reopened.aclose()


# -- the depth: never fewer than the messages not yet acknowledged ----------------------------


async def test_acknowledgements_while_the_disk_fails_come_off_the_depth_once(
    tmp_path: Path,
) -> None:
    """Messages a failed write was to store, delivered from memory and acknowledged: their
    deletion waits for the disk (the failed write may have kept them), but the depth does
    not count them off twice (it once said 0 with messages on disk and in flight)."""
    path = tmp_path / "q.db"
    async with running(path) as queue:
        for n in range(3):
            queue.put(TOPIC, b"on-disk-%d" % n)
        await queue.flush()
        failing_writes(queue)
        for n in range(2):
            queue.put(TOPIC, b"in-memory-%d" % n)
        await until(lambda: queue.stats().disk != "ok")
        taken = [await take(queue) for _ in range(5)]
        for message in taken[3:]:
            queue.ack(message)

        assert [b"on-disk-0", b"on-disk-1", b"on-disk-2"] == [m.payload for m in taken[:3]]
        assert 3 == queue.stats().depth


async def test_an_acknowledgement_during_the_commit_that_writes_it_comes_off_the_depth_once(
    tmp_path: Path,
) -> None:
    """After a failed write, messages go out from memory before their commit; one
    acknowledged while that commit is in the I/O thread is not yet in the file's count."""
    path = tmp_path / "q.db"
    async with running(path, commit_interval=60) as queue:
        for n in range(3):
            queue.put(TOPIC, b"on-disk-%d" % n)
        await queue.flush()
        failing_writes(queue, times=1)
        queue.put(TOPIC, b"failed")
        await queue.flush()
        queue.put(TOPIC, b"made-while-failing")  # after the failure: not suspect
        held = HeldWrite(queue)
        flush = asyncio.create_task(queue.flush())
        await held.started()
        taken = [await take(queue) for _ in range(5)]
        queue.ack(taken[4])
        during = queue.stats().depth
        held.let_go()
        await flush
        after = queue.stats().depth

    assert b"made-while-failing" == taken[4].payload
    assert (4, 4) == (during, after)


@pytest.mark.parametrize("acked", ["during_the_commit", "after_it"])
async def test_a_message_taken_during_the_commit_that_drops_it_for_space_is_counted_once(
    tmp_path: Path,
    acked: str,
) -> None:
    """`held` is what was in flight when a commit began: one taken while it is in the I/O
    thread may be dropped for the bounds; its acknowledgement is then nothing to delete."""
    path = tmp_path / "q.db"
    async with running(path, max_bytes=64 * 1024, commit_interval=60) as queue:
        for n in range(16):  # as much as fits
            queue.put(TOPIC, b"%06d" % n + os.urandom(994))
        await queue.flush()
        held = HeldWrite(queue)
        for n in range(16, 20):  # one commit more
            queue.put(TOPIC, b"%06d" % n + os.urandom(994))
        flush = asyncio.create_task(queue.flush())
        await held.started()
        oldest = await take(queue)
        if acked == "during_the_commit":
            queue.ack(oldest)
        held.let_go()
        await flush
        out = queue.stats().depth - count(path)  # the one taken, until it is acknowledged
        if acked == "after_it":
            queue.ack(oldest)
        kept = [int(p[:6]) for p in rows(path)]
        depth = queue.stats().depth

    assert 0 < kept[0], "the oldest was dropped for space"
    assert 0 == int(oldest.payload[:6])
    assert (0 if acked == "during_the_commit" else 1) == out
    assert len(kept) == depth


async def test_the_depth_after_a_stop_that_cancelled_a_commit_counts_what_it_wrote(
    tmp_path: Path,
) -> None:
    """The queue's task cancelled (the agent stopping) while its commit is in the I/O
    thread: the commit lands, its outcome is lost, and the last one finds its rows there
    already; the depth the agent reports after the stop still counts them."""
    path = tmp_path / "q.db"
    queue = DiskOutbox(settings(path), clock=CLOCK)
    task = asyncio.create_task(queue.run(), name="queue")
    held = HeldWrite(queue)
    for n in range(3):
        queue.put(TOPIC, b"%d" % n)
    await held.started()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    held.let_go()
    await queue.aclose()

    assert 3 == count(path) == queue.stats().depth


# -- publishing first: the commits that still must happen, and only those -------------------


def queue_at(path: Path, now: list[float], **overrides: object) -> DiskOutbox:
    """A queue on a fake loop clock whose task the test runs itself (`step`)."""
    return DiskOutbox(settings(path, **overrides), clock=CLOCK, loop_time=lambda: now[0])


async def step(queue: DiskOutbox) -> None:
    """One round of the queue's task, as `run()` does it."""
    async with queue._busy:
        await queue._service()


def states(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as db:
        return {
            str(name): bytes(value) for name, value in db.execute("SELECT name, value FROM state")
        }


@pytest.mark.parametrize("how", ["flush", "aclose"])
async def test_what_a_state_provider_puts_goes_into_the_commit_of_its_state(
    tmp_path: Path, how: str
) -> None:
    """A window's result, put by the provider as its state is taken, is in the same
    commit as the state that no longer holds the window (a stop included)."""
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10)

    def provider(whole: bool) -> StateWrite:
        queue.put(TOPIC, b"window result")
        return StateWrite(snapshot=b"window closed")

    queue.keep_state("s", provider)
    queue.state_changed()
    await (queue.flush() if how == "flush" else queue.aclose())

    assert [b"window result"] == rows(path)
    assert {"s": b"window closed"} == states(path)
    await queue.aclose()


async def test_a_state_is_committed_with_a_message_put_before_it_even_one_in_flight(
    tmp_path: Path,
) -> None:
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10)
    try:
        queue.put(TOPIC, b"older")  # a commit due at 10
        await take(queue)
        now[0] = 8.0
        queue.keep_state("s", lambda whole: StateWrite(snapshot=b"window closed"))
        queue.put(TOPIC, b"window result")
        queue.state_changed()
        await take(queue)  # published at once, young: a commit without a state spares it
        now[0] = 10.0
        await step(queue)

        assert {"s": b"window closed"} == states(path)
        assert b"window result" in rows(path)
    finally:
        await queue.aclose()


async def test_a_message_spared_while_the_disk_failed_is_due_once_a_probe_finds_it_back(
    tmp_path: Path,
) -> None:
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10)
    try:
        await step(queue)  # the start-up sweep (the next at 60)
        queue.put(TOPIC, b"x")
        await queue.flush()  # the WAL wants a sync at 2
        queue.ack(await take(queue))
        await queue.flush()
        real_sync, fails = queue._store.sync, [QueueIOError("injected: sync failed")]

        def sync() -> None:
            if fails:
                raise fails.pop()
            real_sync()

        queue._store.sync = sync  # type: ignore[method-assign]
        now[0] = 2.0
        await step(queue)  # the sync fails: tried again in 1 to 2 s
        assert not queue._health.ok
        now[0] = 2.5
        queue.put(TOPIC, b"in flight")
        message = await take(queue)
        now[0] = 4.0  # the retry: nothing due (the message is young), the probe syncs
        await step(queue)
        assert queue._health.ok
        queue.release(message)  # the connection drops: nobody acknowledges it

        now[0] = 12.5  # commit_interval after it was put
        await step(queue)
        assert [b"in flight"] == rows(path)
    finally:
        await queue.aclose()


async def test_a_put_during_a_commit_does_not_delay_a_spared_message(tmp_path: Path) -> None:
    """A spared message is due when it is commit_interval old, whatever is put while the
    commit that spared it runs."""
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10)
    try:
        queue.put(TOPIC, b"a")  # a commit due at 10
        now[0] = 6.0
        queue.put(TOPIC, b"b")
        a, _ = await take(queue), await take(queue)
        queue.release(a)  # not in flight: written at 10, whatever its age
        held = HeldWrite(queue)
        now[0] = 10.0
        commit = asyncio.create_task(step(queue))  # writes a, spares b (4 s, in flight)
        await held.started()
        now[0] = 10.1
        queue.put(TOPIC, b"c")
        held.let_go()
        await asyncio.wait_for(commit, GENEROUS)

        assert [b"a"] == rows(path)
        assert queue._commit_at == 16.0  # when b is commit_interval old
    finally:
        await queue.aclose()


async def test_the_pollers_go_on_once_what_held_them_is_acknowledged_unwritten(
    tmp_path: Path,
) -> None:
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10, memory_bytes=4000)
    try:
        await step(queue)
        taker = asyncio.create_task(queue.take())
        await until(lambda: queue._taker_waiting)
        queue.put(TOPIC, b"x" * 3100)  # beyond 3/4 of memory_bytes: the pollers wait
        assert not queue._room.is_set()
        await step(queue)  # spared: delivery is about to take it
        queue.ack(await asyncio.wait_for(taker, GENEROUS))  # never written

        assert queue._room.is_set()
        assert 0 == queue._unwritten.bytes
    finally:
        await queue.aclose()


async def test_a_full_window_in_flight_does_not_make_every_put_a_commit(tmp_path: Path) -> None:
    """commit_bytes counts what waits for the disk, not the window in flight (mostly
    acknowledged before its commit)."""
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10, max_bytes=1024 * 1024)  # commit_bytes 64 KiB
    try:
        await step(queue)
        for n in range(32):  # the window, beyond commit_bytes: acknowledgements on the way
            queue.put(TOPIC, b"%04d" % n + b"x" * 2100)
            await take(queue)
        await step(queue)
        base = queue.commits
        for n in range(10):  # delivery waits for an acknowledgement, not in take()
            now[0] += 0.01
            queue.put(TOPIC, b"new %d" % n)
            await step(queue)

        assert queue.commits - base <= 1
    finally:
        await queue.aclose()


async def test_a_journal_entry_alone_does_not_write_a_message_about_to_be_acknowledged(
    tmp_path: Path,
) -> None:
    """A journal holds samples, no one's message: its commit spares a young message in
    flight as any commit does (a snapshot's does not)."""
    now = [0.0]
    path = tmp_path / "q.db"
    queue = queue_at(path, now, commit_interval=10)
    try:
        queue.put(TOPIC, b"older")  # a commit due at 10
        older = await take(queue)
        queue.keep_state("s", lambda whole: StateWrite(journal=(b"samples",)))
        now[0] = 8.0
        queue.put(TOPIC, b"in flight")
        queue.state_changed()
        await take(queue)
        queue.release(older)  # not in flight: written at 10
        now[0] = 10.0
        await step(queue)

        assert [b"older"] == rows(path)
    finally:
        await queue.aclose()
