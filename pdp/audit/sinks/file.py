"""The JSON-lines ledger: chains events and appends them to the (rotating) audit file.

Synchronous on purpose: the pipeline runs it in a worker thread, one call at a time, so the
event loop never waits on disk and group commit falls out naturally (events that arrive while
one batch is being fsync'd form the next batch). Only one process may write a ledger; an
exclusive ``flock`` on ``<file>.lock`` enforces it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdp.audit.chain import ChainHead, Entry, make_entries
from pdp.audit.files import (
    AuditFileError,
    find_head,
    first_record,
    fsync_dir,
    repair_tail,
    rotated_path,
)


@dataclass
class AppendResult:
    #: Entries now in the file (a prefix of the batch), chain head advanced past them.
    entries: list[Entry]
    #: Why the rest of the batch (or the fsync) failed, if it did.
    error: BaseException | None
    #: The written entries are fsync'd.
    synced: bool


class Ledger:
    def __init__(self, path: str | os.PathLike[str], rotate_bytes: int) -> None:
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.head = ChainHead()
        self.torn_bytes_repaired = 0
        self.rotations = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0
        self._first_seq: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> ChainHead:
        """Lock, repair a torn tail, find where the chain stands, open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        lfd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(lfd)
            raise AuditFileError(f"{self.path}: another process is writing this audit log") from e
        self._lock_fd = lfd
        try:
            self.torn_bytes_repaired = repair_tail(self.path)
            self.head = find_head(self.path)
            self._open_active()
        except BaseException:
            self.close()
            raise
        return self.head

    def _open_active(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        rec = first_record(self.path) if self._size else None
        self._first_seq = rec["seq"] if rec else None
        if created:
            fsync_dir(self.path.parent)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- writing ---------------------------------------------------------------------------

    def append(self, events: Sequence[Any], fsync: bool) -> AppendResult:
        """Chain and write ``events`` (pure JSON data) in order; never raises.

        On a write error the file is cut back to the last whole record, so a retry of the
        unwritten rest produces the same seqs and hashes.
        """
        entries = make_entries(events, self.head)
        done = 0
        try:
            if self._fd is None:
                self._open_active()
            # Lines are written a file's worth at a time (usually the whole batch, in one
            # write): a line that would take the active file past rotate_bytes starts a new one.
            lines = [e.line for e in entries]
            start, size = 0, self._size
            for i, line in enumerate(lines):
                if size > 0 and size + len(line) > self.rotate_bytes:
                    self._write(b"".join(lines[start:i]))
                    done = i
                    self._advance(entries[start:i])
                    start = i
                    self._rotate()
                    size = self._size
                if size == 0:
                    self._first_seq = entries[i].seq
                size += len(line)
            self._write(b"".join(lines[start:]))
            done = len(entries)
            self._advance(entries[start:])
        except BaseException as exc:  # report, the pipeline decides (retry / fail waiters)
            synced = False
            if fsync and done:
                try:  # what did get written can still be made durable and acknowledged
                    self.sync()
                    synced = True
                except OSError:
                    pass
            return AppendResult(entries[:done], exc, synced)
        if fsync and entries:
            try:
                self.sync()
            except OSError as exc:
                return AppendResult(entries, exc, False)
        return AppendResult(entries, None, fsync)

    def room(self) -> int:
        """Bytes the active file takes before it rotates."""
        return self.rotate_bytes - self._size

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def _advance(self, written: list[Entry]) -> None:
        if written:
            last = written[-1]
            self.head = ChainHead(last.seq, last.hash)

    def _write(self, data: bytes) -> None:
        start = self._size
        try:
            self._raw_write(data)
        except BaseException:
            try:  # cut back to the last whole record so a retry does not duplicate
                assert self._fd is not None
                os.ftruncate(self._fd, start)
            except (OSError, AssertionError):
                self.close_active_quietly()
            raise
        self._size += len(data)

    def _raw_write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close_active_quietly(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        first = self._first_seq if self._first_seq is not None else self.head.seq
        target = rotated_path(self.path, first)
        if target.exists():
            raise AuditFileError(f"{target} already exists; not overwriting audit history")
        os.rename(self.path, target)
        self.rotations += 1
        self._open_active()
        fsync_dir(self.path.parent)
