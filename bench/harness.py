"""Benchmarks, one command each: ``python -m bench.harness SCENARIO [options]``.

A run starts, on loopback only: mosquitto (:mod:`sim.broker`), the simulated plant in its
own process (:mod:`bench.plant`), the subscriber in this process (:mod:`bench.subscriber`)
and the agent as a subprocess (``orio-agent run --config ...``) with a config written for
them. After a warm-up it measures the agent for a window: CPU, memory and disk writes from
/proc, requests/s from the plant's counters, readings delivered and their latency from the
subscriber. Then it stops the agent with SIGTERM, waits for the tail of the data, prints a
table and writes JSON (bench/results/SCENARIO.json unless --json says otherwise).

Scenarios (see bench/README.md for what each figure means):

- ``workload``: 20 Modbus TCP units x 50 float32 points every 1 s (1,000 points).
- ``ceiling``: 20 units x 125 uint16 points back to back (every 0.001 s): as many
  readings/s as the agent takes.
- ``rtu``: one RTU line, 2 units x 10 registers as fast as the agent polls, at 9600, 19200
  and 115200 baud, over a bare pty and over a pty whose far end answers at the line's speed.
- ``smoke``: 2 units x 10 points for 10 s; exits non-zero when nothing was delivered or
  the agent crashed (for CI).
- ``backlog``: the ``ceiling`` plant, the broker stopped until 1,000,000 readings are queued
  (``--readings``), the plant then paused; the broker started again and the time until the
  subscriber has all of them measured (queue replay unlimited), with the agent's CPU,
  peak memory and disk writes during that drain.
- ``compare``: the bare reference poller (:mod:`bench.bare`) and the agent, one after the
  other, on the same plant at several scales, several rounds each (:mod:`bench.compare`,
  its own options: ``compare --help``).
- ``soak``: the ``workload`` for a long time (30 min by default) with the broker restarted
  every 180 s (``--restart-every``, down ``--outage`` s each time); the agent's memory
  sampled every 5 s, and after the warm-up its slope by least squares (MB/hour) and its
  growth (:mod:`bench.soak`), besides the readings delivered and lost.

Exit status: 0, or 1 when in some run the agent crashed or nothing was delivered.
Benchmarks are not tests: no figure is compared with a target here.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import pstats
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.outbox.disk import unpack_payload
from bench import line, procfs, soak, values
from bench.plant import PlantSpec
from bench.subscriber import PointState, Subscriber
from sim.broker import Broker, find_binary
from sim.pty import PtyPair

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
RUNS_DIR = REPO / "run" / "bench"
BUCKET = "bench"
HEALTH_BUCKET = "bench_health"
HEALTH_INTERVAL = 5.0  # the agent's own telemetry: where a commit count will come from
BUSY_WARNING = 20.0  # % of all cores busy before a run: its figures will be disturbed

START_TIMEOUT = 30.0  # plant ready, check-config, subscriber connected
STOP_TIMEOUT = 30.0  # the agent's orderly stop (it gives delivery up to 5 s)
CHILD_STOP_TIMEOUT = 10.0
ABORT_TIMEOUT = 5.0  # for the stack dump, before SIGKILL
TAIL_QUIET = 1.5  # seconds without a message: the tail has arrived
TAIL_LIMIT = 15.0
SAMPLE_PERIOD = 1.0  # /proc samples of the agent during the window
PROCESS_PERIOD = 0.25  # the subscriber checks what arrived this often
SETTLE_MARGIN = 2.0  # after the window, beyond batch.max_delay, before the SIGTERM
OUTAGE_LIMIT = 600.0  # backlog: the longest the plant is polled with the broker down
OUTAGE_POLL = 0.2  # backlog: the plant's counters are read this often meanwhile
QUEUE_SETTLE_LIMIT = 30.0  # backlog: for the agent to have batched and committed it all
QUEUE_COMMIT_INTERVAL = 0.5  # the agent's default queue.commit_interval
DRAIN_POLL = 0.1  # backlog: RSS samples and the end-of-drain check, this often
CONNECT_POLL = 0.005  # backlog: until the agent has reconnected to the broker
DRAIN_QUIET = 0.3  # backlog: the queue holds no data and nothing arrived for this long: over
DRAIN_GIVE_UP = 5.0  # backlog: nothing arrived for this long once the drain began: over
LOG_TAIL_LINES = 20
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
MIB = 1024 * 1024

log = logging.getLogger("bench")


# -- scenarios ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """The plant and the agent's view of it."""

    transport: Literal["tcp", "rtu"]
    units: int
    points: int  # per unit, consecutive holding registers from 0
    kind: values.Kind
    interval: float
    baudrate: int = 0  # rtu
    emulate_line: bool = False  # rtu: the plant answers at the line's speed
    # "aggregates": a one-minute avg/min/max on every point; "derived": DERIVED_POINTS
    # derived points; "both"; "": neither.
    computations: str = ""
    units_per_connection: int = 1  # tcp: units behind one port (a gateway), ids 1..N

    @property
    def registers_per_unit(self) -> int:
        return self.points * values.WIDTH[self.kind]

    @property
    def connections(self) -> int:
        if self.transport != "tcp":
            return 1
        return -(-self.units // self.units_per_connection)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    max_readings: int = 100
    max_bytes: int = 65536
    max_delay: float = 1.0


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """`[queue]` settings; None leaves the agent's default."""

    replay_rate: float | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RunSpec:
    name: str
    layout: Layout
    batch: BatchSpec
    warmup: float
    duration: float  # the measurement window; backlog: the longest the drain is waited for
    queue: QueueSpec = QueueSpec()
    backlog: int | None = None  # readings to queue while the broker is down
    soak: SoakSpec | None = None
    agent_env: tuple[tuple[str, str], ...] = ()  # added to the agent's environment


@dataclass(frozen=True, slots=True)
class SoakSpec:
    restart_every: float  # seconds from one broker stop to the next
    outage: float  # seconds the broker stays down each time
    sample_every: float  # seconds between memory samples of the agent


SOAK_RESTART_EVERY = 180.0
SOAK_OUTAGE = 5.0
SOAK_SAMPLE_EVERY = 5.0


SCENARIOS = ("workload", "ceiling", "rtu", "smoke", "backlog", "soak")
GIB = 1024 * 1024 * 1024
BACKLOG_READINGS = 1_000_000
_DEFAULTS: dict[str, tuple[Layout, BatchSpec, float, float]] = {
    # name: (layout, batch, warm-up s, duration s)
    "workload": (Layout("tcp", 20, 50, "float32", 1.0), BatchSpec(), 5.0, 60.0),
    "ceiling": (
        Layout("tcp", 20, 125, "uint16", 0.001),  # back to back: as fast as it goes
        BatchSpec(max_readings=1000, max_bytes=262144),
        5.0,
        30.0,
    ),
    # 0.001 s: at 0.01 s two units ask at most 200 requests/s, below what 115200 baud carries.
    "rtu": (Layout("rtu", 2, 10, "uint16", 0.001), BatchSpec(), 3.0, 20.0),
    "smoke": (Layout("tcp", 2, 10, "float32", 1.0), BatchSpec(), 2.0, 8.0),
    # The ceiling's plant fills the queue fastest; "duration" bounds the drain.
    "backlog": (
        Layout("tcp", 20, 125, "uint16", 0.001),
        BatchSpec(max_readings=1000, max_bytes=262144),
        5.0,
        300.0,
    ),
    # The workload, long, through broker restarts; the warm-up covers the first restart.
    "soak": (Layout("tcp", 20, 50, "float32", 1.0), BatchSpec(), 300.0, 1800.0),
}
_QUEUES: dict[str, QueueSpec] = {
    "backlog": QueueSpec(replay_rate=0, max_bytes=GIB),  # replay unlimited, nothing dropped
}
# The specification's silences: 3.5 characters at 9600 and 19200, 1.75 ms above.
RTU_BAUDRATES = (9600, 19200, 115200)


def build_runs(scenario: str, args: argparse.Namespace) -> list[RunSpec]:
    layout, batch, warmup, duration = _DEFAULTS[scenario]
    changes: dict[str, Any] = {}
    if args.units is not None:
        changes["units"] = args.units
    if args.points is not None:
        changes["points"] = args.points
    if args.interval is not None:
        changes["interval"] = args.interval
    if args.computations:
        changes["computations"] = args.computations
    if args.units_per_connection is not None:
        changes["units_per_connection"] = args.units_per_connection
    layout = dataclasses.replace(layout, **changes)
    if args.scale != 1:
        layout = dataclasses.replace(layout, units=layout.units * args.scale)
    if args.max_readings is not None:
        batch = dataclasses.replace(batch, max_readings=args.max_readings)
    warmup = args.warmup if args.warmup is not None else warmup
    duration = args.duration if args.duration is not None else duration
    queue = _QUEUES.get(scenario, QueueSpec())
    backlog = (args.readings or BACKLOG_READINGS) if scenario == "backlog" else None
    soaking = (
        SoakSpec(args.restart_every, args.outage, args.sample_every)
        if (scenario == "soak")
        else None
    )
    agent_env = tuple(args.agent_env)
    if layout.transport == "tcp":
        return [
            RunSpec(scenario, layout, batch, warmup, duration, queue, backlog, soaking, agent_env)
        ]
    lines = {"pty": (False,), "line": (True,), "both": (False, True)}[args.line]
    return [
        RunSpec(
            f"rtu-{baud}-{'line' if emulate else 'pty'}",
            dataclasses.replace(layout, baudrate=baud, emulate_line=emulate),
            batch,
            warmup,
            duration,
            agent_env=agent_env,
        )
        for baud in args.baud
        for emulate in lines
    ]


# -- the world around the agent -----------------------------------------------------------


class QuietBroker(Broker):
    """sim.broker's mosquitto without a log line per message, and a deep subscriber queue.

    ``log_type all`` writes several debug lines per PUBLISH: at thousands of messages that
    costs the broker CPU the agent would compete with. A queue of 1,000 messages (the
    default) could drop data at the subscriber while it catches up, which would be
    counted against the agent.
    """

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        quiet = "".join(
            f"log_type {kind}\n" for kind in ("error", "warning", "notice", "information")
        )
        text = text.replace("log_type all\n", quiet) + "max_queued_messages 1000000\n"
        self.config_path.write_text(text)


_CHILDREN: dict[int, str] = {}  # pids started here and not yet seen to exit


@atexit.register
def _kill_leftovers() -> None:
    """Last resort (cleanup normally stops every child): kill what is still running."""
    for pid in list(_CHILDREN):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class HarnessError(RuntimeError):
    """The bench could not run: a part did not start or answer."""


class Child:
    """A subprocess in its own session (a Ctrl-C is the harness's to handle)."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        _CHILDREN[self.pid] = name

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        pipes: bool = False,
        env: dict[str, str] | None = None,
    ) -> Child:
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log_file,
                stderr=log_file if pipes else subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
                env=env,
            )
        return cls(name, process)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def stop(
        self, signum: signal.Signals = signal.SIGTERM, grace: float = CHILD_STOP_TIMEOUT
    ) -> tuple[int, bool]:
        """Signal and wait; after `grace` seconds, SIGABRT then SIGKILL.

        SIGABRT makes a Python child started with PYTHONFAULTHANDLER=1 print every
        thread's stack to its log before it dies: where it was stuck. Returns (exit status,
        killed).
        """
        killed = False
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                killed = True
                log.warning(
                    "%s did not stop within %g s after %s; aborting it (its log "
                    "shows where it was)",
                    self.name,
                    grace,
                    signum.name,
                )
                await self._end(signal.SIGABRT)
        _CHILDREN.pop(self.pid, None)
        assert self.process.returncode is not None
        return self.process.returncode, killed

    async def _end(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)
        try:
            async with asyncio.timeout(ABORT_TIMEOUT):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@dataclass(frozen=True, slots=True)
class PlantStats:
    time: float  # wall clock
    requests: int
    registers: int


class PlantProcess:
    """bench.plant in its own process, asked for its counters over a pipe."""

    def __init__(self, child: Child, ports: list[int], log_path: Path) -> None:
        self.child = child
        self.ports = ports
        self._log_path = log_path

    @classmethod
    async def start(cls, spec: PlantSpec, log_path: Path) -> PlantProcess:
        argv = [sys.executable, "-m", "bench.plant", json.dumps(dataclasses.asdict(spec))]
        child = await Child.spawn("plant", argv, log_path=log_path, pipes=True)
        plant = cls(child, [], log_path)
        try:
            ready = await plant._receive("ready")
        except BaseException:
            await child.stop()
            raise
        plant.ports = [int(port) for port in ready["ports"]]
        return plant

    async def stats(self) -> PlantStats:
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write(b"stats\n")
        await stdin.drain()
        answer = await self._receive("stats")
        units = answer["units"]
        return PlantStats(float(answer["time"]), sum(u[0] for u in units), sum(u[1] for u in units))

    async def pause(self) -> None:
        """Close the servers and their connections: the agent's polls fail from now on."""
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write(b"pause\n")
        await stdin.drain()
        await self._receive("paused")

    async def stop(self) -> None:
        await self.child.stop()

    async def _receive(self, event: str) -> dict[str, Any]:
        stdout = self.child.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                raw = await stdout.readline()
        except TimeoutError:
            raise HarnessError(
                f"the plant did not answer {event!r} in {START_TIMEOUT} s; "
                f"log tail:\n{_tail(self._log_path)}"
            ) from None
        if not raw:
            raise HarnessError(f"the plant exited; log tail:\n{_tail(self._log_path)}")
        message: dict[str, Any] = json.loads(raw)
        if message.get("event") != event:
            raise HarnessError(f"the plant said {message} instead of {event!r}")
        return message


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# -- the agent ------------------------------------------------------------------------------


def agent_command(*args: str, profile: Path | None = None, memory: Path | None = None) -> list[str]:
    """The installed `orio-agent` next to this interpreter, else `python -m agent`; under
    cProfile (`profile`) or bench.memtrace (`memory`) if asked."""
    if profile is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "agent", *args]
    if memory is not None:
        return [
            sys.executable,
            "-m",
            "bench.memtrace",
            str(memory),
            "--preload",
            "agent.service.cli",
            "-m",
            "agent",
            *args,
        ]
    script = Path(sys.executable).with_name("orio-agent")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "agent", *args]


def agent_environment() -> dict[str, str]:
    """This environment without ORIO_AGENT_* overrides: the config file is the whole config."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORIO_AGENT_")}
    env["PYTHONFAULTHANDLER"] = "1"  # a stack dump on SIGABRT, if it ever has to be stopped so
    return env


def point_id(unit: int, point: int) -> str:
    return f"u{unit}_p{point}"


DERIVED_POINTS = 100
COMPUTED_BUCKET = "computed"  # the derived points'; the aggregates go to the points' bucket


def derived_block(layout: Layout) -> list[str]:
    """DERIVED_POINTS sums of two points each, on the same unit (one poll cycle)."""
    text: list[str] = []
    for n in range(DERIVED_POINTS):
        unit = n % layout.units
        first, second = (2 * n) % layout.points, (2 * n + 1) % layout.points
        text += [
            "",
            "[[derived]]",
            f'id = "d{n}"',
            f'bucket = "{COMPUTED_BUCKET}"',
            f'expression = "{point_id(unit, first)} + {point_id(unit, second)}"',
        ]
    return text


def agent_config(
    spec: RunSpec, broker: Broker, *, ports: Sequence[int], device: str | None, state_dir: Path
) -> str:
    """The agent's TOML for this run: the bench broker, the plant, quiet logs."""
    layout, batch = spec.layout, spec.batch
    width = values.WIDTH[layout.kind]
    text = [
        "# Written by bench.harness for one benchmark run.",
        "[thing]",
        f"id = {json.dumps(broker.thing_id)}",
        f"secret = {json.dumps(broker.thing_secret)}",
        "",
        "[mqtt]",
        f"host = {json.dumps(broker.host)}",
        f"port = {broker.port}",
        "tls = false",
        "backoff_min = 0.2",
        "backoff_max = 1.0",
        "",
        "[queue]",
        f"path = {json.dumps(str(state_dir / 'queue.db'))}",
        *(
            [f"replay_rate = {spec.queue.replay_rate:g}  # messages/s; 0 = unlimited"]
            if spec.queue.replay_rate is not None
            else []
        ),
        *([f"max_bytes = {spec.queue.max_bytes}"] if spec.queue.max_bytes is not None else []),
        "",
        "[batch]",
        f"max_readings = {batch.max_readings}",
        f"max_bytes = {batch.max_bytes}",
        f"max_delay = {batch.max_delay}",
        "",
        "[log]",
        'level = "warning"  # logging costs CPU',
        'format = "logfmt"',
        "",
        "[health]",
        f'bucket = "{HEALTH_BUCKET}"',
        f"interval = {HEALTH_INTERVAL}",
    ]

    aggregate = ', aggregate = { window = 60, functions = ["avg", "min", "max"] }'
    extra = aggregate if layout.computations in ("aggregates", "both") else ""

    def device_block(unit_index: int, unit_id: int) -> list[str]:
        points = ",\n".join(
            f'    {{ id = {json.dumps(point_id(unit_index, p))}, table = "holding", '
            f'address = {p * width}, type = "{layout.kind}"{extra} }}'
            for p in range(layout.points)
        )
        return [
            "",
            "  [[modbus.devices]]",
            f'  name = "unit{unit_index}"',
            f"  unit = {unit_id}",
            f"  interval = {layout.interval}",
            f'  bucket = "{BUCKET}"',
            "  points = [",
            points,
            "  ]",
        ]

    if layout.transport == "tcp":
        per = layout.units_per_connection
        for n, port in enumerate(ports):
            text += [
                "",
                "[[modbus]]",
                f'name = "conn{n}"',
                'transport = "tcp"',
                'host = "127.0.0.1"',
                f"port = {port}",
                "timeout = 1.0",
            ]
            for unit in range(n * per, min((n + 1) * per, layout.units)):
                text += device_block(unit, unit - n * per + 1)
    else:
        text += [
            "",
            "[[modbus]]",
            'name = "rs485"',
            'transport = "rtu"',
            f"device = {json.dumps(device)}",
            f"baudrate = {layout.baudrate}",
            "timeout = 0.5",
        ]
        for n in range(layout.units):
            text += device_block(n, n + 1)
    if layout.computations in ("derived", "both"):
        text += derived_block(layout)
    return "\n".join(text) + "\n"


_PLAN_LINE = re.compile(
    r"^\s+device '(?P<device>[^']*)' on '(?P<conn>[^']*)' unit \d+: (?P<points>\d+) points "
    r"in (?P<requests>\d+) requests? every (?P<interval>[0-9.e+-]+) s$"
)


@dataclass(frozen=True, slots=True)
class Plan:
    """check-config's per-device lines, summed."""

    devices: int
    points: int
    requests_per_cycle: int
    requests_per_second: float

    def summary(self) -> str:
        return (
            f"check-config: {self.devices} devices, {self.points} points, "
            f"{self.requests_per_cycle} requests per cycle "
            f"({self.requests_per_second:g} requests/s planned)"
        )


async def check_config(path: Path) -> Plan:
    process = await asyncio.create_subprocess_exec(
        *agent_command("check-config", str(path)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=agent_environment(),
    )
    try:
        async with asyncio.timeout(START_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise HarnessError(f"check-config did not finish in {START_TIMEOUT} s") from None
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise HarnessError(f"check-config refused the bench's config:\n{text}")
    devices = points = requests = 0
    per_second = 0.0
    for match in map(_PLAN_LINE.match, text.splitlines()):
        if match:
            devices += 1
            points += int(match["points"])
            requests += int(match["requests"])
            per_second += int(match["requests"]) / float(match["interval"])
    return Plan(devices, points, requests, per_second)


# -- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    wall: float
    agent: procfs.ProcSample | None
    others: dict[str, procfs.ProcSample | None]  # plant, broker, socat, harness
    machine: procfs.MachineSample
    plant: PlantStats


class BenchRun:
    """Start everything, measure, stop everything (also on errors and Ctrl-C)."""

    def __init__(
        self, spec: RunSpec, directory: Path, *, profile: bool, trace_memory: bool = False
    ) -> None:
        self.spec = spec
        self.directory = directory
        self.profile_path = directory / "agent.prof" if profile else None
        self.memory_path = directory / "agent.mem.txt" if trace_memory else None
        self.rss_kib: list[int] = []
        self.agent_died_at: float | None = None
        self.busy_before: float | None = None
        self.hold_checks = False  # backlog: the subscriber only records during the drain
        self.backlog: dict[str, Any] = {}
        self.started = 0.0  # time.monotonic() when the agent was started
        self.memory: list[procfs.MemorySample] = []  # soak
        self.soak: dict[str, Any] = {}
        self.rig_requests_per_s: float | None = None  # rtu over an emulated line

    async def run(self) -> dict[str, Any]:
        spec, directory = self.spec, self.directory
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "state").mkdir(parents=True)
        self.busy_before = await _machine_busy()
        if self.busy_before > BUSY_WARNING:
            _say(
                f"warning: the machine is {self.busy_before:.0f} % busy before the run "
                "(other processes): CPU-bound figures will be low"
            )
        if spec.layout.transport == "rtu" and spec.layout.emulate_line:
            self.rig_requests_per_s = await _rig_requests_per_second(spec.layout)
            _say(f"{spec.name}: the rig alone carries {self.rig_requests_per_s:.1f} requests/s")
        backlog = spec.backlog is not None
        # backlog and soak stop the broker with the agent running: nothing may be lost there.
        persistent = backlog or spec.soak is not None
        async with contextlib.AsyncExitStack() as stack:
            # backlog: the subscriber's session (its subscription and what is queued for it)
            # survives the broker's restart, so nothing the agent sends before the subscriber
            # is back is lost.
            broker = QuietBroker(directory / "broker", persistence=persistent)
            broker.start()
            stack.callback(broker.stop)
            device = None
            plant_spec = PlantSpec(
                spec.layout.transport,
                spec.layout.units,
                spec.layout.points,
                spec.layout.kind,
                units_per_connection=spec.layout.units_per_connection,
            )
            if spec.layout.transport == "rtu":
                pair = PtyPair(directory / "line", name_a="plant", name_b="agent").start()
                stack.callback(pair.stop)
                device = pair.device_b
                plant_spec = dataclasses.replace(
                    plant_spec,
                    device=pair.device_a,
                    baudrate=spec.layout.baudrate,
                    emulate_line=spec.layout.emulate_line,
                )
            plant = await PlantProcess.start(plant_spec, directory / "plant.log")
            stack.push_async_callback(plant.stop)
            subscriber = Subscriber(
                broker,
                self._points(),
                health_bucket=HEALTH_BUCKET,
                computed_bucket=COMPUTED_BUCKET,
                clean_session=not persistent,
                # Every scenario, not only soak: what the agent reads before its first
                # CONNACK is backlog, replayed behind live data (up to 2 batches in
                # `ceiling`); counted as repeats, those readings came out as missing.
                late=True,
            )
            await subscriber.connect(timeout=START_TIMEOUT)
            stack.push_async_callback(_disconnect, subscriber)

            config_path = directory / "agent.toml"
            config_path.write_text(
                agent_config(
                    spec, broker, ports=plant.ports, device=device, state_dir=directory / "state"
                )
            )
            plan = await check_config(config_path)
            _say(plan.summary())
            argv = agent_command(
                "run",
                "--config",
                str(config_path),
                profile=self.profile_path,
                memory=self.memory_path,
            )
            agent = await Child.spawn(
                "agent",
                argv,
                log_path=directory / "agent.log",
                env={**agent_environment(), **dict(spec.agent_env)},
            )
            self.started = time.monotonic()
            stack.push_async_callback(agent.stop, signal.SIGTERM, STOP_TIMEOUT)
            _say(
                f"{spec.name}: agent pid {agent.pid} ({shlex.join(argv)}); "
                f"warming up {spec.warmup:g} s, then measuring {spec.duration:g} s"
            )

            checker = asyncio.create_task(self._process_forever(subscriber), name="subscriber")
            measure = (
                self._measure_backlog
                if backlog
                else self._measure_soak
                if spec.soak is not None
                else self._measure
            )
            try:
                first, last, stop = await measure(agent, plant, broker, subscriber)
            finally:
                checker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checker
            subscriber.process()
            return self._result(plan, subscriber, first, last, stop, agent)

    async def _measure(
        self, agent: Child, plant: PlantProcess, broker: Broker, subscriber: Subscriber
    ) -> tuple[Snapshot, Snapshot, dict[str, Any]]:
        pids = {"plant": plant.child.pid, "broker": broker.pid, "harness": os.getpid()}
        socat = procfs.children(os.getpid(), "socat")
        if socat:
            pids["socat"] = socat[0]
        await self._watch(agent, self.spec.warmup, sample=False)
        first = await self._snapshot(agent.pid, pids, plant)
        await self._watch(agent, self.spec.duration, sample=True)
        last = await self._snapshot(agent.pid, pids, plant)
        # Readings made near the end of the window are still in their batch or the queue:
        # let them go out before the stop, so the window's figures are whole.
        await self._watch(agent, self.spec.batch.max_delay + SETTLE_MARGIN, sample=False)
        stop = await self._stop_agent(agent, plant, subscriber)
        return first, last, stop

    async def _measure_soak(
        self, agent: Child, plant: PlantProcess, broker: Broker, subscriber: Subscriber
    ) -> tuple[Snapshot, Snapshot, dict[str, Any]]:
        """The workload for warm-up + duration, the broker stopped every `restart_every` s
        (counted from the agent's start) for `outage` s; the agent's memory sampled every
        `sample_every` s throughout. The window is the time after the warm-up."""
        spec, soaking = self.spec, self.spec.soak
        assert soaking is not None
        # The broker's pid changes at every restart: its CPU is not followed here.
        pids: dict[str, int | None] = {"plant": plant.child.pid, "harness": os.getpid()}
        window_start = self.started + spec.warmup
        end = window_start + spec.duration
        next_restart = self.started + soaking.restart_every
        next_sample = self.started
        back_at: float | None = None  # while the broker is down: when it is started again
        restarts: list[float] = []
        first: Snapshot | None = None
        while agent.returncode is None:
            now = time.monotonic()
            if first is None and now >= window_start:
                first = await self._snapshot(agent.pid, pids, plant)
            if now >= next_sample:
                if (sample := procfs.memory(agent.pid)) is not None:
                    self.memory.append(sample)
                    if first is not None:
                        self.rss_kib.append(sample.rss_kib)
                next_sample += soaking.sample_every
            if back_at is None and now >= end:
                break
            if back_at is None and now >= next_restart:
                await broker.stop_async()
                restarts.append(now)
                back_at = now + soaking.outage
                next_restart += soaking.restart_every
            elif back_at is not None and now >= back_at:
                await broker.start_async()
                back_at = None
                minutes = (time.monotonic() - self.started) / 60
                rss = self.memory[-1].rss_kib / 1024 if self.memory else 0.0
                _say(
                    f"broker back ({len(restarts)} restarts) at {minutes:.1f} min; "
                    f"agent RSS {rss:.1f} MiB"
                )
            wake = min(next_sample, back_at or next_restart, end if first else window_start)
            await self._watch(agent, max(0.0, wake - time.monotonic()), sample=False)
        if first is None:
            raise HarnessError(
                "the agent exited during the warm-up; log tail:\n"
                f"{_tail(self.directory / 'agent.log')}"
            )
        last = await self._snapshot(agent.pid, pids, plant)
        self.soak.update(
            soak.summarize(
                self.memory, start=self.started, window_start=window_start, restarts=restarts
            )
        )
        self.soak.update(
            {
                "restart_every_s": soaking.restart_every,
                "outage_s": soaking.outage,
                "sample_every_s": soaking.sample_every,
                "broker_restarts": len(restarts),
                "broker_restarts_s": [round(r - self.started, 1) for r in restarts],
                # Seconds since the agent's start; KiB: VmRSS, private dirty, anonymous, C heap
                # (size, resident).
                "samples": [
                    [
                        round(m.at - self.started, 1),
                        m.rss_kib,
                        m.private_dirty_kib,
                        m.anonymous_kib,
                        m.heap_size_kib,
                        m.heap_rss_kib,
                    ]
                    for m in self.memory
                ],
            }
        )
        await self._watch(agent, self.spec.batch.max_delay + SETTLE_MARGIN, sample=False)
        stop = await self._stop_agent(agent, plant, subscriber)
        return first, last, stop

    async def _measure_backlog(  # noqa: C901  (the measurement's steps, in the order they run)
        self, agent: Child, plant: PlantProcess, broker: Broker, subscriber: Subscriber
    ) -> tuple[Snapshot, Snapshot, dict[str, Any]]:
        """Broker down until `backlog` readings are made; plant paused; broker up: the drain.

        The window (first, last) is the drain: from the broker's start to the moment the
        last queued message has arrived.
        """
        spec, state = self.spec, self.directory / "state"
        assert spec.backlog is not None
        width = values.WIDTH[spec.layout.kind]
        figures = self.backlog
        await self._watch(agent, spec.warmup, sample=False)
        subscriber.process()
        if subscriber.tally.readings == 0:
            raise HarnessError(
                f"nothing delivered in the {spec.warmup:g} s warm-up; agent log "
                f"tail:\n{_tail(self.directory / 'agent.log')}"
            )

        # The outage: the agent queues what it reads.
        await broker.stop_async()
        outage_start = await self._snapshot(agent.pid, {}, plant)
        _say(
            f"broker stopped; polling until {spec.backlog:,} readings are made "
            f"(at most {OUTAGE_LIMIT:g} s)"
        )
        target = outage_start.plant.registers + spec.backlog * width
        deadline = time.monotonic() + OUTAGE_LIMIT
        while (stats := await plant.stats()).registers < target:
            if time.monotonic() > deadline:
                _say(
                    f"warning: only {(stats.registers - outage_start.plant.registers) // width:,}"
                    f" readings made in {OUTAGE_LIMIT:g} s; going on with those"
                )
                break
            await self._watch(agent, OUTAGE_POLL, sample=False)
            if agent.returncode is not None:
                raise HarnessError("the agent exited during the outage")
        await plant.pause()
        paused = await self._snapshot(agent.pid, {}, plant)
        queued = await self._settled_queue(agent, state)
        outage_end = await self._snapshot(agent.pid, {}, plant)
        made = (paused.plant.registers - outage_start.plant.registers) // width
        outage_s = paused.wall - outage_start.wall
        a, b = outage_start.agent, outage_end.agent
        figures.update(
            {
                "readings_target": spec.backlog,
                "outage_readings_made": made,
                "outage_seconds": round(outage_s, 2),
                "outage_readings_per_s": _rate(made, outage_s),
                "queued_messages": queued.messages,
                "queued_readings": queued.readings,
                "queued_payload_bytes": queued.payload_bytes,
                "queued_stored_bytes": queued.stored_bytes,
                "queued_health_messages": queued.health_messages,
                "queue_file_bytes_at_drain_start": _queue_size(state),
                "outage_agent_cpu_percent": _cpu(a, b),
                "outage_write_bytes": (
                    b.write_bytes - a.write_bytes
                    if a and b and a.write_bytes is not None and b.write_bytes is not None
                    else None
                ),
                "rss_mib_peak_before_drain": round(b.hwm_kib / 1024, 1) if b else None,
            }
        )
        if figures["outage_write_bytes"] is not None and queued.payload_bytes:
            figures["outage_write_bytes_per_payload_byte"] = round(
                figures["outage_write_bytes"] / queued.payload_bytes, 3
            )
        _say(
            f"{queued.readings:,} readings in {queued.messages:,} messages queued "
            f"({made:,} made in {outage_s:.1f} s with the broker down); starting the broker"
        )

        # The drain: the broker back, the subscriber only records arrivals meanwhile (its
        # checks would take CPU from the agent on a small machine); all is checked after.
        subscriber.process()
        delivered_before = subscriber.tally.readings
        repeated_before = subscriber.tally.repeated
        messages_before = subscriber.data_messages
        self.hold_checks = True
        figures["peak_rss_reset"] = procfs.reset_peak_rss(agent.pid)
        self.rss_kib.clear()
        agent_before = procfs.sample(agent.pid)
        machine_before = procfs.machine()
        back_wall = time.time()
        await broker.start_async()
        listening_wall = time.time()
        first = Snapshot(
            wall=back_wall,
            agent=agent_before,
            machine=machine_before,
            plant=await plant.stats(),
            others={
                name: procfs.sample(pid) if pid else None
                for name, pid in self._other_pids(plant, broker).items()
            },
        )
        deadline = time.monotonic() + spec.duration
        timed_out = True
        connected_wall: float | None = None
        while time.monotonic() < deadline and agent.returncode is None:
            if connected_wall is None:
                # The agent reconnects on its own back-off (mqtt.backoff_max): when it did.
                if procfs.tcp_connected(agent.pid, broker.port):
                    connected_wall = time.time()
                await asyncio.sleep(CONNECT_POLL)
                continue
            if (now := procfs.sample(agent.pid)) is not None:
                self.rss_kib.append(now.rss_kib)
            # The end: as many data messages arrived as were queued (a count that includes
            # repeats: messages the broker had not yet delivered when it stopped come again),
            # the agent's queue file holds no data any more, and a moment without arrivals.
            # Or nothing at all for DRAIN_GIVE_UP. The drain's end is computed after, from
            # the arrival of the last new reading.
            arrived = subscriber.data_messages - messages_before
            quiet = subscriber.quiet_for() if arrived else 0.0
            if quiet >= DRAIN_GIVE_UP or (
                arrived >= queued.messages
                and quiet >= DRAIN_QUIET
                and (
                    await asyncio.to_thread(
                        read_queue, state / "queue.db", HEALTH_BUCKET, count_only=True
                    )
                ).messages
                == 0
            ):
                timed_out = False
                break
            await asyncio.sleep(DRAIN_POLL)
        if agent.returncode is not None and self.agent_died_at is None:
            self.agent_died_at = time.monotonic()
            log.error(
                "the agent exited with status %s during the drain; log tail:\n%s",
                agent.returncode,
                _tail(self.directory / "agent.log"),
            )
        last = await self._snapshot(agent.pid, self._other_pids(plant, broker), plant)
        self.hold_checks = False
        subscriber.process()
        end = subscriber.last_new_arrival
        drained = subscriber.tally.readings - delivered_before
        drain_s = end - back_wall if end is not None and drained else None
        a, b = first.agent, last.agent
        cpu_s = b.cpu_seconds - a.cpu_seconds if a and b else None
        figures.update(
            {
                "drain_timed_out": timed_out,
                "broker_listening_after_s": round(listening_wall - back_wall, 3),
                "agent_connected_after_s": (
                    round(connected_wall - back_wall, 3) if connected_wall is not None else None
                ),
                "drain_seconds_after_connect": (
                    round(end - connected_wall, 2)
                    if end is not None and connected_wall is not None and drained
                    else None
                ),
                "drain_seconds": round(drain_s, 2) if drain_s is not None else None,
                # New readings that arrived after the restart: the agent's queue, and what the
                # broker still held for the subscriber when it stopped (the agent had those
                # acknowledged already). The drain's rate is the agent's queue over its time.
                "drained_readings": drained,
                "drained_readings_per_s": _rate(queued.readings, drain_s) if drain_s else None,
                "drained_messages": subscriber.data_messages - messages_before,
                "drain_agent_cpu_seconds": round(cpu_s, 2) if cpu_s is not None else None,
                "drain_agent_cpu_percent": (
                    round(100 * cpu_s / drain_s, 1) if cpu_s is not None and drain_s else None
                ),
                "drain_write_bytes": (
                    b.write_bytes - a.write_bytes
                    if a and b and a.write_bytes is not None and b.write_bytes is not None
                    else None
                ),
                # Messages in flight when the broker stopped may have reached the subscriber
                # then: sent again, their readings arrive as repeats.
                "drained_repeated": subscriber.tally.repeated - repeated_before,
                "drain_complete": (
                    drained + subscriber.tally.repeated - repeated_before >= queued.readings
                ),
            }
        )
        if drain_s:
            _say(f"drained {drained:,} readings in {drain_s:.2f} s")
        else:
            _say("warning: nothing was drained")

        stop = await self._stop_agent(agent, plant, subscriber)
        return first, last, stop

    async def _stop_agent(
        self, agent: Child, plant: PlantProcess, subscriber: Subscriber
    ) -> dict[str, Any]:
        """SIGTERM the agent, note how it stopped, and wait for the tail of the data."""
        before = await plant.stats()
        stopping = time.monotonic()
        code, killed = await agent.stop(signal.SIGTERM, STOP_TIMEOUT)
        stop: dict[str, Any] = {
            "exit_status": code,
            "killed": killed,
            "crashed": self.agent_died_at is not None,
            "stop_seconds": round(time.monotonic() - stopping, 3),
        }
        stop["final_plant"] = final = await plant.stats()
        # A poller stops at once: at most the request in flight on each connection.
        stop["requests_after_sigterm"] = final.requests - before.requests
        await _wait_for_tail(subscriber)
        return stop

    async def _settled_queue(self, agent: Child, state: Path) -> QueueContents:
        """The queue file once the agent has batched and committed all it read: the same
        contents twice in a row, after the batch delay and a commit interval."""
        settle = self.spec.batch.max_delay + QUEUE_COMMIT_INTERVAL + 0.5
        deadline = time.monotonic() + QUEUE_SETTLE_LIMIT
        previous: QueueContents | None = None
        while True:
            await self._watch(agent, settle, sample=False)
            contents = await asyncio.to_thread(read_queue, state / "queue.db", HEALTH_BUCKET)
            # Data only: a health message may be put between the two reads.
            same = previous is not None and (contents.messages, contents.readings) == (
                previous.messages,
                previous.readings,
            )
            if same or time.monotonic() > deadline:
                return contents
            previous = contents

    def _other_pids(self, plant: PlantProcess, broker: Broker) -> dict[str, int | None]:
        return {"plant": plant.child.pid, "broker": broker.pid, "harness": os.getpid()}

    async def _process_forever(self, subscriber: Subscriber) -> None:
        while True:
            if not self.hold_checks:
                subscriber.process()
            await asyncio.sleep(PROCESS_PERIOD)

    async def _watch(self, agent: Child, seconds: float, *, sample: bool) -> None:
        """Wait `seconds`, sampling the agent's memory; return early if it died."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if agent.returncode is not None:
                if self.agent_died_at is None:
                    self.agent_died_at = time.monotonic()
                    log.error(
                        "the agent exited with status %s; log tail:\n%s",
                        agent.returncode,
                        _tail(self.directory / "agent.log"),
                    )
                return
            if sample and (now := procfs.sample(agent.pid)) is not None:
                self.rss_kib.append(now.rss_kib)
            await asyncio.sleep(min(SAMPLE_PERIOD, left))

    async def _snapshot(
        self, agent: int, others: dict[str, int | None], plant: PlantProcess
    ) -> Snapshot:
        stats = await plant.stats()
        sample = procfs.sample(agent)
        if sample is not None:
            self.rss_kib.append(sample.rss_kib)
        # The window's edges are the plant's clock when it counted: a reading's timestamp is
        # when the agent got the answer, a moment after the plant counted the request.
        return Snapshot(
            wall=stats.time,
            agent=sample,
            machine=procfs.machine(),
            plant=stats,
            others={name: procfs.sample(pid) if pid else None for name, pid in others.items()},
        )

    def _points(self) -> dict[str, PointState]:
        layout = self.spec.layout
        return {
            point_id(u, p): PointState(u * layout.points + p, layout.kind)
            for u in range(layout.units)
            for p in range(layout.points)
        }

    def _result(
        self,
        plan: Plan,
        subscriber: Subscriber,
        first: Snapshot,
        last: Snapshot,
        stop: dict[str, Any],
        agent: Child,
    ) -> dict[str, Any]:
        spec, layout = self.spec, self.spec.layout
        window = last.wall - first.wall
        width = values.WIDTH[layout.kind]
        final: PlantStats = stop.pop("final_plant")
        plant_seconds = last.plant.time - first.plant.time
        expected = final.registers // width
        tally = subscriber.tally
        queued = _queued_readings(self.directory / "state", subscriber)
        missing = expected - tally.readings - (queued or 0)
        offered_in_window = (last.plant.registers - first.plant.registers) // width
        stamps, latencies = subscriber.timestamps, subscriber.latencies_ms
        in_window = sorted(
            latency
            for stamp, latency in zip(stamps, latencies, strict=True)
            if first.wall <= stamp < last.wall
        )
        allowance = layout.connections * layout.points
        result: dict[str, Any] = {
            "name": spec.name,
            "layout": dataclasses.asdict(layout),
            "batch": dataclasses.asdict(spec.batch),
            "warmup_s": spec.warmup,
            "window_s": round(window, 3),
            "run_dir": _shown(self.directory),
            "check_config": dataclasses.asdict(plan),
            "agent": {**stop, **self._agent_figures(first, last)},
            "requests_per_s": _rate(last.plant.requests - first.plant.requests, plant_seconds),
            "readings_offered_per_s": _rate(offered_in_window, plant_seconds),
            "readings_delivered_per_s": _rate(len(in_window), window),
            "readings_expected": expected,
            "readings_delivered": tally.readings,
            "delivered_ratio": round(tally.readings / expected, 6) if expected else None,
            "delivered_ratio_window": _ratio(len(in_window), offered_in_window),
            "readings_left_in_queue": queued,
            "readings_missing": missing,
            "in_flight_allowance": allowance,
            "every_reading_accounted_for": 0 <= missing <= allowance,
            "latency_ms": _percentiles(in_window),
            "subscriber": dataclasses.asdict(tally),
            "context_cpu_percent": {
                **{name: _cpu(sample, last.others[name]) for name, sample in first.others.items()},
                "machine_busy_all_cores": round(
                    procfs.machine_busy_percent(first.machine, last.machine), 1
                ),
            },
            "agent_cpu_seconds_per_million_readings": None,
            "queue_file_bytes": _queue_size(self.directory / "state"),
            "commits_per_s": _commits_per_s(subscriber.health, first.wall, last.wall),
            "agent_health_last": {
                name: series[-1][1] for name, series in sorted(subscriber.health.items())
            },
            "machine_busy_before_percent": self.busy_before,
        }
        context = result["context_cpu_percent"]
        ours = [
            result["agent"]["cpu_percent"],
            *(cpu for name, cpu in context.items() if name != "machine_busy_all_cores"),
        ]
        cores = len(os.sched_getaffinity(0))
        context["other_processes"] = round(
            context["machine_busy_all_cores"] * cores - sum(x or 0 for x in ours), 1
        )
        payload = subscriber.payload_bytes(first.wall, last.wall)
        written = result["agent"]["write_bytes_window"]
        result["payload_bytes_window"] = payload
        result["payload_bytes_per_s"] = _rate(payload, window)
        result["write_bytes_per_payload_byte"] = (
            round(written / payload, 3) if written is not None and payload else None
        )
        delivered_rate = result["readings_delivered_per_s"]
        if delivered_rate and result["agent"]["cpu_percent"] is not None:
            result["agent_cpu_seconds_per_million_readings"] = round(
                result["agent"]["cpu_percent"] / 100 / delivered_rate * 1e6, 1
            )
        if spec.backlog is not None:
            # The window is the drain: no readings are made in it (the plant is paused), so
            # the per-window rates of the other scenarios do not apply; the drain's do.
            for key in (
                "requests_per_s",
                "readings_offered_per_s",
                "readings_delivered_per_s",
                "delivered_ratio_window",
                "latency_ms",
                "commits_per_s",
            ):
                result.pop(key)
            backlog = self.backlog
            cpu_s, drained = backlog.get("drain_agent_cpu_seconds"), backlog["queued_readings"]
            result["agent_cpu_seconds_per_million_readings"] = (
                round(cpu_s / drained * 1e6, 1) if cpu_s is not None and drained else None
            )
            drain_written = backlog.get("drain_write_bytes")
            backlog["drain_write_bytes_per_payload_byte"] = (
                round(drain_written / backlog["queued_payload_bytes"], 3)
                if drain_written is not None and backlog["queued_payload_bytes"]
                else None
            )
            result["backlog"] = backlog
        if spec.soak is not None:
            result["soak"] = self.soak
        if layout.transport == "rtu":
            theory = line.max_requests_per_second(layout.baudrate, layout.registers_per_unit)
            result["rtu"] = {
                "baudrate": layout.baudrate,
                "line": "emulated" if layout.emulate_line else "bare pty",
                "bits_per_request": line.transaction_bits(
                    layout.baudrate, layout.registers_per_unit
                ),
                "theoretical_requests_per_s": round(theory, 1),
                "achieved_percent_of_theoretical": round(
                    100 * (result["requests_per_s"] or 0) / theory, 1
                ),
            }
            rig = self.rig_requests_per_s
            if rig is not None:
                result["rtu"]["rig_requests_per_s"] = round(rig, 1)
                result["rtu"]["rig_percent_of_theoretical"] = round(100 * rig / theory, 1)
                result["rtu"]["achieved_percent_of_rig"] = round(
                    100 * (result["requests_per_s"] or 0) / rig, 1
                )
        if self.profile_path is not None:
            result["profile"] = _shown(self.profile_path)
        if self.memory_path is not None:
            result["memory_trace"] = _shown(self.memory_path)
        result["agent"]["pid"] = agent.pid
        return result

    def _agent_figures(self, first: Snapshot, last: Snapshot) -> dict[str, Any]:
        a, b = first.agent, last.agent
        figures: dict[str, Any] = {"cpu_percent": _cpu(a, b)}
        rss = sorted(self.rss_kib)
        figures["rss_mib_median"] = round(rss[len(rss) // 2] / 1024, 1) if rss else None
        figures["rss_mib_last"] = round(self.rss_kib[-1] / 1024, 1) if rss else None
        figures["rss_mib_peak"] = round(b.hwm_kib / 1024, 1) if b else None
        figures["threads"] = b.threads if b else None
        if a and b and a.write_bytes is not None and b.write_bytes is not None:
            figures["write_bytes_window"] = b.write_bytes - a.write_bytes
            figures["write_bytes_per_s"] = _rate(b.write_bytes - a.write_bytes, b.at - a.at)
            figures["write_bytes_since_start"] = b.write_bytes
        else:
            figures["write_bytes_window"] = figures["write_bytes_per_s"] = None
            figures["write_bytes_since_start"] = None
        return figures


async def _rig_requests_per_second(layout: Layout) -> float:
    """What the pty rig carries at the layout's baud rate with the line's times kept and
    no software of ours (`bench.line.rig_requests_per_second`), measured now."""
    argv = [sys.executable, "-m", "bench.line", "--json", "--registers"]
    argv += [str(layout.registers_per_unit), str(layout.baudrate)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        async with asyncio.timeout(START_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise HarnessError(f"bench.line did not finish in {START_TIMEOUT} s") from None
    if process.returncode != 0:
        raise HarnessError(f"bench.line failed ({process.returncode})")
    return float(json.loads(output)["rig"])


async def _machine_busy(seconds: float = 1.0) -> float:
    """How busy all cores are, over `seconds`, before anything of ours runs."""
    first = procfs.machine()
    await asyncio.sleep(seconds)
    return round(procfs.machine_busy_percent(first, procfs.machine()), 1)


async def _wait_for_tail(subscriber: Subscriber) -> None:
    deadline = time.monotonic() + TAIL_LIMIT
    while subscriber.quiet_for() < TAIL_QUIET and time.monotonic() < deadline:
        subscriber.process()
        await asyncio.sleep(PROCESS_PERIOD)


async def _disconnect(subscriber: Subscriber) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CHILD_STOP_TIMEOUT):
            await subscriber.disconnect()


def _cpu(first: procfs.ProcSample | None, last: procfs.ProcSample | None) -> float | None:
    if first is None or last is None:
        return None
    return round(procfs.cpu_percent(first, last), 2)


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 2) if seconds > 0 else None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentiles(sorted_ms: list[float]) -> dict[str, float | None]:
    def at(q: float) -> float | None:
        if not sorted_ms:
            return None
        return round(sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)}


def _commits_per_s(
    health: dict[str, list[tuple[int, object]]], start: float, end: float
) -> float | None:
    """From the agent's health telemetry, once it reports a commit count (an id with
    "commit" in it): its increase between the first and last report in the window."""
    name = next((name for name in health if "commit" in name), None)
    if name is None:
        return None
    inside = [
        (ms / 1000, float(value))
        for ms, value in health[name]
        if start <= ms / 1000 <= end and isinstance(value, int | float)
    ]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return round((c1 - c0) / (t1 - t0), 2)


def _queued_readings(state: Path, subscriber: Subscriber) -> int | None:
    """Readings the stopped agent left in its queue file, not delivered (None: no file)."""
    path = state / "queue.db"
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            payloads = [bytes(row[0]) for row in db.execute("SELECT payload FROM messages")]
    except sqlite3.Error as exc:
        log.warning("cannot read the agent's queue file %s: %s", path, exc)
        return None
    return subscriber.undelivered(payloads)


@dataclass(frozen=True, slots=True)
class QueueContents:
    messages: int  # data messages (not health)
    readings: int  # in the data messages
    payload_bytes: int  # data payloads as put (inflated)
    stored_bytes: int  # data payloads as stored (zlib when it saved space)
    health_messages: int


def read_queue(path: Path, health_bucket: str, *, count_only: bool = False) -> QueueContents:
    """What the agent's queue file holds, read through a read-only connection (the agent
    may be writing it: WAL readers do not block the writer). `count_only`: messages and
    health messages only, without reading the payloads."""
    health_suffix = f"/$data/{health_bucket}"
    messages = readings = payload_bytes = stored_bytes = health = 0
    columns = "topic, NULL, NULL" if count_only else "topic, payload, codec"
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
        ) as db:
            rows = db.execute(f"SELECT {columns} FROM messages").fetchall()
    except sqlite3.Error as exc:
        raise HarnessError(f"cannot read the agent's queue file {path}: {exc}") from exc
    for topic, stored, codec in rows:
        if str(topic).endswith(health_suffix):
            health += 1
            continue
        if count_only:
            messages += 1
            continue
        payload = unpack_payload(bytes(stored), int(codec))
        messages += 1
        stored_bytes += len(stored)
        payload_bytes += len(payload)
        decoded = json.loads(payload)
        readings += len(decoded) if isinstance(decoded, list) else 1
    return QueueContents(messages, readings, payload_bytes, stored_bytes, health)


def _queue_size(state: Path) -> int | None:
    files = [path for path in state.glob("queue.db*") if path.is_file()]
    return sum(path.stat().st_size for path in files) if files else None


def _shown(path: Path) -> str:
    """A path as the report gives it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# -- report -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False, cwd=REPO
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return (
            (done.stdout or done.stderr).strip().splitlines()[0]
            if (done.stdout or done.stderr).strip()
            else "unknown"
        )

    import gmqtt
    import pymodbus

    import agent

    commit = first_line(["git", "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "status", "--porcelain", "--", "agent"]) not in ("unknown", "")
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": procfs.cpu_model(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": first_line([find_binary("mosquitto"), "-h"]),
        "pymodbus": pymodbus.__version__,
        "gmqtt": gmqtt.__version__,
        "agent_version": agent.__version__,
        "git_commit": commit + ("+agent-changes" if dirty else ""),
    }


_ROWS: list[tuple[str, tuple[str, ...], str]] = [
    # label, key path in a run's result, format
    ("points", ("check_config", "points"), "{:,}"),
    ("requests per cycle (check-config)", ("check_config", "requests_per_cycle"), "{:,}"),
    ("requests/s planned", ("check_config", "requests_per_second"), "{:,.1f}"),
    ("requests/s measured (plant)", ("requests_per_s",), "{:,.2f}"),
    ("RTU theoretical max requests/s", ("rtu", "theoretical_requests_per_s"), "{:,.1f}"),
    ("RTU achieved % of theoretical", ("rtu", "achieved_percent_of_theoretical"), "{:.1f} %"),
    ("RTU rig alone: requests/s", ("rtu", "rig_requests_per_s"), "{:,.1f}"),
    ("RTU rig alone: % of theoretical", ("rtu", "rig_percent_of_theoretical"), "{:.1f} %"),
    ("RTU achieved % of the rig alone", ("rtu", "achieved_percent_of_rig"), "{:.1f} %"),
    ("readings/s offered (plant)", ("readings_offered_per_s",), "{:,.0f}"),
    ("readings/s delivered", ("readings_delivered_per_s",), "{:,.0f}"),
    ("readings expected (whole run)", ("readings_expected",), "{:,}"),
    ("readings delivered (whole run)", ("readings_delivered",), "{:,}"),
    ("readings left in the queue at exit", ("readings_left_in_queue",), "{:,}"),
    ("delivered ratio (window)", ("delivered_ratio_window",), "{:.4f}"),
    ("delivered ratio (whole run)", ("delivered_ratio",), "{:.4f}"),
    ("missing (in-flight allowance)", (), "missing"),
    ("every reading accounted for", ("every_reading_accounted_for",), "{}"),
    ("latency p50 ms", ("latency_ms", "p50"), "{:,.1f}"),
    ("latency p95 ms", ("latency_ms", "p95"), "{:,.1f}"),
    ("latency max ms", ("latency_ms", "max"), "{:,.1f}"),
    ("agent CPU % (one core)", ("agent", "cpu_percent"), "{:.2f}"),
    ("agent CPU s per million readings", ("agent_cpu_seconds_per_million_readings",), "{:,.1f}"),
    ("agent RSS MiB (median)", ("agent", "rss_mib_median"), "{:.1f}"),
    ("agent RSS MiB (peak, VmHWM)", ("agent", "rss_mib_peak"), "{:.1f}"),
    ("agent bytes written/s", ("agent", "write_bytes_per_s"), "{:,.0f}"),
    ("payload bytes/s (received)", ("payload_bytes_per_s",), "{:,.0f}"),
    ("bytes written per payload byte", ("write_bytes_per_payload_byte",), "{:.3f}"),
    ("commits/s", ("commits_per_s",), "{}"),
    ("backlog: readings made, broker down", ("backlog", "outage_readings_made"), "{:,}"),
    ("backlog: seconds to make them", ("backlog", "outage_seconds"), "{:,.1f}"),
    ("backlog: readings/s queued", ("backlog", "outage_readings_per_s"), "{:,.0f}"),
    ("backlog: readings queued (file)", ("backlog", "queued_readings"), "{:,}"),
    ("backlog: messages queued (file)", ("backlog", "queued_messages"), "{:,}"),
    ("backlog: payload bytes queued", ("backlog", "queued_payload_bytes"), "{:,}"),
    ("backlog: stored bytes (zlib)", ("backlog", "queued_stored_bytes"), "{:,}"),
    ("backlog: queue file bytes", ("backlog", "queue_file_bytes_at_drain_start"), "{:,}"),
    ("backlog: agent CPU % while queueing", ("backlog", "outage_agent_cpu_percent"), "{:.1f}"),
    (
        "backlog: written per payload byte queueing",
        ("backlog", "outage_write_bytes_per_payload_byte"),
        "{:.3f}",
    ),
    (
        "backlog: agent RSS MiB peak before drain",
        ("backlog", "rss_mib_peak_before_drain"),
        "{:.1f}",
    ),
    ("drain: agent reconnected after s", ("backlog", "agent_connected_after_s"), "{:,.3f}"),
    ("drain: seconds (broker start to last)", ("backlog", "drain_seconds"), "{:,.2f}"),
    ("drain: seconds (reconnect to last)", ("backlog", "drain_seconds_after_connect"), "{:,.2f}"),
    ("drain: new readings arrived", ("backlog", "drained_readings"), "{:,}"),
    ("drain: readings/s (queued / seconds)", ("backlog", "drained_readings_per_s"), "{:,.0f}"),
    ("drain: complete", ("backlog", "drain_complete"), "{}"),
    ("drain: repeated readings", ("backlog", "drained_repeated"), "{:,}"),
    ("drain: agent CPU s", ("backlog", "drain_agent_cpu_seconds"), "{:,.2f}"),
    ("drain: agent CPU % (one core)", ("backlog", "drain_agent_cpu_percent"), "{:.1f}"),
    ("drain: agent bytes written", ("backlog", "drain_write_bytes"), "{:,}"),
    ("drain: VmHWM reset at broker start", ("backlog", "peak_rss_reset"), "{}"),
    ("soak: broker restarts (every s, down s)", (), "restarts"),
    ("soak: window hours (samples)", (), "window"),
    ("soak: RSS MiB after warm-up / at end", (), "soak:rss:levels"),
    ("soak: RSS slope MB/h (stderr)", (), "soak:rss:slope"),
    (
        "soak: RSS slope between restarts MB/h",
        ("soak", "rss", "slope_between_restarts_mb_per_h"),
        "{:.3f}",
    ),
    ("soak: RSS growth MB, fitted / measured", (), "soak:rss:growth"),
    (
        "soak: RSS growth over 2 h at that slope, MB",
        ("soak", "rss", "projected_growth_mb_2h"),
        "{:.2f}",
    ),
    ("soak: private dirty slope MB/h (stderr)", (), "soak:private_dirty:slope"),
    ("soak: C heap resident MiB, start / end", (), "soak:heap_rss:levels"),
    ("soak: C heap resident slope MB/h (stderr)", (), "soak:heap_rss:slope"),
    ("soak: late readings (after a newer one)", (), "late"),
    ("queue file bytes", ("queue_file_bytes",), "{:,}"),
    ("malformed / wrong / stale / repeated", (), "checks"),
    ("agent exit status", ("agent", "exit_status"), "{}"),
    ("plant CPU %", ("context_cpu_percent", "plant"), "{:.1f}"),
    ("broker CPU %", ("context_cpu_percent", "broker"), "{:.1f}"),
    ("socat CPU %", ("context_cpu_percent", "socat"), "{:.1f}"),
    ("harness+subscriber CPU %", ("context_cpu_percent", "harness"), "{:.1f}"),
    ("other processes CPU % (not the bench)", ("context_cpu_percent", "other_processes"), "{:.1f}"),
    ("machine busy % (all cores)", ("context_cpu_percent", "machine_busy_all_cores"), "{:.1f}"),
    ("machine busy % before the run", ("machine_busy_before_percent",), "{:.1f}"),
]


def _cell(result: dict[str, Any], path: tuple[str, ...], fmt: str) -> str:
    if fmt == "checks":
        tally = result["subscriber"]
        return " / ".join(
            str(tally[key]) for key in ("malformed", "wrong_value", "stale", "repeated")
        )
    if fmt == "missing":
        return f"{result['readings_missing']:,} ({result['in_flight_allowance']:,})"
    if fmt == "late":
        return f"{result['subscriber']['late']:,}" if "soak" in result else "-"
    if fmt.startswith("soak:") or fmt in ("restarts", "window"):
        return _soak_cell(result.get("soak"), fmt)
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return "-"
        value = value[key]
    if value is None:
        return "n/a"
    return fmt.format(value)


def _soak_cell(figures: dict[str, Any] | None, fmt: str) -> str:
    if figures is None:
        return "-"
    if fmt == "restarts":
        return (
            f"{figures['broker_restarts']} ({figures['restart_every_s']:g}, "
            f"{figures['outage_s']:g})"
        )
    if fmt == "window":
        return f"{figures.get('window_hours', 0):.2f} ({figures['samples_in_window']})"
    _, series, what = fmt.split(":")
    line = figures.get(series)
    if line is None:
        return "n/a"
    if what == "levels":
        return f"{line['start_mib']:.1f} / {line['end_mib']:.1f}"
    if what == "slope":
        stderr = line["slope_stderr_mb_per_h"]
        return (
            f"{line['slope_mb_per_h']:.3f} ({stderr:.3f})"
            if stderr is not None
            else (f"{line['slope_mb_per_h']:.3f}")
        )
    return f"{line['fitted_growth_mb']:.2f} / {line['measured_growth_mb']:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    rows = [(label, [_cell(r, path, fmt) for r in results]) for label, path, fmt in _ROWS]
    rows = [(label, cells) for label, cells in rows if any(c != "-" for c in cells)]
    heads = [r["name"] for r in results]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(heads)]
    lines = [
        " | ".join(
            ["metric".ljust(label_width), *(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
        ),
        "-+-".join(["-" * label_width, *("-" * w for w in widths)]),
    ]
    for label, cells in rows:
        lines.append(
            " | ".join(
                [
                    label.ljust(label_width),
                    *(c.rjust(w) for c, w in zip(cells, widths, strict=True)),
                ]
            )
        )
    return "\n".join(lines)


def profile_summary(path: Path, limit: int = 25) -> str:
    out = path.with_suffix(".txt")
    with out.open("w") as stream:
        stats = pstats.Stats(str(path), stream=stream)
        stats.strip_dirs().sort_stats("tottime").print_stats(limit)
        stats.sort_stats("cumulative").print_stats(limit)
    return _shown(out)


# -- command line ----------------------------------------------------------------------------


def _env_item(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--duration", type=float, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, help="seconds before the window opens")
    parser.add_argument(
        "--json", type=Path, help="result file (default bench/results/SCENARIO.json)"
    )
    parser.add_argument("--units", type=int, help="units (TCP: one connection each by default)")
    parser.add_argument(
        "--units-per-connection",
        type=int,
        help="TCP: units on one connection (one port, unit ids 1..N, as behind a gateway)",
    )
    parser.add_argument("--points", type=int, help="points per unit")
    parser.add_argument("--scale", type=int, default=1, help="multiply the number of units")
    parser.add_argument("--interval", type=float, help="poll interval, seconds")
    parser.add_argument(
        "--computations",
        nargs="?",
        const="both",
        choices=("aggregates", "derived", "both"),
        help=f"add a one-minute avg/min/max to every point (aggregates), {DERIVED_POINTS} "
        "derived points (derived), or both (the default)",
    )
    parser.add_argument("--max-readings", type=int, help="batch.max_readings")
    parser.add_argument(
        "--readings", type=int, help=f"backlog: readings to queue (default {BACKLOG_READINGS:,})"
    )
    parser.add_argument(
        "--baud",
        type=lambda text: [int(b) for b in text.split(",")],
        default=list(RTU_BAUDRATES),
        help="rtu: baud rates, comma separated",
    )
    parser.add_argument(
        "--line",
        choices=("pty", "line", "both"),
        default="both",
        help="rtu: a bare pty, a pty answered at the line's speed, or both",
    )
    parser.add_argument(
        "--restart-every",
        type=float,
        default=SOAK_RESTART_EVERY,
        help="soak: seconds between broker restarts (default %(default)g)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=SOAK_OUTAGE,
        help="soak: seconds the broker stays down each time (default %(default)g)",
    )
    parser.add_argument(
        "--sample-every",
        type=float,
        default=SOAK_SAMPLE_EVERY,
        help="soak: seconds between memory samples (default %(default)g)",
    )
    parser.add_argument(
        "--agent-env",
        type=_env_item,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the agent's environment (repeatable), e.g. MALLOC_MMAP_THRESHOLD_=65536",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="the run's files (default run/bench/SCENARIO): two runs at once need two",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the agent under cProfile (its CPU figures are then inflated)",
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="run the agent under tracemalloc (bench.memtrace): what it held "
        "at its highest point (its memory figures are then inflated)",
    )
    return parser.parse_args(argv)


async def run_all(
    runs: list[RunSpec],
    scenario: str,
    *,
    profile: bool,
    trace_memory: bool = False,
    run_dir: Path | None = None,
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)  # clean up as on Ctrl-C
    results = []
    for spec in runs:
        base = run_dir if run_dir is not None else RUNS_DIR / scenario
        directory = base if len(runs) == 1 else base / spec.name
        results.append(
            await BenchRun(spec, directory, profile=profile, trace_memory=trace_memory).run()
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["compare"]:  # options of its own: bench.compare
        from bench import compare

        return compare.main(arguments[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="bench: %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.CRITICAL)  # reconnect chatter is not data
    runs = build_runs(args.scenario, args)
    started = datetime.datetime.now(datetime.UTC)
    try:
        results = asyncio.run(
            run_all(
                runs,
                args.scenario,
                profile=args.profile,
                trace_memory=args.trace_memory,
                run_dir=args.run_dir.resolve() if args.run_dir else None,
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("interrupted; everything started was stopped")
        return EXIT_INTERRUPTED
    except HarnessError as exc:
        _say(f"could not run: {exc}")
        return EXIT_FAILED
    report = {
        "scenario": args.scenario,
        "command": shlex.join(
            [".venv/bin/python", "-m", "bench.harness", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "runs": results,
    }
    for result in results:
        if "profile" in result and (REPO / result["profile"]).exists():
            result["profile_summary"] = profile_summary(REPO / result["profile"])
    out = args.json or RESULTS_DIR / f"{args.scenario}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    print(
        f"\n{args.scenario}: {machine['nproc']} x {machine['cpu_model']}, "
        f"Python {machine['python']}, agent {machine['git_commit']}"
    )
    print(table(results))
    print(f"\nJSON: {out}")
    failed = [
        r["name"]
        for r in results
        if r["agent"]["crashed"]
        or r["agent"]["killed"]
        or r["agent"]["exit_status"] != 0
        or r["readings_delivered"] == 0
    ]
    if failed:
        _say(f"the agent crashed or delivered nothing in: {', '.join(failed)}")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
