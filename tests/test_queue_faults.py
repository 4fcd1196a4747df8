"""The durable queue under the faults gateways meet: a full disk, a disk that stops taking
writes, a long backlog, messages that age out during an outage.

The disks are real: small tmpfs mounts made by the test (it runs as root, as CI does),
filled with a file while the agent runs, and `sim.lazyfs`, a FUSE file system that can
fail every write with a chosen errno while the queue keeps its files open. The simulated unit counts
its reads (`SimUnit.count_reads`), so every reading carries the number of the read it came
from and the cloud side can tell exactly what arrived, what is missing and what came twice.
Each test prints its measurements (`pytest -rP` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.clock import Clock
from agent.outbox.disk import DiskOutbox, QueueSettings
from agent.outbox.port import Message
from sim.broker import Broker, BrokerFactory
from sim.cloud import CloudClient
from sim.lazyfs import LazyFs
from sim.plant import PlantServer, SimUnit
from tests.helpers import (
    COUNTED_BUCKET,
    COUNTER,
    counting_device,
    duplicates,
    durable_agent_toml,
    numbers,
    poll_until,
    read_queue,
    reads,
    running_agent,
    running_queue,
)

WAIT = 30.0  # generous: every wait ends on an event or a condition well before
BUCKET = COUNTED_BUCKET
TOPIC = "$thing/xY6Eie5hv/$data/b"


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """mosquitto with persistence: the cloud's queued messages survive a broker stop."""
    return broker_factory(persistence=True)


class SmallDisk:
    """A tmpfs of a few MiB mounted for one test: fill it, free it."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._filler = path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
            check=True,
        )

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

    def fill(self) -> int:
        """Write a file until the disk is full; the bytes it took."""
        written = 0
        chunk = b"\0" * 4096
        with self._filler.open("ab", buffering=0) as out:
            while True:
                try:
                    written += out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return written

    def free(self) -> None:
        self._filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", 2 * 1024 * 1024)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()


def received(cloud: CloudClient) -> Counter[int]:
    return numbers(cloud.readings(BUCKET))


def report(test: str, **measured: object) -> None:
    print(f"\n[queue faults] {test}: " + ", ".join(f"{k}={v}" for k, v in measured.items()))


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- a full disk --------------------------------------------------------------------------------


async def test_a_full_disk_during_an_outage_keeps_the_agent_up_and_live_data_flowing(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    small_disk: SmallDisk,
) -> None:
    """The disk fills while the broker is away: the agent stays up, drops the oldest,
    delivers what is made after it filled, and once space returns, a restart resends
    nothing the broker had acknowledged."""
    sim_unit.count_reads("holding", 0)
    queue_path = small_disk.path / "queue.db"
    config = durable_agent_toml(
        broker,
        counting_device(tcp_plant, interval=0.02, points=40),
        queue_path=queue_path,
        batch="max_delay = 0.1",
        log_format="logfmt",
    )
    with capture_logs() as logs:
        async with running_agent(tmp_path, config) as agent:
            await cloud.wait_for(lambda _: len(received(cloud)) >= 3, timeout=WAIT)
            await broker.stop_async()
            await poll_until(
                lambda: agent.outbox.stats().depth >= 50,
                timeout=WAIT,
                what="an outage's worth of messages queued",
            )
            filled = await asyncio.to_thread(small_disk.fill)
            await poll_until(
                lambda: events(logs, "queue_disk_full") or events(logs, "queue_disk_failed"),
                timeout=WAIT,
                what="the agent noticing the full disk",
            )
            full_at = reads(sim_unit)
            # Two more seconds of readings on the full disk, then the broker returns.
            await sim_unit.wait_until(lambda u: reads(u) >= full_at + 100, timeout=WAIT)
            await broker.start_async()
            await cloud.wait_connected(timeout=WAIT)
            back_at = reads(sim_unit)
            # Checked every 0.1 s, not at each of the many messages arriving: a check
            # counts every reading so far, and at each arrival it would starve the loop
            # the agent and the simulated unit share (its requests then time out).
            await poll_until(
                lambda: max(received(cloud), default=0) >= back_at + 50,
                timeout=WAIT,
                what="live readings after the broker came back",
                interval=0.1,
            )
            await asyncio.to_thread(small_disk.free)
            await poll_until(
                lambda: agent.outbox.stats().disk == "ok" and agent.outbox.stats().backlog == 0,
                timeout=WAIT,
                what="the queue drained with the disk back",
            )
            sim_unit.dead = True
            last = reads(sim_unit)
            with contextlib.suppress(TimeoutError):  # the assertions say what is missing
                await poll_until(
                    lambda: set(range(full_at, last + 1)) <= set(received(cloud)),
                    timeout=WAIT,
                    what="every reading made after the disk filled",
                    interval=0.1,
                )
            # A batch still open (the last read's readings past max_readings, without the
            # counter the cloud waited for) is not in the queue yet: the stop would queue
            # it unsent, and it would rightly stay in the file. All batched, all acked.
            await poll_until(
                lambda: agent.batcher.open_readings == 0 and agent.outbox.stats().depth == 0,
                timeout=WAIT,
                what="every reading batched, queued and acknowledged",
            )
            stats = agent.outbox.stats()
        first_run = received(cloud)
        live_from_full = set(range(full_at, last + 1)) - set(first_run)
        left_on_disk = read_queue(queue_path)

    # A restart resends nothing the broker had: new readings arrive, old ones do not.
    last = max(first_run)
    sim_unit.dead = False
    async with running_agent(tmp_path, config):
        await cloud.wait_for(lambda _: max(received(cloud)) > last + 5, timeout=WAIT)
    again = received(cloud)
    resent = sum(again[n] - first_run[n] for n in first_run)

    queue_lines = [e for e in logs if e["event"].startswith("queue_")]
    assert [] == sorted(live_from_full), "readings made after the disk filled that never arrived"
    assert 0 < stats.dropped_total, "the oldest were dropped to make room"
    assert [] == left_on_disk, "acknowledged messages left in the file"
    assert 0 == resent
    assert len(queue_lines) < 50, f"{len(queue_lines)} queue log lines: one per change of state"
    report(
        "full disk",
        filler_bytes=filled,
        reads=reads(sim_unit),
        delivered=len(first_run),
        dropped=stats.dropped_total,
        duplicates=duplicates(first_run),
        resent_after_restart=resent,
        queue_log_lines=len(queue_lines),
        log_events=dict(Counter(e["event"] for e in queue_lines)),
    )


# -- flash writes while connected -----------------------------------------------------------


async def test_readings_the_broker_acknowledges_in_time_are_never_written_and_an_outage_is(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    """With the broker up, each message is acknowledged long before its commit would
    write it: the file gets no message at all (flash wear). With the broker away, every
    message is written as before, and deleted once the broker has it."""
    sim_unit.count_reads("holding", 0)
    queue_path = tmp_path / "queue.db"
    config = durable_agent_toml(
        broker,
        counting_device(tcp_plant, interval=0.05),
        queue_path=queue_path,
        queue="commit_interval = 2.0",  # 1 s for each acknowledgement: never late, even here
    )
    async with running_agent(tmp_path, config) as agent:
        # What was read before the connection came up was written, and then deleted.
        await cloud.wait_for(lambda _: len(received(cloud)) >= 10, timeout=WAIT)
        await poll_until(
            lambda: agent.outbox.stats().depth == 0 and not read_queue(queue_path),
            timeout=WAIT,
            what="the readings made before the connection delivered",
        )
        commits_before = agent.outbox.stats().commits
        sent_before = agent.outbox.stats().sent_total
        await cloud.wait_for(lambda _: len(received(cloud)) >= 90, timeout=WAIT)
        commits_connected = agent.outbox.stats().commits  # (stats() is updated in place)
        sent_connected = agent.outbox.stats().sent_total - sent_before
        on_disk_connected = read_queue(queue_path)
        await broker.stop_async()
        await poll_until(
            lambda: len(read_queue(queue_path)) >= 5,
            timeout=WAIT,
            what="the outage's messages written to the file",
        )
        await broker.start_async()
        await cloud.wait_connected(timeout=WAIT)
        sim_unit.dead = True
        last = reads(sim_unit)
        await poll_until(
            lambda: (
                set(range(1, last + 1)) <= set(received(cloud))
                and agent.batcher.open_readings == 0
                and agent.outbox.stats().depth == 0
            ),
            timeout=WAIT,
            what="every reading delivered after the outage",
            interval=0.1,
        )
        with contextlib.suppress(TimeoutError):  # the assertion says what is left
            await poll_until(
                lambda: not read_queue(queue_path),
                timeout=WAIT,
                what="the delivered messages deleted by the next commit",
            )
        commits_after = agent.outbox.stats().commits
        on_disk_after = read_queue(queue_path)

    assert [] == on_disk_connected
    assert commits_before == commits_connected, "a message acknowledged in time was written"
    assert 10 <= sent_connected  # messages of several readings each
    assert commits_connected < commits_after
    assert [] == on_disk_after, "delivered messages left in the file"
    report(
        "flash writes",
        sent_connected=sent_connected,
        commits_connected=commits_connected - commits_before,
        commits_after_outage=commits_after - commits_connected,
        reads=last,
    )


# -- a disk that stops taking writes --------------------------------------------------------------


def queue_settings(path: Path, **overrides: Any) -> QueueSettings:
    values: dict[str, Any] = {
        "path": path,
        "max_bytes": 1024 * 1024,
        "max_age": 3600.0,
        "replay_rate": 0.0,
        "commit_interval": 0.05,
    }
    values.update(overrides)
    return QueueSettings(**values)


def queue_running(path: Path, **overrides: Any) -> AbstractAsyncContextManager[DiskOutbox]:
    return running_queue(queue_settings(path, **overrides), clock=Clock())


async def take(queue: DiskOutbox) -> Message:
    return await asyncio.wait_for(queue.take(), WAIT)


@pytest.mark.parametrize("error", [errno.EIO, errno.EROFS], ids=["io_error", "read_only"])
async def test_a_disk_that_stops_taking_writes_delivers_from_memory_and_resends_nothing_after(
    lazyfs: LazyFs,
    error: int,
) -> None:
    """The disk fails every write while the queue runs (a dying SD card, a file system
    remounted read-only): delivery goes on from memory, and once the disk takes writes
    again, what the broker acknowledged meanwhile is deleted, the rest written."""
    path = lazyfs.mountpoint / "queue.db"
    with capture_logs() as logs:
        async with queue_running(path) as queue:
            for n in range(5):
                queue.put(TOPIC, b"before-%d" % n)
            sent = [await take(queue) for _ in range(2)]
            for message in sent:
                queue.ack(message)
            await queue.flush()
            lazyfs.fail_writes(error)
            for n in range(5):
                queue.put(TOPIC, b"during-%d" % n)
            await poll_until(
                lambda: queue.stats().disk != "ok", timeout=WAIT, what="the write failing"
            )
            during = [await take(queue) for _ in range(8)]  # 3 from the file, 5 from memory
            for message in during[:6]:
                queue.ack(message)
            lazyfs.fail_writes(None)
            await poll_until(
                lambda: queue.stats().disk == "ok", timeout=WAIT, what="the disk recovered"
            )
            await queue.flush()
            depth = queue.stats().depth

    left = [m.payload for m in read_queue(path)]
    assert [b"before-0", b"before-1"] == [m.payload for m in sent]
    assert {
        b"before-2",
        b"before-3",
        b"before-4",
        b"during-0",
        b"during-1",
        b"during-2",
        b"during-3",
        b"during-4",
    } == {m.payload for m in during}
    assert sorted(m.payload for m in during[6:]) == sorted(left), (
        "only what was never acknowledged stays in the file"
    )
    assert 2 == depth
    failed, recovered = events(logs, "queue_disk_failed"), events(logs, "queue_disk_recovered")
    assert (1, 1) == (len(failed), len(recovered)), "one line per change of state"
    assert "QueueIOError" == failed[0]["error"]  # SQLite says SQLITE_IOERR_WRITE for both


async def test_the_status_line_says_while_the_queue_disk_fails(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    lazyfs: LazyFs,
) -> None:
    """systemctl status shows a failing queue disk, and stops showing it once it recovers;
    the readings flow throughout."""
    sim_unit.count_reads("holding", 0)
    config = durable_agent_toml(
        broker,
        counting_device(tcp_plant, interval=0.1),
        queue_path=lazyfs.mountpoint / "queue.db",
        log_format="logfmt",
    )
    async with running_agent(tmp_path, config) as agent:
        await cloud.wait_for(lambda _: len(received(cloud)) >= 3, timeout=WAIT)
        lazyfs.fail_writes(errno.EIO)
        await poll_until(
            lambda: "queue disk failing" in agent.status_line(),
            timeout=WAIT,
            what="STATUS= showing the failing disk",
        )
        failing = agent.status_line()
        during = reads(sim_unit)
        await cloud.wait_for(lambda _: max(received(cloud)) >= during + 5, timeout=WAIT)
        lazyfs.fail_writes(None)
        await poll_until(
            lambda: "queue disk" not in agent.status_line(),
            timeout=WAIT,
            what="STATUS= back to normal",
        )

    assert failing.startswith("connected; queue ")
    assert "QueueIOError" not in failing  # the error's text, not its type
    # SQLite's, when a message was due for writing; the WAL's sync's, when the broker
    # had acknowledged everything before its commit
    assert "SQLITE_IOERR" in failing or "cannot sync the WAL: Input/output error" in failing


async def test_a_disk_full_from_the_start_still_delivers_and_keeps_what_fits(
    small_disk: SmallDisk,
) -> None:
    """Full before the queue's first byte: messages go from memory; nothing raises."""
    path = small_disk.path / "queue.db"
    small_disk.fill()
    with capture_logs() as logs:
        async with queue_running(path) as queue:
            for n in range(20):
                queue.put(TOPIC, b"%d" % n)
            taken = [await take(queue) for _ in range(20)]
            for message in taken:
                queue.ack(message)
            assert 0 == queue.stats().depth
    assert [b"%d" % n for n in range(20)] == [m.payload for m in taken]
    assert events(logs, "queue_disk_failed") or events(logs, "queue_open_failed")


# -- live data behind a long backlog ---------------------------------------------------------------


def backlog_file(path: Path, thing_id: str, messages: int, *, made_ms: int) -> None:
    """A queue file holding `messages` old batches, as an outage would leave it."""
    db_settings = queue_settings(path, max_bytes=256 * 1024 * 1024)

    async def fill() -> None:
        queue = DiskOutbox(db_settings, clock=Clock(wall_ms=lambda: made_ms))
        for n in range(messages):
            queue.put(
                f"$thing/{thing_id}/$data/{BUCKET}",
                json.dumps([{"id": "old", "value": n, "timestamp": str(made_ms)}]).encode(),
            )
        await queue.aclose()

    asyncio.run(fill())


async def test_live_readings_arrive_at_once_behind_a_backlog_of_6000_messages(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    sim_unit.count_reads("holding", 0)
    queue_path = tmp_path / "queue.db"
    made_ms = int(time.time() * 1000) - 600_000  # a ten-minute outage ago
    await asyncio.to_thread(backlog_file, queue_path, broker.thing_id, 6000, made_ms=made_ms)
    config = durable_agent_toml(
        broker,
        counting_device(tcp_plant, interval=0.1),
        queue_path=queue_path,
        queue="replay_rate = 50",
        log_format="logfmt",
    )
    async with running_agent(tmp_path, config) as agent:
        await cloud.wait_for(lambda _: len(received(cloud)) >= 50, timeout=WAIT)
        backlog_left = agent.outbox.stats().backlog
    latencies = []
    for message, arrived in zip(cloud.messages, cloud.arrivals, strict=True):
        for reading in json.loads(message.payload):
            if reading["id"] == COUNTER:
                latencies.append(arrived - int(reading["timestamp"]) / 1000)
    old = sum(1 for r in cloud.readings(BUCKET) if r["id"] == "old")
    latencies.sort()

    assert max(latencies) < 2.0, f"live readings waited up to {max(latencies):.2f} s"
    assert old < 6000, "the backlog fills in behind, at its rate"
    assert backlog_left > 4000
    report(
        "live behind a backlog",
        backlog=6000,
        live_readings=len(latencies),
        latency_p50_s=round(latencies[len(latencies) // 2], 3),
        latency_max_s=round(latencies[-1], 3),
        backlog_sent=old,
    )


# -- max_age at the reconnect ------------------------------------------------------------------------


async def test_readings_older_than_max_age_at_the_reconnect_are_not_delivered(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    sim_unit.count_reads("holding", 0)
    config = durable_agent_toml(
        broker,
        counting_device(tcp_plant, interval=0.1),
        queue_path=tmp_path / "queue.db",
        queue="max_age = 2",
        log_format="logfmt",
    )
    with capture_logs() as logs:
        async with running_agent(tmp_path, config):
            await cloud.wait_for(lambda _: len(received(cloud)) >= 3, timeout=WAIT)
            await broker.stop_async()
            down_at = reads(sim_unit)
            await sim_unit.wait_until(lambda u: reads(u) >= down_at + 40, timeout=WAIT)  # 4 s
            await broker.start_async()
            reconnected = time.time()
            await cloud.wait_connected(timeout=WAIT)
            back_at = reads(sim_unit)
            with contextlib.suppress(TimeoutError):  # the assertion says what is missing
                await cloud.wait_for(
                    lambda _: set(range(back_at, back_at + 10)) <= set(received(cloud)),
                    timeout=WAIT,
                )
    stale = [
        r
        for r in cloud.readings(BUCKET)
        if int(r["timestamp"]) / 1000 < reconnected - 2 - 1.0 and int(r["value"]) > down_at
    ]
    dropped = sum(
        e["messages"] for e in events(logs, "queue_dropped_oldest") if e["reason"] == "max_age"
    )

    assert [] == stale, "readings older than max_age when they were handed to delivery"
    assert dropped > 0
    assert set(range(back_at, back_at + 10)) <= set(received(cloud)), "fresh data arrives"
    report("max_age at the reconnect", outage_reads=back_at - down_at, dropped=dropped)


@pytest.fixture(autouse=True)
def _no_stray_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            if str(tmp_path) in line.split()[1]:
                subprocess.run(["umount", "-l", line.split()[1]], check=False)


async def test_stopping_while_the_disk_fails_says_what_is_lost_and_does_not_hang(
    lazyfs: LazyFs,
) -> None:
    """The agent stopped while every write fails: the messages only memory holds are
    counted in one error line, and closing the file returns."""
    path = lazyfs.mountpoint / "queue.db"
    with capture_logs() as logs:
        async with queue_running(path) as queue:
            queue.put(TOPIC, b"kept")
            await queue.flush()
            lazyfs.fail_writes(errno.EIO)
            for n in range(3):
                queue.put(TOPIC, b"only-in-memory-%d" % n)
            async with asyncio.timeout(WAIT):
                await queue.aclose()
        lazyfs.fail_writes(None)

    [unsaved] = events(logs, "queue_unsaved_at_stop")
    assert 3 == unsaved["messages"]
    assert [b"kept"] == [m.payload for m in read_queue(path)]
