"""A spool: an append-only local file of lines, consumed in order from the front.

Used for two things: the overflow spool (events ``emit`` could not queue because the bounded
queue was full) and one spool per forwarded sink (records the sink could not take while it
was down). Lines are read without being consumed, and consumed only after they were handled,
so a crash in between replays them (at-least-once; the Redis sink de-duplicates). When
everything is consumed the file is truncated, so a healthy spool costs nothing on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from pdp.audit.modes import AUDIT_FILE_MODE

log = structlog.get_logger("pdp.audit")


class Spool:
    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # (device, inode) of the open file
        self._size = 0
        self._read_off = 0
        self.pending = 0
        #: Lines ever appended by this process (a counter for metrics).
        self.appended = 0

    def open(self) -> None:
        """Open (creating it) and count what a previous run left behind."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, AUDIT_FILE_MODE)
        st = os.fstat(self._fd)
        self._ident = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._read_off = 0
        self.pending = 0
        if self._size:
            start = self._load_offset()
            valid = 0
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # torn by a crash mid-append: drop the fragment
                    if valid >= start:
                        self.pending += 1
                    valid += len(line)
            if valid != self._size:
                os.ftruncate(self._fd, valid)
                self._size = valid
            self._read_off = min(start, valid)
            if self.pending == 0:
                self.reset()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        if self._fd is None:
            self.open()
        else:
            self._check_in_place()
        assert self._fd is not None
        data = b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except BaseException:
            os.ftruncate(self._fd, self._size)
            raise
        if self.fsync:
            os.fsync(self._fd)
        self._size += len(data)
        self.pending += len(lines)
        self.appended += len(lines)

    def peek(self, max_lines: int) -> list[bytes]:
        """Up to ``max_lines`` lines from the front, not consumed."""
        if self.pending == 0 or self._fd is None:
            return []
        self._check_in_place()
        out: list[bytes] = []
        with open(self.path, "rb") as f:
            f.seek(self._read_off)
            while len(out) < max_lines:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                out.append(line)
        return out

    def consume(self, lines: Sequence[bytes]) -> None:
        """Drop ``lines`` (as returned by ``peek``) from the front.

        The new front is recorded in ``<spool>.offset`` (atomically, fsync'd), so a crash
        while a long backlog is being replayed does not replay what was already handled.
        """
        self._read_off += sum(len(ln) for ln in lines)
        self.pending -= len(lines)
        if self.pending <= 0 or self._read_off >= self._size:
            self.reset()
        else:
            self._store_offset(self._read_off)

    def _check_in_place(self) -> None:
        """The open file must still be the one at the path. Removed (its directory too: a
        clean-up of the audit directory), lines appended to it would vanish with this
        process, and a restart would not replay them: a silent loss. Its lines not yet
        consumed are put back at the path (a file found there is moved aside, never
        overwritten) and appending goes on there. One stat; appends are rare (an overflow,
        a sink that is down)."""
        assert self._fd is not None
        try:
            st = os.stat(self.path)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        if now == self._ident:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if now is not None:
            os.rename(self.path, self.path.with_name(
                f"{self.path.name}.foreign-{time.time_ns()}"))
        old = self._fd
        unconsumed = b""
        offset = self._read_off
        while offset < self._size:
            chunk = os.pread(old, min(1 << 20, self._size - offset), offset)
            if not chunk:
                break
            unconsumed += chunk
            offset += len(chunk)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, AUDIT_FILE_MODE)
        try:
            view = memoryview(unconsumed)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(old)
        self._fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._size = len(unconsumed)
        self._read_off = 0
        self._offset_path.unlink(missing_ok=True)
        log.error("audit_spool_replaced", path=str(self.path), pending=self.pending,
                  what="removed or replaced while open; its pending lines were put back")

    @property
    def _offset_path(self) -> Path:
        return self.path.with_name(self.path.name + ".offset")

    def _load_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _store_offset(self, off: int) -> None:
        tmp = self.path.with_name(self.path.name + ".offset.tmp")
        with open(tmp, "w") as f:
            f.write(str(off))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._offset_path)

    def take_all(self) -> list[bytes]:
        """Everything pending, consumed at once (the caller owns it from here)."""
        lines = self.peek(self.pending)
        self.reset()
        return lines

    def reset(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        self._size = 0
        self._read_off = 0
        self.pending = 0
        self._offset_path.unlink(missing_ok=True)
