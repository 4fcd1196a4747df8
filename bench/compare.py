"""orio-agent next to the bare reference poller, on the same plant, at several scales.

``python -m bench.harness compare [--scales 1,5,20] [--rounds 3] [--duration S]`` (or
``python -m bench.compare ...``). Scale N is N x 1,000 readings/s: 20 x N Modbus TCP units
(one connection each) x 50 float32 points in 100 holding registers, every 1 s; above 400
units the units stay 400 and the interval shortens. For each scale, `--rounds` rounds of
two runs, one after the other: the bare poller (:mod:`bench.bare`) alone, then orio-agent
alone, each with a fresh broker, plant and subscriber, the same warm-up and the same
window, measured as the harness measures the agent (:class:`bench.harness.BenchRun`): CPU
and RSS of the process (all its threads; the agent's config child has exited by then),
requests/s counted by the plant, readings delivered and expected, and their age on arrival at the
subscriber. Then a table per scale, min / median / max of the rounds for each, and the
ratios agent / bare of the medians; the JSON goes to bench/results/compare.json.

The bare poller's output goes to its run directory's ``agent.log``, where the harness's
messages about the process under test look.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import (
    BatchSpec,
    BenchRun,
    Child,
    HarnessError,
    Layout,
    Plan,
    PlantProcess,
    QuietBroker,
    RunSpec,
    Snapshot,
)
from bench.plant import PlantSpec
from bench.subscriber import Subscriber
from sim.broker import Broker
from sim.cloud import data_topic

SCALES = (1, 5, 20)
ROUNDS = 3
WARMUP = 5.0
DURATION = 20.0  # 3 scales x 3 rounds x 2 systems x (5 + 20 + RUN_OVERHEAD s): about 10 min
POINTS = 50  # per unit: 100 registers, one read
UNITS_PER_SCALE = 20
MAX_UNITS = 400  # one port and one connection each; beyond, the interval shortens
SYSTEMS = ("bare", "agent")
RUN_OVERHEAD = 7.0  # seconds per run beyond warm-up and window: start, settle, stop, tail


def scale_layout(scale: int) -> Layout:
    """Scale N: N x 1,000 float32 readings/s, 50 points per unit, one unit per connection."""
    units = min(UNITS_PER_SCALE * scale, MAX_UNITS)
    return Layout("tcp", units, POINTS, "float32", units * POINTS / (1000 * scale))


def describe(layout: Layout) -> str:
    readings = layout.units * layout.points / layout.interval
    return (
        f"{layout.units} units x {layout.points} {layout.kind} points every "
        f"{layout.interval:g} s ({readings:,.0f} readings/s, "
        f"{layout.units / layout.interval:,.0f} requests/s)"
    )


# -- the two runs ---------------------------------------------------------------------------


class AgentRun(BenchRun):
    """The harness's run of orio-agent, with the readings' mean age in the window too."""

    system = "orio-agent"

    def _result(
        self,
        plan: Plan,
        subscriber: Subscriber,
        first: Snapshot,
        last: Snapshot,
        stop: dict[str, Any],
        agent: Child,
    ) -> dict[str, Any]:
        result = super()._result(plan, subscriber, first, last, stop, agent)
        ages = [
            age
            for stamp, age in zip(subscriber.timestamps, subscriber.latencies_ms, strict=True)
            if first.wall <= stamp < last.wall
        ]
        result["system"] = self.system
        result["age_ms_mean"] = round(statistics.fmean(ages), 1) if ages else None
        return result


class BareRun(AgentRun):
    """The same run with the bare poller in the agent's place: the same broker, plant,
    subscriber and measurement (`_measure`, `_result`); no check-config, no queue."""

    system = "bare"

    async def run(self) -> dict[str, Any]:
        spec, directory, layout = self.spec, self.directory, self.spec.layout
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.busy_before = await harness._machine_busy()
        _warn_if_busy(self.busy_before)
        async with contextlib.AsyncExitStack() as stack:
            broker = QuietBroker(directory / "broker", persistence=False)
            broker.start()
            stack.callback(broker.stop)
            plant_spec = PlantSpec("tcp", layout.units, layout.points, layout.kind)
            plant = await PlantProcess.start(plant_spec, directory / "plant.log")
            stack.push_async_callback(plant.stop)
            subscriber = Subscriber(broker, self._points(), health_bucket=harness.HEALTH_BUCKET)
            await subscriber.connect(timeout=harness.START_TIMEOUT)
            stack.push_async_callback(harness._disconnect, subscriber)
            config_path = directory / "bare.json"
            config_path.write_text(json.dumps(bare_config(layout, broker, plant.ports), indent=1))
            argv = [sys.executable, "-m", "bench.bare", "--config", str(config_path)]
            poller = await Child.spawn(
                "bare poller",
                argv,
                log_path=directory / "agent.log",
                env=harness.agent_environment(),
            )
            self.started = time.monotonic()
            stack.push_async_callback(poller.stop, signal.SIGTERM, harness.STOP_TIMEOUT)
            harness._say(
                f"{spec.name}: bare poller pid {poller.pid}; warming up {spec.warmup:g} s, "
                f"then measuring {spec.duration:g} s"
            )
            checker = asyncio.create_task(self._process_forever(subscriber), name="subscriber")
            try:
                first, last, stop = await self._measure(poller, plant, broker, subscriber)
            finally:
                checker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checker
            subscriber.process()
            # What check-config says of the agent's config for this layout: one read per unit.
            units = layout.units
            plan = Plan(units, units * layout.points, units, units / layout.interval)
            return self._result(plan, subscriber, first, last, stop, poller)


def bare_config(layout: Layout, broker: Broker, ports: Sequence[int]) -> dict[str, Any]:
    """bench.bare's config: the agent's broker login and topic, the same requests."""
    return {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"thing:{broker.thing_id}",
            "username": broker.thing_id,
            "password": broker.thing_secret,
        },
        "topic": data_topic(broker.thing_id, harness.BUCKET),
        "interval": layout.interval,
        "units": [
            {
                "host": "127.0.0.1",
                "port": port,
                "unit": 1,
                "address": 0,
                "ids": [harness.point_id(n, p) for p in range(layout.points)],
            }
            for n, port in enumerate(ports)
        ],
    }


def _warn_if_busy(busy: float) -> None:
    if busy > harness.BUSY_WARNING:
        harness._say(
            f"warning: the machine is {busy:.0f} % busy before the run (other processes): "
            "CPU-bound figures will be low"
        )


async def compare(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    """Every scale's rounds, bare poller then agent; each scale's runs and their summary."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)  # clean up as on Ctrl-C
    scales = []
    for scale in args.scales:
        setup = scale_layout(scale)
        rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
        harness._say(f"scale {scale}: {describe(setup)}; {rounds}")
        runs: dict[str, list[dict[str, Any]]] = {system: [] for system in SYSTEMS}
        for n in range(1, args.rounds + 1):
            for system, kind in (("bare", BareRun), ("agent", AgentRun)):
                env = tuple(args.agent_env) if system == "agent" else ()
                name = f"{scale}k-r{n}-{system}"
                spec = RunSpec(name, setup, BatchSpec(), args.warmup, args.duration, agent_env=env)
                directory = base / f"{scale}k" / f"r{n}-{system}"
                runs[system].append(await kind(spec, directory, profile=False).run())
        scales.append(
            {
                "scale": scale,
                "layout": dataclasses.asdict(setup),
                "described": describe(setup),
                "summary": summarize(runs),
                "runs": runs,
            }
        )
    return scales


# -- figures ---------------------------------------------------------------------------------

# key in the summary, label, key path in a run's result, format
METRICS: list[tuple[str, str, tuple[str, ...], str]] = [
    ("cpu_percent", "CPU % (one core)", ("agent", "cpu_percent"), "{:.2f}"),
    (
        "cpu_s_per_million_readings",
        "CPU s per million readings",
        ("agent_cpu_seconds_per_million_readings",),
        "{:,.1f}",
    ),
    ("rss_mib_median", "RSS MiB (median of the window)", ("agent", "rss_mib_median"), "{:.1f}"),
    ("rss_mib_peak", "RSS MiB (peak, VmHWM)", ("agent", "rss_mib_peak"), "{:.1f}"),
    ("requests_per_s", "requests/s (plant)", ("requests_per_s",), "{:,.2f}"),
    (
        "readings_offered_per_s",
        "readings/s offered (plant)",
        ("readings_offered_per_s",),
        "{:,.0f}",
    ),
    ("readings_delivered_per_s", "readings/s delivered", ("readings_delivered_per_s",), "{:,.0f}"),
    (
        "delivered_ratio_window",
        "delivered / offered (window)",
        ("delivered_ratio_window",),
        "{:.4f}",
    ),
    ("readings_expected", "readings expected (whole run)", ("readings_expected",), "{:,g}"),
    ("readings_delivered", "readings delivered (whole run)", ("readings_delivered",), "{:,g}"),
    ("delivered_ratio", "delivered / expected (whole run)", ("delivered_ratio",), "{:.4f}"),
    (
        "readings_left_in_queue",
        "readings left in the queue at exit",
        ("readings_left_in_queue",),
        "{:,g}",
    ),
    ("age_ms_mean", "age on arrival ms, mean (window)", ("age_ms_mean",), "{:,.1f}"),
    ("age_ms_p50", "age on arrival ms, p50", ("latency_ms", "p50"), "{:,.1f}"),
    ("age_ms_p95", "age on arrival ms, p95", ("latency_ms", "p95"), "{:,.1f}"),
    ("plant_cpu_percent", "plant CPU %", ("context_cpu_percent", "plant"), "{:.1f}"),
    ("broker_cpu_percent", "broker CPU %", ("context_cpu_percent", "broker"), "{:.1f}"),
    (
        "harness_cpu_percent",
        "harness+subscriber CPU %",
        ("context_cpu_percent", "harness"),
        "{:.1f}",
    ),
    (
        "other_processes_cpu_percent",
        "other processes CPU % (not the bench)",
        ("context_cpu_percent", "other_processes"),
        "{:.1f}",
    ),
    (
        "machine_busy_percent",
        "machine busy % (all cores)",
        ("context_cpu_percent", "machine_busy_all_cores"),
        "{:.1f}",
    ),
]


def _value(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Min, median and max of the rounds' values (those there are)."""
    known = [v for v in values if v is not None]
    if not known:
        return {"min": None, "median": None, "max": None}
    return {"min": min(known), "median": statistics.median(known), "max": max(known)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system, each metric's spread over the rounds; then the ratios agent / bare."""
    summary: dict[str, Any] = {
        system: {
            key: spread([_value(result, path) for result in runs[system]])
            for key, _, path, _ in METRICS
        }
        for system in SYSTEMS
    }
    for system in SYSTEMS:
        summary[system]["accounted_for"] = sum(
            bool(result["every_reading_accounted_for"]) for result in runs[system]
        )
    summary["ratios"] = ratios(summary, runs)
    return summary


def _divided(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(summary: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Agent / bare: CPU of the medians (and of each round's pair), RSS difference and ratio
    of the medians."""
    cpu = ("agent", "cpu_percent")
    paired = [
        _divided(_value(agent, cpu), _value(bare, cpu))
        for bare, agent in zip(runs["bare"], runs["agent"], strict=True)
    ]
    bare_rss = summary["bare"]["rss_mib_median"]["median"]
    agent_rss = summary["agent"]["rss_mib_median"]["median"]
    return {
        "cpu": _divided(
            summary["agent"]["cpu_percent"]["median"], summary["bare"]["cpu_percent"]["median"]
        ),
        "cpu_rounds": spread(paired),
        "cpu_per_reading": _divided(
            summary["agent"]["cpu_s_per_million_readings"]["median"],
            summary["bare"]["cpu_s_per_million_readings"]["median"],
        ),
        "rss_difference_mib": (
            round(agent_rss - bare_rss, 1)
            if agent_rss is not None and bare_rss is not None
            else None
        ),
        "rss": _divided(agent_rss, bare_rss),
    }


def _shown(figures: dict[str, float | None], fmt: str) -> str:
    """min / median / max, or the one value when they are the same."""
    low, middle, high = figures["min"], figures["median"], figures["max"]
    if middle is None or low is None or high is None:
        return "n/a"
    if low == high:
        return fmt.format(middle)
    return " / ".join(fmt.format(v) for v in (low, middle, high))


def grid(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A text table: the first column to the left, the others to the right."""
    widths = [max(len(head), *(len(row[i]) for row in rows)) for i, head in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return " | ".join([cells[0].ljust(widths[0]), *rest])

    return "\n".join([line(heads), "-+-".join("-" * w for w in widths), *map(line, rows)])


def scale_table(scale: dict[str, Any], rounds: int) -> str:
    summary = scale["summary"]
    rows = [
        [label, *(_shown(summary[system][key], fmt) for system in SYSTEMS)]
        for key, label, _, fmt in METRICS
    ]
    rows.append(
        [
            "runs with every reading accounted for",
            *(f"{summary[system]['accounted_for']} of {rounds}" for system in SYSTEMS),
        ]
    )
    spread_of = "min / median / max" if rounds > 1 else "1 round"
    heads = ["metric", f"bare poller ({spread_of})", f"orio-agent ({spread_of})"]
    return f"scale {scale['scale']}: {scale['described']}\n" + grid(heads, rows)


def _format(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def ratio_table(scales: list[dict[str, Any]]) -> str:
    heads = [
        "scale",
        "readings/s",
        "CPU % bare",
        "CPU % agent",
        "CPU agent/bare (rounds)",
        "RSS MiB bare",
        "RSS MiB agent",
        "RSS agent-bare MiB",
        "RSS agent/bare",
    ]
    rows = []
    for scale in scales:
        summary, ratio = scale["summary"], scale["summary"]["ratios"]
        medians = {
            (system, key): summary[system][key]["median"]
            for system in SYSTEMS
            for key in ("cpu_percent", "rss_mib_median")
        }
        plant = scale["layout"]
        rows.append(
            [
                str(scale["scale"]),
                f"{plant['units'] * plant['points'] / plant['interval']:,.0f}",
                _format(medians["bare", "cpu_percent"], "{:.2f}"),
                _format(medians["agent", "cpu_percent"], "{:.2f}"),
                f"{_format(ratio['cpu'], 'x{:.2f}')} ({_shown(ratio['cpu_rounds'], 'x{:.2f}')})",
                _format(medians["bare", "rss_mib_median"], "{:.1f}"),
                _format(medians["agent", "rss_mib_median"], "{:.1f}"),
                _format(ratio["rss_difference_mib"], "{:+.1f}"),
                _format(ratio["rss"], "x{:.2f}"),
            ]
        )
    return "medians of the rounds; agent / bare\n" + grid(heads, rows)


# -- command line ----------------------------------------------------------------------------


def _scales(text: str) -> list[int]:
    try:
        scales = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers") from None
    if not scales or min(scales) < 1:
        raise argparse.ArgumentTypeError("a scale is a whole number from 1")
    return scales


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scales",
        type=_scales,
        default=",".join(map(str, SCALES)),  # through `type`, as one typed in
        help="thousands of readings/s, comma separated (default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="default %(default)s")
    parser.add_argument(
        "--duration", type=float, default=DURATION, help="window, seconds (default %(default)g)"
    )
    parser.add_argument(
        "--warmup", type=float, default=WARMUP, help="seconds before it (default %(default)g)"
    )
    parser.add_argument(
        "--json", type=Path, help="result file (default bench/results/compare.json)"
    )
    parser.add_argument("--run-dir", type=Path, help="the runs' files (default run/bench/compare)")
    parser.add_argument(
        "--agent-env",
        type=harness._env_item,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the agent's environment (repeatable; not the bare poller's)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _failed(result: dict[str, Any]) -> bool:
    process = result["agent"]
    return bool(
        process["crashed"]
        or process["killed"]
        or process["exit_status"] != 0
        or result["readings_delivered"] == 0
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    logging.basicConfig(level=logging.WARNING, format="bench: %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.CRITICAL)  # reconnect chatter is not data
    base = args.run_dir.resolve() if args.run_dir else harness.RUNS_DIR / "compare"
    count = len(args.scales) * args.rounds * len(SYSTEMS)
    minutes = count * (args.warmup + args.duration + RUN_OVERHEAD) / 60
    harness._say(f"{count} runs of {args.warmup:g} + {args.duration:g} s: about {minutes:.0f} min")
    started = datetime.datetime.now(datetime.UTC)
    try:
        scales = asyncio.run(compare(args, base))
    except (KeyboardInterrupt, asyncio.CancelledError):
        harness._say("interrupted; everything started was stopped")
        return harness.EXIT_INTERRUPTED
    except HarnessError as exc:
        harness._say(f"could not run: {exc}")
        return harness.EXIT_FAILED
    machine = harness.machine_info()
    report = {
        "scenario": "compare",
        "command": shlex.join([".venv/bin/python", "-m", "bench.harness", "compare", *arguments]),
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "scales": args.scales,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "window_s": args.duration,
        },
        "scales": scales,
    }
    out = args.json or harness.RESULTS_DIR / "compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ncompare: {machine['nproc']} x {machine['cpu_model']} ({machine['cpus_usable']} "
        f"usable), {machine['memory_mib']:,} MiB, kernel {machine['kernel']}, Python "
        f"{machine['python']}, pymodbus {machine['pymodbus']}, gmqtt {machine['gmqtt']}, "
        f"agent {machine['git_commit']}; warm-up {args.warmup:g} s, window {args.duration:g} s"
    )
    for scale in scales:
        print(f"\n{scale_table(scale, args.rounds)}")
    print(f"\n{ratio_table(scales)}")
    print(f"\nJSON: {out}")
    failed = [
        result["name"]
        for scale in scales
        for system in SYSTEMS
        for result in scale["runs"][system]
        if _failed(result)
    ]
    if failed:
        harness._say(f"crashed or delivered nothing in: {', '.join(failed)}")
        return harness.EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
