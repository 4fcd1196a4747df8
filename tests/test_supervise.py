"""Supervision of sources: a failing source is logged, backed off and restarted, alone.

The sources here are small fake coroutines; tests/test_serial.py runs real instruments
on ptys under `supervise`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.service.supervise import describe_error, failure_kind, primary, supervise

WAIT = 10.0
FAST: dict[str, Any] = {"backoff_min": 0.01, "backoff_max": 0.04}


def ceiling(_low: float, high: float) -> float:
    """A jitter that always takes the top of the range: back-offs become exact."""
    return high


def failures(entries: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in entries if e["event"] == "source_failed"]


class Source:
    """A fake source: each run raises the next of `errors`, then runs until cancelled."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.errors:
            self.raise_next()
        self.running.set()
        await asyncio.Event().wait()

    def raise_next(self) -> None:
        raise self.errors.pop(0)


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)


async def test_a_failing_source_is_logged_once_with_its_traceback_and_restarted() -> None:
    source = Source(RuntimeError("hand-off failed"))
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("serial[gps]", source.run, **FAST, jitter=ceiling))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert 2 == source.runs
    [failed] = failures(logs)
    error = failed.pop("exc_info")
    assert {
        "event": "source_failed",
        "log_level": "error",
        "source": "serial[gps]",
        "restarts": 1,
        "retry_in": 0.01,
        "error": "RuntimeError: hand-off failed",
    } == failed
    assert isinstance(error, RuntimeError)
    assert error.__traceback__ is not None


async def test_a_repeated_failure_logs_its_traceback_once_then_one_short_line_each() -> None:
    def same_place(n: int) -> None:
        raise ValueError(f"bad value {n}")

    class Repeating(Source):
        def raise_next(self) -> None:
            error = self.errors.pop(0)
            if isinstance(error, ValueError):
                same_place(self.runs)  # one raise site, another message each time
            raise error

    source = Repeating(ValueError(), ValueError(), ValueError(), KeyError("other"))
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("poll[meter1]", source.run, **FAST))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    shown = [
        (e["log_level"], e["error"], e.get("repeats"), "exc_info" in e) for e in failures(logs)
    ]
    assert [
        ("error", "ValueError: bad value 1", None, True),
        ("warning", "ValueError: bad value 2", 1, False),
        ("warning", "ValueError: bad value 3", 2, False),
        ("error", "KeyError: 'other'", None, True),
    ] == shown
    assert [1, 2, 3, 4] == [e["restarts"] for e in failures(logs)]


async def test_the_back_off_doubles_up_to_its_cap() -> None:
    source = Source(*[RuntimeError("again")] * 5)
    with capture_logs() as logs:
        task = asyncio.create_task(
            supervise(
                "poll[meter1]", source.run, backoff_min=0.01, backoff_max=0.05, jitter=ceiling
            )
        )
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert [0.01, 0.02, 0.04, 0.05, 0.05] == [e["retry_in"] for e in failures(logs)]


async def test_the_jitter_is_drawn_from_zero_to_the_ceiling() -> None:
    drawn: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    source = Source(RuntimeError("once"))
    task = asyncio.create_task(
        supervise("configurator", source.run, backoff_min=2.0, backoff_max=30.0, jitter=jitter)
    )
    await asyncio.wait_for(source.running.wait(), WAIT)
    await stopped(task)

    assert [(0.0, 2.0)] == drawn


async def test_the_back_off_starts_again_after_a_healthy_run() -> None:
    class HealthyThenFailing(Source):
        async def run(self) -> None:
            self.runs += 1
            if self.runs == 3:
                await asyncio.sleep(1.1)  # runs healthy for longer than healthy_after
            if self.runs <= 3:
                raise RuntimeError(f"run {self.runs}")
            self.running.set()
            await asyncio.Event().wait()

    source = HealthyThenFailing()
    with capture_logs() as logs:
        task = asyncio.create_task(
            supervise(
                "health",
                source.run,
                backoff_min=0.01,
                backoff_max=1.0,
                healthy_after=1.0,
                jitter=ceiling,
            )
        )
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert [0.01, 0.02, 0.01] == [e["retry_in"] for e in failures(logs)]


async def test_cancelling_during_the_back_off_stops_at_once() -> None:
    class SaysWhenItFails(Source):
        def __init__(self, *errors: BaseException) -> None:
            super().__init__(*errors)
            self.failed = asyncio.Event()

        def raise_next(self) -> None:
            self.failed.set()  # the supervisor logs and starts its back-off before we wake
            super().raise_next()

    source = SaysWhenItFails(RuntimeError("fails"))
    with capture_logs() as logs:
        task = asyncio.create_task(
            supervise(
                "poll[meter1]", source.run, backoff_min=3600.0, backoff_max=3600.0, jitter=ceiling
            )
        )
        await asyncio.wait_for(source.failed.wait(), WAIT)
        await stopped(task)

    assert 1 == source.runs
    assert [3600.0] == [e["retry_in"] for e in failures(logs)]


async def test_cancelling_a_running_source_propagates_and_does_not_restart() -> None:
    source = Source()
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("serial[gps]", source.run, **FAST))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert 1 == source.runs
    assert [] == failures(logs)


async def test_a_source_that_fails_while_being_cancelled_is_logged_and_not_restarted() -> None:
    class FailsOnCancel(Source):
        async def run(self) -> None:
            self.runs += 1
            self.running.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise RuntimeError("cleanup failed") from None

    source = FailsOnCancel()
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("serial[gps]", source.run, **FAST))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert 1 == source.runs
    [failed] = failures(logs)
    assert ("RuntimeError: cleanup failed", True, 0) == (
        failed["error"],
        failed["stopping"],
        failed["restarts"],
    )
    assert "retry_in" not in failed


async def test_a_cancelled_error_nobody_asked_for_is_a_failure_of_the_source() -> None:
    class AwaitsACancelledFuture(Source):
        async def run(self) -> None:
            self.runs += 1
            if self.runs == 1:
                future = asyncio.get_running_loop().create_future()
                future.cancel()  # e.g. a library cancelling its own futures
                await future
            self.running.set()
            await asyncio.Event().wait()

    source = AwaitsACancelledFuture()
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("mqtt", source.run, **FAST))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert 2 == source.runs
    assert ["CancelledError"] == [e["error"] for e in failures(logs)]


async def test_a_source_that_returns_is_not_restarted() -> None:
    runs = 0

    async def finishes() -> None:
        nonlocal runs
        runs += 1

    with capture_logs() as logs:
        await asyncio.wait_for(supervise("configurator", finishes, **FAST), WAIT)

    assert (1, []) == (runs, failures(logs))


async def test_an_error_from_a_sources_task_group_is_shown_unwrapped() -> None:
    async def talker() -> None:
        raise ZeroDivisionError("division by zero")

    class WithTaskGroup(Source):
        async def run(self) -> None:
            self.runs += 1
            if self.runs == 1:
                async with asyncio.TaskGroup() as group:
                    group.create_task(talker(), name="serial[gps].talk")
                    await asyncio.Event().wait()
            self.running.set()
            await asyncio.Event().wait()

    source = WithTaskGroup()
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("serial[gps]", source.run, **FAST))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    [failed] = failures(logs)
    assert "ZeroDivisionError: division by zero" == failed["error"]
    assert isinstance(failed["exc_info"], ZeroDivisionError)


async def test_a_task_group_child_failing_after_the_body_ended_is_restarted_each_time() -> None:
    """Before Python 3.13 the TaskGroup then leaves its task's cancellation count raised:
    that must not make the supervisor think it is being cancelled."""

    async def talker() -> None:
        await asyncio.sleep(0)
        raise ZeroDivisionError("division by zero")

    class BodyEndsFirst(Source):
        async def run(self) -> None:
            self.runs += 1
            if self.runs <= 2:
                async with asyncio.TaskGroup() as group:
                    group.create_task(talker(), name="talk")
            self.running.set()
            await asyncio.Event().wait()

    source = BodyEndsFirst()
    with capture_logs() as logs:
        task = asyncio.create_task(supervise("serial[gps]", source.run, **FAST))
        await asyncio.wait_for(source.running.wait(), WAIT)
        await stopped(task)

    assert 3 == source.runs
    assert [(1, False), (2, False)] == [(e["restarts"], "stopping" in e) for e in failures(logs)]


def caught(fail: Callable[[], None]) -> BaseException:
    try:
        fail()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def fail_here(n: int) -> None:
    raise RuntimeError(f"n={n}")


def fail_elsewhere(n: int) -> None:
    raise RuntimeError(f"n={n}")


def test_describing_groups_names_every_error_inside() -> None:
    group = ExceptionGroup("two", [ValueError("a"), ExceptionGroup("inner", [KeyError("k")])])

    assert "ValueError: a; KeyError: 'k'" == describe_error(group)
    assert group is primary(group)
    assert 2 == len(failure_kind(group))


def test_the_kind_of_a_failure_is_its_type_and_where_it_was_raised() -> None:
    first, second = caught(lambda: fail_here(1)), caught(lambda: fail_here(2))
    elsewhere = caught(lambda: fail_elsewhere(1))

    assert failure_kind(first) == failure_kind(second)
    assert failure_kind(first) != failure_kind(elsewhere)
