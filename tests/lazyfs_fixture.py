"""The ``lazyfs`` fixture: a file system on which a test can cut the power.

``lazyfs`` is a started :class:`sim.lazyfs.LazyFs`: files under
``lazyfs.mountpoint`` keep unsynced writes in memory only; ``lazyfs.power_cut()``
drops them and leaves ``lazyfs.backing`` holding what was fsync'ed;
``lazyfs.start()`` mounts the same disk again. At teardown the file system is
stopped, or unmounted after a cut, whether the test passed or not. Missing
FUSE parts make the fixture raise: the test errors out, it is not skipped.

``lazyfs.fail_writes(errno.EIO)`` (or ``with lazyfs.writes_failing(...)``) makes
the disk fail under the open files until ``lazyfs.fail_writes(None)``; a fault
left set at teardown only means the unsynced data is not written back.

``tests/conftest.py`` imports it, so every test module has it; a module must not
also name it in ``pytest_plugins`` (pytest would fail: already imported).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.lazyfs import LazyFs, mounted


@pytest.fixture
def lazyfs(tmp_path: Path) -> Iterator[LazyFs]:
    """A mounted LazyFs: the disk is ``tmp_path / "disk"``, the view ``tmp_path / "mnt"``."""
    with mounted(tmp_path / "disk", tmp_path / "mnt") as fs:
        yield fs
