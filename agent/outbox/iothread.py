"""The durable outbox's one I/O thread: where every call of its store runs.

A slow or failing disk must never stall the event loop (polling, delivery), so
agent.outbox.disk hands each call of agent.outbox.store to this thread, one at a time
(the store is not thread-safe). Separate because the rules of the hand-over are their
own: a call, once started, completes even if its caller is cancelled, and shutdown
waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class QueueThread:
    """One worker thread and the call running in it, if any."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="queue-io"
        )
        self._job: asyncio.Future[Any] | None = None

    def call_blocking(self, call: Callable[[], T], *, timeout: float) -> T:
        """Run `call` in the thread and wait for it without a loop (at start-up); raises
        TimeoutError after `timeout` seconds (the call goes on)."""
        return self._executor.submit(call).result(timeout=timeout)

    async def call(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one call of the store in the I/O thread. The call completes even if the
        caller is cancelled (the next write repeats what it may have lost)."""
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))
        self._job = job
        try:
            return await asyncio.shield(job)
        finally:
            if self._job is job and job.done():
                self._job = None

    async def settle(self) -> bool:
        """Wait for a call its caller left running (cancelled), whatever its outcome; True
        if there was one (what it did may never have reached its caller)."""
        if self._job is None:
            return False
        with contextlib.suppress(Exception):
            await asyncio.shield(self._job)
        return True

    def shutdown(self) -> None:
        """Wait for the thread's work and end it."""
        self._executor.shutdown(wait=True)
