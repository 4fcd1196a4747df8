"""Run a module under tracemalloc and report what was allocated at its highest point.

``python -m bench.memtrace OUT [--preload M,N] -m MODULE ARGS...`` imports the modules
M, N (before tracing: importing under tracemalloc is several times slower, and what an
import allocates stays as it is), then runs MODULE as ``__main__`` with ARGS (as
``python -m MODULE ARGS...`` would) while a thread samples the traced memory every 0.05 s
and takes a snapshot each time it is 2 MiB above the highest seen so far (a snapshot
stops the process for a moment). When MODULE exits, OUT gets: the peak traced memory,
the process's VmHWM, and the biggest allocation sites of the snapshot taken at the
highest point, by line and by traceback.

The bench's ``--trace-memory`` runs the agent so (``agent.mem.txt`` in the run's folder).
tracemalloc slows the traced process and adds to its RSS: do not quote its figures.
"""

from __future__ import annotations

import importlib
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

FRAMES = 10
PERIOD = 0.05
STEP = 2 * 1024 * 1024  # a snapshot only when this much above the last one
TOP = 25
TRACEBACKS = 6
MIB = 1024 * 1024


class PeakWatcher(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="memtrace", daemon=True)
        self.stop = threading.Event()
        self.best = 0
        self.best_at = 0.0
        self.snapshot: tracemalloc.Snapshot | None = None
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(PERIOD):
            current, _ = tracemalloc.get_traced_memory()
            if current > self.best + STEP:
                self.snapshot = tracemalloc.take_snapshot()
                self.best = current
                self.best_at = time.monotonic() - self.started


def _vm(field: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    return "?"


def report(watcher: PeakWatcher, out: Path) -> None:
    _, peak = tracemalloc.get_traced_memory()
    lines = [
        f"tracemalloc peak: {peak / MIB:.1f} MiB; VmHWM {_vm('VmHWM')}, VmRSS {_vm('VmRSS')} "
        "(both inflated by tracemalloc itself)",
    ]
    snapshot = watcher.snapshot
    if snapshot is None:
        lines.append("no snapshot: traced memory never grew by 2 MiB")
    else:
        snapshot = snapshot.filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            ]
        )
        by_line = snapshot.statistics("lineno")
        total = sum(stat.size for stat in by_line)
        lines.append(
            f"snapshot at the highest point ({watcher.best_at:.1f} s after start): "
            f"{total / MIB:.1f} MiB traced"
        )
        lines.append("")
        lines.append(f"top {TOP} lines:")
        for stat in by_line[:TOP]:
            frame = stat.traceback[0]
            lines.append(
                f"  {stat.size / MIB:8.2f} MiB {stat.count:8d} blocks  "
                f"{frame.filename}:{frame.lineno}"
            )
        lines.append("")
        lines.append(f"top {TRACEBACKS} tracebacks:")
        for stat in snapshot.statistics("traceback")[:TRACEBACKS]:
            lines.append(f"  {stat.size / MIB:.2f} MiB in {stat.count} blocks:")
            lines.extend(f"    {line}" for line in stat.traceback.format(most_recent_first=True))
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    preload: list[str] = []
    if len(argv) > 2 and argv[1] == "--preload":
        preload = argv[2].split(",")
        argv = [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "-m":
        sys.exit("usage: python -m bench.memtrace OUT [--preload M,N] -m MODULE [ARGS...]")
    out, module, args = Path(argv[0]), argv[2], argv[3:]
    for name in preload:
        importlib.import_module(name)
    tracemalloc.start(FRAMES)
    watcher = PeakWatcher()
    watcher.start()
    sys.argv = [module, *args]
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        watcher.stop.set()
        watcher.join(timeout=5.0)
        report(watcher, out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
