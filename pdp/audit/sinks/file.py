"""The JSON-lines ledger: chains events and appends them to the (rotating) audit file.

Synchronous on purpose: the pipeline runs it in a worker thread, one call at a time, so the
event loop never waits on disk and group commit falls out naturally (events that arrive while
one batch is being fsync'd form the next batch). Only one process may write a ledger; an
exclusive ``flock`` on ``<file>.lock`` enforces it.

With an ``Anchorer`` the ledger also writes signed checkpoints (anchors.py): ``append(...,
anchor=True)`` chains a checkpoint of the head after the batch as the batch's last record, in
the same write, fsyncs, and only then appends the checkpoint to the anchor file: one more line
and one small write per anchored batch. The anchor file itself is fsync'd with the periodic
checkpoints (every N records / T seconds) and at close, not per batch: a second fsync per batch
would double a sync-mode answer's disk wait, and buys nothing the ledger's fsync'd checkpoint
does not already give. Its line is in the file (what a shipper or a verifier reads) before the
answer; only a power loss can take the newest lines, never make one name records not on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pdp.audit.anchors import (
    Anchorer,
    Segment,
    default_anchor_path,
    last_anchor,
    path_identity,
)
from pdp.audit.chain import ChainHead, Entry, check_line, make_entries, parse_line
from pdp.audit.files import (
    AuditFileError,
    TailCheck,
    check_tail,
    complete_head,
    find_record,
    first_record,
    fsync_dir,
    last_line,
    ledger_files,
    newest_checkpoint,
    refuse_at,
    repair_tail_to,
    rotated_path,
)
from pdp.audit.modes import AUDIT_FILE_MODE

#: Records the start-up check reads back at least, looking for the last checkpoint.
TAIL_MIN = 10_000

log = structlog.get_logger("pdp.audit")


@dataclass
class AppendResult:
    #: Entries now in the file (a prefix of the batch), chain head advanced past them.
    entries: list[Entry]
    #: Why the rest of the batch (or the fsync) failed, if it did.
    error: BaseException | None
    #: The written entries are fsync'd.
    synced: bool
    #: The checkpoint chained after them, when the batch was anchored and it got written
    #: (``synced`` also says its anchor-file copy is on disk).
    checkpoint: Entry | None = None

    @property
    def published(self) -> list[Entry]:
        """What went into the file: the entries, then the checkpoint."""
        return [*self.entries, self.checkpoint] if self.checkpoint else self.entries


#: The lock file's content while a writer has the ledger open (see Ledger.unclean_shutdown).
_RUNNING = b"open\n"


class Ledger:
    def __init__(self, path: str | os.PathLike[str], rotate_bytes: int,
                 anchorer: Anchorer | None = None,
                 anchor_file: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.anchorer = anchorer
        #: The anchor file: the anchorer's, else ``anchor_file`` (default
        #: ``<path>.anchors``), which a writer without the key only reads, to refuse an
        #: anchored ledger.
        self.anchor_file = (anchorer.file.path if anchorer is not None
                            else Path(anchor_file) if anchor_file is not None
                            else default_anchor_path(self.path))
        self.head = ChainHead()
        self.torn_bytes_repaired = 0
        #: Where ``open`` moved a torn final line (None: there was none).
        self.torn_moved_to: Path | None = None
        self.rotations = 0
        #: Times the active file was found removed or moved away while open (put back or
        #: started anew at its path), and what happened the last time (health reports).
        self.replaced = 0
        self.last_replaced: str | None = None
        self._ident: tuple[int, int] | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        #: The last run on this ledger did not close it (killed, or the host went down): its
        #: lock file still says "open". In async durability its last records, queued but
        #: not written, may be missing: the log says so in the chain (see AuditLog.start).
        self.unclean_shutdown = False
        self._marked = False  # this run wrote "open" in the lock file (close clears it)
        self._size = 0
        self._first_seq: int | None = None
        #: The chain ends with a shutdown checkpoint (the last run's, or this one's).
        self._ends_final = False
        #: This run's first record must be a checkpoint (the chain ended with a shutdown
        #: checkpoint when it was opened).
        self._resume_due = False

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> ChainHead:
        """Lock, repair a torn tail, find where the chain stands, open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lfd = _take_lock(self.path)
        except OSError as e:
            raise AuditFileError(f"{self.path}: another process is writing this audit log") from e
        self._lock_fd = lfd
        try:
            if self.anchorer is None:
                self._check_not_anchored()
            anchored = self._check_anchored()
            self.torn_bytes_repaired, self.torn_moved_to = repair_tail_to(self.path)
            tail = self._check_tail()
            self._check_window(anchored, tail)
            self.head = tail.head
            self._ends_final = tail.final
            self._open_active()
            if self.anchorer is not None:
                self._resume_anchoring(anchored, tail)
            self.unclean_shutdown = os.pread(lfd, len(_RUNNING), 0) == _RUNNING
            self._mark_running(lfd)
        except BaseException:
            self.close()
            raise
        return self.head

    def _mark_running(self, lfd: int) -> None:
        """Write "open" in the lock file; ``close`` empties it once the ledger is closed."""
        os.ftruncate(lfd, 0)
        os.pwrite(lfd, _RUNNING, 0)
        os.fsync(lfd)
        self._marked = True

    def _check_not_anchored(self) -> None:
        """Without the key: refuse a ledger that has signed checkpoints (in its last records
        or in the anchor file). Records appended without checkpoints would follow the last
        run's shutdown checkpoint: verify reports them as ``appended`` and a writer with the
        key refuses to start on them. Reads only (nothing is repaired before refusing)."""
        found = newest_checkpoint(self.path)
        anchor = last_anchor(self.anchor_file, self.path.name)
        event = found[1] if found is not None else anchor
        if event is None:
            return
        kid = event.get("key_id")
        signed = f"checkpoints signed with key id {kid}" if kid else "signed checkpoints"
        where = (f"its checkpoint at seq {found[0]}" if found is not None
                 else f"the anchor file {self.anchor_file}")
        raise AuditFileError(
            f"{self.path} is anchored ({signed}; see {where}), but no anchor key is "
            "configured: records written without checkpoints would read as appended after "
            "the writer stopped. Start with --audit-anchor-key-file, or move the ledger aside "
            "(the audit files and their .anchors) to start a new one")

    def _check_anchored(self) -> int | None:
        """Refuse to build on a ledger that lost records an anchor covers (they were
        acknowledged; moving a torn line aside would hide the loss), or whose record at the
        seq of the anchor file's last checkpoint is not that checkpoint (the ledger was
        rewritten after it: a record forged in its place, re-chained); the anchored seq."""
        if self.anchorer is None:
            return None
        last = last_anchor(self.anchorer.file.path, self.path.name)
        if last is None or type(last.get("seq")) is not int:
            return None
        cp_seq = last["seq"] + 1
        head, torn = complete_head(self.path)
        if head.seq < cp_seq:
            what = "a torn final line and " if torn else ""
            raise AuditFileError(
                f"{self.path}: {what}whole records up to seq {head.seq} only, but the anchor "
                f"file {self.anchorer.file.path} has a checkpoint at seq {cp_seq}: acknowledged "
                "records are missing (truncated or deleted). Not repairing: inspect with "
                "`pdp audit verify --key KEYFILE`, keep the files as evidence, and start on a "
                "new audit file")
        self._check_anchor_record(last, cp_seq)
        return int(last["seq"])

    def _check_anchor_record(self, anchor: dict[str, Any], cp_seq: int) -> None:
        """The ledger's record ``cp_seq`` must be exactly the anchor file's last checkpoint:
        intact, the same event, chained after the head it signs."""
        assert self.anchorer is not None
        key = self.anchorer.key
        af = self.anchorer.file.path
        if anchor.get("key_id") == key.key_id and not key.signed(anchor):
            raise AuditFileError(
                f"{af}: the anchor file's last checkpoint of {self.path.name} (seq {cp_seq}) "
                "carries the anchor key's id but its MAC does not verify: the anchor file was "
                "edited or a line forged. Refusing to continue the audit chain: inspect with "
                "`pdp audit verify --key KEYFILE`, keep the files as evidence (move the audit "
                "files and their .anchors aside) and start on a new audit file")
        found = find_record(self.path, cp_seq)
        rewritten = (f"the anchor file's checkpoint at seq {cp_seq} is not the ledger's record "
                     f"{cp_seq}: the ledger was rewritten after it")
        if found is None:
            raise AuditFileError(
                f"{self.path}: no record with seq {cp_seq} found: {rewritten} (records "
                "removed or renumbered). Refusing to continue the audit chain on it: inspect "
                "with `pdp audit verify --key KEYFILE DIR`, keep the files as evidence (move "
                "the audit files and their .anchors aside) and start on a new audit file")
        path, off, raw = found
        try:
            rec, why = check_line(raw)
        except ValueError as e:
            refuse_at(path, off, cp_seq, f"unreadable record ({e}); {rewritten}")
        if why is not None:
            refuse_at(path, off, cp_seq, f"{why}; {rewritten}")
        if rec["seq"] != cp_seq or rec["event"] != anchor or rec["prev"] != anchor.get("head"):
            kind = rec["event"].get("type") if isinstance(rec["event"], dict) else None
            what = f"a {kind} record" if isinstance(kind, str) else "another record"
            if kind == anchor.get("type"):
                what = "another checkpoint"
            refuse_at(path, off, cp_seq,
                      f"{rewritten} ({what} in its place, chained on: a forged record, or "
                      "records re-chained)")

    def _check_tail(self) -> TailCheck:
        """The records since the checkpoint before the last one (or, without a key, the last
        few) hash and link, and none follows a shutdown checkpoint; else ``AuditFileError``
        naming the record (see files.check_tail)."""
        if self.anchorer is None:
            return check_tail(self.path)
        return check_tail(self.path, self.anchorer.key, self._tail_limit())

    def _tail_limit(self) -> int:
        assert self.anchorer is not None
        return max(TAIL_MIN, 4 * self.anchorer.every_records)

    def _check_window(self, anchored_seq: int | None, tail: TailCheck) -> None:
        """The tail check stopped at its limit without finding a checkpoint signed with the
        key, and the anchor file's last checkpoint is older than what it read: the records
        since that checkpoint were not all checked (a writer writes a checkpoint at least
        every ``every_records``), so do not build on them."""
        if self.anchorer is None or anchored_seq is None or tail.checkpoint is not None \
                or not tail.limited:
            return
        cp_seq = anchored_seq + 1
        if cp_seq >= tail.oldest_seq:
            return
        raise AuditFileError(
            f"{self.path}: more than {tail.checked} records after the last anchored checkpoint "
            f"at seq {cp_seq} (the anchor file {self.anchorer.file.path}'s last) and no "
            f"checkpoint signed with the key among them (seq {tail.oldest_seq}..{tail.head.seq}"
            "): cannot check them at start-up, and a writer writes one every "
            f"{self.anchorer.every_records} records. Refusing to continue the audit chain on "
            "it: run `pdp audit verify --key KEYFILE DIR`, keep the files as evidence (move "
            "the audit files and their .anchors aside) and start on a new audit file")

    def _resume_anchoring(self, anchored_seq: int | None, tail: TailCheck) -> None:
        """Carry on after a restart: records since the last anchor are due, and rotated files
        not yet named by a checkpoint are named by the next one. A checkpoint in the ledger
        that a crash kept out of the anchor file (between the ledger's fsync and the
        anchor's append) is appended now; after a shutdown checkpoint the first record is a
        checkpoint of this run (see anchors.is_final)."""
        assert self.anchorer is not None
        self.anchorer.file.open()
        cp = tail.checkpoint
        if cp is not None and tail.checkpoint_seq - 1 > (anchored_seq or 0) \
                and cp.get("seq") == tail.checkpoint_seq - 1:
            with contextlib.suppress(OSError):  # the next checkpoint's line covers it then
                self.anchorer.file.append(cp, fsync=True)
                anchored_seq = tail.checkpoint_seq - 1
        self._resume_due = tail.final or tail.key_changed
        if anchored_seq is None:
            anchored_seq = 0
            self.anchorer.unanchored = self.head.seq
        else:  # the checkpoint record (anchored_seq + 1) needs no checkpoint of its own
            self.anchorer.unanchored = max(0, self.head.seq - anchored_seq - 1)
        rotated = [lf for lf in ledger_files(self.path) if lf.first_seq is not None]
        for lf in rotated:
            assert lf.first_seq is not None
            _, line = last_line(lf.path)
            try:
                rec = parse_line(line)
            except ValueError:
                continue
            if rec["seq"] > anchored_seq:
                self.anchorer.segments.append(
                    Segment(lf.path.name, lf.first_seq, rec["seq"], rec["hash"]))

    def _open_active(self) -> None:
        created = not self.path.exists()
        # read-write: a file removed while open can still be read back (_check_in_place)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, AUDIT_FILE_MODE)
        st = os.fstat(self._fd)
        self._ident = (st.st_dev, st.st_ino)
        self._size = st.st_size
        rec = first_record(self.path) if self._size else None
        self._first_seq = rec["seq"] if rec else None
        if created:
            fsync_dir(self.path.parent)

    @property
    def ends_final(self) -> bool:
        """The last record is this ledger's shutdown checkpoint (nothing to add at close)."""
        return self._ends_final

    def close(self) -> None:
        """End with a shutdown checkpoint (``final``: the writer usually wrote it already),
        fsync, unlock. A file removed while idle is put back first (_check_in_place runs
        before each batch, and an idle writer writes none): closing it would lose it."""
        if self._fd is not None:
            try:
                self._check_in_place()
            except OSError as exc:
                log.error("audit_file_not_restored", path=str(self.path), error=str(exc))
        if self.anchorer is not None and self._fd is not None and not self._ends_final \
                and self.head.seq > 0:
            # A failure leaves no shutdown mark (a restart then reads it as a crash) and
            # maybe records unanchored, which verify reports; closing goes on.
            self.append([], fsync=True, anchor=True, final=True)
        if self.anchorer is not None:
            self.anchorer.file.close()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            if self._marked:  # a clean shutdown: the next run has nothing to report
                with contextlib.suppress(OSError):
                    os.ftruncate(self._lock_fd, 0)
                    os.fsync(self._lock_fd)
                self._marked = False
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- writing ---------------------------------------------------------------------------

    @property
    def anchoring(self) -> bool:
        return self.anchorer is not None

    def anchor_due(self, new_records: int) -> bool:
        """Whether a batch of ``new_records`` should end with a checkpoint (every N records,
        T seconds)."""
        return self.anchorer is not None and self.anchorer.due(new_records)

    def append(self, events: Sequence[Any], fsync: bool, anchor: bool = False,
               final: bool = False) -> AppendResult:
        """Chain and write ``events`` (pure JSON data) in order; never raises.

        ``anchor`` (with an anchorer): end the batch with a checkpoint of the head after it, in
        the same write; the file is fsync'd, then the checkpoint is appended to the anchor file
        (``synced`` covers both: acknowledge only then). ``final``: that checkpoint is the
        shutdown checkpoint (nothing is written after it by this writer).

        On a write error the file is cut back to the last whole record, so a retry of the
        unwritten rest produces the same seqs and hashes.
        """
        if self._resume_due and self.anchorer is not None:
            # The chain ends with the last run's shutdown checkpoint: this run's records
            # follow a checkpoint of its own (else they would read as appended while no
            # writer ran). Until it is written nothing is.
            res = self._append([], True, True, False)
            if res.error is not None:
                return AppendResult([], res.error, False)
            self._resume_due = False
            if not events and anchor and not final:
                return res
        res = self._append(events, fsync, anchor, final)
        if res.entries or res.checkpoint is not None:
            self._ends_final = final and res.checkpoint is not None and res.error is None
        return res

    def _append(self, events: Sequence[Any], fsync: bool, anchor: bool,
                final: bool) -> AppendResult:
        anchorer = self.anchorer if anchor else None
        sync_anchors = False
        if anchorer is not None:
            fsync = True
            sync_anchors = anchorer.file_sync_due(len(events))
        entries = make_entries(events, self.head)
        checkpoint: Entry | None = None
        cp_event: dict[str, Any] = {}
        done = 0
        try:
            if self._fd is None:
                self._open_active()
            else:
                self._check_in_place()
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
            tail = entries[start:]
            if anchorer is not None:
                # Chained after the batch, in the same write (it may take the file one line
                # past rotate_bytes: a checkpoint never starts a file of its own).
                at = tail[-1] if tail else None
                head = ChainHead(at.seq, at.hash) if at else self.head
                cp_event = anchorer.make(self.path.name, head, final)
                checkpoint = make_entries([cp_event], head)[0]
                lines.append(checkpoint.line)
                tail = [*tail, checkpoint]
                if size == 0:
                    self._first_seq = checkpoint.seq
            self._write(b"".join(lines[start:]))
            done = len(entries)
            self._advance(tail)
        except BaseException as exc:  # report, the pipeline decides (retry / fail waiters)
            synced = False
            if fsync and done:
                try:  # what did get written can still be made durable and acknowledged
                    self.sync()
                    synced = True
                except OSError:
                    pass
            if self.anchorer is not None:
                self.anchorer.written(done)
            return AppendResult(entries[:done], exc, synced)
        if anchorer is None and self.anchorer is not None:
            self.anchorer.written(len(entries))
        if fsync and (entries or checkpoint):
            try:
                self.sync()
            except OSError as exc:
                if anchorer is not None:
                    anchorer.written(len(entries))
                return AppendResult(entries, exc, False, checkpoint)
        if anchorer is not None and checkpoint is not None:
            try:  # only now: an anchor must never name records a crash could take away
                anchorer.file.append(cp_event, fsync=sync_anchors)
            except OSError as exc:
                anchorer.written(len(entries))
                return AppendResult(entries, exc, False, checkpoint)
            anchorer.anchored()
        return AppendResult(entries, None, fsync, checkpoint)

    def in_place(self) -> bool:
        """Whether the path still names the open file (a stat, no repair: health reports)."""
        if self._fd is None or self._ident is None:
            return True
        try:
            return path_identity(self.path) == self._ident
        except OSError:
            return False

    def _check_in_place(self) -> None:
        """The active file must still be the file at its path. Removed while open (``rm``,
        a careless clean-up), the records written to it, acknowledged ones included, would
        vanish when it is closed, and every later one with them: its content is read back
        from the open descriptor and put back at the path, then written on. Moved away
        (a rename, logrotate without copytruncate), its records are safe where it went:
        a new file is started at the path, continuing the chain. A file put in its place
        is moved aside first, never overwritten. Logged as an error, counted, and shown in
        the health report; one stat per batch.

        The directory may have gone with it (``rm -rf`` of the audit directory, or the
        directory renamed): it is made again, else the file could never be put back and
        every record, those already written included, would be lost at shutdown."""
        assert self._fd is not None
        now = path_identity(self.path)
        if now is not None and now == self._ident:
            return
        old = self._fd
        removed = os.fstat(old).st_nlink == 0
        dir_made = False
        if now is None and not self.path.parent.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.path.parent.parent)
            dir_made = True
            self._relock()
        if now is not None:
            aside = self.path.with_name(f"{self.path.name}.foreign-{time.time_ns()}")
            os.rename(self.path, aside)
        else:
            aside = None
        if removed:
            tmp = self.path.with_name(self.path.name + ".restoring")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, AUDIT_FILE_MODE)
            try:
                offset = 0
                while chunk := os.pread(old, 1 << 20, offset):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    offset += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            what = f"removed while open; its {offset} bytes were put back from the open file"
        else:
            what = ("moved away while open (its records are where it was moved to); a new"
                    " file continues the chain")
        if aside is not None:
            what += f"; the file found in its place was moved to {aside.name}"
        if dir_made:
            what += f"; its directory {self.path.parent} was gone and was made again"
        self.replaced += 1
        self.last_replaced = f"audit file {self.path} was {what}"
        log.error("audit_file_replaced", path=str(self.path), what=what, times=self.replaced)
        self._fd = None
        with contextlib.suppress(OSError):
            os.close(old)
        self._open_active()
        fsync_dir(self.path.parent)

    def _relock(self) -> None:
        """Take the writer's lock again on a new ``<file>.lock`` (the old one went with the
        directory): else a second writer could start on this ledger and fork its chain."""
        try:
            lfd = _take_lock(self.path)
        except OSError as exc:
            log.error("audit_lock_not_retaken", path=str(_lock_path(self.path)),
                      error=str(exc))
            return
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = lfd
        with contextlib.suppress(OSError):
            self._mark_running(lfd)

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
        if self.anchorer is not None:
            self.anchorer.segments.append(Segment(target.name, first, self.head.seq,
                                                  self.head.hash))
        self._open_active()
        fsync_dir(self.path.parent)


def _lock_path(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".lock")


def _take_lock(ledger: Path) -> int:
    """The writer's exclusive lock on ``<ledger>.lock``, without waiting: its descriptor
    (held while this process writes the ledger); OSError when another process holds it."""
    fd = os.open(_lock_path(ledger), os.O_RDWR | os.O_CREAT, AUDIT_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd
