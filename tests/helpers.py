"""Running the agent inside a test: a config written for the test's broker and devices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from agent.clock import Clock
from agent.config import load_config
from agent.outbox.disk import DiskOutbox, QueueSettings, unpack_payload
from agent.service.agent import Agent
from sim.broker import Broker
from sim.plant import PlantServer, SimUnit

STOP_TIMEOUT = 30.0


def agent_toml(
    broker: Broker,
    body: str,
    *,
    batch: str = "max_delay = 0.2",
    queue_path: Path | str = ":memory:",
    queue: str = "",
    mqtt: str = "",
    log_format: str = "logfmt",
    control: str = "enabled = false",
) -> str:
    """A whole config file: the broker's thing, plain MQTT on loopback, then `body`.
    The control channel is off unless `control` says otherwise (its default socket is
    the service's, in /run)."""
    return f"""
[thing]
id = "{broker.thing_id}"
secret = "{broker.thing_secret}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
tls = false
backoff_min = 0.2
backoff_max = 1.0
{mqtt}

[queue]
path = "{queue_path}"
{queue}

[batch]
{batch}

[log]
level = "debug"
format = "{log_format}"

[control]
{control}
{body}
"""


def tcp_connection(plant: PlantServer, devices: str, *, name: str = "plc", extra: str = "") -> str:
    """A `[[modbus]]` TCP connection to a simulated plant, with its devices' TOML."""
    return f"""
[[modbus]]
name = "{name}"
transport = "tcp"
host = "127.0.0.1"
port = {plant.port}
timeout = 0.5
{extra}
{devices}
"""


def device(
    *,
    interval: float,
    name: str = "meter1",
    bucket: str = "b",
    points: str = '{ id = "v", address = "40001" }',
    extra: str = "",
) -> str:
    """One `[[modbus.devices]]` unit 1; `points` is the inside of its points array."""
    return f"""
  [[modbus.devices]]
  name = "{name}"
  unit = 1
  interval = {interval}
  bucket = "{bucket}"
{extra}
  points = [ {points} ]
"""


@asynccontextmanager
async def running_agent(
    tmp_path: Path, text: str, *, clock: Clock | None = None
) -> AsyncIterator[Agent]:
    """The agent running in this event loop; stopped (SIGTERM's path) on exit."""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    agent = Agent(load_config(path), clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent")
    try:
        yield agent
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not done:
            for other in asyncio.all_tasks():  # where shutdown is stuck, for the failure report
                other.print_stack(file=sys.stdout)
            task.cancel()
            raise AssertionError(f"the agent did not stop within {STOP_TIMEOUT} s")
        task.result()


# -- a unit that counts its reads ------------------------------------------------------------

COUNTED_BUCKET = "b"
COUNTER = "n0"  # the point on holding register 0, which counts the unit's reads


def counting_device(plant: PlantServer, *, interval: float = 0.1, points: int = 1) -> str:
    """One unit whose points `n0 .. n<points-1>` are holding registers 0.., read in one
    request; with `SimUnit.count_reads`, n0 carries the number of the read it came from."""
    ids = ", ".join(f'{{ id = "n{i}", table = "holding", address = {i} }}' for i in range(points))
    return tcp_connection(
        plant,
        device(interval=interval, bucket=COUNTED_BUCKET, points=ids, extra="  backoff_max = 0.5"),
    )


def reads(unit: SimUnit) -> int:
    """How many reads the unit has answered (its counting register)."""
    return unit.get_registers("holding", 0)[0]


def numbers(readings: Iterable[dict[str, Any]], point: str = COUNTER) -> Counter[int]:
    """The read numbers carried by `point`'s readings, with how often each was seen."""
    return Counter(int(r["value"]) for r in readings if r["id"] == point)


def duplicates(counts: Counter[Any]) -> int:
    return sum(count - 1 for count in counts.values())


def runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """`{1, 2, 3, 7, 8}` as `[(1, 3), (7, 8)]`: readable sets in failure messages."""
    spans: list[tuple[int, int]] = []
    for value in sorted(values):
        if spans and value == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], value)
        else:
            spans.append((value, value))
    return spans


# -- the durable queue and the agent as a real process ------------------------------------


@asynccontextmanager
async def running_queue(
    settings: QueueSettings, *, clock: Clock, loop_time: Callable[[], float] | None = None
) -> AsyncIterator[DiskOutbox]:
    """A DiskOutbox with its task running, as the service runs it; closed (committing
    what is pending) on exit."""
    queue = DiskOutbox(settings, clock=clock, loop_time=loop_time)
    task = asyncio.create_task(queue.run(), name="queue")
    try:
        yield queue
    finally:
        await queue.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


POLL_INTERVAL = 0.02  # how often conditions without an event (files, logs) are re-checked
REPO_ROOT = Path(__file__).resolve().parent.parent


def durable_agent_toml(
    broker: Broker,
    body: str,
    *,
    queue_path: Path,
    queue: str = "",
    batch: str = "max_delay = 0.2",
    mqtt: str = "",
    log_format: str = "json",
) -> str:
    """`agent_toml` with the durable SQLite queue at `queue_path` and JSON logs."""
    return agent_toml(
        broker,
        body,
        batch=batch,
        queue_path=queue_path,
        queue=queue,
        mqtt=mqtt,
        log_format=log_format,
    )


class QueuedMessage(NamedTuple):
    seq: int
    topic: str
    payload: bytes

    def readings(self) -> list[dict[str, Any]]:
        decoded = json.loads(self.payload)
        assert isinstance(decoded, list)
        return decoded


def read_queue(path: Path) -> list[QueuedMessage]:
    """The messages committed in a queue file, oldest first; read-only, never writes to it."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute(
                "SELECT seq, topic, payload, codec FROM messages ORDER BY seq"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the agent is creating it right now
                return []
            raise
    return [
        QueuedMessage(int(seq), str(topic), unpack_payload(payload, codec))
        for seq, topic, payload, codec in rows
    ]


def count_queue(path: Path) -> int:
    """How many messages a queue file holds (cheaper than `read_queue`)."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise


async def poll_until(
    condition: Callable[[], object],
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline goes into the error message
    what: str,
    interval: float = POLL_INTERVAL,
) -> None:
    """Re-check `condition` every `interval` until it is true; for things with no event."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - files and logs have no event to await
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"still not true after {timeout} s: {what}") from None


class AgentProcess:
    """`python -m agent run --config PATH` as a real process, killable with SIGKILL.

    Each start writes its stdout (the JSON log) to `agent-<run>.log` in `log_dir` and its
    stderr to `agent-<run>.stderr`. `events()` reads every run's JSON lines, oldest first.
    Used as an async context manager, a process still running at the end is killed.
    """

    def __init__(self, config_path: Path, *, log_dir: Path) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.runs = 0
        self.returncodes: list[int] = []
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_path(self, run: int) -> Path:
        return self.log_dir / f"agent-{run}.log"

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("the agent is already running")
        self.runs += 1
        env = {key: value for key, value in os.environ.items() if not key.startswith("ORIO_AGENT_")}
        env["PYTHONUNBUFFERED"] = "1"
        with (
            self.log_path(self.runs).open("wb") as out,
            (self.log_dir / f"agent-{self.runs}.stderr").open("wb") as err,
        ):
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO_ROOT,
                env=env,
            )

    async def kill(self) -> None:
        """SIGKILL (kill -9) and reap: no shutdown code runs in the agent."""
        process = self._running_process()
        process.kill()
        self.returncodes.append(await process.wait())

    async def wait(self, *, timeout: float = STOP_TIMEOUT) -> int:  # noqa: ASYNC109 - a default
        """Until the agent exits by itself: its exit status."""
        process = self._running_process()
        async with asyncio.timeout(timeout):
            code = await process.wait()
        self.returncodes.append(code)
        return code

    async def stop(self, *, timeout: float = STOP_TIMEOUT) -> int:  # noqa: ASYNC109 - a default
        """SIGTERM and wait for the exit status."""
        process = self._running_process()
        process.terminate()
        async with asyncio.timeout(timeout):
            code = await process.wait()
        self.returncodes.append(code)
        return code

    def events(self, event: str | None = None, *, run: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (all runs, or one), optionally only those of one event."""
        found: list[dict[str, Any]] = []
        for number in range(1, self.runs + 1) if run is None else (run,):
            try:
                text = self.log_path(number).read_text(errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                if not line.startswith("{"):
                    continue  # the standard library's lines (library warnings) are not JSON
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by kill -9
                    record = json.loads(line)
                    if event is None or record.get("event") == event:
                        found.append(record)
        return found

    async def wait_for_event(
        self,
        event: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline goes into the error message
        match: Callable[[dict[str, Any]], bool] | None = None,
        run: int | None = None,
    ) -> dict[str, Any]:
        """The first log line of `event` (in `run`, by default the current one) matching."""
        run = self.runs if run is None else run
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            if not self.running:
                raise AssertionError(
                    f"the agent exited while waiting for {event!r}: "
                    f"{self.returncodes}; stderr: {self.stderr_tail()}"
                )
            found[:] = [r for r in self.events(event, run=run) if match is None or match(r)]
            return bool(found)

        await poll_until(seen, timeout=timeout, what=f"agent log event {event!r}")
        return found[0]

    def stderr_tail(self, lines: int = 20) -> str:
        path = self.log_dir / f"agent-{self.runs}.stderr"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    async def __aenter__(self) -> AgentProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.running:
            await self.kill()

    def _running_process(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is None or process.returncode is not None:
            raise RuntimeError("the agent is not running")
        return process
