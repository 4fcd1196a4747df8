"""The durable outbox: unsent messages in SQLite (agent.outbox.store), delivered from memory.

One task owns the file. `DiskOutbox.run` is the queue's task in the service's TaskGroup;
every SQLite call it makes runs in the outbox's one I/O thread (agent.outbox.iothread),
so a slow or failing disk never stalls polling, and nothing that goes wrong with the
disk raises into a poller or into delivery: the port's methods (`put`, `take`, `ack`,
...) touch memory only; they are agent.outbox.front's, the base of `DiskOutbox`. This
module is the rest: the queue's task, its commits, reads, syncs and recoveries.

Write economy. A message is handed to delivery as soon as it is put, and written only if
the broker has not acknowledged it by its commit: `commit_interval` (0.5 s) after it was
put, or at once beyond `commit_bytes`; a message in flight for less than half
`commit_interval` is left for the commit after. With the broker up, a message is
acknowledged within milliseconds and never touches the disk; with it down, every
message is written `commit_interval` after it was put, as before. Acknowledged messages
that were written are deleted in the same transactions.

Durability. `synchronous = "normal"`: a commit survives the agent being killed at once,
and a power cut once the WAL has been synced, which happens every `sync_interval`
(2 s): a power cut loses at most what was put in the last commit_interval +
sync_interval. `synchronous = "full"` syncs every commit: at most commit_interval.

A disk that cannot take writes (full after making room, I/O errors, read-only):
messages are delivered from memory (at most `memory_bytes`, the oldest dropped and
counted), acknowledgements of what is on disk are remembered, and the writes are tried
again with back-off (agent.outbox.degraded); when the disk recovers, the unsent messages
are written and the acknowledged ones deleted, so a restart resends nothing the broker
had. One log line per change of state.

Bounds. `max_bytes` on disk (see agent.outbox.budget), `max_age` both when a message is
handed to delivery and once a minute on disk; the oldest go first, counted and logged
(agent.outbox.drops).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from agent.clock import Clock
from agent.errors import QueueCorrupt, QueueError
from agent.outbox.front import QueueFront
from agent.outbox.iothread import QueueThread
from agent.outbox.memory import ReadLane, Spared
from agent.outbox.port import Message
from agent.outbox.rows import Row, StateProvider, StateWrite, Unpacked, unpack_payload, unpacked
from agent.outbox.settings import QueueSettings
from agent.outbox.store import Opened, QueueStore, Written

__all__ = ["DiskOutbox", "QueueSettings", "unpack_payload"]

log = structlog.get_logger("agent.queue")

FETCH_CHUNK = 256  # rows read back from disk at a time
AGE_CHECK_INTERVAL = 60.0  # seconds between sweeps of the file for max_age
OPEN_WAIT = 30.0  # seconds the constructor waits for the file to open


class DiskOutbox(QueueFront):
    """The Outbox port on SQLite. The port's methods (QueueFront's) run on the event loop
    and touch memory only; `run` (the queue's task) does all the file's work."""

    def __init__(
        self, settings: QueueSettings, *, clock: Clock, loop_time: Callable[[], float] | None = None
    ) -> None:
        super().__init__(settings, clock=clock, time=loop_time or time.monotonic)
        self._thread = QueueThread()
        self._store = QueueStore(
            settings.path, max_bytes=settings.max_bytes, synchronous=settings.synchronous
        )
        self._synced = True
        self._sync_at = 0.0
        self._age_at = 0.0
        self._closing = False
        self._busy = asyncio.Lock()  # the queue's task and aclose: one at a time
        self._states: dict[str, StateProvider] = {}  # kept with the commits
        self._states_due = False
        self._states_lost = False  # a commit with states failed: the next writes them whole
        # What the file held at start-up: name -> (snapshot, journal entries after it).
        self.saved_states: dict[str, tuple[bytes | None, list[bytes]]] = {}
        self._open_file()

    # -- state kept with the commits -------------------------------------------------------

    def keep_state(self, name: str, provider: StateProvider) -> None:
        """What `provider(whole)` gives is kept under `name` by the commit after each
        `state_changed()`; a snapshot in the same transaction as the messages put before
        it (and as those the provider puts), a journal entry with those not acknowledged
        in time."""
        self._states[name] = provider

    def _states_to_write(self) -> dict[str, StateWrite]:
        """Each provider's write; whole after a commit that failed (its write is not on
        disk, and however long the disk fails nothing piles up meanwhile)."""
        whole, self._states_lost = self._states_lost, False
        self._states_due = False
        return {name: provider(whole) for name, provider in self._states.items()}

    def state_changed(self) -> None:
        self._states_due = True
        if self._commit_at is None:
            self._commit_at = self._time() + self._settings.commit_interval
            self._wake.set()

    # -- the Outbox port: the queue's task, flush and close --------------------------------

    async def run(self) -> None:
        """The queue's task: commits, syncs, reads for delivery, bounds, disk recovery."""
        while not self._closing:
            timeout = self._next_deadline()
            if timeout is None or timeout > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            if self._closing:
                return
            async with self._busy:
                await self._service()

    async def flush(self) -> None:
        """Commit what is pending now (and wait for it)."""
        async with self._busy:
            await self._write(everything=True)

    async def aclose(self) -> None:
        """Commit what is pending, sync and close the file. Unacknowledged messages stay."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        try:
            # A write the queue's task left running (cancelled) may have landed uncounted:
            # the last commit counts the file again, for the depth the agent reports.
            lost = await self._thread.settle()
            async with self._busy:
                if self._open:
                    await self._write(recount=lost, everything=True)
                self._drops.log(force=True)
                if self._unwritten:
                    log.error(
                        "queue_unsaved_at_stop",
                        messages=len(self._unwritten),
                        error=self._health.error,
                    )
                if self._open:
                    with contextlib.suppress(QueueError):
                        await self._thread.call(self._store.close)
                    self._open = False
        finally:
            self._closed = True
            self._room.set()
            self._thread.shutdown()

    # -- the queue's task -------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        """Seconds until the queue's task has something to do (None: only when woken)."""
        now = self._time()
        deadlines: list[float] = []
        if self._refill_wanted:
            return 0.0
        if not self._open or not self._health.ok:
            deadlines.append(self._health.retry_at)
        elif self._commit_at is not None:
            deadlines.append(self._commit_at)
        if self._sync_due_at() is not None:
            deadlines.append(self._sync_at)
        if self._open:
            deadlines.append(self._age_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    async def _service(self) -> None:
        now = self._time()
        self._drops.count_expired()
        self._drops.log()
        if not self._open:
            if now >= self._health.retry_at and await self._reopen():
                self._health.recovered(messages_on_disk=self._disk_count)
                self._commit_at = self._time()  # write what memory held meanwhile
                self._wake.set()
            return
        if self._refill_wanted:
            self._refill_wanted = False
            await self._refill()
        failing = not self._health.ok
        due = self._health.retry_at if failing else self._commit_at
        if due is not None and now >= due:
            failures = self._health.failures
            await self._write(sweep=now >= self._age_at)
            if failing and self._health.failures == failures and not self._health.ok:
                await self._probe()  # nothing was due for writing: is the disk back?
        elif now >= self._age_at:
            await self._write(sweep=True, messages=False)
        sync_at = self._sync_due_at()
        if sync_at is not None and now >= sync_at:
            await self._sync()

    def _sync_due_at(self) -> float | None:
        """When the WAL is due for a sync (never while the disk fails: the back-off's
        tries come first)."""
        if self._synced or self._settings.synchronous != "normal" or not self._health.ok:
            return None
        return self._sync_at

    async def _probe(self) -> None:
        """The disk failed, and a retry found nothing to write (the broker acknowledged
        everything meanwhile): a sync tells whether it takes writes again."""
        try:
            await self._thread.call(self._store.sync)
        except QueueError as exc:
            await self._write_failed(exc)
            return
        self._health.recovered(messages_on_disk=self._disk_count)
        self._next_commit()  # what was spared meanwhile is due as usual
        self._update_room()

    def _open_file(self) -> None:
        """Open the file at start-up (before the loop runs anything else: READY waits)."""
        try:
            opened = self._thread.call_blocking(self._store.open, timeout=OPEN_WAIT)
        except (QueueError, TimeoutError) as exc:
            self._open_failed(exc)
            return
        self._opened(opened)

    async def _reopen(self) -> bool:
        """Open the file again; False (to be tried again later) if it still will not."""
        try:
            opened = await self._thread.call(self._store.open)
        except QueueError as exc:
            self._open_failed(exc)
            return False
        self._opened(opened)
        return True

    def _opened(self, opened: Opened) -> None:
        if opened.moved_aside is not None:
            log.error(
                "queue_corrupt_moved_aside",
                path=str(self._settings.path),
                moved_to=str(opened.moved_aside),
                error=opened.corruption,
            )
        self._open = True
        if opened.max_seq >= self._seq:
            self._seq = opened.max_seq
        # Everything on the file is older than anything in memory: backlog.
        self._mem_floor = max(self._mem_floor, opened.max_seq)
        self._backlog_end = max(self._backlog_end, opened.max_seq)
        self._disk_count, self._disk_bytes = opened.count, opened.payload_bytes
        if not self.saved_states:
            self.saved_states = dict(opened.states)
        self._oldest_ms = opened.oldest_ms
        self._age_at = self._time()
        if opened.count:
            log.info(
                "queue_opened",
                path=str(self._settings.path),
                messages=opened.count,
                bytes=opened.payload_bytes,
            )
            self._ready.set()

    def _open_failed(self, exc: BaseException) -> None:
        self._health.open_failed(exc)
        self._degrade()
        # Messages made now must not take the seqs of rows the file may still hold.
        self._seq = max(self._seq, time.time_ns() // 1000)

    async def _write(
        self,
        *,
        sweep: bool = False,
        messages: bool = True,
        recount: bool = False,
        everything: bool = False,
    ) -> None:
        """Commit what is due now, in commits of at most `_commit_bytes` each (what is put
        meanwhile waits for the next round: the queue's task has reads to do too). Due:
        every unwritten message but those put less than half `commit_interval` ago that
        are in flight or about to be (the broker's acknowledgement is expected first), or
        with `everything` all of them. The next commit is then due when the oldest left
        reaches `commit_interval`."""
        upto = self._seq
        spare = None if everything else self._spared()
        more = await self._commit(
            sweep=sweep, messages=messages, recount=recount, upto=upto, spare=spare
        )
        while more and messages and self._open and self._health.ok:
            more = await self._commit(upto=self._seq if everything else upto, spare=spare)
        self._next_commit()
        self._update_room()

    def _next_commit(self) -> None:
        """The next commit: when the oldest unwritten message is commit_interval old (or
        earlier, if one is due already)."""
        made = self._unwritten.first_made()
        if made is not None and self._health.ok:
            self._commit_due(made + self._settings.commit_interval)

    def _spared(self) -> Spared:
        """What a timed commit leaves out: messages put less than half a commit_interval
        ago that are in flight, or that delivery, waiting for messages, takes as soon as
        the loop comes round; their acknowledgement will most likely come first (a
        message acknowledged before its commit never touches the disk). With the broker
        away, or behind, nothing waits to take them: they are written."""
        young = self._time() - self._settings.commit_interval / 2
        in_flight = self._in_flight
        if self._taker_waiting:
            return lambda _seq, made: made > young
        return lambda seq, made: made > young and seq in in_flight

    async def _commit(
        self,
        *,
        sweep: bool = False,
        messages: bool = True,
        upto: int | None = None,
        recount: bool = False,
        spare: Spared | None = None,
    ) -> bool:
        """One commit: unwritten messages in (none that `spare` spares), acknowledged (and
        superseded) ones out; with `sweep`, the file's messages past max_age dropped too;
        with `recount` (or after a failure), the file's rows counted again after it.
        Whether messages it could have written are left for another."""
        if messages:
            self._commit_at = None
        if not self._open:
            return False
        # Taken first: a provider may put messages (what its state no longer holds), and
        # they must go into this same commit. A snapshot goes with every message put
        # before it (`keep_state`: what it no longer holds was put then), none spared; a
        # journal alone holds no one's message. (A sweep alone leaves the states.)
        states = self._states_to_write() if messages and self._states_due else {}
        if states:
            upto, spare = self._seq, _snapshot_spares_none(states, spare)
        batch, more = (
            self._unwritten.batch(self._commit_bytes, upto=upto, spare=spare)
            if messages
            else ([], False)
        )
        if not (batch or self._acked or self._supersede_due or sweep or states):
            return False
        rows = [unpacked(message) for message in batch]
        deletes = sorted(self._acked)
        supersede = list(self._supersede_due.items())
        held = set(self._in_flight) | set(self._retry)
        cutoff = None
        if sweep:
            self._age_at = self._time() + AGE_CHECK_INTERVAL
            cutoff = self._clock.stamp().wall_ms - int(self._settings.max_age * 1000)
        self._writing = {m.seq for m in batch}
        self._deleting = len(deletes)
        try:
            result = await self._thread.call(
                self._store.write,
                rows,
                deletes,
                supersede=supersede,
                held=held,
                age_cutoff_ms=cutoff,
                recount=recount or not self._health.ok,
                states=states,
            )
        except QueueError as exc:
            if states:  # written whole at the next try
                self._states_lost = self._states_due = True
            self._writing = set()
            if isinstance(exc.partial, Written):
                self._applied(exc.partial, [])
            await self._write_failed(exc)
            return False
        finally:
            self._writing = set()
            self._deleting = 0
            self._ready.set()
        self._committed(result, batch, rows, deletes, supersede)
        if result.after_error is not None:
            await self._write_failed(result.after_error)
        self._trim_memory()
        return more

    def _committed(
        self,
        result: Written,
        batch: list[Message],
        rows: list[Unpacked],
        deletes: list[int],
        supersede: list[tuple[str, int]],
    ) -> None:
        """What a commit wrote and deleted, struck off what was waiting for it."""
        if result.inserted or result.deleted:
            self.commits += 1
        for message in batch:
            self._unwritten.pop(message.seq)
            self._uncounted.discard(message.seq)  # in `_disk_count` from now on
        self._acked.difference_update(deletes)
        self._uncounted.difference_update(deletes)
        for topic, seq in supersede:
            if self._supersede_due.get(topic) == seq:
                del self._supersede_due[topic]
        self._applied(result, rows)
        self._update_room()
        if not self._health.ok:
            self._health.recovered(messages_on_disk=self._disk_count)

    def _applied(self, result: Written, rows: list[Unpacked]) -> None:
        if result.count is not None:  # after a failure: what the file really holds
            self._disk_count, self._disk_bytes = result.count, result.payload_bytes
        else:
            self._disk_count += result.inserted - result.deleted
            self._disk_bytes += result.inserted_bytes - result.deleted_bytes
        if result.files_bytes:
            self._files_bytes = result.files_bytes
        if result.after_error is None:
            self._oldest_ms = result.oldest_ms
        if self._synced:
            self._sync_at = self._time() + self._settings.sync_interval
        self._synced = False
        if result.disk_full:
            log.error(
                "queue_disk_full",
                path=str(self._settings.path),
                messages_on_disk=self._disk_count,
                files_bytes=result.files_bytes,
            )
        if result.dropped:
            self._dropped(result)

    def _dropped(self, result: Written) -> None:
        """Rows the bounds dropped: out of memory too. Those acknowledged, or taken, while
        the commit was under way are off the file and off `_disk_count` already: nothing
        to delete, and not to be taken off the depth a second time."""
        dropped = set(result.dropped)
        self._discard(lambda seq, _topic: seq in dropped)
        self._acked -= dropped
        self._uncounted -= dropped
        self._gone |= dropped & (self._in_flight.keys() | self._retry.keys())
        self._drops.count(
            result.dropped_for or "max_bytes", len(result.dropped), result.dropped_bytes
        )

    async def _write_failed(self, exc: QueueError) -> None:
        self._suspect_upto = self._seq
        self._health.write_failed(exc, unwritten=len(self._unwritten))
        self._degrade()
        if isinstance(exc, QueueCorrupt):
            await self._start_over()

    async def _start_over(self) -> None:
        """The file went corrupt under us: move it aside, start a new one, and write
        again what memory still holds (what only the old file held is lost)."""
        with contextlib.suppress(QueueError):
            await self._thread.call(self._store.close)
        self._open = False
        lost = self._disk_count
        if not await self._reopen():
            return
        self._disk_count = self._disk_bytes = 0
        self._unwritten.restore([*self._memory, *self._in_flight.values(), *self._retry.values()])
        self._acked.clear()
        self._uncounted.clear()
        self._gone.clear()
        self._backlog, self._live = ReadLane(0), ReadLane(self._backlog_end)
        log.error("queue_restarted_after_corruption", messages_lost=lost)

    def _degrade(self) -> None:
        """The disk failed (`_health` says how): deliver from memory meanwhile."""
        self._room.set()  # polling goes on; memory keeps the newest
        self._ready.set()

    async def _refill(self) -> None:
        """Read the next chunk of backlog (and of live that left memory) from disk."""
        for lane, upto in (
            (self._live, self._mem_floor),
            (self._backlog, min(self._backlog_end, self._mem_floor)),
        ):
            after = max(lane.read, self._backlog_end) if lane is self._live else lane.read
            if lane.rows or after >= upto:
                continue
            generation = self._generation
            try:
                rows = await self._thread.call(self._store.fetch, after, upto, FETCH_CHUNK)
            except QueueError as exc:
                await self._write_failed(exc)
                return
            if generation != self._generation:
                self._want_rows()  # a reconnect started the backlog over meanwhile
                return
            lane.read = rows[-1][0] if len(rows) == FETCH_CHUNK else upto
            lane.rows.extend(row for row in rows if not self._elsewhere(row))
            if not lane.rows and lane.read < upto:
                self._want_rows()
            self._ready.set()

    def _elsewhere(self, row: Row) -> bool:
        """A row read back that must not be sent from the file: it is in flight, waiting
        to be sent again, acknowledged, in memory, or replaced by a newer report."""
        seq, topic = row[0], row[1]
        newer = self._supersede_due.get(topic)
        return (
            seq in self._in_flight
            or seq in self._retry
            or seq in self._acked
            or seq in self._memory.resident
            or (newer is not None and seq < newer)
        )

    async def _sync(self) -> None:
        self._synced = True
        try:
            await self._thread.call(self._store.sync)
        except QueueError as exc:
            self._synced = False
            await self._write_failed(exc)


def _snapshot_spares_none(states: dict[str, StateWrite], spare: Spared | None) -> Spared | None:
    """A commit with a snapshot writes every message put before it, none spared."""
    return None if any(write.snapshot is not None for write in states.values()) else spare
