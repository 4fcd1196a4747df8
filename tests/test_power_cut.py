"""Power cuts: the queue on a file system that loses every write not yet synced.

`sim.lazyfs` keeps unsynced writes in the memory of its own process; a power cut kills
the agent and that process together, and the disk then holds exactly what was fsync'ed,
as after a real power failure. The agent runs as a real process while the broker is
away (an outage: everything queues). After each cut the queue must open uncorrupted and
hold every reading older than the documented window: with `synchronous = "normal"`,
commit_interval + sync_interval (plus the batch's max_delay, which readings spend before
they are put); with "full", commit_interval + max_delay.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.broker import Broker, BrokerFactory
from sim.lazyfs import LazyFs
from sim.plant import PlantServer, SimUnit
from tests.helpers import (
    COUNTER,
    AgentProcess,
    counting_device,
    durable_agent_toml,
    numbers,
    poll_until,
    read_queue,
    reads,
)

WAIT = 30.0
COMMIT_INTERVAL = 0.5
SYNC_INTERVAL = 2.0
MAX_DELAY = 0.2
SLACK = 1.0  # seconds: scheduling on a shared machine, the poll interval
CUTS = 2


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    return broker_factory()


def stored_readings(path: Path) -> list[dict[str, Any]]:
    """Every reading the queue file holds (its WAL applied), after an integrity check; none
    when the cut took even the table (nothing had been synced)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert "ok" == db.execute("PRAGMA integrity_check").fetchone()[0]
    return [reading for message in read_queue(path) for reading in message.readings()]


def served(count: int) -> Callable[[SimUnit], bool]:
    """Whether a unit has answered `count` reads: a condition for `SimUnit.wait_until`."""
    return lambda unit: reads(unit) >= count


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_a_power_cut_loses_only_readings_younger_than_the_documented_window(
    tmp_path: Path,
    broker: Broker,
    sim_unit: SimUnit,
    tcp_plant: PlantServer,
    lazyfs: LazyFs,
    synchronous: str,
) -> None:
    sim_unit.count_reads("holding", 0)
    queue_path = lazyfs.mountpoint / "queue.db"
    config = tmp_path / "agent.toml"
    config.write_text(
        durable_agent_toml(
            broker,
            counting_device(tcp_plant, interval=0.05),
            queue_path=queue_path,
            batch=f"max_delay = {MAX_DELAY}",
            queue=f'synchronous = "{synchronous}"\ncommit_interval = {COMMIT_INTERVAL}\n'
            f"sync_interval = {SYNC_INTERVAL}",
        )
    )
    await broker.stop_async()  # an outage: the readings stay in the queue
    window = COMMIT_INTERVAL + MAX_DELAY + SLACK + (SYNC_INTERVAL if synchronous == "normal" else 0)
    measured = []
    lost_earlier: set[int] = set()  # the newest readings of an earlier cut
    async with AgentProcess(config, log_dir=tmp_path) as agent:
        for cut in range(CUTS):
            await agent.start()
            await agent.wait_for_event("agent_started", timeout=WAIT)
            start = reads(sim_unit)
            # A few seconds of readings, several syncs' worth, then the cut.
            await sim_unit.wait_until(served(start + 60), timeout=WAIT)
            await agent.kill()
            cut_ms = time.time() * 1000
            stats = lazyfs.power_cut()
            lazyfs.start()
            await poll_until(queue_path.exists, timeout=WAIT, what="the queue file after the cut")
            readings = stored_readings(queue_path)
            kept = set(numbers(readings))
            times = {int(r["value"]): int(r["timestamp"]) for r in readings if r["id"] == COUNTER}
            last = reads(sim_unit)
            newest_kept = max(kept, default=0)
            missing_old = sorted(
                n for n in range(1, newest_kept + 1) if n not in kept and n not in lost_earlier
            )
            lost_earlier |= set(range(newest_kept + 1, last + 1))
            lost = last - newest_kept
            age_of_newest = (cut_ms - times[newest_kept]) / 1000 if kept else None
            measured.append(
                {
                    "cut": cut + 1,
                    "reads": last,
                    "lost_newest": lost,
                    "newest_kept_age_s": round(age_of_newest, 2) if age_of_newest else None,
                    "unsynced_bytes_dropped": stats.unsynced_bytes,
                }
            )
            assert [] == missing_old, "a power cut lost readings older than others it kept"
            assert age_of_newest is not None, "nothing queued survived the cut"
            assert age_of_newest <= window, (
                f"the newest reading that survived the cut was {age_of_newest:.2f} s old;"
                f" the window for synchronous={synchronous} is {window} s"
            )
    print(f"\n[power cut] synchronous={synchronous}: window={window}s {measured}")
