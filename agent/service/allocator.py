"""glibc's malloc thresholds, fixed once at start-up.

asyncio reads a socket with recv(256 KiB) and shrinks the result to what arrived. glibc
serves blocks of 128 KiB and more with mmap, but raises that threshold to the size of any
mmapped block that is freed; start-up frees a few (a 320,000-byte one in pydantic-core),
after which every read was carved from the heap and fragmented it (RSS +13 MB an hour at
1,000 readings/s; bench/README.md, soak). Fixed thresholds keep those reads out of the
heap. A no-op where the C library has no mallopt.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's default, but fixed: no longer raised by a free()
TRIM_THRESHOLD = 128 * 1024  # set too: mallopt does not undo a threshold already raised


def fix_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds; False when the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
