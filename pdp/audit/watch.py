"""``watch``: a filtered stream of audit records, history first, then live, without gaps.

Resume semantics follow the ``AuditService.Watch`` proto: ``from_seq = N`` delivers records
with seq > N (so a client resumes with the last seq it received); ``from_seq = 0`` starts at
the oldest record still in the files; ``None`` means live only. The gRPC layer maps
``from_beginning`` to 0.

How the switch to live has no gap and no duplicate: history is read from the JSON-lines files
(rotated ones too) up to the last *published* seq. The writer publishes a batch only after
writing it to the file, and reading "have I reached the published head?" plus subscribing to
live records happen in one step of the event loop (no ``await`` in between), so the first live
record is exactly the next seq. While catching up the watcher holds no live buffer at all.

Slow watchers: each live watcher has a bounded buffer (``watch_buffer`` matching records).
The writer never waits for it; when it is full the watcher is marked overflowed, gets what was
already buffered, and then ``WatchOverflowError`` with ``resume_after`` (the last seq it
received) so it can reconnect with ``from_seq=resume_after``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import BinaryIO

from pdp.audit.chain import Entry, Record, entry_from_line
from pdp.audit.files import first_record, ledger_files
from pdp.turns import Turns

HISTORY_CHUNK = 1000
RACE_RETRIES = 20


class WatchError(Exception):
    """Base of errors that end a watch; ``resume_after`` is where a retry should resume."""

    def __init__(self, message: str, resume_after: int) -> None:
        super().__init__(message)
        self.resume_after = resume_after


class WatchOverflowError(WatchError):
    """The watcher fell more than ``watch_buffer`` records behind the writer."""


class AuditHistoryUnavailableError(WatchError):
    """The requested records are no longer (or not) in the audit files."""


class HistoryReader:
    """Reads records ``after < seq <= upto`` from the audit files, in order, checking that
    seqs are contiguous. Keeps its file open between calls (rotation renames keep the inode)."""

    def __init__(self, active: Path) -> None:
        self.active = active
        self._f: BinaryIO | None = None
        self._last = -1  # seq of the last record read from _f; -1 = not positioned
        self._skip_until = 0  # while not positioned: skip records up to this seq

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _files(self) -> list[tuple[Path, int | None]]:
        for _ in range(100):
            try:
                out: list[tuple[Path, int | None]] = []
                for lf in ledger_files(self.active):
                    if lf.first_seq is not None:
                        out.append((lf.path, lf.first_seq))
                    else:
                        rec = first_record(lf.path)
                        out.append((lf.path, rec["seq"] if rec else None))
                return out
            except FileNotFoundError:
                continue  # the active file was rotated while we listed: list again
        raise AuditHistoryUnavailableError("audit files keep changing under the reader", 0)

    def _open(self, path: Path, last: int) -> None:
        f = open(path, "rb")  # noqa: SIM115 - kept open across calls on purpose
        self.close()
        self._f = f
        self._last = last

    def _position(self, after: int) -> None:
        files = [(p, first) for p, first in self._files() if first is not None]
        if not files:
            raise AuditHistoryUnavailableError(f"no audit records to resume after {after}", after)
        oldest = files[0][1]
        assert oldest is not None
        if after == 0:
            after = oldest - 1
        elif after + 1 < oldest:
            raise AuditHistoryUnavailableError(
                f"records {after + 1}..{oldest - 1} are no longer in the audit files "
                f"(oldest is {oldest})", after)
        chosen = files[0][0]
        for p, first in files:
            if first is not None and first <= after + 1:
                chosen = p
        # Lines up to `after` are skipped while reading.
        try:
            self._open(chosen, -1)
        except FileNotFoundError:  # rotated just now: its new name is in the next listing
            self._position(after)
            return
        self._skip_until = after

    def _next_file(self) -> bool:
        for _ in range(100):
            for p, first in self._files():
                if first == self._last + 1:
                    try:
                        self._open(p, self._last)
                    except FileNotFoundError:
                        break  # rotated between listing and opening: list again
                    return True
            else:
                return False
        return False

    def read(self, after: int, upto: int, max_n: int = HISTORY_CHUNK) -> list[Entry]:
        """Records ``after < seq <= upto`` (at most ``max_n``); raises if the files lack any.

        A rotation can race with listing the directory (the file moves between the listing
        and the open); such a miss is retried a few times before it counts as missing.
        """
        for attempt in range(RACE_RETRIES):
            try:
                return self._read(after, upto, max_n)
            except AuditHistoryUnavailableError:
                if attempt == RACE_RETRIES - 1:
                    raise
                self.close()
                self._last = -1
                time.sleep(0.002)
        raise AssertionError("unreachable")

    def _read(self, after: int, upto: int, max_n: int) -> list[Entry]:
        if self._f is None or self._last != after:
            self._position(after)
        assert self._f is not None
        out: list[Entry] = []
        while len(out) < max_n:
            f = self._f
            off = f.tell()
            line = f.readline()
            if not line.endswith(b"\n"):
                f.seek(off)
                if self._last >= 0 and self._last >= upto:
                    break
                if self._last < 0 or not self._next_file():
                    raise AuditHistoryUnavailableError(
                        f"audit files end at seq {self._last}, expected records up to {upto}",
                        max(after, self._last))
                continue
            try:
                entry = entry_from_line(line)
            except ValueError as e:
                raise AuditHistoryUnavailableError(
                    f"unreadable audit record after seq {self._last} in {f.name!r}: {e}; "
                    "run `pdp audit verify`", max(after, self._last)) from e
            seq = entry.seq
            if self._last < 0:
                if seq <= self._skip_until:
                    continue
                self._last = self._skip_until
            if seq <= self._last:
                continue
            if seq != self._last + 1:
                raise AuditHistoryUnavailableError(
                    f"audit files jump from seq {self._last} to {seq}", self._last)
            if seq > upto:
                f.seek(off)
                break
            out.append(entry)
            self._last = seq
            if seq == upto:
                break
        return out


class _Subscriber:
    def __init__(self, tenant: str | None, types: frozenset[str] | None, after: int,
                 limit: int) -> None:
        self.tenant = tenant
        self.types = types
        self.after = after
        self.limit = limit
        self.buf: collections.deque[Record] = collections.deque()
        self.wake = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def push(self, entries: Iterable[Entry]) -> None:
        if self.overflowed or self.closed:
            return
        for e in entries:
            if e.seq <= self.after or not _matches(e, self.tenant, self.types):
                continue
            if len(self.buf) >= self.limit:
                self.overflowed = True
                break
            self.buf.append(e.record)
        self.wake.set()


def _matches(e: Entry, tenant: str | None, types: frozenset[str] | None) -> bool:
    """By the entry's tags (its event's type and tenant, None when the event is not an
    object): no parsing."""
    if e.tags is None:
        return tenant is None and types is None
    kind, owner = e.tags
    if tenant is not None and owner != tenant:
        return False
    return types is None or kind in types


class WatchHub:
    """Fan-out of written records to live watchers, plus history catch-up."""

    def __init__(self, active: Path, buffer: int) -> None:
        self.active = active
        self.buffer = buffer
        self.head = 0
        self._subs: set[_Subscriber] = set()
        self._closed = False

    @property
    def count(self) -> int:
        return len(self._subs)

    def set_head(self, seq: int) -> None:
        self.head = seq

    def publish(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.head = entries[-1].seq
        for s in self._subs:
            s.push(entries)

    def close(self) -> None:
        self._closed = True
        for s in self._subs:
            s.closed = True
            s.wake.set()

    async def watch(self, tenant: str | None = None, types: set[str] | None = None,
                    from_seq: int | None = None) -> AsyncIterator[Record]:
        ftypes = frozenset(types) if types else None
        pos = self.head if from_seq is None else from_seq
        if pos < 0:
            raise ValueError("from_seq must be >= 0")
        reader = HistoryReader(self.active)
        turns = Turns()  # a chunk is up to a thousand records: other calls go in between
        try:
            while pos < self.head and not self._closed:
                upto = self.head
                chunk = await asyncio.to_thread(reader.read, pos, upto)
                if not chunk:  # cannot happen (read raises on a gap); never skip silently
                    raise AuditHistoryUnavailableError(
                        f"no audit records after seq {pos}", pos)
                for i, e in enumerate(chunk):
                    if turns.due(i):
                        await turns.take()
                    pos = e.seq
                    if _matches(e, tenant, ftypes):
                        yield e.record
        finally:
            reader.close()
        if self._closed:
            return
        # Caught up: pos >= head, checked without an await since — subscribe now.
        sub = _Subscriber(tenant, ftypes, pos, self.buffer)
        self._subs.add(sub)
        try:
            while True:
                while sub.buf:
                    rec = sub.buf.popleft()
                    pos = rec["seq"]
                    yield rec
                if sub.overflowed:
                    raise WatchOverflowError(
                        f"audit watcher fell more than {self.buffer} records behind; "
                        f"resume with from_seq={pos}", pos)
                if sub.closed:
                    return
                sub.wake.clear()
                await sub.wake.wait()
        finally:
            self._subs.discard(sub)
