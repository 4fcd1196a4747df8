"""A process's CPU time, memory and disk writes, and the machine's CPU, from /proc.

CPU is utime + stime of the process (all its threads, not its children) in clock ticks;
memory is VmRSS (resident now) and VmHWM (the peak resident size); disk writes are
``write_bytes`` of /proc/<pid>/io: bytes the process caused to be sent to storage.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STAT_UTIME = 11  # fields after the ")" that closes comm: utime is the 14th field overall
_STAT_STIME = 12


@dataclass(frozen=True, slots=True)
class ProcSample:
    at: float  # time.monotonic()
    cpu_seconds: float
    rss_kib: int
    hwm_kib: int
    threads: int
    write_bytes: int | None  # None when /proc/<pid>/io is not readable


def sample(pid: int) -> ProcSample | None:
    """The process now, or None when it is gone."""
    base = Path(f"/proc/{pid}")
    try:
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[_STAT_UTIME]) + int(fields[_STAT_STIME])) / CLOCK_TICKS
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        io = (base / "io").read_text()
        write_bytes: int | None = int(
            next(line for line in io.splitlines() if line.startswith("write_bytes:")).split()[1]
        )
    except (OSError, StopIteration):
        write_bytes = None
    return ProcSample(
        at=time.monotonic(),
        cpu_seconds=cpu,
        rss_kib=_kib(values.get("VmRSS")),
        hwm_kib=_kib(values.get("VmHWM")),
        threads=int(values.get("Threads", "0").strip() or 0),
        write_bytes=write_bytes,
    )


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (``5`` to /proc/PID/clear_refs, Linux 4.0
    and later; needs the right to ptrace it): VmHWM is then the peak since now."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


_TCP_ESTABLISHED = "01"


def tcp_connected(pid: int, port: int) -> bool:
    """Whether the process has an established TCP connection to `port` (IPv4 or IPv6):
    its socket inodes (/proc/PID/fd) matched against /proc/net/tcp*."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == _TCP_ESTABLISHED
                and fields[9] in inodes
                and int(fields[2].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False


def cpu_percent(first: ProcSample, last: ProcSample) -> float:
    """CPU used between two samples, as a percentage of one core."""
    elapsed = last.at - first.at
    return 100.0 * (last.cpu_seconds - first.cpu_seconds) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class MachineSample:
    at: float
    busy_ticks: int
    total_ticks: int


def machine() -> MachineSample:
    """All cores together, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return MachineSample(at=time.monotonic(), busy_ticks=total - idle, total_ticks=total)


def machine_busy_percent(first: MachineSample, last: MachineSample) -> float:
    """How busy all cores were together (100 = every core busy)."""
    total = last.total_ticks - first.total_ticks
    return 100.0 * (last.busy_ticks - first.busy_ticks) / total if total > 0 else 0.0


def children(parent: int, name: str) -> list[int]:
    """Pids of `parent`'s child processes whose command name is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and comm == name:
            found.append(int(entry.name))
    return found


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _kib(text: str | None) -> int:
    return int(text.split()[0]) if text else 0


@dataclass(frozen=True, slots=True)
class MemorySample:
    """Where a process's resident memory is, in KiB: VmRSS, and from /proc/PID/smaps_rollup
    its private dirty pages and anonymous memory; from /proc/PID/smaps the C heap's mapping
    (``[heap]``, what brk grew: glibc's main arena), its size and resident part."""

    at: float  # time.monotonic()
    rss_kib: int
    private_dirty_kib: int
    anonymous_kib: int
    heap_size_kib: int
    heap_rss_kib: int


def memory(pid: int) -> MemorySample | None:
    """The process's memory now, or None when it is gone."""
    base = Path(f"/proc/{pid}")
    try:
        rollup = (base / "smaps_rollup").read_text()
        smaps = (base / "smaps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = {}
    for line in rollup.splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = _kib(rest)
    heap_size = heap_rss = 0
    lines = smaps.splitlines()
    for index, line in enumerate(lines):
        if line.endswith("[heap]"):
            for detail in lines[index + 1 :]:
                name, _, rest = detail.partition(":")
                if name == "Size":
                    heap_size = _kib(rest)
                elif name == "Rss":
                    heap_rss = _kib(rest)
                elif " " in name:  # the next mapping's header
                    break
            break
    return MemorySample(
        at=time.monotonic(),
        rss_kib=fields.get("Rss", 0),
        private_dirty_kib=fields.get("Private_Dirty", 0),
        anonymous_kib=fields.get("Anonymous", 0),
        heap_size_kib=heap_size,
        heap_rss_kib=heap_rss,
    )
