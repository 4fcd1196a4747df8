"""sim.lazyfs, the power-cut file system, against real files, real fsyncs and real SQLite.

Each test writes through the FUSE mount, cuts the power (SIGKILL of the file
system), and looks at what the disk -- the backing directory -- holds, or
mounts it again and reads it as a rebooted machine would. The fault-injection
tests make the disk fail under open files (``LazyFs.fail_writes``) and print
what SQLite reports (``pytest -s`` shows it).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sim.lazyfs import PAGE_SIZE, LazyFs, LazyFsError, WriteKind, is_mounted

DB = "queue.db"
FSYNC_READ_ONLY = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)"
)
COUNT_ROWS = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchone()[0])"
SUBPROCESS_TIMEOUT = 30.0


# -- helpers ---------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, *, fsync: bool) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        if fsync:
            os.fsync(file.fileno())


def read_direct(path: Path) -> bytes:
    """What the file system serves, bypassing the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def fsync_read_only_in_another_process(path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", FSYNC_READ_ONLY, str(path)], check=True, timeout=SUBPROCESS_TIMEOUT
    )


def open_db(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """WAL mode, normal locking (so the -shm file is mmapped), autocommit: one INSERT, one commit."""
    db = sqlite3.connect(path, isolation_level=None)
    assert "wal" == db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpoints a test asks for
    return db


def insert(db: sqlite3.Connection, numbers: range) -> None:
    for n in numbers:
        db.execute("INSERT INTO t (n) VALUES (?)", (n,))


def reboot_and_read(lazyfs: LazyFs) -> tuple[list[str], list[int]]:
    """Mount the disk again and return (integrity_check, the numbers in table t)."""
    lazyfs.start()
    with contextlib.closing(sqlite3.connect(lazyfs.mountpoint / DB)) as db:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        numbers = [row[0] for row in db.execute("SELECT n FROM t ORDER BY n")]
    return integrity, numbers


# -- plain files ---------------------------------------------------------------------------


def test_fsynced_data_survives_a_power_cut(lazyfs: LazyFs) -> None:
    write_file(lazyfs.mountpoint / "a", b"durable", fsync=True)

    cut = lazyfs.power_cut()

    assert b"durable" == (lazyfs.backing / "a").read_bytes()
    assert 1 == cut.fsyncs
    assert 0 == cut.unsynced_bytes


def test_unsynced_writes_are_lost_and_the_file_reverts_to_its_synced_content_and_size(
    lazyfs: LazyFs,
) -> None:
    path = lazyfs.mountpoint / "a"
    write_file(path, b"v1-synced", fsync=True)
    with path.open("r+b") as file:  # closed without fsync: closing persists nothing
        file.write(b"V2")
        file.seek(0, os.SEEK_END)
        file.write(b"-and-more")
    assert b"V2-synced-and-more" == path.read_bytes()
    assert len(b"V2-synced-and-more") == path.stat().st_size
    write_file(lazyfs.mountpoint / "never-synced", b"gone", fsync=False)

    cut = lazyfs.power_cut()

    assert b"v1-synced" == (lazyfs.backing / "a").read_bytes()
    assert b"" == (lazyfs.backing / "never-synced").read_bytes()  # the name is kept, not the data
    assert len(b"V2" + b"-and-more" + b"gone") == cut.unsynced_bytes
    assert 2 == cut.unsynced_files


def test_an_unsynced_truncate_is_lost_and_what_it_cut_off_reads_as_zeros(lazyfs: LazyFs) -> None:
    path = lazyfs.mountpoint / "a"
    write_file(path, b"x" * 3 * PAGE_SIZE, fsync=True)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        os.ftruncate(fd, 2 * PAGE_SIZE)
        assert b"x" * 10 + bytes(2 * PAGE_SIZE - 10) == path.read_bytes()
    finally:
        os.close(fd)

    lazyfs.power_cut()

    assert b"x" * 3 * PAGE_SIZE == (lazyfs.backing / "a").read_bytes()


def test_the_view_is_the_disk_plus_unsynced_changes_and_fsync_makes_it_the_disk(
    lazyfs: LazyFs,
) -> None:
    """Random writes, truncates and fsyncs; O_DIRECT reads bypass the kernel's cache."""
    rng = random.Random(20240601)
    model, synced = bytearray(), b""
    path = lazyfs.mountpoint / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for _ in range(300):
            action = rng.random()
            if action < 0.6:
                offset = rng.randrange(len(model) + 3 * PAGE_SIZE)
                data = rng.randbytes(rng.randrange(1, 2 * PAGE_SIZE))
                os.pwrite(fd, data, offset)
                model.extend(bytes(max(0, offset - len(model))))
                model[offset : offset + len(data)] = data
            elif action < 0.85:
                length = rng.randrange(len(model) + PAGE_SIZE)
                os.ftruncate(fd, length)
                del model[length:]
                model.extend(bytes(length - len(model)))
            else:
                os.fsync(fd)
                synced = bytes(model)
                assert synced == (lazyfs.backing / "f").read_bytes()
            assert len(model) == os.fstat(direct).st_size
            assert bytes(model) == os.pread(direct, len(model) + PAGE_SIZE, 0)
    finally:
        os.close(direct)
        os.close(fd)

    lazyfs.power_cut()

    assert synced == (lazyfs.backing / "f").read_bytes()


def test_fsync_through_a_read_only_descriptor_of_another_process_syncs_that_file_only(
    lazyfs: LazyFs,
) -> None:
    write_file(lazyfs.mountpoint / "a", b"a-data", fsync=False)
    write_file(lazyfs.mountpoint / "b", b"b-data", fsync=False)

    fsync_read_only_in_another_process(lazyfs.mountpoint / "a")
    lazyfs.power_cut()

    assert b"a-data" == (lazyfs.backing / "a").read_bytes()
    assert b"" == (lazyfs.backing / "b").read_bytes()


def test_writes_through_a_shared_mapping_reach_the_file_and_only_msync_makes_them_durable(
    lazyfs: LazyFs,
) -> None:
    """msync(MS_SYNC) is an fsync of the range on Linux; munmap and close are not."""
    for name in ("msynced", "unmapped"):
        path = lazyfs.mountpoint / name
        write_file(path, bytes(PAGE_SIZE), fsync=True)
        with path.open("r+b") as file, mmap.mmap(file.fileno(), PAGE_SIZE) as mapping:
            mapping[:6] = b"mapped"
            if name == "msynced":
                mapping.flush()
        assert b"mapped" == read_direct(path)[:6]  # written back to the file system on close

    lazyfs.power_cut()

    assert b"mapped" == (lazyfs.backing / "msynced").read_bytes()[:6]
    assert bytes(PAGE_SIZE) == (lazyfs.backing / "unmapped").read_bytes()


def test_names_are_durable_at_once_and_a_directory_fsync_works(lazyfs: LazyFs) -> None:
    write_file(lazyfs.mountpoint / "old", b"moved", fsync=True)
    (lazyfs.mountpoint / "old").rename(lazyfs.mountpoint / "new")
    write_file(lazyfs.mountpoint / "doomed", b"x", fsync=True)
    (lazyfs.mountpoint / "doomed").unlink()
    (lazyfs.mountpoint / "sub").mkdir()
    directory = os.open(lazyfs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

    cut = lazyfs.power_cut()

    assert ["new", "sub"] == sorted(os.listdir(lazyfs.backing))
    assert b"moved" == (lazyfs.backing / "new").read_bytes()
    assert 1 == cut.dir_fsyncs


def test_a_clean_stop_is_no_power_cut_it_writes_unsynced_data_to_the_disk(lazyfs: LazyFs) -> None:
    write_file(lazyfs.mountpoint / "a", b"kept by umount", fsync=False)

    lazyfs.stop()

    assert b"kept by umount" == (lazyfs.backing / "a").read_bytes()
    assert not is_mounted(lazyfs.mountpoint)


def test_without_fusermount3_start_fails_and_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    fs = LazyFs(tmp_path / "disk", tmp_path / "mnt")

    with pytest.raises(LazyFsError, match="fuse3"):
        fs.start()
    assert not is_mounted(tmp_path / "mnt")


# -- SQLite in WAL mode --------------------------------------------------------------------


def test_wal_with_synchronous_full_keeps_every_commit_and_only_commits(lazyfs: LazyFs) -> None:
    db = open_db(lazyfs.mountpoint / DB, synchronous="FULL")
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB)")
    insert(db, range(1, 21))
    reader = subprocess.run(  # another process, through the mmapped -shm
        [sys.executable, "-c", COUNT_ROWS, str(lazyfs.mountpoint / DB)],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert "20" == reader.stdout.strip()
    db.execute("PRAGMA cache_size=2")  # the open transaction spills pages into the WAL
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO t (n, pad) VALUES (?, ?)", ((n, bytes(1000)) for n in range(1000, 1100))
    )

    lazyfs.power_cut()
    db.close()
    integrity, numbers = reboot_and_read(lazyfs)

    assert ["ok"] == integrity
    assert list(range(1, 21)) == numbers


def test_wal_with_synchronous_normal_loses_commits_after_the_last_sync_but_opens_intact(
    lazyfs: LazyFs,
) -> None:
    db = open_db(lazyfs.mountpoint / DB, synchronous="NORMAL")
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    insert(db, range(1, 6))
    db.execute("PRAGMA wal_checkpoint(FULL)")  # syncs the WAL, then the database file
    insert(db, range(6, 16))
    assert 15 == db.execute("SELECT count(*) FROM t").fetchone()[0]

    cut = lazyfs.power_cut()
    db.close()
    integrity, numbers = reboot_and_read(lazyfs)

    assert ["ok"] == integrity
    assert list(range(1, 6)) == numbers
    assert cut.unsynced_bytes > 0


def test_fsync_of_the_wal_through_another_read_only_descriptor_keeps_the_commits_before_it(
    lazyfs: LazyFs,
) -> None:
    db = open_db(lazyfs.mountpoint / DB, synchronous="NORMAL")
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    insert(db, range(1, 6))
    db.execute("PRAGMA wal_checkpoint(FULL)")
    insert(db, range(6, 11))
    fsyncs = lazyfs.stats().fsyncs

    fsync_read_only_in_another_process(lazyfs.mountpoint / f"{DB}-wal")
    insert(db, range(11, 16))
    cut = lazyfs.power_cut()
    db.close()
    integrity, numbers = reboot_and_read(lazyfs)

    assert fsyncs + 1 == cut.fsyncs
    assert ["ok"] == integrity
    assert list(range(1, 11)) == numbers


# -- fault injection: the disk fails under open files --------------------------------------


def assert_fails(errno_value: int, operation: object, *args: object) -> None:
    assert callable(operation)
    with pytest.raises(OSError, match=os.strerror(errno_value)) as failure:
        operation(*args)
    assert errno_value == failure.value.errno, failure.value


def commit_error(db: sqlite3.Connection, n: int) -> sqlite3.OperationalError:
    with pytest.raises(sqlite3.OperationalError) as failure:
        db.execute("INSERT INTO t (n) VALUES (?)", (n,))
    return failure.value


def numbers_in(db: sqlite3.Connection) -> list[int]:
    return [row[0] for row in db.execute("SELECT n FROM t ORDER BY n")]


def test_with_eio_set_writes_and_fsyncs_fail_reads_work_and_clearing_restores_them(
    lazyfs: LazyFs,
) -> None:
    path = lazyfs.mountpoint / "a"
    write_file(path, b"synced", fsync=True)
    fd = os.open(path, os.O_RDWR)
    try:
        lazyfs.fail_writes(errno.EIO)

        assert (errno.EIO, WriteKind.ALL) == lazyfs.write_fault
        assert_fails(errno.EIO, os.pwrite, fd, b"lost", 0)
        assert_fails(errno.EIO, os.fsync, fd)
        assert_fails(errno.EIO, os.fdatasync, fd)
        assert_fails(errno.EIO, os.ftruncate, fd, 2)
        assert_fails(errno.EIO, os.open, lazyfs.mountpoint / "new", os.O_RDWR | os.O_CREAT, 0o644)
        assert_fails(errno.EIO, os.open, path, os.O_WRONLY | os.O_TRUNC)
        assert b"synced" == os.pread(fd, 100, 0)
        assert b"synced" == read_direct(path)  # served by the file system, not the kernel's cache
        assert 6 == path.stat().st_size
        assert ["a"] == os.listdir(lazyfs.mountpoint)
        assert 6 == lazyfs.stats().failed_ops

        lazyfs.fail_writes(None)

        assert lazyfs.write_fault is None
        assert 4 == os.pwrite(fd, b"SYNC", 0)
        os.fsync(fd)
        write_file(lazyfs.mountpoint / "new", b"new", fsync=True)
    finally:
        os.close(fd)
    cut = lazyfs.power_cut()

    assert b"SYNCed" == (lazyfs.backing / "a").read_bytes()
    assert b"new" == (lazyfs.backing / "new").read_bytes()
    assert 6 == cut.failed_ops


def test_the_fault_holds_from_the_very_next_operation_after_each_switch(lazyfs: LazyFs) -> None:
    fd = os.open(lazyfs.mountpoint / "a", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for round_ in range(100):
            lazyfs.fail_writes(errno.ENOSPC)
            assert_fails(errno.ENOSPC, os.pwrite, fd, b"x", round_)
            lazyfs.fail_writes(None)
            assert 1 == os.pwrite(fd, b"y", round_)
        os.fsync(fd)
    finally:
        os.close(fd)

    assert b"y" * 100 == (lazyfs.backing / "a").read_bytes()
    assert 100 == lazyfs.stats().failed_ops


def test_names_and_attributes_fail_too_and_kinds_choose_what_fails(lazyfs: LazyFs) -> None:
    mnt = lazyfs.mountpoint
    write_file(mnt / "a", b"a", fsync=True)
    (mnt / "sub").mkdir()

    with lazyfs.writes_failing(errno.EROFS):
        assert_fails(errno.EROFS, (mnt / "b").mkdir)
        assert_fails(errno.EROFS, (mnt / "sub").rmdir)
        assert_fails(errno.EROFS, (mnt / "a").rename, mnt / "b")
        assert_fails(errno.EROFS, (mnt / "a").unlink)
        assert_fails(errno.EROFS, (mnt / "l").symlink_to, "a")
        assert_fails(errno.EROFS, (mnt / "a").chmod, 0o600)
        assert_fails(errno.EROFS, os.utime, mnt / "a", None)
        directory = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert_fails(errno.EROFS, os.fsync, directory)
        finally:
            os.close(directory)
    assert lazyfs.write_fault is None
    with lazyfs.writes_failing(errno.EIO, WriteKind.SYNC):  # writes pass, fsyncs fail
        fd = os.open(mnt / "a", os.O_RDWR)
        try:
            assert 1 == os.pwrite(fd, b"A", 0)
            assert_fails(errno.EIO, os.fsync, fd)
        finally:
            os.close(fd)
        (mnt / "a").rename(mnt / "b")

    assert ["b", "sub"] == sorted(os.listdir(lazyfs.backing))
    assert b"a" == (lazyfs.backing / "b").read_bytes()  # the write was never synced
    assert 9 == lazyfs.stats().failed_ops


def test_a_clean_stop_while_the_disk_fails_writes_nothing_and_a_new_mount_starts_healthy(
    lazyfs: LazyFs,
) -> None:
    write_file(lazyfs.mountpoint / "a", b"synced", fsync=True)
    write_file(lazyfs.mountpoint / "a", b"unsynced", fsync=False)
    lazyfs.fail_writes(errno.EIO)

    lazyfs.stop()

    assert b"synced" == (lazyfs.backing / "a").read_bytes()
    assert 1 == lazyfs.stats().failed_ops
    lazyfs.fail_writes(None)  # stopped: nothing to clear, no error
    with pytest.raises(LazyFsError, match="not running"):
        lazyfs.fail_writes(errno.EIO)
    lazyfs.start()
    assert lazyfs.write_fault is None
    write_file(lazyfs.mountpoint / "a", b"healthy", fsync=True)
    assert b"healthy" == (lazyfs.backing / "a").read_bytes()
    with pytest.raises(ValueError, match="ENOSYS"):
        lazyfs.fail_writes(errno.ENOSYS)  # the kernel would stop sending fsyncs for good
    with pytest.raises(ValueError, match="must be 1"):
        lazyfs.fail_writes(0)


@pytest.mark.parametrize(
    ("errno_value", "sqlite_error"),
    [
        (errno.EIO, "SQLITE_IOERR_WRITE"),
        (errno.EROFS, "SQLITE_IOERR_WRITE"),  # not SQLITE_READONLY: the files are open already
        (errno.ENOSPC, "SQLITE_FULL"),
    ],
    ids=["EIO", "EROFS", "ENOSPC"],
)
def test_wal_commits_fail_while_the_disk_fails_and_succeed_after_it_without_a_reopen(
    lazyfs: LazyFs,
    errno_value: int,
    sqlite_error: str,
) -> None:
    db = open_db(lazyfs.mountpoint / DB, synchronous="FULL")
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    insert(db, range(1, 6))

    with lazyfs.writes_failing(errno_value):
        error = commit_error(db, 6)
        print(f"{errno.errorcode[errno_value]}: {error.sqlite_errorname} ({error})")
        assert sqlite_error == error.sqlite_errorname
        assert not db.in_transaction  # SQLite rolled the transaction back itself
        assert list(range(1, 6)) == numbers_in(db)  # reads work on the open connection
        with pytest.raises(sqlite3.OperationalError) as checkpoint:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert "SQLITE_IOERR_FSYNC" == checkpoint.value.sqlite_errorname
        assert lazyfs.stats().failed_ops >= 2

    insert(db, range(7, 11))  # the same connection: no reopen needed
    assert [*range(1, 6), *range(7, 11)] == numbers_in(db)
    lazyfs.power_cut()
    db.close()
    integrity, numbers = reboot_and_read(lazyfs)

    assert ["ok"] == integrity
    assert [*range(1, 6), *range(7, 11)] == numbers


def test_a_wal_commit_that_failed_on_fsync_is_rolled_back_yet_comes_back_after_a_cut(
    lazyfs: LazyFs,
) -> None:
    """Its frames reached the WAL; once anything syncs the WAL, recovery after a crash replays them."""
    db = open_db(lazyfs.mountpoint / DB, synchronous="FULL")
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    insert(db, range(1, 3))

    with lazyfs.writes_failing(errno.EIO, WriteKind.SYNC):
        error = commit_error(db, 3)
    print(f"EIO on fsync only: {error.sqlite_errorname} ({error})")
    assert "SQLITE_IOERR_FSYNC" == error.sqlite_errorname
    assert [1, 2] == numbers_in(db)
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # syncs the WAL, its dead frames too
    lazyfs.power_cut()
    db.close()
    integrity, numbers = reboot_and_read(lazyfs)

    assert ["ok"] == integrity
    assert [1, 2, 3] == numbers  # the commit reported as failed


def test_a_connection_opened_while_the_disk_fails_cannot_even_read_until_it_recovers(
    lazyfs: LazyFs,
) -> None:
    """The first connection must reset the -shm file; an open one keeps reading."""
    db = open_db(lazyfs.mountpoint / DB, synchronous="NORMAL")
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    insert(db, range(1, 3))

    with lazyfs.writes_failing(errno.EIO):
        db.close()  # its checkpoint fails quietly: the WAL stays
        reopened = sqlite3.connect(lazyfs.mountpoint / DB, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError) as failure:
            numbers_in(reopened)
    print(f"EIO at open: {failure.value.sqlite_errorname} ({failure.value})")
    assert "SQLITE_IOERR_SHMOPEN" == failure.value.sqlite_errorname

    with contextlib.closing(reopened):
        assert [1, 2] == numbers_in(reopened)
        insert(reopened, range(3, 4))
        assert [1, 2, 3] == numbers_in(reopened)
