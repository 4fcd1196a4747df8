"""The durable queue under faults: broker outages, kill -9, a full queue, a corrupt file.

The simulated unit's registers count the reads that touch them (`SimUnit.count_reads`),
so every reading carries the number of the read it came from: what the cloud receives
must be the contiguous range of reads, nothing missing; duplicates are counted. The kill
tests run the agent as a real process (`python -m agent run`) and look into its SQLite
file, read-only, to know what was committed before the kill.

The broker runs with persistence: the cloud's session, and the messages queued for it,
survive a broker stop, so whatever is missing at the cloud was lost by the agent.
Each test prints its measurements (`pytest -rP` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
from collections import Counter
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from sim.broker import Broker, BrokerFactory
from sim.cloud import CloudClient
from sim.plant import PlantServer, SimUnit
from tests.helpers import (
    COUNTED_BUCKET,
    AgentProcess,
    count_queue,
    counting_device,
    duplicates,
    durable_agent_toml,
    numbers,
    poll_until,
    read_queue,
    reads,
    running_agent,
    runs,
)

WAIT = 30.0  # generous: every wait ends on an event or a condition well before
BUCKET = COUNTED_BUCKET
MIN_QUEUE_BYTES = 64 * 1024  # the smallest queue.max_bytes the config accepts
MAX_INFLIGHT = 32  # mqtt.max_inflight
ACK_BATCH = 32  # acknowledged messages whose deletion forces a commit (agent.outbox.disk)
KILL_AFTER = 3 * MAX_INFLIGHT  # messages into the replay when the agent is killed
KILL_POLL = 0.002  # how often the replay's progress is checked to time the kill


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """mosquitto with persistence: the cloud's session and its queued messages survive a stop."""
    return broker_factory(persistence=True)


# -- helpers ---------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def received(cloud: CloudClient) -> Counter[int]:
    return numbers(cloud.readings(BUCKET))


def queued_numbers(path: Path) -> set[int]:
    """The read numbers committed in the queue file."""
    return {n for message in read_queue(path) for n in numbers(message.readings())}


def broker_drops(broker: Broker) -> list[str]:
    """Lines where mosquitto says it dropped messages (its queue for the cloud overflowed)."""
    return [
        line
        for line in broker.log_text().splitlines()
        if "are being dropped" in line or "too large" in line.lower()
    ]


def cloud_redeliveries(broker: Broker) -> int:
    """Messages mosquitto sent the cloud again (DUP set): duplicates that are not the agent's."""
    return sum(
        1
        for line in broker.log_text().splitlines()
        if "Sending PUBLISH to app:" in line and "(d1," in line
    )


def report(test: str, **measured: object) -> None:
    print(f"\n[durability] {test}: " + ", ".join(f"{k}={v}" for k, v in measured.items()))


async def settle(wait: Awaitable[object]) -> None:
    """Await a wait that may time out: the assertions after it say what is missing."""
    with contextlib.suppress(TimeoutError):
        await wait


# -- the simulator's counting registers ---------------------------------------------------------


async def test_a_counted_register_answers_the_number_of_the_read(
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    sim_unit.count_reads("holding", 0, 2)
    client = AsyncModbusTcpClient("127.0.0.1", port=tcp_plant.port, timeout=0.3, retries=0)
    assert await client.connect()
    try:
        answers = [
            (await client.read_holding_registers(0, count=3, device_id=1)).registers
            for _ in range(3)
        ]
        beside = await client.read_holding_registers(2, count=1, device_id=1)
        await client.write_register(5, 1, device_id=1)
        sim_unit.dead = True
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=1, device_id=1)
    finally:
        client.close()

    assert [[1, 1, 0], [2, 2, 0], [3, 3, 0]] == answers
    assert [0] == beside.registers  # a read beside the counted registers counts nothing
    assert [3, 3] == sim_unit.get_registers("holding", 0, 2)  # nor a write, nor a dead unit


# -- broker outages, agent in process ---------------------------------------------------------


@pytest.mark.parametrize("outage", ["broker_restart", "broker_down_2s", "broker_hung_then_killed"])
async def test_every_reading_polled_during_a_broker_outage_arrives(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    outage: str,
) -> None:
    """The broker restarts, or is down for 2 s, or hangs (SIGSTOP) and is then killed.

    A hung broker takes messages into its socket and never acknowledges them: they are
    in flight when the connection dies, and must be sent again after the reconnect.
    """
    sim_unit.count_reads("holding", 0)
    queue_path = tmp_path / "queue.db"
    config = durable_agent_toml(
        broker, counting_device(tcp_plant), queue_path=queue_path, log_format="logfmt"
    )
    in_flight_at_kill = 0
    async with running_agent(tmp_path, config) as agent:
        await cloud.wait_for(lambda _: len(received(cloud)) >= 3, timeout=WAIT)
        if outage == "broker_hung_then_killed":
            await broker.restart_async()  # saves the cloud's session: a killed broker keeps it
            await cloud.wait_connected(timeout=WAIT)
            await agent.session.wait_connected()
            # What the broker acknowledged before it hangs is its own to deliver: the
            # cloud has all of it first (a broker killed with an acknowledged message
            # still queued for the cloud loses it; that is not the agent's to resend).
            before = reads(sim_unit)
            await cloud.wait_for(
                lambda _: set(range(1, before)) <= set(received(cloud)), timeout=WAIT
            )
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            stopped_at = reads(sim_unit)
            # One second of readings goes into the hung broker's socket, unacknowledged.
            await sim_unit.wait_until(lambda u: reads(u) >= stopped_at + 10, timeout=WAIT)
            in_flight_at_kill = agent.outbox.stats().in_flight
            await asyncio.to_thread(broker.kill)
        else:
            await broker.stop_async()
            stopped_at = reads(sim_unit)
        if outage == "broker_down_2s":
            await sim_unit.wait_until(lambda u: reads(u) >= stopped_at + 20, timeout=WAIT)
            # The outage's readings wait in the file, not in memory.
            await poll_until(
                lambda: stopped_at + 20 in queued_numbers(queue_path),
                timeout=WAIT,
                what="the outage's last reading committed",
            )
        await broker.start_async()
        await cloud.wait_connected(timeout=WAIT)
        resumed_at = reads(sim_unit)
        await sim_unit.wait_until(lambda u: reads(u) >= resumed_at + 5, timeout=WAIT)
        sim_unit.dead = True  # no more reads: the last one is the last reading
        last = reads(sim_unit)
        expected = set(range(1, last + 1))
        await settle(cloud.wait_for(lambda _: expected <= set(received(cloud)), timeout=WAIT))
        # Every message acknowledged (a resend of one the broker had before the outage may
        # still be in flight, in memory only) and the written ones deleted from the file.
        await settle(
            poll_until(
                lambda: agent.outbox.stats().depth == 0 and count_queue(queue_path) == 0,
                timeout=WAIT,
                what="every message acknowledged and deleted from the file",
            )
        )
        reconnects = agent.session.reconnects

    got = received(cloud)
    assert [] == runs(expected - set(got)), "reads that never reached the cloud"
    assert expected == set(got)
    assert [] == read_queue(queue_path), "acknowledged messages left in the queue file"
    assert reconnects >= 1
    report(
        "broker outage",
        outage=outage,
        reads=last,
        outage_reads=(stopped_at + 1, resumed_at),
        in_flight_at_kill=in_flight_at_kill,
        duplicates=duplicates(got),
        broker_redeliveries_to_cloud=cloud_redeliveries(broker),
    )


# -- kill -9, agent as a process ---------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [("kill",), ("kill", "kill", "kill"), ("term",)],
    ids=["one_kill", "three_kills", "sigterm"],
)
async def test_nothing_committed_is_lost_when_the_agent_is_killed_while_the_broker_is_down(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    faults: tuple[str, ...],
) -> None:
    """kill -9 loses at most the newest readings not yet committed; SIGTERM loses none.

    Each run is ended (kill -9, or SIGTERM for comparison) while the broker is down, then
    the agent is started once more, the broker comes up, and the unit goes silent: the
    cloud must receive every read except those a kill caught before their commit.
    """
    sim_unit.count_reads("holding", 0)
    queue_path = tmp_path / "queue.db"
    config_path = write_config(
        tmp_path,
        durable_agent_toml(
            broker,
            counting_device(tcp_plant, interval=0.1),
            queue_path=queue_path,
            queue="commit_interval = 1.0",
        ),
    )  # SIGTERM always finds something to commit
    await broker.stop_async()
    committed: set[int] = set()  # in the file after a run ended
    lost: list[set[int]] = []  # per run: read, never committed
    run_reads: list[range] = []  # per run: the reads it made
    async with AgentProcess(config_path, log_dir=tmp_path) as agent:
        for cycle, fault in enumerate(faults):
            first_read = reads(sim_unit) + 1
            on_disk_before = len(read_queue(queue_path))
            await agent.start()
            if cycle:
                opened = await agent.wait_for_event("queue_opened", timeout=WAIT)
                assert on_disk_before == opened["messages"]
            await poll_until(
                partial(_committed_from, queue_path, first_read),
                timeout=WAIT,
                what="this run committed a reading",
            )
            # End a run 0, 2, 4 reads after its first commit: at different points of the
            # commit cycle. SIGTERM comes 3 reads (0.3 s) after it, well before the next.
            end_after = reads(sim_unit) + (2 * cycle if fault == "kill" else 3)
            await sim_unit.wait_until(partial(_read_at_least, end_after), timeout=WAIT)
            if fault == "kill":
                before_end = queued_numbers(queue_path)
                await agent.kill()
            else:
                # The unit goes silent first, so that SIGTERM abandons no read in mid-request:
                # once a request goes unanswered, the one before it was answered.
                sim_unit.dead = True
                asked = len(sim_unit.requests)
                await sim_unit.wait_until(partial(_asked_more, asked), timeout=WAIT)
                before_end = queued_numbers(queue_path)
                await agent.stop()
                sim_unit.dead = False
            after_end = queued_numbers(queue_path)
            assert [] == runs(before_end - after_end), f"committed rows gone after {fault}"
            if fault == "term":
                assert after_end - before_end, "SIGTERM did not commit the pending readings"
            committed |= after_end
            # Read once the process is gone: a request it sent just before is counted.
            run_reads.append(range(first_read, reads(sim_unit) + 1))
            lost.append(set(run_reads[-1]) - after_end)

        first_read = reads(sim_unit) + 1
        on_disk_before = len(read_queue(queue_path))
        await agent.start()
        opened = await agent.wait_for_event("queue_opened", timeout=WAIT)
        await broker.start_async()
        await cloud.wait_connected(timeout=WAIT)
        await sim_unit.wait_until(lambda u: reads(u) >= first_read + 10, timeout=WAIT)
        sim_unit.dead = True
        last = reads(sim_unit)
        expected = set(range(1, last + 1)).difference(*lost)
        await settle(cloud.wait_for(lambda _: expected <= set(received(cloud)), timeout=WAIT))
        await settle(
            poll_until(
                lambda: count_queue(queue_path) == 0,
                timeout=WAIT,
                what="acknowledged messages deleted from the file",
            )
        )
        exit_status = await agent.stop()

    got = received(cloud)
    assert [] == runs(committed - set(got)), "committed before a kill, never arrived"
    assert [] == runs(expected - set(got)), "read (and not lost at a kill), never arrived"
    assert expected == set(got)
    assert on_disk_before == opened["messages"]
    for fault, polled, missing in zip(faults, run_reads, lost, strict=True):
        # Only what was not yet committed may be lost: the newest reads of the run.
        assert not missing or [(min(missing), polled[-1])] == runs(missing), runs(missing)
        assert fault == "kill" or not missing, f"SIGTERM lost {runs(missing)}"
    assert [-9 if fault == "kill" else 0 for fault in faults] == agent.returncodes[:-1]
    assert 0 == exit_status
    assert [] == read_queue(queue_path)
    report(
        "agent ended with the broker down",
        faults=faults,
        reads=last,
        committed_at_ends=len(committed),
        lost_uncommitted_per_end=[len(missing) for missing in lost],
        lost_reads=[runs(missing) for missing in lost],
        duplicates=duplicates(got),
        broker_redeliveries_to_cloud=cloud_redeliveries(broker),
    )


async def test_an_unexpected_failure_still_commits_what_the_open_batches_hold(
    tmp_path: Path,
    broker: Broker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error that stops the agent (exit 70) goes through the same teardown as SIGTERM:
    the open batches go into the queue and are committed before the process exits.
    Batches here close only after a minute and commits wait a minute: whatever is in the
    file was put there by the teardown."""
    sim_unit.count_reads("holding", 0)
    queue_path = tmp_path / "queue.db"
    config_path = write_config(
        tmp_path,
        durable_agent_toml(
            broker,
            counting_device(tcp_plant, interval=0.1),
            queue_path=queue_path,
            batch="max_delay = 60\nmax_readings = 100000",
            queue="commit_interval = 60",
        ),
    )
    await broker.stop_async()
    monkeypatch.setenv("ORIO_TEST_CRASH_AFTER", "2")  # cli.py's test-only failure
    async with AgentProcess(config_path, log_dir=tmp_path) as agent:
        await agent.start()
        status = await agent.wait()
    polled = reads(sim_unit)
    kept = queued_numbers(queue_path)
    [failed] = agent.events("agent_failed")

    assert 70 == status
    assert "RuntimeError" == failed["error_type"]
    assert polled >= 10
    assert set(range(1, polled)) <= kept, (
        f"lost at the failure: {runs(set(range(1, polled)) - kept)}"
    )


def _committed_from(queue_path: Path, first: int) -> bool:
    return max(queued_numbers(queue_path), default=0) >= first


def _read_at_least(count: int, unit: SimUnit) -> bool:
    return reads(unit) >= count


def _asked_more(count: int, unit: SimUnit) -> bool:
    return len(unit.requests) > count


async def test_duplicates_after_a_kill_during_replay_stay_within_the_in_flight_window(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    points, polls = 16, 50  # 800 one-reading messages: below mosquitto's 1000 queued per client
    sim_unit.count_reads("holding", 0, points)
    queue_path = tmp_path / "queue.db"
    config_path = write_config(
        tmp_path,
        durable_agent_toml(
            broker,
            counting_device(tcp_plant, points=points, interval=0.05),
            queue_path=queue_path,
            queue="replay_rate = 0",
            batch="max_readings = 1\nmax_delay = 0.2",
            mqtt=f"max_inflight = {MAX_INFLIGHT}",
        ),
    )
    await broker.stop_async()
    async with AgentProcess(config_path, log_dir=tmp_path) as agent:
        await agent.start()
        await sim_unit.wait_until(lambda u: reads(u) >= polls, timeout=WAIT)
        sim_unit.dead = True
        total = reads(sim_unit) * points
        await poll_until(
            lambda: count_queue(queue_path) >= total,
            timeout=WAIT,
            what=f"the backlog of {total} messages committed",
        )
        assert total == count_queue(queue_path)
        await broker.start_async()
        # Kill a few windows into the replay: as seen by the cloud, or by the file (as
        # acknowledged messages are deleted), whichever shows it first.
        await poll_until(
            lambda: (
                len(cloud.messages) >= KILL_AFTER or count_queue(queue_path) <= total - KILL_AFTER
            ),
            timeout=WAIT,
            interval=KILL_POLL,
            what="the replay under way",
        )
        at_kill = len(cloud.messages)
        await agent.kill()
        left = count_queue(queue_path)
        await agent.start()
        await cloud.wait_connected(timeout=WAIT)
        await settle(
            cloud.wait_for(
                lambda _: len(set(map(_key, cloud.readings(BUCKET)))) >= total, timeout=WAIT
            )
        )
        await settle(
            poll_until(
                lambda: count_queue(queue_path) == 0,
                timeout=WAIT,
                what="acknowledged messages deleted from the file",
            )
        )

    got = Counter(map(_key, cloud.readings(BUCKET)))
    expected = {(f"n{i}", n) for i in range(points) for n in range(1, total // points + 1)}
    assert [] == broker_drops(broker)
    assert 0 < left, "the kill came after the replay"
    assert set() == expected - set(got), "messages never arrived"
    assert expected == set(got)
    dup = duplicates(got)
    report(
        "kill -9 during replay",
        messages=total,
        left_in_file_at_kill=left,
        cloud_had_at_kill=at_kill,
        duplicates=dup,
        bound=MAX_INFLIGHT + ACK_BATCH,
        broker_redeliveries_to_cloud=cloud_redeliveries(broker),
    )
    # At most a window in flight (sent, PUBACK unseen) plus the acknowledged messages whose
    # deletion was not yet committed (ACK_BATCH - 1): 63. The broker's own redeliveries to
    # the cloud are not the agent's.
    assert dup - cloud_redeliveries(broker) <= MAX_INFLIGHT + ACK_BATCH


def _key(reading: dict[str, Any]) -> tuple[str, int]:
    return reading["id"], int(reading["value"])


# -- bounds ------------------------------------------------------------------------------------


async def test_a_full_queue_drops_exactly_the_oldest_and_counts_them(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
) -> None:
    points = 50  # one poll = one message of ~2.6 KB: 64 KiB hold about 25
    sim_unit.count_reads("holding", 0)
    queue_path = tmp_path / "queue.db"
    config_path = write_config(
        tmp_path,
        durable_agent_toml(
            broker,
            counting_device(tcp_plant, points=points, interval=0.05),
            queue_path=queue_path,
            queue=f"max_bytes = {MIN_QUEUE_BYTES}",
            batch=f"max_readings = {points}\nmax_delay = 1.0",
        ),
    )
    await broker.stop_async()
    async with AgentProcess(config_path, log_dir=tmp_path) as agent:
        await agent.start()
        await agent.wait_for_event(
            "queue_dropped_oldest", timeout=WAIT, match=lambda e: e["dropped_total"] >= 20
        )
        sim_unit.dead = True
        last = reads(sim_unit)
        await poll_until(
            lambda: last in queued_numbers(queue_path),
            timeout=WAIT,
            what="the last reading committed",
        )
        on_disk = read_queue(queue_path)
        stored = stored_bytes(queue_path)
        drops = agent.events("queue_dropped_oldest")
        dropped = drops[-1]["dropped_total"]

        await broker.start_async()
        await cloud.wait_connected(timeout=WAIT)
        await settle(
            cloud.wait_for(lambda _: len(set(received(cloud))) >= last - dropped, timeout=WAIT)
        )
        await settle(
            poll_until(
                lambda: count_queue(queue_path) == 0,
                timeout=WAIT,
                what="acknowledged messages deleted from the file",
            )
        )
        final_drops = agent.events("queue_dropped_oldest")

    # The file: exactly the newest messages, one poll each, within max_bytes.
    assert all(1 == sum(numbers(m.readings()).values()) for m in on_disk)
    assert list(range(dropped + 1, last + 1)) == [min(numbers(m.readings())) for m in on_disk]
    assert stored <= MIN_QUEUE_BYTES, "max_bytes bounds what is on disk (compressed)"
    # The log: each drop counted, a warning, the running total right.
    assert dropped == sum(e["messages"] for e in drops)
    assert {("warning", "max_bytes")} == {(e["level"], e["reason"]) for e in drops}
    assert drops == final_drops, "dropped after the broker came back"
    # The cloud: the newest contiguous range; the count says how many never arrived.
    got = received(cloud)
    never_arrived = set(range(1, last + 1)) - set(got)
    assert [(1, dropped)] == runs(never_arrived)
    assert set(range(dropped + 1, last + 1)) == set(got)
    report(
        "queue full",
        reads=last,
        dropped_logged=dropped,
        never_arrived=len(never_arrived),
        kept=len(on_disk),
        drop_events=len(drops),
        duplicates=duplicates(got),
    )


# -- a corrupt file ----------------------------------------------------------------------------


def stored_bytes(path: Path) -> int:
    """Payload bytes as stored in the file (compressed where it saved space)."""
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        return int(
            db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages").fetchone()[0]
        )


def _overwritten_page_queue(path: Path) -> None:
    """A real SQLite queue file with its third page overwritten: 'disk image is malformed'."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
        db.executemany(
            "INSERT INTO messages VALUES (?, ?, ?)",
            [(seq, "t", b"x" * 500) for seq in range(1, 200)],
        )
        db.commit()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = os.urandom(page)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garbage", "overwritten_page"])
async def test_a_corrupt_queue_file_is_moved_aside_and_publishing_goes_on(
    tmp_path: Path,
    broker: Broker,
    cloud: CloudClient,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    damage: str,
) -> None:
    queue_path = tmp_path / "queue.db"
    if damage == "garbage":
        queue_path.write_bytes(b"this is not a queue\n" * 500)
    else:
        _overwritten_page_queue(queue_path)
    corrupt = queue_path.read_bytes()
    sim_unit.set_registers("holding", 0, [7])
    config_path = write_config(
        tmp_path, durable_agent_toml(broker, counting_device(tcp_plant), queue_path=queue_path)
    )
    async with AgentProcess(config_path, log_dir=tmp_path) as agent:
        await agent.start()
        await cloud.wait_for(lambda _: bool(received(cloud)), timeout=WAIT)
        moved = agent.events("queue_corrupt_moved_aside")
        exit_status = await agent.stop()

    asides = sorted(tmp_path.glob("queue.db.corrupt-*"))
    assert 1 == len(asides), asides
    assert re.fullmatch(r"queue\.db\.corrupt-\d{8}T\d{6}Z", asides[0].name)
    assert corrupt == asides[0].read_bytes()
    assert 1 == len(moved)
    assert ("error", str(queue_path), str(asides[0])) == (
        moved[0]["level"],
        moved[0]["path"],
        moved[0]["moved_to"],
    )
    assert {7} == set(received(cloud))
    assert 0 == exit_status
    read_queue(queue_path)  # the new file is a sound SQLite database
    report(
        "corrupt file",
        damage=damage,
        moved_to=asides[0].name,
        error=json.dumps(moved[0].get("error")),
    )
