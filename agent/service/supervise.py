"""Supervision: a source that fails unexpectedly is logged and restarted, alone.

A source (a poller, an instrument, the configurator) handles the failures it expects
(a device time-out, a lost serial line) itself. Anything else that escapes its `run()`
is a bug or a broken hand-off: `supervise` logs it, waits a capped, jittered,
exponential back-off and starts the source again, while the other sources keep running.

What is logged, so that a crash loop stays readable: the first failure of a kind (its
type and where it was raised) is an ERROR `source_failed` line with the traceback; the
same failure again is a one-line WARNING `source_failed` (with `repeats=`), its
traceback logged again only when the error changes or at most once an hour.

Cancellation is never swallowed: cancelling the supervising task stops the source and
ends the task cancelled, including during a back-off and when the source raises
something else while it is being cancelled. A CancelledError that nobody asked for (a
source awaiting a future someone else cancelled) is a failure of the source like any
other.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

_log = structlog.get_logger("agent.supervise")

HEALTHY_AFTER = 60.0  # seconds a source must run before its back-off starts again at the base
TRACEBACK_EVERY = 3600.0  # seconds: the same failure's traceback is logged at most this often
_MAX_DOUBLINGS = 30  # keeps base * 2 ** attempt a float, far above any cap

Kind = tuple[tuple[str, str, int], ...]  # per leaf: (type, file, line) where it was raised


async def supervise(
    name: str,
    factory: Callable[[], Coroutine[Any, Any, None]],
    *,
    backoff_min: float,
    backoff_max: float,
    healthy_after: float = HEALTHY_AFTER,
    log: FilteringBoundLogger | None = None,  # the module's logger by default
    jitter: Callable[[float, float], float] = random.uniform,
) -> None:
    """Run `factory()` (a fresh coroutine each time) and restart it whenever it fails.

    Returns when the source returns on its own. The back-off before restart n (counted
    since the source last ran `healthy_after` seconds) is `jitter(0, min(backoff_max,
    backoff_min * 2 ** (n - 1)))`.
    """
    logger = log if log is not None else _log  # not bound: a new log level applies at once
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "supervise runs in a task"
    restarts = attempt = repeats = 0
    logged_kind: Kind | None = None
    logged_at = 0.0
    while True:
        started = loop.time()
        # Each run in a task of its own: what the source does to its task's cancellation
        # count (before Python 3.13 a TaskGroup can leave it raised) stays there, and this
        # task's count says whether the supervisor is being cancelled.
        runner = asyncio.create_task(factory(), name=f"{name}.run")
        error: BaseException | None
        try:
            await runner
            return
        except asyncio.CancelledError as exc:
            if task.cancelling():
                error = await _finished(runner)
                if error is None:
                    raise
            else:
                error = exc  # not ours: a future the source awaited was cancelled
        except Exception as exc:  # anything that escapes a source's run() is unexpected
            error = exc
        now = loop.time()
        if now - started >= healthy_after:
            attempt = 0
        delay = jitter(0.0, min(backoff_max, backoff_min * 2 ** min(attempt, _MAX_DOUBLINGS)))
        attempt += 1
        stopping = task.cancelling() > 0
        fields: dict[str, Any] = {"source": name, "error": describe_error(error)}
        if stopping:
            fields.update(restarts=restarts, stopping=True)
        else:
            restarts += 1
            fields.update(restarts=restarts, retry_in=round(delay, 2))
        kind = failure_kind(error)
        if kind != logged_kind or now - logged_at >= TRACEBACK_EVERY:
            logged_kind, logged_at, repeats = kind, now, 0
            logger.error("source_failed", **fields, exc_info=primary(error))
        else:
            repeats += 1
            logger.warning("source_failed", **fields, repeats=repeats)
        if stopping:
            # Cancelled while failing: the source's TaskGroup raised its error instead of
            # the CancelledError. Honour the cancellation; do not restart.
            raise asyncio.CancelledError
        await asyncio.sleep(delay)


async def _finished(runner: asyncio.Task[None]) -> BaseException | None:
    """The run, cancelled with its supervisor, once over: what it failed with, if not
    the cancellation."""
    if not runner.done():
        runner.cancel()
        await asyncio.wait([runner])
    return None if runner.cancelled() else runner.exception()


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups; the error itself if not a group."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def primary(error: BaseException) -> BaseException:
    """What to show: the one exception a TaskGroup wrapped, or the group if it holds more."""
    found = leaves(error)
    return found[0] if len(found) == 1 else error


def describe_error(error: BaseException) -> str:
    """`Type: message` of each exception inside, joined by `; `."""
    parts = []
    for leaf in leaves(error):
        text = str(leaf)
        parts.append(f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__)
    return "; ".join(parts)


def failure_kind(error: BaseException) -> Kind:
    """What makes two failures 'the same': their types and where they were raised (the
    message may carry a changing value)."""
    kind = []
    for leaf in leaves(error):
        frame = leaf.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = ("", 0) if frame is None else (frame.tb_frame.f_code.co_filename, frame.tb_lineno)
        kind.append((type(leaf).__qualname__, *where))
    return tuple(kind)
