"""The soak's memory figures: least-squares slopes of the agent's memory over time.

The harness samples the agent (:func:`bench.procfs.memory`) every few seconds for the whole
run, restarting the broker every so often; :func:`summarize` takes the samples after the
warm-up and gives, per series (VmRSS, private dirty, the C heap), the slope fitted by least
squares in MB (10^6 bytes) per hour, its standard error, the growth that slope makes over
the window and over two hours, and the growth as measured: the median of the last minute
minus the median of the first. The slope within the stretches between broker restarts
(one line per stretch, a common slope: each stretch's own mean taken out) says whether the
memory grows while connected as much as across the restarts.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.procfs import MemorySample

KIB = 1024
MB = 1_000_000
MIB = 1024 * 1024
HOUR = 3600.0
EDGE = 60.0  # seconds at each end of the window whose medians give the measured growth
PROJECTION_HOURS = 2.0
SERIES = {  # name in the report: the sample's field
    "rss": "rss_kib",
    "private_dirty": "private_dirty_kib",
    "heap_rss": "heap_rss_kib",
}


@dataclass(frozen=True, slots=True)
class Fit:
    slope: float  # y units per x unit
    stderr: float | None  # of the slope; None with fewer than three points


def fit(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Ordinary least squares y = a + b x; None with fewer than two distinct x."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if n < 3:
        return Fit(slope, None)
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return Fit(slope, math.sqrt(residual / (n - 2) / sxx))


def pooled_slope(segments: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float | None:
    """One slope for several stretches, each with its own intercept (within-group OLS)."""
    sxy = sxx = 0.0
    for xs, ys in segments:
        if len(xs) < 2:
            continue
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxy += sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        sxx += sum((x - mx) ** 2 for x in xs)
    return sxy / sxx if sxx else None


def summarize(
    samples: Sequence[MemorySample], *, start: float, window_start: float, restarts: Sequence[float]
) -> dict[str, object]:
    """Figures for the samples taken at or after `window_start` (time.monotonic(), as the
    samples' `at`); `start` is the agent's start and `restarts` the moments the broker was
    stopped, both on the same clock."""
    inside = [s for s in samples if s.at >= window_start]
    result: dict[str, object] = {"samples_in_window": len(inside)}
    if len(inside) < 2:
        return result
    hours = [(s.at - start) / HOUR for s in inside]
    window_h = hours[-1] - hours[0]
    result["window_hours"] = round(window_h, 3)
    cuts = [window_start, *sorted(r for r in restarts if r > window_start), math.inf]
    for name, field in SERIES.items():
        ys = [getattr(s, field) * KIB / MB for s in inside]  # MB
        line = fit(hours, ys)
        if line is None:
            continue
        first = [y for s, y in zip(inside, ys, strict=True) if s.at - inside[0].at < EDGE]
        last = [y for s, y in zip(inside, ys, strict=True) if inside[-1].at - s.at < EDGE]
        segments = []
        for low, high in itertools.pairwise(cuts):
            pairs = [
                (h, y) for s, h, y in zip(inside, hours, ys, strict=True) if low <= s.at < high
            ]
            segments.append(([h for h, _ in pairs], [y for _, y in pairs]))
        within = pooled_slope(segments)
        result[name] = {
            "start_mib": round(statistics.median(first) * MB / MIB, 2),
            "end_mib": round(statistics.median(last) * MB / MIB, 2),
            "slope_mb_per_h": round(line.slope, 3),
            "slope_stderr_mb_per_h": round(line.stderr, 3) if line.stderr is not None else None,
            "slope_between_restarts_mb_per_h": round(within, 3) if within is not None else None,
            "fitted_growth_mb": round(line.slope * window_h, 3),
            "measured_growth_mb": round(statistics.median(last) - statistics.median(first), 3),
            "projected_growth_mb_2h": round(line.slope * PROJECTION_HOURS, 3),
        }
    return result
