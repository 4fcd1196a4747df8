"""The queue's files against `queue.max_bytes` during a long outage.

    python -m bench.queuebound [--max-bytes 65536 16777216] [--fill 3]

Puts batches shaped like the agent's (JSON arrays of readings with random values, so
they compress as real ones do) into a `DiskOutbox` with nothing taking them, until
`--fill` times the budget has been put, committing as the agent does; after every
commit it samples what queue.db, -wal and -shm take on disk. Prints, per budget, the
peak and final size of the files, the messages kept and dropped, and the elapsed time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agent.clock import Clock
from agent.outbox.disk import DiskOutbox, QueueSettings

TOPIC = "$thing/bench/$data/b"
READINGS = 50  # per batch: one device's cycle


def batch(rng: random.Random, n: int) -> bytes:
    stamp = 1_800_000_000_000 + n * 1000
    return json.dumps(
        [
            {"id": f"p{i}", "value": round(rng.uniform(0, 500), 3), "timestamp": str(stamp)}
            for i in range(READINGS)
        ],
        separators=(",", ":"),
    ).encode()


def files_bytes(path: Path) -> int:
    """What queue.db, -wal and -shm take, from the file system (not the queue's report)."""
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal", "-shm")
        if Path(f"{path}{suffix}").exists()
    )


async def measure(max_bytes: int, fill: float, directory: Path) -> dict[str, object]:
    path = directory / f"queue-{max_bytes}.db"
    settings = QueueSettings(
        path=path, max_bytes=max_bytes, max_age=7 * 86400, replay_rate=0.0, commit_interval=3600
    )
    queue = DiskOutbox(settings, clock=Clock())
    rng = random.Random(max_bytes)
    put = peak = messages = 0
    started = time.monotonic()
    while put < fill * max_bytes * 5:  # batches shrink about 5x on disk
        payload = batch(rng, messages)
        queue.put(TOPIC, payload)
        put += len(payload)
        messages += 1
        if messages % 10 == 0:  # ten batches a commit, as at 1,000 readings/s
            await queue.flush()
            peak = max(peak, files_bytes(path))
    await queue.flush()
    stats = queue.stats()
    final = files_bytes(path)
    await queue.aclose()
    return {
        "max_bytes": max_bytes,
        "peak_files_bytes": peak,
        "peak_over_max": round(peak / max_bytes, 3),
        "final_files_bytes": final,
        "messages_put": messages,
        "kept": stats.depth,
        "dropped": stats.dropped_total,
        "payload_put_bytes": put,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bytes", type=int, nargs="+", default=[64 * 1024, 16 * 1024 * 1024])
    parser.add_argument(
        "--fill", type=float, default=3.0, help="how many times the budget to put (compressed)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orio-queuebound-") as tmp:
        for max_bytes in args.max_bytes:
            print(json.dumps(asyncio.run(measure(max_bytes, args.fill, Path(tmp)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
