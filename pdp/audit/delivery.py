"""Delivery of written records to one forwarded sink, with a spool for when it is down.

Each sink gets its own forwarder task, so a slow or dead sink delays nobody: not the decision
path, not the ledger, not the other sinks. Records wait in memory while the sink keeps up;
when a send fails (or memory passes ``memory_limit``) they go to the sink's spool file and are
replayed from there, oldest first, once the sink answers again. Order is kept by one rule:
while the spool holds anything, new records are appended to it rather than kept in memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path

import structlog

from pdp.audit.chain import Entry, entry_from_line
from pdp.audit.sinks import Sink
from pdp.audit.spool import Spool
from pdp.audit.watch import HistoryReader, WatchError
from pdp.backoff import Backoff

log = structlog.get_logger("pdp.audit")


class Forwarder:
    def __init__(self, sink: Sink, spool_path: Path, *, batch_size: int, memory_limit: int,
                 timeout: float, retry_initial: float, retry_max: float,
                 history: Path | None = None) -> None:
        self.sink = sink
        self.history = history
        self._caught_up = False
        self.spool = Spool(spool_path)
        self.batch_size = batch_size
        self.memory_limit = memory_limit
        self.timeout = timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._mem: collections.deque[Entry] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._inflight: list[Entry] = []  # batch taken from memory, being sent
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failures = 0
        self.healthy = True
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def pending(self) -> int:
        return len(self._mem) + self.spool.pending

    def start(self) -> None:
        self.spool.open()
        if self.spool.pending:
            log.info("audit sink spool replay", sink=self.name, records=self.spool.pending)
        self._task = asyncio.create_task(self._run(), name=f"audit-sink-{self.name}")
        self._task.add_done_callback(self._task_done)
        self._wake.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("audit sink forwarder died; records stay in memory/spool",
                         sink=self.name, error=repr(task.exception()))

    def offer(self, entries: list[Entry]) -> None:
        """Hand over freshly written records (called from the writer; never blocks on I/O
        other than a local spool append)."""
        if not entries:
            return
        if self.spool.pending or (
                not self._inflight and len(self._mem) + len(entries) > self.memory_limit):
            try:
                self._spill(entries)
            except OSError as e:  # spool unwritable: keep them in memory, say so
                log.error("audit sink spool unwritable; holding in memory", sink=self.name,
                          error=str(e))
                self._mem.extend(entries)
        else:
            self._mem.extend(entries)
        self._idle.clear()
        self._wake.set()

    def _spill(self, extra: list[Entry] | None = None) -> None:
        lines = [e.line for e in self._mem]
        if extra:
            lines.extend(e.line for e in extra)
        self.spool.append(lines)
        self._mem.clear()

    async def _run(self) -> None:
        backoff = Backoff(self.retry_initial, self.retry_max)
        while True:
            if not self.pending:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            from_spool = self.spool.pending > 0
            if from_spool:
                try:
                    lines = self.spool.peek(self.batch_size)
                except OSError as e:
                    log.error("audit sink spool unreadable", sink=self.name, error=str(e))
                    await asyncio.sleep(self.retry_max)
                    continue
                batch = []
                for ln in lines:
                    try:
                        batch.append(entry_from_line(ln))
                    except ValueError:
                        log.error("audit sink spool: skipping unreadable line", sink=self.name,
                                  line=ln[:200].decode(errors="replace"))
                if not batch:
                    self.spool.consume(lines)
                    continue
            else:
                batch = [self._mem.popleft() for _ in range(min(self.batch_size, len(self._mem)))]
                self._inflight = batch
            try:
                if not self._caught_up:
                    await self._catch_up(batch[0].seq)
                async with asyncio.timeout(self.timeout):
                    await self.sink.send(batch)
            except Exception as e:  # any sink failure: spool and retry later
                self._inflight = []
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.healthy:
                    log.warning("audit sink down; spooling", sink=self.name, error=self.last_error)
                self.healthy = False
                if not from_spool:
                    # The spool is empty (we were sending from memory): failed batch first,
                    # then everything queued behind it, keeps the order.
                    self._mem.extendleft(reversed(batch))
                    try:
                        self._spill()
                    except OSError as se:
                        log.error("audit sink spool unwritable; holding in memory",
                                  sink=self.name, error=str(se))
                if self._closing:
                    self._idle.set()
                    return
                await asyncio.sleep(backoff.next())
                continue
            self._inflight = []
            if from_spool:
                self.spool.consume(lines)
            self.delivered += len(batch)
            backoff.reset()
            if not self.healthy:
                log.info("audit sink back", sink=self.name, spooled=self.spool.pending)
                self.healthy = True
            if not from_spool and len(self._mem) > self.memory_limit:
                with contextlib.suppress(OSError):
                    self._spill()

    async def _catch_up(self, next_seq: int) -> None:
        """Once per start: send from the audit files what the sink missed before ``next_seq``.

        Memory is not a spool: after a crash (kill -9) the records a sink had in memory are
        only in the audit files. Sinks that know what they have (``delivered_seq``, Redis)
        get the missing range back-filled from there before anything newer.
        """
        getter = getattr(self.sink, "delivered_seq", None)
        if getter is None or self.history is None:
            self._caught_up = True
            return
        async with asyncio.timeout(self.timeout):
            cursor = await getter()
        if cursor is None or cursor >= next_seq - 1:
            self._caught_up = True
            return
        log.warning("audit sink is missing records; back-filling from the audit files",
                    sink=self.name, first=cursor + 1, last=next_seq - 1)
        reader = HistoryReader(self.history)
        try:
            pos = cursor
            while pos < next_seq - 1:
                try:
                    chunk = await asyncio.to_thread(reader.read, pos, next_seq - 1,
                                                    self.batch_size)
                except WatchError as e:
                    log.error("audit sink back-fill impossible", sink=self.name, error=str(e))
                    break
                if not chunk:
                    break
                async with asyncio.timeout(self.timeout):
                    await self.sink.send(chunk)
                self.delivered += len(chunk)
                pos = chunk[-1].seq
        finally:
            reader.close()
        self._caught_up = True

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything offered so far is delivered; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self.pending or self._inflight:
                    self._idle.clear()
                    self._wake.set()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Deliver what we can within ``timeout``; the rest stays in the spool for next start."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task),
                                       max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception as e:
                log.error("audit sink task failed", sink=self.name, error=str(e))
        # Whatever is still in memory (including a batch whose send was cancelled) is kept.
        if self._inflight or self._mem:
            self._mem.extendleft(reversed(self._inflight))
            self._inflight = []
            try:
                self._spill()
            except OSError as e:
                log.critical("audit records not delivered and not spooled", sink=self.name,
                             error=str(e), count=len(self._mem))
        self.spool.close()
        with contextlib.suppress(Exception):
            await self.sink.close()
