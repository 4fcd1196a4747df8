"""The heap after start-up: what loading the config left behind, given back.

Loading a config holds the file's text, its TOML tree and pydantic's validated models at
once, several times the size of the resolved config the agent keeps (a 1,000-point file
with an aggregate on every point: about 7 MB at its peak, 0.9 MB kept). Python frees
those objects, but the pages they took stay in the process unless the allocator gives
them back, and on a small gateway that is resident memory for the whole year.

`settle()` runs once the agent is built, at start-up and after each reload:
    - a full collection, then `gc.freeze()`: what survives it is the config, the pollers
      and the queue, which live as long as the process; frozen, the collector never
      walks them again (a full collection would otherwise visit every one of them);
    - glibc's `malloc_trim(0)`, which returns the free pages at the top of the heap and in
      its arenas to the system. Without glibc (musl) there is nothing to call: skipped.
A reload unfreezes first, so that the previous config's objects can be collected.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from functools import cache

import structlog

log = structlog.get_logger("agent.heap")


def settle() -> None:
    """Collect, freeze the survivors, and give the free heap back to the system."""
    gc.unfreeze()  # a reload: the last settle's objects may be garbage now
    gc.collect()
    gc.freeze()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols, libc's among them: no search for a library file
        function: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        log.debug("malloc_trim_unavailable")
        return None
    return function
