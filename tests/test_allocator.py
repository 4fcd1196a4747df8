"""agent.service.allocator: glibc's mmap threshold stays fixed, so large socket buffers never
fragment the heap (the cause of RSS growing 13 MB an hour; bench/README.md, soak).

Run in a fresh interpreter each: what a test process allocated before would decide
where blocks come from."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from pathlib import Path
if sys.argv[1] == "fixed":
    from agent.service.allocator import fix_malloc_thresholds
    assert fix_malloc_thresholds()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(320_000))  # as pydantic-core frees one while validating the config
block = libc.malloc(256 * 1024 + 33)  # asyncio's recv(256 KiB), about
for line in Path("/proc/self/maps").read_text().splitlines():
    if line.endswith("[heap]"):
        low, high = (int(x, 16) for x in line.split()[0].split("-"))
        print("heap" if low <= block < high else "mmap")
        break
else:
    print("mmap")
"""


@pytest.mark.parametrize(("mode", "expected"), [("default", "heap"), ("fixed", "mmap")])
def test_after_a_large_free_a_socket_sized_block_stays_out_of_the_heap_once_fixed(
    mode: str,
    expected: str,
) -> None:
    """Without the fix glibc raises its threshold at the free and carves the next large
    block from the heap (the test shows the probe can tell); with it, it maps it."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=30
    )
    assert expected == result.stdout.strip()
