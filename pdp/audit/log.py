"""The audit pipeline: bounded queue -> batching writer -> ledger file -> sinks and watchers.

Why this shape:

* The decision path calls ``emit`` (a non-blocking put) and moves on. A single writer task
  takes whatever is queued (up to ``batch_size``), chains and writes it, then hands the
  written records to the forwarded sinks and live watchers. Writes that need no fsync run on
  the loop in slices of ``inline_max`` events (the GIL gives a thread nothing to run in
  parallel, only hand-offs); fsyncs and rotations run in a worker thread.
* The queue is bounded so memory is. When it is full, ``emit`` does not drop the event (OPA's
  decision logger drops the oldest; an audit log must not): it appends the event, masked, to
  ``<spool_dir>/overflow.jsonl`` synchronously and counts it (``stats().spilled``). From then
  on every ``emit`` goes to that file until the writer has drained it, so order is kept. A
  crash leaves the file behind; the next ``start`` writes its events first.
* ``emit_durable`` (``durability = "sync"``) returns only after the record is fsync'd. All
  waiters whose events sit in the same batch share one fsync (group commit): events arriving
  while a batch is being fsync'd form the next batch.
* A failing ledger write is retried (the file is cut back to the last whole record first);
  a failed fsync fails the durable waiters of that batch with ``AuditWriteError`` rather than
  pretend.
* With an anchor key (``anchor_key_file``) the writer ends some batches with a signed
  checkpoint (anchors.py): every ``anchor_every_records`` records or ``anchor_every_s``
  seconds, at shutdown, and every batch that has durable waiters, so in ``sync`` mode a
  decision is answered only once a checkpoint covering it is fsync'd in the ledger and
  written to the anchor file. Group commit keeps that to one line (and one small write) per
  batch, with no fsync of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pdp import turns
from pdp.audit.anchors import TORN_TAIL, UNCLEAN_SHUTDOWN, Anchorer, AnchorKey
from pdp.audit.chain import EncodedEvent, Entry, Record, encode_event
from pdp.audit.delivery import Forwarder
from pdp.audit.events import (
    DecisionInput,
    Event,
    events_for_decision,
    format_time,
    with_derived,
)
from pdp.audit.masking import Masker
from pdp.audit.record import DecisionRecord
from pdp.audit.settings import AuditSettings
from pdp.audit.sinks import Sink
from pdp.audit.sinks.file import Ledger
from pdp.audit.spool import Spool
from pdp.audit.watch import AuditHistoryUnavailableError, WatchHub
from pdp.backoff import Backoff

log = structlog.get_logger("pdp.audit")

#: Inline writes only while the file has this much room before it rotates (rotation renames
#: and fsyncs: the worker thread's job).
_INLINE_ROOM = 1 << 20
#: The fewest records an inline slice writes, however slow the last one was.
_INLINE_MIN = 4


class AuditWriteError(Exception):
    """The record could not be made durable (e.g. fsync failed); fail closed."""


class AuditClosedError(Exception):
    """The audit log is not running (not started, or closed)."""


@dataclass
class AuditStats:
    """Counters for metrics."""

    queue_depth: int
    written: int
    last_seq: int
    #: Events ``emit`` spilled to the overflow spool because the queue was full (ever).
    spilled: int
    overflow_pending: int
    #: Records sinks had to spool because they were down or slow (ever), and still pending.
    sink_spooled: int
    sink_pending: dict[str, int] = field(default_factory=dict)
    sink_healthy: dict[str, bool] = field(default_factory=dict)
    fsyncs: int = 0
    write_errors: int = 0
    watchers: int = 0
    #: Events that could be neither queued nor spilled (disk unwritable); logged in full at
    #: CRITICAL level. Should stay 0; alert on it.
    lost: int = 0
    #: Events held in memory now: the queue was full and the spool unwritable (see emit).
    held: int = 0
    #: Times the anchor file was found removed or replaced under the writer (recreated).
    anchor_file_replaced: int = 0
    #: Times the active audit file was found removed (put back) or moved away (started
    #: anew) under the writer.
    file_replaced: int = 0


@dataclass
class _Item:
    event: Any
    waiter: asyncio.Future[int] | None = None


@dataclass
class _Barrier:
    waiter: asyncio.Future[int]
    fsync: bool = True


class _Stop:
    pass


class _AnchorTick:
    """Put by the anchor timer: checkpoint now if records wait for one (an idle log)."""


#: An event with no waiter is queued as its EncodedEvent alone.
_QueueItem = EncodedEvent | _Item | _Barrier | _Stop | _AnchorTick


class AuditLog:
    def __init__(self, settings: AuditSettings | None = None, *,
                 sinks: Sequence[Sink] = ()) -> None:
        self.settings = settings or AuditSettings()
        s = self.settings
        self._masker = Masker(s.mask_paths, s.mask_mode,
                              s.mask_hmac_key.encode() if s.mask_hmac_key else None)
        anchorer = None
        if s.anchor_key_file:
            anchorer = Anchorer(AnchorKey.from_file(s.anchor_key_file), s.anchor_path,
                                every_records=s.anchor_every_records, every_s=s.anchor_every_s)
        # Without a key the anchor file is only read: an anchored ledger is refused.
        self._ledger = Ledger(s.path, s.rotate_bytes, anchorer, s.anchor_path)
        self._ticker: asyncio.Task[None] | None = None
        spool_dir = Path(s.spool_path)
        self._overflow = Spool(spool_dir / "overflow.jsonl")
        self._overflow_active = False
        self._queue: asyncio.Queue[_QueueItem] | None = None
        self._extra_sinks = list(sinks)
        self._forwarders: list[Forwarder] = []
        self._hub = WatchHub(Path(s.path), s.watch_buffer)
        self._writer: asyncio.Task[None] | None = None
        self._state = "new"  # new -> running -> closing -> closed
        self._written = 0
        self._fsyncs = 0
        self._write_errors = 0
        self._failing: str | None = None  # the last write error, until a write succeeds
        self._spill_failing: str | None = None  # the last spill error, until one is kept
        self._giving_up = False  # close() ran out of time: spill what the file will not take
        self._unsynced = False  # records written since the last fsync
        self._record_s = 0.0  # seconds per record of the last inline slice (its pace)
        self._lost = 0
        #: Events neither the queue nor the spool could take (see emit), oldest first.
        self._held: list[EncodedEvent] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the ledger (continuing its chain), replay spools, start the writer and sinks."""
        if self._state != "new":
            raise AuditClosedError(f"audit log already {self._state}")
        s = self.settings
        head = await asyncio.to_thread(self._ledger.open)
        if self._ledger.torn_bytes_repaired:
            log.warning("audit file had a torn final line (crash mid-write); moved aside",
                        path=s.path, bytes=self._ledger.torn_bytes_repaired)
        self._hub.set_head(head.seq)
        self._overflow.open()
        self._overflow_active = self._overflow.pending > 0
        self._queue = asyncio.Queue(maxsize=s.queue_size)
        sinks: list[Sink] = []
        if s.redis_url:
            from pdp.audit.sinks.redis_stream import RedisStreamSink
            sinks.append(RedisStreamSink(s.redis_url, s.redis_stream, maxlen=s.redis_maxlen,
                                         instance=s.instance_name, timeout=s.sink_timeout,
                                         cluster=s.redis_cluster))
        if s.stdout:
            from pdp.audit.sinks.stdout import StdoutSink
            sinks.append(StdoutSink())
        sinks.extend(self._extra_sinks)
        spool_dir = Path(s.spool_path)
        for sink in sinks:
            fw = Forwarder(sink, spool_dir / f"{_safe(sink.name)}.spool",
                           batch_size=s.batch_size, memory_limit=s.sink_memory_limit,
                           timeout=s.sink_timeout, retry_initial=s.sink_retry_initial,
                           retry_max=s.sink_retry_max, history=Path(s.path))
            fw.start()
            self._forwarders.append(fw)
        self._state = "running"
        if self._ledger.unclean_shutdown:
            # Said in the chain: a gap in the decisions (async records queued at the kill)
            # is then explained where it is, not only in a log line that may be gone.
            may_miss = ("records queued but not yet written when it stopped (async"
                        " durability) may be missing" if s.durability == "async" else
                        "no acknowledged record is missing (sync durability)")
            log.warning("audit_unclean_shutdown", path=s.path, after_seq=head.seq,
                        effect=may_miss)
            self.emit({"type": UNCLEAN_SHUTDOWN, "time": format_time(None),
                       "after_seq": head.seq, "durability": s.durability,
                       "effect": may_miss})
        if self._ledger.torn_moved_to is not None:
            # In the chain, so verify reports it even once the fragment is gone.
            self.emit({"type": TORN_TAIL, "time": format_time(None),
                       "bytes": self._ledger.torn_bytes_repaired,
                       "moved_to": self._ledger.torn_moved_to.name, "after_seq": head.seq})
        self._writer = asyncio.create_task(self._run(), name="audit-writer")
        self._writer.add_done_callback(self._writer_done)
        if self._ledger.anchorer is not None:
            self._ticker = asyncio.create_task(self._anchor_timer(), name="audit-anchor-timer")

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("audit writer died; events now go to the overflow spool",
                         error=repr(task.exception()))
            self._overflow_active = True  # keep them on disk rather than in a dead queue

    async def __aenter__(self) -> AuditLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Drain the queue and the overflow spool into the file, fsync, then give the sinks
        ``close_timeout`` to catch up (what they cannot take stays in their spools).

        ``timeout`` bounds the drain into the file (a shutdown has a grace period; a full
        disk would hold it for ever): past it, what the file has not taken is tried once
        more and then put in the overflow spool, which the next start writes first; an
        event the spool cannot take either is logged whole, critically (never dropped
        silently), and counted in ``stats().lost``."""
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closing"
        assert self._queue is not None and self._writer is not None
        if self._ticker is not None:
            self._ticker.cancel()
        await self._queue.put(_Stop())
        try:
            done, _ = await asyncio.wait({self._writer}, timeout=timeout)
            if not done:
                self._giving_up = True
                log.critical("audit file did not take the last events in time; they go to"
                             " the overflow spool", timeout_s=timeout, error=self._failing,
                             spool=str(self._overflow.path))
            await self._writer
        finally:
            await asyncio.to_thread(self._ledger.close)
            self._overflow.close()
            self._hub.close()
            await asyncio.gather(*(fw.close(self.settings.close_timeout)
                                   for fw in self._forwarders))
            self._state = "closed"

    # -- the decision path -----------------------------------------------------------------

    def emit(self, event: Mapping[str, Any]) -> None:
        """Queue ``event`` without waiting. Never drops it: a full queue spills to disk.

        The event is masked and encoded here, so the queue holds bytes rather than the
        decision's objects (which would otherwise live on, and cost the garbage collector,
        until the writer gets to them).

        When the spool cannot be written either (a full disk), the event is held in memory
        (after everything before it, written in order once the disk takes writes) and
        ``refusing`` says so from this event on: the engine decides nothing more until the
        held events are in the file. Held events are bounded (``queue_size``): only the
        records of decisions already decided can arrive once ``refusing`` is set. Past that
        bound (or with the log closed) an event cannot be kept at all: it is logged whole at
        critical level and counted in ``stats().lost``, and ``log_decision`` raises
        ``AuditWriteError`` for a decision whose record that was.
        """
        self._emit(event)

    def _emit(self, event: Mapping[str, Any]) -> bool:
        """``emit``; False: the event could not be kept (lost, logged critically)."""
        enc = self._prepare(event)
        if self._held:  # after the events held before it, in order
            return self._hold(enc, self._spill_failing or "overflow spool unwritable")
        if self._state == "running" and not self._overflow_active:
            assert self._queue is not None
            try:
                self._queue.put_nowait(enc)  # bare: most events have no waiter
                return True
            except asyncio.QueueFull:
                pass
        return self._spill(enc)

    def _spill(self, enc: EncodedEvent, hold: bool = True) -> bool:
        line = enc.text + b"\n"
        try:
            self._overflow.append([line])
        except OSError as e:
            self._spill_failing = str(e)
            if hold and self._state == "running":
                return self._hold(enc, str(e))
            self._lose(enc, f"overflow spool unwritable: {e}")
            return False
        self._spill_failing = None
        if self._state in ("running", "closing") and not self._overflow_active:
            self._overflow_active = True
            log.warning("audit queue full; spilling events to the overflow spool",
                        queue_size=self.settings.queue_size)
        return True

    def _hold(self, enc: EncodedEvent, why: str) -> bool:
        """Keep ``enc`` in memory, after the events held before it (see ``emit``)."""
        if len(self._held) >= self.settings.queue_size:
            self._lose(enc, f"overflow spool unwritable and {len(self._held)} events already "
                            f"held in memory: {why}")
            return False
        if not self._held:
            log.error("audit queue full and overflow spool unwritable: holding events in "
                      "memory, refusing decisions until the file takes them", error=why)
        self._held.append(enc)
        return True

    def _lose(self, enc: EncodedEvent, why: str) -> None:
        """Nothing left to put it in. Say so loudly with the event itself, never silently."""
        self._lost += 1
        log.critical("audit event lost", error=why,
                     audit_event=enc.text.decode(errors="replace"))

    @property
    def refusing(self) -> str | None:
        """Why a decision's record could not be kept now, or None. ``sync``: the audit file
        cannot be written. ``async``: the queue is full and the overflow spool cannot be
        written either (a full disk): set by the first event that found it so (held in
        memory, see ``emit``) and kept until the events held are in the file; a queue with
        room again does not clear it. The engine then decides nothing (UNAVAILABLE) rather
        than answer a decision without its record."""
        if self.settings.durability == "sync" and self._failing is not None:
            return f"the audit file cannot be written: {self._failing}"
        if self._spill_failing is not None or self._held:
            return ("the audit queue is full and its overflow spool cannot be written:"
                    f" {self._spill_failing or 'events held in memory'}")
        return None

    @property
    def failing(self) -> str | None:
        """Why the audit file cannot be written right now (the last write error, kept until
        a write succeeds), or None. Readiness reports it; durable writes fail fast on it."""
        return self._failing

    async def emit_durable(self, event: Mapping[str, Any]) -> int:
        """Queue ``event`` and return its seq once it is fsync'd to the audit file.

        Waits for queue space instead of spilling (the caller is waiting for the disk
        anyway). Bound it with the decision deadline; raises ``AuditWriteError`` if the
        fsync failed or the file cannot be written now (``failing``: fail fast rather than
        wait for a disk that is full), ``AuditClosedError`` if the log is not running.
        """
        if self._state != "running":
            raise AuditClosedError(f"audit log is {self._state}")
        if self._failing is not None:
            raise AuditWriteError(f"the audit file cannot be written: {self._failing}")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Item(self._prepare(event), fut))
        return await fut

    async def _enqueue(self, item: _Item | EncodedEvent) -> None:
        """Queue ``item``, waiting for space; after whatever ``emit`` spilled before it (the
        writer takes the spool only once the queue is empty, so an item queued now would
        otherwise be written first: a decision before the Config.Seen it names)."""
        assert self._queue is not None
        if self._overflow_active or self._held:
            await self.flush(fsync=False)
        await self._queue.put(item)

    async def log_decision(self, decision: DecisionRecord | DecisionInput | Mapping[str, Any]
                           ) -> None:
        """Audit one decision (Decision + derived events), honouring ``durability``.

        What the decision path calls (with a DecisionRecord, encoded once; a mapping is
        normalised first): in ``async`` mode it returns at once, in ``sync`` mode after the
        events are fsync'd (one fsync covers them and concurrent decisions).
        """
        events = (with_derived(decision.to_event()) if isinstance(decision, DecisionRecord)
                  else events_for_decision(decision))
        if self.settings.durability == "sync":
            if self._state != "running":
                raise AuditClosedError(f"audit log is {self._state}")
            # FIFO queue: the fsync that covers the last event covers the earlier ones.
            for ev in events[:-1]:
                await self._put(ev)
            await self.emit_durable(events[-1])
        else:
            kept = [self._emit(ev) for ev in events]
            if not all(kept):  # a record neither queued, spilled nor held: not answered
                raise AuditWriteError(self.refusing or "the audit record could not be kept")

    async def _put(self, event: Event) -> None:
        await self._enqueue(self._prepare(event))

    async def flush(self, fsync: bool = True) -> None:
        """Return once everything emitted before the call is written and (unless ``fsync``
        is False: then it is in the file, not necessarily on the disk) fsync'd."""
        if self._state != "running":
            return
        assert self._queue is not None
        while True:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            await self._queue.put(_Barrier(fut, fsync))
            await fut
            if not self._overflow_active and not self._held:
                return

    async def drain_sinks(self, timeout: float | None = None) -> bool:
        """Flush, then wait until every sink has everything (False if one did not in time)."""
        await self.flush()
        results = await asyncio.gather(*(fw.wait_idle(timeout) for fw in self._forwarders))
        return all(results)

    # -- watch -----------------------------------------------------------------------------

    def watch(self, tenant: str | None = None, types: set[str] | None = None,
              from_seq: int | None = None) -> AsyncIterator[Record]:
        """Records matching ``tenant`` / ``types``, history first, then live. See watch.py.
        A ``from_seq`` past the newest record written is refused at once: waiting for it
        would skip every record up to it without a word."""
        newest = self._ledger.head.seq
        if from_seq is not None and from_seq > newest:
            raise AuditHistoryUnavailableError(
                f"from_seq {from_seq} is past the newest audit record (seq {newest}): resume"
                f" from a seq you received, or omit it to watch from now", newest)
        return self._hub.watch(tenant, types, from_seq)

    # -- metrics ---------------------------------------------------------------------------

    def stats(self) -> AuditStats:
        return AuditStats(
            queue_depth=self._queue.qsize() if self._queue is not None else 0,
            written=self._written,
            last_seq=self._ledger.head.seq,
            spilled=self._overflow.appended,
            overflow_pending=self._overflow.pending,
            sink_spooled=sum(fw.spool.appended for fw in self._forwarders),
            sink_pending={fw.name: fw.pending for fw in self._forwarders},
            sink_healthy={fw.name: fw.healthy for fw in self._forwarders},
            fsyncs=self._fsyncs,
            write_errors=self._write_errors,
            watchers=self._hub.count,
            lost=self._lost,
            held=len(self._held),
            anchor_file_replaced=(self._ledger.anchorer.file.replaced
                                  if self._ledger.anchorer is not None else 0),
            file_replaced=self._ledger.replaced,
        )

    @property
    def file_trouble(self) -> str | None:
        """The last time the audit file was found removed or moved away under the writer,
        or None: for health reports (logged as ``audit_file_replaced``). Also while idle:
        a file removed now is put back at the next record (or at shutdown)."""
        if not self._ledger.in_place():
            return (f"audit file {self._ledger.path} is not the file being written (removed"
                    " or moved while open): it is put back, or started anew, at the next"
                    " record or at shutdown")
        return self._ledger.last_replaced

    @property
    def anchor_trouble(self) -> str | None:
        """The last time the anchor file was found removed or replaced (and recreated), or
        None: for health reports (it is logged as ``audit_anchor_file_replaced``)."""
        anchorer = self._ledger.anchorer
        return anchorer.file.last_replaced if anchorer is not None else None

    # -- the writer ------------------------------------------------------------------------

    async def _anchor_timer(self) -> None:
        """Wake the writer when records have waited ``anchor_every_s`` for a checkpoint and
        no batch came along to carry one."""
        anchorer = self._ledger.anchorer
        assert anchorer is not None and self._queue is not None
        while True:
            left = anchorer.seconds_left()
            if left > 0:
                await asyncio.sleep(left)
                continue
            if anchorer.unanchored:
                with contextlib.suppress(asyncio.QueueFull):  # busy: a batch will carry it
                    self._queue.put_nowait(_AnchorTick())
            # Idle (or just ticked): records arriving later are anchored by their own batch
            # when this much time has passed since the last checkpoint.
            await asyncio.sleep(anchorer.every_s)

    def _prepare(self, event: Mapping[str, Any]) -> EncodedEvent:
        """Mask, reduce to pure JSON data and encode (done once; the text is what gets
        hashed)."""
        try:
            return encode_event(self._masker.apply(event))
        except Exception as e:  # keep a trace rather than lose the event
            return encode_event({
                "type": "Audit.Unserializable", "error": repr(e),
                "event_type": str(event.get("type")) if isinstance(event, Mapping) else None})

    async def _run(self) -> None:
        assert self._queue is not None
        stopping = False
        while True:
            if self._overflow_active and (self._queue.empty() or stopping) \
                    and not self._giving_up:  # giving up: it stays for the next start
                try:
                    await self._drain_overflow_chunk()
                except OSError as e:
                    log.error("audit overflow spool unreadable; retrying", error=str(e))
                    await asyncio.sleep(1.0)
                continue
            if self._held and not self._overflow_active and (self._queue.empty() or stopping):
                await self._write_held()
                continue
            if stopping and self._queue.empty():
                if self._ledger.anchorer is not None and not self._ledger.ends_final \
                        and self._ledger.head.seq > 0 and not self._giving_up:
                    # At shutdown: everything written is anchored, by a checkpoint marked as
                    # the last (records after it were appended while no writer ran).
                    await self._checkpoint(final=True)
                return
            item = await self._queue.get()
            batch: list[_QueueItem] = [item]
            while len(batch) < self.settings.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # One pass (this runs per record): events, their waiters, fences, the stop.
            events: list[Any] = []
            waiters: list[asyncio.Future[int] | None] = []
            barriers: list[asyncio.Future[int]] = []
            fsync = tick = False
            for b in batch:
                t = type(b)
                if t is EncodedEvent:
                    events.append(b)
                    if waiters:
                        waiters.append(None)
                elif t is _Item:
                    assert isinstance(b, _Item)
                    if not waiters:
                        waiters = [None] * len(events)
                    events.append(b.event)
                    waiters.append(b.waiter)
                elif t is _Barrier:
                    assert isinstance(b, _Barrier)
                    barriers.append(b.waiter)
                    fsync = fsync or b.fsync
                elif t is _AnchorTick:
                    tick = True
                else:
                    stopping = True
            await self._write(events, waiters or None, sync=fsync or bool(waiters))
            if tick and self._ledger.anchor_due(0):
                await self._checkpoint()
            if fsync and self._unsynced:
                try:
                    await asyncio.to_thread(self._ledger.sync)
                    self._fsyncs += 1
                    self._unsynced = False
                except OSError as e:
                    for w in barriers:
                        if not w.done():
                            w.set_exception(AuditWriteError(f"audit flush failed: {e}"))
            for w in barriers:
                if not w.done():
                    w.set_result(self._ledger.head.seq)

    async def _write_held(self) -> None:
        """Events ``emit`` held in memory (queue full, spool unwritable): into the file, in
        order, after the queue and the spool; ``refusing`` clears once none is left.
        Giving up (shutdown past its grace): the spool takes them, or the log."""
        if self._giving_up:
            held, self._held = self._held, []
            for enc in held:
                self._spill(enc, hold=False)
            return
        chunk = self._held[:self.settings.batch_size]
        await self._write(list(chunk), None, sync=False)  # retried until the file takes them
        del self._held[:len(chunk)]  # (emit appends after them meanwhile)
        if not self._held:
            self._spill_failing = None
            log.info("audit events held in memory are written; taking decisions again")

    async def _drain_overflow_chunk(self) -> None:
        lines = self._overflow.peek(self.settings.batch_size)
        if not lines:
            self._overflow.reset()
            self._overflow_active = False
            return
        events: list[Any] = []
        for ln in lines:
            try:
                events.append(json.loads(ln))  # masked when spilled
            except ValueError:
                events.append({"type": "Audit.Unreadable", "line": ln.decode(errors="replace")})
        await self._write(events, None, sync=True)  # fsync before consuming from the spool
        self._overflow.consume(lines)
        if self._overflow.pending == 0:
            self._overflow_active = False

    def _append(self, events: list[Any], sync: bool, anchor: bool = False,
                final: bool = False) -> Any:
        """Chain and write (events were masked and encoded by ``emit``)."""
        return self._ledger.append(events, sync, anchor, final)

    async def _checkpoint(self, final: bool = False) -> None:
        """A checkpoint on its own (timer, shutdown: ``final``); a failure is logged and
        retried by the next batch or tick (the records stay counted as not anchored)."""
        res = await asyncio.to_thread(self._append, [], True, True, final)
        if res.synced:
            self._fsyncs += 1
            self._unsynced = False
        if res.error is not None:
            self._write_errors += 1
            log.error("audit checkpoint failed", error=str(res.error))
        self._after_write(res.published, None, None)

    async def _write(self, events: list[Any], waiters: list[asyncio.Future[int] | None] | None,
                     sync: bool) -> None:
        """Write ``events`` to the ledger, retrying until they are in; then answer their
        ``waiters`` (parallel to them; None: nobody waits) and fan out.

        Unsynced writes run on the loop in slices of ``inline_max`` events, yielding between
        slices: the process is bound by the GIL, so a worker thread adds hand-offs and lock
        contention without adding CPU. Batches that must be fsync'd (their waiters are
        answered only after it), and writes that may rotate the file, go to the thread.
        A periodic checkpoint that falls due on a batch nobody waits for is written after
        the batch's records, on its own (the thread then only signs and fsyncs): chaining a
        thousand records on the worker thread holds the GIL against the loop in 5 ms turns.
        """
        backoff = Backoff(0.05, 2.0)
        ledger = self._ledger
        if events and not sync and not waiters and ledger.anchoring and self.settings.inline_max \
                and ledger.anchor_due(len(events)) and ledger.room() > _INLINE_ROOM:
            await self._write_inline_then_anchor(events)
            return
        while events:
            # A slice is at most inline_max records and about one turn's worth of time
            # (pdp.turns.EVERY_S at the last slice's pace), so a slow machine holds the
            # loop no longer than a fast one.
            step = self.settings.inline_max
            if step and self._record_s > 0:
                step = max(_INLINE_MIN, min(step, int(turns.EVERY_S / self._record_s)))
            # Durable waiters are answered only once a checkpoint covers them (with anchors).
            anchor = ledger.anchoring and (bool(waiters) or ledger.anchor_due(len(events)))
            if not sync and not anchor and step and ledger.room() > _INLINE_ROOM:
                chunk = events[:step]
                began = time.perf_counter()
                res = self._append(chunk, False)
                if res.error is None and chunk:
                    self._record_s = (time.perf_counter() - began) / len(chunk)
            else:
                chunk = events
                res = await asyncio.to_thread(self._append, events, sync, anchor)
            n = len(res.entries)
            if res.synced:
                self._fsyncs += 1
                self._unsynced = False
            elif n:
                self._unsynced = True
            failed_sync = res.error if (sync or anchor) and not res.synced else None
            self._after_write(res.published, waiters[:n] if waiters else None, failed_sync)
            done = len(chunk) if res.error is None else n
            events = events[done:]
            if waiters:
                waiters = waiters[done:]
            if res.error is None:
                self._failing = None
                if events:
                    await asyncio.sleep(0)  # decisions run between slices
                continue
            if events:  # records held here until the file takes them: durable writes fail
                self._failing = str(res.error)
            self._write_errors += 1
            if events and self._giving_up:
                self._abandon(events, waiters)
                break
            log.error("audit file write failed; retrying", error=str(res.error),
                      written=n, remaining=len(events))
            if events:
                await asyncio.sleep(backoff.next())
        self._failing = None  # everything of this batch is in the file

    def _abandon(self, events: list[Any], waiters: list[asyncio.Future[int] | None] | None
                 ) -> None:
        """Shutting down past its grace with the file refusing writes: ``events`` go to the
        overflow spool (or, failing that, to the log: see _spill); their waiters fail."""
        for i, ev in enumerate(events):
            if isinstance(ev, EncodedEvent):  # (one read back from the spool stays there)
                self._spill(ev, hold=False)
            w = waiters[i] if waiters else None
            if w is not None and not w.done():
                w.set_exception(AuditWriteError("the audit log closed before the file took"
                                                " this record"))

    async def _write_inline_then_anchor(self, events: list[Any]) -> None:
        """The records in inline slices (nobody waits on them), then the due checkpoint."""
        ledger = self._ledger
        step = self.settings.inline_max
        while events:
            n = step
            if self._record_s > 0:
                n = max(_INLINE_MIN, min(step, int(turns.EVERY_S / self._record_s)))
            if ledger.room() <= _INLINE_ROOM:  # near a rotation: the usual path (thread)
                await self._write(events, None, sync=False)
                return
            chunk = events[:n]
            began = time.perf_counter()
            res = self._append(chunk, False)
            if res.error is not None:  # the usual path retries and reports
                await self._write(events, None, sync=False)
                return
            self._record_s = (time.perf_counter() - began) / len(chunk)
            self._unsynced = True
            self._after_write(res.published, None, None)
            events = events[len(chunk):]
            if events:
                await asyncio.sleep(0)
        if ledger.anchor_due(0):
            await self._checkpoint()

    def _after_write(self, entries: list[Entry], waiters: list[asyncio.Future[int] | None] | None,
                     sync_error: BaseException | None) -> None:
        """Answer the ``waiters`` of ``entries`` (None: nobody waits; a checkpoint after the
        waited-for entries has none), then fan out."""
        if not entries:
            return
        self._written += len(entries)
        for w, e in zip(waiters or (), entries[:len(waiters)] if waiters else (), strict=True):
            if w is None or w.done():
                continue
            if sync_error is not None:
                w.set_exception(AuditWriteError(f"audit record {e.seq} not durable: {sync_error}"))
            else:
                w.set_result(e.seq)
        self._hub.publish(entries)
        for fw in self._forwarders:
            fw.offer(entries)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
