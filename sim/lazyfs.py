"""A file system that forgets what was never fsync'ed: a power cut for tests.

In the spirit of LazyFS: a FUSE file system over a real directory, the "disk".
Whatever is written through the mount stays in the FUSE process's memory until
an ``fsync``/``fdatasync`` of that file; killing the process (SIGKILL) then
loses exactly the unsynced data, as a power failure loses a page cache.

What the model drops at a cut and what it keeps:

- **Dropped**: file contents and sizes changed since the file's last fsync --
  every ``write``, ``ftruncate``/``truncate``, ``O_TRUNC`` and ``fallocate``.
  The file reverts to its content and size at its last fsync (or as it was
  when it was created or the mount started). Closing a file persists nothing:
  ``close``/``flush``/``release`` leave the data where a real kernel leaves it,
  in the cache.
- **Kept at once** (made durable immediately, for simplicity): the name space
  and the inode's metadata -- ``create`` (an empty file), ``unlink``,
  ``rename``, ``mkdir``, ``rmdir``, ``symlink``, ``chmod``, ``chown``,
  ``utimens``. A real file system can lose a new name without a directory
  fsync; this model never does, so it is weaker than ext4 on that point.
  Directory fsync works and is counted.
- fsync is per inode: any descriptor of the file syncs it, one opened
  ``O_RDONLY`` in another process too, and it syncs only that file.
  ``msync(MS_SYNC)`` of a shared mapping is an fsync too (Linux makes it one);
  ``munmap`` and close are not.
- An fsync applies the file's overlay to the backing file and ``os.fsync``'s
  it. Killed during an fsync, the backing file may be half updated: a torn
  write, which an fsync that never returned allows.
- A clean stop (:meth:`LazyFs.stop`, SIGTERM, or an unmount) is **not** a power
  cut: like ``umount`` on a real file system it writes every unsynced change to
  the disk first. Use :meth:`LazyFs.power_cut` to lose them.
- Memory: a modified page (4 KiB) is held whole until the fsync; unlinked
  files' pages are freed on their last close.
- Timestamps come from the backing files: a write does not move mtime until
  the fsync applies it.

The kernel page cache stays on (no ``direct_io``): ``mmap(MAP_SHARED)``, which
SQLite's WAL index (``-shm``) needs, works only with it. It is coherent because
every write goes through the kernel to this process (FUSE writes are
write-through without ``writeback_cache``), dirty mmap pages included (they
reach it as ordinary writes, on ``msync``, close or writeback), and nothing
changes the backing files behind the kernel while mounted, so the cache is
kept across opens (``kernel_cache``); without it, every open of the ``-shm``
file would zap the other processes' mappings. After a cut the next mount
starts with an empty cache. A test that must see what this process serves,
not the kernel's cache of it, reads with ``O_DIRECT``.

At a cut, every descriptor still open on the mount fails from then on with
ENOTCONN, ``close`` included (Python's ``with open(...)`` raises on exit), and
a shared mapping keeps only the pages already in memory. So kill the writers
first (SIGKILL: everything stops at once, as in a power failure), then cut.

Statistics (fsyncs, bytes written, unsynced bytes and files) are kept in a
small memory-mapped file beside the backing directory, updated after every
operation, so they can be read after a SIGKILL: what was unsynced at that
moment is what the cut dropped (:class:`LazyFsStats`). Unsynced bytes count
the bytes passed to ``write`` since the file's last fsync, overwrites twice,
the WAL index's write-backs included.

Fault injection: :meth:`LazyFs.fail_writes` makes the disk fail while the
processes using it keep their files open (a real ``mount -o remount,ro``
fails with EBUSY then). While a fault is set, every operation that would change
the disk fails with the chosen errno (EIO: a failing disk; EROFS: read-only;
ENOSPC: full), before it changes anything, and is counted in ``failed_ops``;
reads, ``stat``, ``readdir``, opening (without ``O_TRUNC``), ``close`` and
locks keep working. The operations, by :class:`WriteKind`:

- ``DATA``: ``write`` (mmap write-backs too), ``truncate``/``ftruncate``,
  ``fallocate``, an open with ``O_TRUNC`` for writing.
- ``SYNC``: ``fsync``/``fdatasync`` (``msync(MS_SYNC)``), fsync of a directory.
- ``NAMES``: ``create`` (a new file), ``mkdir``, ``rmdir``, ``unlink``,
  ``rename``, ``symlink``.
- ``ATTRS``: ``chmod``, ``chown``, ``utimens``.

All of them by default; ``fail_writes(errno, WriteKind.SYNC)`` fails fsyncs
only. The flag lives in the stats file (after the counters) and the daemon
reads it at every operation, so it holds from the next operation after
``fail_writes`` returns; ``fail_writes(None)`` ends it. A failed operation
leaves no trace: an overlay that an fsync failed to sync stays unsynced and in
memory, and the next fsync that is let through writes it (a kind disk: Linux
after a real writeback error may drop those pages and let the next fsync
succeed without them). A clean stop while ``DATA`` or ``SYNC`` fail writes no
unsynced data to the disk (it is lost as at a cut; one failed operation per
file), and every mount starts with no fault set. Without ``--stats`` there is
no fault injection. The kernel's page cache may still hold what a failed write
or write-back was meant to change: it drops pages a failed ``write`` touched,
but keeps mmap'ed pages whose write-back failed (as with a real disk).

``python -m sim.lazyfs BACKING MOUNTPOINT`` mounts it in the foreground and
prints :data:`READY_LINE` once mounted. It needs libfuse 3 (Debian's
``fuse3``), the ``mfusepy`` package and ``/dev/fuse``; run it as root or as the
owner of the backing files. Single-threaded: operations are served one at a
time, in the order the kernel sends them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import errno
import mmap
import os
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

READY_LINE = "lazyfs: ready"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
UNMOUNT_TIMEOUT = 30.0
LOG_TAIL_LINES = 40
PAGE_SIZE = 4096
FUSERMOUNT = "fusermount3"
_REPO_ROOT = Path(__file__).resolve().parent.parent
_STATS_MAGIC = b"lazyfs2\n"
# FUSE passes on errors 1..511 only; ENOSYS would make the kernel stop sending
# fsync, fallocate, ... to this mount for good.
_FAULT_ERRNO_LIMIT = 512
_FALLOC_FL_KEEP_SIZE = 0x01
_RENAME_NOREPLACE = 0x01
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_NS_PER_S = 1_000_000_000
_FUSE_MAIN_LOOP_ENDED = 8
_FileKey = tuple[int, int]  # (st_dev, st_ino) of the backing file


class LazyFsError(RuntimeError):
    """The file system did not mount, did not stop, or is missing a part."""


class WriteKind(enum.Flag):
    """The operations a fault set by :meth:`LazyFs.fail_writes` makes fail."""

    DATA = 1  # write, truncate/ftruncate, fallocate, open with O_TRUNC for writing
    SYNC = 2  # fsync, fdatasync (msync MS_SYNC), fsync of a directory
    NAMES = 4  # create, mkdir, rmdir, unlink, rename, symlink
    ATTRS = 8  # chmod, chown, utimens
    ALL = DATA | SYNC | NAMES | ATTRS


@dataclasses.dataclass(frozen=True, kw_only=True)
class LazyFsStats:
    """Counters since the mount started; read from the stats file, live or after a cut."""

    fsyncs: int = 0  # fsync/fdatasync of files, any descriptor
    dir_fsyncs: int = 0
    writes: int = 0
    bytes_written: int = 0
    bytes_synced: int = 0  # written bytes an fsync made durable
    unsynced_bytes: int = 0  # written since their file's last fsync: what a cut now drops
    unsynced_files: int = 0  # files with any unsynced change (writes or size)
    failed_ops: int = 0  # operations failed by a fault set with LazyFs.fail_writes

    @classmethod
    def read(cls, path: Path | str) -> LazyFsStats:
        """The counters in a stats file; all zero if the file system never started."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return cls()
        if len(data) < _STATS_STRUCT.size or not data.startswith(_STATS_MAGIC):
            return cls()
        _magic, *values = _STATS_STRUCT.unpack_from(data)
        return cls(**dict(zip(_STATS_FIELDS, values, strict=True)))


_STATS_FIELDS = tuple(field.name for field in dataclasses.fields(LazyFsStats))
_STATS_STRUCT = struct.Struct("<8s" + "Q" * len(_STATS_FIELDS))
# The fault switch, after the counters: (errno or 0, WriteKind bits). Written by
# the test process only, read by the daemon at every operation that changes the disk.
_CONTROL_STRUCT = struct.Struct("<II")
_CONTROL_OFFSET = _STATS_STRUCT.size
_STATS_FILE_SIZE = _CONTROL_OFFSET + _CONTROL_STRUCT.size


class LazyFs:
    """``python -m sim.lazyfs`` as an object: start, power cut, restart, stop.

    ``backing`` is the disk (created if missing), ``mountpoint`` the view that
    forgets. After :meth:`power_cut` only ``backing`` holds what was synced;
    :meth:`start` again mounts it anew, like a reboot. Usable as a context
    manager (started on enter, stopped on exit).
    """

    def __init__(
        self,
        backing: Path | str,
        mountpoint: Path | str,
        *,
        stats_path: Path | str | None = None,
        log_path: Path | str | None = None,
    ) -> None:
        self.backing = Path(backing).absolute()
        self.mountpoint = Path(mountpoint).absolute()
        if self.mountpoint == self.backing or self.mountpoint.is_relative_to(self.backing):
            raise ValueError("the mount point cannot be inside the backing directory")
        beside = self.backing.with_name  # outside the disk: a cut must not touch them
        self.stats_path = Path(stats_path or beside(self.backing.name + ".lazyfs-stats"))
        self.log_path = Path(log_path or beside(self.backing.name + ".lazyfs.log"))
        self.last_cut: LazyFsStats | None = None  # the counters at the last power cut
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stats(self) -> LazyFsStats:
        """The counters of the current (or last) mount."""
        return LazyFsStats.read(self.stats_path)

    def fail_writes(self, errno_value: int | None, kinds: WriteKind = WriteKind.ALL) -> None:
        """Make every operation of ``kinds`` fail with ``errno_value``; ``None``: stop failing.

        Holds from the very next operation after the call returns, until the
        next call or the end of this mount (a new mount starts with no fault).
        Reads keep working. A clear (``None``) on a stopped file system does
        nothing; a fault on one raises.
        """
        if errno_value is None:
            value = _CONTROL_STRUCT.pack(0, 0)
        else:
            if not 0 < errno_value < _FAULT_ERRNO_LIMIT or errno_value == errno.ENOSYS:
                raise ValueError(
                    f"errno {errno_value}: must be 1..{_FAULT_ERRNO_LIMIT - 1}, not ENOSYS"
                )
            if not kinds:
                raise ValueError("no operations to fail")
            value = _CONTROL_STRUCT.pack(errno_value, kinds.value)
        if not self.running:
            if errno_value is None:
                return
            raise LazyFsError("lazyfs is not running")
        fd = os.open(self.stats_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if (
                os.fstat(fd).st_size < _STATS_FILE_SIZE
                or os.pread(fd, len(_STATS_MAGIC), 0) != _STATS_MAGIC
            ):
                raise LazyFsError(f"{self.stats_path} is no lazyfs stats file of this version")
            # One write into the page cache the daemon has mapped: it sees it at once.
            if os.pwrite(fd, value, _CONTROL_OFFSET) != len(value):
                raise LazyFsError(f"short write to {self.stats_path}")
        finally:
            os.close(fd)

    @property
    def write_fault(self) -> tuple[int, WriteKind] | None:
        """The fault :meth:`fail_writes` set, as (errno, kinds), or ``None``."""
        if not self.running:
            return None
        try:
            with self.stats_path.open("rb") as stats_file:
                data = stats_file.read(_STATS_FILE_SIZE)
        except FileNotFoundError:
            return None
        if len(data) < _STATS_FILE_SIZE:
            return None
        errno_value, kinds = _CONTROL_STRUCT.unpack_from(data, _CONTROL_OFFSET)
        return (errno_value, WriteKind(kinds)) if errno_value else None

    @contextlib.contextmanager
    def writes_failing(
        self, errno_value: int, kinds: WriteKind = WriteKind.ALL
    ) -> Iterator[LazyFs]:
        """:meth:`fail_writes` for the ``with`` block, cleared on exit, even on error."""
        self.fail_writes(errno_value, kinds)
        try:
            yield self
        finally:
            self.fail_writes(None)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def start(self, *, timeout: float = START_TIMEOUT) -> LazyFs:
        """Mount and return once the mount is live; raise if any part is missing."""
        if self._process is not None:
            raise LazyFsError("lazyfs already started")
        fusermount_path()  # fail early and clearly
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if is_mounted(self.mountpoint):
            raise LazyFsError(f"{self.mountpoint} is already a mount point")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_REPO_ROOT), environment.get("PYTHONPATH")])
        )
        command = [
            sys.executable,
            "-m",
            "sim.lazyfs",
            str(self.backing),
            str(self.mountpoint),
            "--stats",
            str(self.stats_path),
            "--exit-on-stdin-eof",
        ]
        # stdin stays open for the process's life: if this process dies, the
        # pipe closes and the file system unmounts itself. Its own session: a
        # Ctrl-C meant for pytest does not hit it.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=environment,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self._kill()
            raise
        return self

    def power_cut(self) -> LazyFsStats:
        """SIGKILL the file system, then detach the mount: unsynced data is gone.

        Descriptors still open on the mount get ENOTCONN from then on, even
        from ``close``. Returns the counters at the cut (also kept in
        :attr:`last_cut`): ``unsynced_bytes`` and ``unsynced_files`` are what
        was dropped.
        """
        if not self.running:
            raise LazyFsError("lazyfs is not running")
        self._kill()
        self.last_cut = self.stats()
        return self.last_cut

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Unmount cleanly: unsynced data is written to the disk, as ``umount`` does.

        Idempotent, and safe after a cut or a failed start: whatever is left
        (a process, a mount) is removed.
        """
        process = self._process
        if process is None:
            if is_mounted(self.mountpoint):
                _unmount_lazily(self.mountpoint)
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise LazyFsError(
                    f"lazyfs did not stop within {timeout} s; killed (a cut, not a clean stop); "
                    f"log tail:\n{self.log_tail()}"
                ) from None
        self._close_pipes(process)
        self._process = None
        if is_mounted(self.mountpoint):
            _unmount_lazily(self.mountpoint)
        if process.returncode != 0:
            raise LazyFsError(
                f"lazyfs exited with status {process.returncode}; log tail:\n{self.log_tail()}"
            )

    def __enter__(self) -> LazyFs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LazyFs({self.backing} on {self.mountpoint}, running={self.running})"

    def _wait_ready(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        output = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while READY_LINE.encode() not in output:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LazyFsError(
                        f"lazyfs not mounted after {timeout} s; log tail:\n{self.log_tail()}"
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    status = process.wait()
                    raise LazyFsError(
                        f"lazyfs exited with status {status} during start-up; "
                        f"log tail:\n{self.log_tail()}"
                    )
                output += chunk
        if not is_mounted(self.mountpoint):
            raise LazyFsError(f"lazyfs said ready but {self.mountpoint} is not mounted")

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            self._close_pipes(process)
        if is_mounted(self.mountpoint):
            _unmount_lazily(self.mountpoint)

    @staticmethod
    def _close_pipes(process: subprocess.Popen[bytes]) -> None:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@contextlib.contextmanager
def mounted(backing: Path | str, mountpoint: Path | str) -> Iterator[LazyFs]:
    """A started :class:`LazyFs`, stopped (or unmounted after a cut) on exit, even on error."""
    fs = LazyFs(backing, mountpoint)
    try:
        yield fs.start()
    finally:
        fs.stop()


def fusermount_path() -> str:
    """Locate fusermount3, or raise: tests needing a power cut fail, never skip."""
    found = shutil.which(FUSERMOUNT)
    if found is None:
        raise LazyFsError(
            f"{FUSERMOUNT} is not installed; lazyfs needs libfuse 3 (apt install fuse3)"
        )
    return found


def is_mounted(path: Path | str) -> bool:
    """Whether ``path`` is a mount point now (a dead FUSE mount counts: stat would fail)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            mount_point = line.split(" ", 5)[4]
            if _unescape_mountinfo(mount_point) == target:
                return True
    return False


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo octal escapes.
    parts = field.split("\\")
    return parts[0] + "".join(chr(int(part[:3], 8)) + part[3:] for part in parts[1:])


def _unmount_lazily(mountpoint: Path) -> None:
    result = subprocess.run(
        [fusermount_path(), "-u", "-z", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=UNMOUNT_TIMEOUT,
        check=False,
    )
    # The process's own clean-up (auto_unmount) may have won the race.
    if result.returncode != 0 and is_mounted(mountpoint):
        raise LazyFsError(f"cannot unmount {mountpoint}: {result.stderr.strip()}")


# -- the file system (runs in the FUSE process) -------------------------------------


class _File:
    """One inode: its durable bytes in the backing file, its unsynced pages here.

    The view is ``size`` bytes: a modified page from ``_pages``, else the backing
    file's bytes below ``_durable_valid``, else zeros. ``_durable_valid`` is the
    backing file's size, lowered by truncates since the last sync (what a
    truncate cut off must read as zeros if the file grows again). Bytes of a
    page beyond ``size`` are always zero.
    """

    def __init__(self, *, fd: int, key: _FileKey) -> None:
        self.fd = fd
        self.key = key
        self.size = os.fstat(fd).st_size
        self.handles: set[int] = set()
        self.unlinked = False
        self.dirty = False
        self.unsynced_bytes = 0
        self._durable_valid = self.size
        self._pages: dict[int, bytearray] = {}

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        chunks: list[bytes | bytearray] = []
        position = offset
        while position < end:
            index = position // PAGE_SIZE
            page = self._pages.get(index)
            if page is not None:
                stop = min(end, (index + 1) * PAGE_SIZE)
                base = index * PAGE_SIZE
                chunks.append(page[position - base : stop - base])
            else:  # a run of clean pages: one read of the backing file
                index += 1
                while index * PAGE_SIZE < end and index not in self._pages:
                    index += 1
                stop = min(end, index * PAGE_SIZE)
                chunks.append(self._durable(position, stop))
            position = stop
        return b"".join(chunks)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        end = offset + len(data)
        position = offset
        while position < end:
            index = position // PAGE_SIZE
            base = index * PAGE_SIZE
            page = self._pages.get(index)
            if page is None:
                page = self._pages[index] = bytearray(self._durable(base, base + PAGE_SIZE))
            stop = min(end, base + PAGE_SIZE)
            page[position - base : stop - base] = view[position - offset : stop - offset]
            position = stop
        self.size = max(self.size, end)
        self.unsynced_bytes += len(data)
        self.dirty = True

    def truncate(self, length: int) -> None:
        if length < self.size:
            for index in [index for index in self._pages if index * PAGE_SIZE >= length]:
                del self._pages[index]
            index, cut = divmod(length, PAGE_SIZE)
            page = self._pages.get(index)
            if page is not None:
                page[cut:] = bytes(PAGE_SIZE - cut)
            self._durable_valid = min(self._durable_valid, length)
        self.size = length
        self.dirty = True

    def sync(self) -> int:
        """Apply the overlay to the backing file and fsync it; the bytes made durable."""
        if self.dirty:
            os.ftruncate(self.fd, self._durable_valid)
            for index, page in sorted(self._pages.items()):
                base = index * PAGE_SIZE
                _write_all(self.fd, memoryview(page)[: min(PAGE_SIZE, self.size - base)], base)
            os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        synced, self.unsynced_bytes = self.unsynced_bytes, 0
        self._pages.clear()
        self._durable_valid = self.size
        self.dirty = False
        return synced

    def _durable(self, start: int, stop: int) -> bytes:
        available = max(0, min(stop, self._durable_valid) - start)
        data = os.pread(self.fd, available, start) if available else b""
        return data + bytes(stop - start - len(data))


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class _LazyOperations:
    """The mfusepy operations: paths map onto the backing directory, data onto :class:`_File`.

    Files are keyed by the backing inode, so a rename keeps the overlay and a
    second descriptor (of any mode, from any process) shares it.
    """

    use_ns = True  # times as integer nanoseconds

    def __init__(self, *, root: Path, stats_path: Path | None) -> None:
        self._root = str(root)
        self._files: dict[_FileKey, _File] = {}
        self._handles: dict[int, _File] = {}
        self._next_handle = 1
        self._counters = dict.fromkeys(_STATS_FIELDS, 0)
        self._stats_map: mmap.mmap | None = None
        if stats_path is not None:
            with open(stats_path, "w+b") as stats_file:  # new and zeroed: no fault set
                stats_file.truncate(_STATS_FILE_SIZE)
                self._stats_map = mmap.mmap(stats_file.fileno(), _STATS_FILE_SIZE)
            self._publish()

    # -- life cycle ----------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is not None:
            config.direct_io = 0  # the page cache: mmap(MAP_SHARED) needs it
            config.kernel_cache = 1  # only this mount changes the files: keep the cache on open
            config.auto_cache = 0
            config.hard_remove = 1  # unlink really unlinks (no .fuse_hidden files on the disk)
            config.use_ino = 1  # the backing inode numbers
        print(READY_LINE, flush=True)

    def destroy(self, path: str) -> None:
        """A clean unmount: write every unsynced change to the disk, as umount does.

        Unless the disk fails (``DATA`` or ``SYNC``): then nothing is written.
        """
        failing = self._fault(WriteKind.DATA | WriteKind.SYNC) is not None
        for file in self._files.values():
            if file.unlinked:
                pass  # its data goes with it
            elif not failing:
                self._counters["bytes_synced"] += file.sync()
            elif file.dirty:
                self._counters["failed_ops"] += 1  # its unsynced changes never reach the disk
            os.close(file.fd)
        self._files.clear()
        self._handles.clear()
        self._publish()

    # -- files -----------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        file = self._handles.get(fh) if fh is not None else None
        if file is not None:
            status = os.fstat(file.fd)
        else:
            status = os.lstat(self._backing(path))
            if stat.S_ISREG(status.st_mode):
                file = self._files.get((status.st_dev, status.st_ino))
        size = file.size if file is not None else status.st_size
        return {
            "st_mode": status.st_mode,
            "st_ino": status.st_ino,
            "st_nlink": status.st_nlink,
            "st_uid": status.st_uid,
            "st_gid": status.st_gid,
            "st_rdev": status.st_rdev,
            "st_size": size,
            "st_blksize": PAGE_SIZE,
            "st_blocks": status.st_blocks if file is None else -(-size // 512),
            "st_atime": status.st_atime_ns,
            "st_mtime": status.st_mtime_ns,
            "st_ctime": status.st_ctime_ns,
        }

    def open(self, path: str, flags: int) -> int:
        return self._open_handle(self._backing(path), flags, create_mode=None)

    def create(self, path: str, mode: int, flags: int) -> int:
        self._check_fault(WriteKind.NAMES)
        return self._open_handle(self._backing(path), flags, create_mode=mode)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self._handles[fh].read(offset, size)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._check_fault(WriteKind.DATA)
        self._handles[fh].write(offset, data)
        self._counters["writes"] += 1
        self._counters["bytes_written"] += len(data)
        self._publish()
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._check_fault(WriteKind.DATA)
        file = self._handles.get(fh) if fh is not None else None
        if file is None:
            file = self._file_at(self._backing(path), os.O_RDWR)
        file.truncate(length)
        self._publish()
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode & ~_FALLOC_FL_KEEP_SIZE:
            raise OSError(errno.EOPNOTSUPP, "only plain fallocate is modelled")
        self._check_fault(WriteKind.DATA)
        file = self._handles[fh]
        if not mode & _FALLOC_FL_KEEP_SIZE and offset + size > file.size:
            file.truncate(offset + size)
            self._publish()
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close persists nothing: the data stays "in the page cache"

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._check_fault(WriteKind.SYNC)
        self._counters["bytes_synced"] += self._handles[fh].sync()
        self._counters["fsyncs"] += 1
        self._publish()
        return 0

    def release(self, path: str | None, fh: int) -> int:
        file = self._handles.pop(fh)
        file.handles.discard(fh)
        self._forget_if_idle(file)
        self._publish()
        return 0

    # -- name space and metadata: durable at once ----------------------------------

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # The inode numbers matter: with use_ino, an entry of inode 0 would be skipped.
        backing = self._backing(path)
        entries = []
        for name in [".", "..", *os.listdir(backing)]:
            status = os.lstat(os.path.join(backing, name))
            entries.append((name, {"st_mode": status.st_mode, "st_ino": status.st_ino}, 0))
        return entries

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self._check_fault(WriteKind.SYNC)
        fd = os.open(self._backing(path or "/"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._counters["dir_fsyncs"] += 1
        self._publish()
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._check_fault(WriteKind.NAMES)
        os.mkdir(self._backing(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        self._check_fault(WriteKind.NAMES)
        os.rmdir(self._backing(path))
        return 0

    def unlink(self, path: str) -> int:
        self._check_fault(WriteKind.NAMES)
        backing = self._backing(path)
        status = os.lstat(backing)
        os.unlink(backing)
        self._name_removed(status)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        source, target = self._backing(old), self._backing(new)
        if flags & ~_RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        self._check_fault(WriteKind.NAMES)
        try:
            replaced: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            replaced = None
        if replaced is not None and flags & _RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), new)
        moved = os.lstat(source)
        os.rename(source, target)
        if replaced is not None and not os.path.samestat(replaced, moved):
            self._name_removed(replaced)
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._check_fault(WriteKind.NAMES)
        os.symlink(source, self._backing(target))
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._backing(path))

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        self._check_fault(WriteKind.ATTRS)
        file = self._handles.get(fh) if fh is not None else None
        if file is not None:
            os.fchmod(file.fd, mode)
        else:
            os.chmod(self._backing(path), mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        self._check_fault(WriteKind.ATTRS)
        file = self._handles.get(fh) if fh is not None else None
        if file is not None:
            os.fchown(file.fd, uid, gid)
        else:
            os.chown(self._backing(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(
        self, path: str | None, times: tuple[int, int] | None, fh: int | None = None
    ) -> int:
        self._check_fault(WriteKind.ATTRS)
        file = self._handles.get(fh) if fh is not None else None
        target: int | str = file.fd if file is not None else self._backing(path)
        if times is None:
            os.utime(target, follow_symlinks=isinstance(target, int))
        else:
            os.utime(target, ns=times, follow_symlinks=isinstance(target, int))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        status = os.statvfs(self._root)
        return {
            key: getattr(status, key)
            for key in (
                "f_bsize",
                "f_frsize",
                "f_blocks",
                "f_bfree",
                "f_bavail",
                "f_files",
                "f_ffree",
                "f_favail",
                "f_namemax",
            )
        }

    # -- helpers ---------------------------------------------------------------------

    def _backing(self, path: str | None) -> str:
        if path is None:  # an unlinked file reached without a descriptor
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return self._root + path

    def _open_handle(self, backing: str, flags: int, *, create_mode: int | None) -> int:
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self._check_fault(WriteKind.DATA)
        file = self._file_at(backing, os.O_RDWR, create_mode=create_mode)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY and file.size:
            file.truncate(0)
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = file
        file.handles.add(handle)
        self._publish()
        return handle

    def _file_at(self, backing: str, flags: int, *, create_mode: int | None = None) -> _File:
        # The daemon always opens its backing files read-write: it writes them at fsync.
        if create_mode is None:
            fd = os.open(backing, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            fd = os.open(backing, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, create_mode)
        status = os.fstat(fd)
        key = (status.st_dev, status.st_ino)
        file = self._files.get(key)
        if file is not None:
            os.close(fd)
            return file
        file = self._files[key] = _File(fd=fd, key=key)
        return file

    def _name_removed(self, status: os.stat_result) -> None:
        if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
            return
        file = self._files.get((status.st_dev, status.st_ino))
        if file is not None:
            file.unlinked = True  # its data goes with it, synced or not
            self._forget_if_idle(file)
        self._publish()

    def _forget_if_idle(self, file: _File) -> None:
        # A closed file keeps its overlay (a page cache survives close); a clean
        # or unlinked one has nothing left to remember.
        if not file.handles and (file.unlinked or not file.dirty):
            del self._files[file.key]
            os.close(file.fd)

    def _fault(self, kind: WriteKind) -> int | None:
        """The errno a fault set for operations of ``kind``, if any: read afresh every time."""
        if self._stats_map is None:
            return None
        errno_value, kinds = _CONTROL_STRUCT.unpack_from(self._stats_map, _CONTROL_OFFSET)
        return errno_value if errno_value and kinds & kind.value else None

    def _check_fault(self, kind: WriteKind) -> None:
        """Fail (and count) the operation if a fault is set for ``kind``; before any change."""
        errno_value = self._fault(kind)
        if errno_value is not None:
            self._counters["failed_ops"] += 1
            self._publish()
            raise OSError(errno_value, os.strerror(errno_value))

    def _publish(self) -> None:
        if self._stats_map is None:
            return
        live = [file for file in self._files.values() if file.dirty and not file.unlinked]
        self._counters["unsynced_bytes"] = sum(file.unsynced_bytes for file in live)
        self._counters["unsynced_files"] = len(live)
        _STATS_STRUCT.pack_into(
            self._stats_map, 0, _STATS_MAGIC, *(self._counters[name] for name in _STATS_FIELDS)
        )


def _fuse_class() -> Any:  # noqa: C901  (a class made at run time: its methods count here)
    """mfusepy's FUSE with the libfuse 3 callbacks that drop ``fi`` or flags passing them on."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # not libfuse 2, if both are installed
    try:
        import mfusepy  # type: ignore[import-untyped]  # no type information shipped
    except (ImportError, OSError) as exc:  # OSError: mfusepy found no libfuse
        raise LazyFsError(
            "lazyfs needs the mfusepy package and libfuse 3 "
            "(pip install mfusepy; apt install fuse3)"
        ) from exc

    if mfusepy.fuse_version_major != 3:
        raise LazyFsError(f"lazyfs needs libfuse 3, found {mfusepy.fuse_version_major}")

    def decode(fuse: Any, path: bytes | None) -> str | None:
        return None if path is None else path.decode(fuse.encoding, fuse.errors)

    def handle(fip: Any) -> int | None:
        return int(fip.contents.fh) if fip else None

    def timestamp(spec: Any, current: int) -> int:
        if spec.tv_nsec == _UTIME_NOW:
            return time.time_ns()
        if spec.tv_nsec == _UTIME_OMIT:
            return current
        return int(spec.tv_sec) * _NS_PER_S + int(spec.tv_nsec)

    class Fuse(mfusepy.FUSE):  # type: ignore[misc]
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return int(self.operations.rename(decode(self, old), decode(self, new), flags))

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            return int(self.operations.truncate(decode(self, path), length, handle(fip)))

        def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
            return int(self.operations.chmod(decode(self, path), mode, handle(fip)))

        def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
            uid = -1 if uid == 0xFFFFFFFF else uid
            gid = -1 if gid == 0xFFFFFFFF else gid
            return int(self.operations.chown(decode(self, path), uid, gid, handle(fip)))

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            times: tuple[int, int] | None = None
            if buf:
                current = self.operations.getattr(decode(self, path), handle(fip))
                times = (
                    timestamp(buf.contents.actime, current["st_atime"]),
                    timestamp(buf.contents.modtime, current["st_mtime"]),
                )
            return int(self.operations.utimens(decode(self, path), times, handle(fip)))

    return Fuse


def serve(backing: Path, mountpoint: Path, *, stats_path: Path | None, debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGTERM/SIGINT: clean unmount)."""
    fuse = _fuse_class()
    os.umask(0)  # the kernel has applied the caller's umask to every mode already
    operations = _LazyOperations(root=backing, stats_path=stats_path)
    try:
        fuse(
            operations,
            str(mountpoint),
            foreground=True,
            nothreads=True,
            debug=debug,
            fsname=f"lazyfs:{backing}",
            subtype="lazyfs",
            auto_unmount=True,  # if this process dies, fusermount3 detaches the mount
        )
    except RuntimeError as error:
        # libfuse 3's fuse_main returns 8 when its loop ends on a signal (SIGTERM,
        # SIGINT, SIGHUP: unmounted and destroy() run, a clean stop) or on a
        # device error, which libfuse reports on stderr itself.
        if error.args != (_FUSE_MAIN_LOOP_ENDED,):
            raise


def _exit_on_stdin_eof() -> None:
    """Stop cleanly once stdin closes: the controlling test process has died."""
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def watch() -> None:
        # Keep process-directed signals for the main thread, where libfuse waits.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        with contextlib.suppress(OSError):  # unbuffered: no lock held at interpreter exit
            while os.read(sys.stdin.fileno(), 4096):
                pass
        signal.pthread_kill(main_thread, signal.SIGTERM)

    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sim.lazyfs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("backing", type=Path, help="the disk: a directory that holds synced data")
    parser.add_argument("mountpoint", type=Path, help="where the forgetful view is mounted")
    parser.add_argument("--stats", type=Path, help="counters file (binary, see LazyFsStats)")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="unmount cleanly when stdin closes (a parent process died)",
    )
    parser.add_argument("--debug", action="store_true", help="libfuse's request trace on stderr")
    args = parser.parse_args(argv)
    if args.exit_on_stdin_eof:
        _exit_on_stdin_eof()
    serve(
        args.backing.absolute(), args.mountpoint.absolute(), stats_path=args.stats, debug=args.debug
    )


if __name__ == "__main__":
    main()
