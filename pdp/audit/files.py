"""Layout of the audit files on disk, shared by the writer, ``watch`` and ``verify``.

``audit.jsonl`` is the file being written. On rotation it is renamed to
``audit.jsonl.<first seq, 12 digits>``: the name orders the files, tells a reader which file
holds a given seq without opening them all, and a rename keeps the inode, so a reader that
has the file open keeps reading it undisturbed.

Torn tails: after ``kill -9`` (or a crash) the last line may be cut short. Such a record was
never acknowledged (acknowledgement follows the fsync of complete lines). On restart the
writer moves the fragment to ``audit.jsonl.torn-<unix time ms>`` (kept as evidence, never read as
part of the chain), truncates, and records that it did in the chain (``Audit.TornTail``);
``verify`` reports an incomplete final line and moved-aside fragments as warnings. With anchors
(see anchors.py) a torn line an anchor covers was acknowledged: the writer refuses to start on
it and ``verify --key`` reports it as lost.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pdp.audit.anchors import AnchorKey, is_checkpoint, is_final, lines_back, trusted
from pdp.audit.chain import GENESIS, ChainHead, Record, check_line, parse_line

_ROTATED = re.compile(r"\.(\d{12,})$")


class AuditFileError(Exception):
    """The audit files are in a state the writer must not build on (operator needed)."""


@dataclass(frozen=True)
class LedgerFile:
    path: Path
    #: First seq from the file name (rotated files); None for the active file.
    first_seq: int | None


def rotated_path(active: Path, first_seq: int) -> Path:
    return active.with_name(f"{active.name}.{first_seq:012d}")


def ledger_files(active: Path) -> list[LedgerFile]:
    """Rotated files in seq order, then the active file (if it exists).

    One directory listing, so a concurrent rotation shows the file under one name or the
    other; readers that race with a rotation still re-list (see watch.py).
    """
    out: list[LedgerFile] = []
    try:
        names = os.listdir(active.parent)
    except FileNotFoundError:
        return out
    has_active = False
    for name in names:
        if name == active.name:
            has_active = True
            continue
        m = _ROTATED.search(name)
        if m and name == f"{active.name}.{m.group(1)}" \
                and (active.parent / name).is_file():  # a FIFO would block a read forever
            out.append(LedgerFile(active.parent / name, int(m.group(1))))
    out.sort(key=lambda f: f.first_seq or 0)
    if has_active:
        out.append(LedgerFile(active, None))
    return out


def last_line(path: Path, end: int | None = None) -> tuple[int, bytes]:
    """The file's last line (complete or not, newline kept) and its byte offset; ``end``:
    as if the file ended there."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        end = size if end is None else min(end, size)
        if end == 0:
            return 0, b""
        chunk = 64 * 1024
        pos = end
        buf = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            # Ignore the final byte: if it is the newline ending the last line, it is not a
            # separator before it.
            idx = buf.rfind(b"\n", 0, len(buf) - 1)
            if idx >= 0:
                return pos + idx + 1, buf[idx + 1:]
            chunk *= 2
        return 0, buf


def first_record(path: Path) -> Record | None:
    with open(path, "rb") as f:
        line = f.readline()
    if not line.endswith(b"\n"):
        return None
    try:
        return parse_line(line)
    except ValueError:
        return None


def _whole_record(line: bytes) -> bool:
    try:
        return check_line(line)[1] is None
    except ValueError:
        return False


def repair_tail(path: Path) -> int:
    """Cut an incomplete final line off ``path`` (moved aside as evidence); bytes removed."""
    return repair_tail_to(path)[0]


def repair_tail_to(path: Path) -> tuple[int, Path | None]:
    """``repair_tail``, also saying where the fragment went (None: nothing was cut).

    A final line that is a complete, self-consistent record missing only its newline gets the
    newline instead.
    """
    if not path.exists():
        return 0, None
    off, line = last_line(path)
    if not line or line.endswith(b"\n"):
        return 0, None
    if _whole_record(line):
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return 0, None
    torn = path.with_name(f"{path.name}.torn-{int(time.time() * 1000)}")
    with open(torn, "wb") as t:
        t.write(line)
        t.flush()
        os.fsync(t.fileno())
    with open(path, "r+b") as f:
        f.truncate(off)
        f.flush()
        os.fsync(f.fileno())
    return len(line), torn


def complete_head(active: Path) -> tuple[ChainHead, bool]:
    """Where the chain stands counting whole records only (a torn final line of the active
    file left out, the file untouched), and whether there is such a line: what the writer
    compares with the last anchor before it repairs anything."""
    torn = False
    for lf in reversed(ledger_files(active)):
        off, line = last_line(lf.path)
        if lf.first_seq is None and line and not line.endswith(b"\n") \
                and not _whole_record(line):
            torn = True
            off, line = last_line(lf.path, off) if off else (0, b"")
        rec = _last_readable(lf.path, off + len(line)) if line else None
        if rec is not None:
            return ChainHead(rec["seq"], rec["hash"]), torn
    return ChainHead(), torn


def _last_readable(path: Path, end: int) -> Record | None:
    """The last record of ``path`` (as if it ended at ``end``) that parses: an unreadable
    line after it (a hostile one, say) is not where the chain stands, and the tail check
    names it; stepping over the whole file instead would read as lost records."""
    while end > 0:
        off, line = last_line(path, end)
        try:
            return parse_line(line)
        except ValueError:
            end = off
    return None


def find_head(active: Path) -> ChainHead:
    """Seq and hash of the last record in the files (after ``repair_tail`` of the active one),
    the records since the last checkpoint checked (see ``check_tail``; no key: the last
    ``UNKEYED_TAIL`` records)."""
    return check_tail(active).head


#: Records checked at start-up without an anchor key (there are no checkpoints to stop at).
UNKEYED_TAIL = 1000


@dataclass(frozen=True)
class TailCheck:
    """What the writer's start-up check of the end of the chain found."""

    head: ChainHead
    #: The head record is a shutdown checkpoint (signed with the key): the previous writer
    #: stopped cleanly, and the next one begins with a checkpoint of its own.
    final: bool = False
    #: The newest checkpoint signed with the key (its event and record seq), if one was
    #: found within the records checked.
    checkpoint: dict[str, Any] | None = None
    checkpoint_seq: int = 0
    #: Records checked.
    checked: int = 0
    #: Seq of the oldest record checked (0: none).
    oldest_seq: int = 0
    #: The read-back stopped at its limit, not at a checkpoint or the chain's start.
    limited: bool = False
    #: A checkpoint of another key is newer than any of the key's: the key was changed
    #: (rotated), and the next writer begins with a checkpoint of its own, as after a
    #: shutdown, so ``verify`` with the new key has a signed point to start from.
    key_changed: bool = False


@dataclass
class _Line:
    path: Path
    offset: int
    raw: bytes


def line_number(path: Path, offset: int) -> int:
    """1-based line number of the line starting at ``offset`` (for messages only)."""
    n = 1
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            buf = f.read(min(left, 1 << 20))
            if not buf:
                break
            n += buf.count(b"\n")
            left -= len(buf)
    return n


def check_tail(active: Path, key: AnchorKey | None = None, limit: int = UNKEYED_TAIL
               ) -> TailCheck:
    """Check the end of the chain before a writer builds on it; raise ``AuditFileError``
    (naming file, line and seq, and what to do) when it must not.

    Reads back from the last record past the newest checkpoint signed with ``key`` to the
    signed checkpoint before the records it covers (at most ``limit`` records: bounded work),
    and checks every record read: its own hash (the line's bytes, see chain.check_line) and
    its link to the one before. So the records the newest checkpoint signs are checked too,
    not only those written after it: after a clean stop (a batch's checkpoint, then the
    shutdown checkpoint of it) the last records written end just before two checkpoints,
    and checkpoints that only sign other checkpoints do not count as the one before.
    Refuses too when the newest signed checkpoint is a shutdown checkpoint (``final``) and
    records follow it: no writer was running to write them. A checkpoint that claims the
    key's id but does not verify is refused as forged; one of another key (a key change) is
    passed over.
    """
    read: list[tuple[_Line, Record]] = []  # newest first
    stop: tuple[_Line, Record] | None = None  # the signed checkpoint before the newest one
    newest: tuple[_Line, Record] | None = None  # the newest signed checkpoint
    after = 0  # records read before it was found: written after it
    covered = False  # a record that is not a checkpoint was read before ``newest``
    limited = False
    key_changed = False
    ledger = active.name
    for lf in reversed(ledger_files(active)):
        for off, raw in lines_back(lf.path):
            where = _Line(lf.path, off, raw)
            try:
                rec, why = check_line(raw)
            except ValueError as e:
                _refuse(where, None, f"unreadable record ({e})")
            if why is not None:
                _refuse(where, rec["seq"], why)
            if key is not None and is_checkpoint(rec["event"]):
                ok = trusted(key, rec["event"], ledger, rec["seq"], rec["prev"])
                if ok is False:
                    _refuse(where, rec["seq"],
                            "a checkpoint with the anchor key's id that does not verify (its "
                            "MAC, ledger or the head it signs does not match: forged, or the "
                            "records before it re-chained)")
                if ok is None and newest is None:
                    key_changed = True  # another key's checkpoint, before any of the key's
                if ok and newest is None:
                    newest, after = (where, rec), len(read)
                elif ok and covered:
                    stop = (where, rec)
                    break
            elif newest is not None:
                covered = True
            read.append((where, rec))
            if len(read) >= limit:
                limited = True
                break
        else:
            continue
        break
    # Oldest first: the signed checkpoint (if found), then what follows it.
    chain = ([stop] if stop is not None else []) + list(reversed(read))
    if not chain:
        return TailCheck(ChainHead())
    for (_, before), (where, rec) in itertools.pairwise(chain):
        if rec["seq"] != before["seq"] + 1 or rec["prev"] != before["hash"]:
            _refuse(where, rec["seq"],
                    f"does not link to the record before it (seq {before['seq']}): records "
                    "were edited, inserted or removed")
    first_where, first = chain[0]
    if first["seq"] == 1 and first["prev"] != GENESIS:
        _refuse(first_where, 1, "the first record does not start the chain")
    if newest is not None and is_final(newest[1]["event"]) and after:
        where, rec = read[after - 1]  # the oldest record after it
        _refuse(where, rec["seq"],
                f"records after the shutdown checkpoint at seq {newest[1]['seq']}: appended "
                f"after the writer stopped ({after} record(s))")
    last = chain[-1][1]
    return TailCheck(ChainHead(last["seq"], last["hash"]),
                     final=newest is not None and not after and is_final(last["event"]),
                     checkpoint=newest[1]["event"] if newest is not None else None,
                     checkpoint_seq=newest[1]["seq"] if newest is not None else 0,
                     checked=len(chain), oldest_seq=first["seq"], key_changed=key_changed,
                     limited=limited and stop is None)


def newest_checkpoint(active: Path, limit: int = UNKEYED_TAIL) -> tuple[int, dict[str, Any]] | None:
    """The newest ``Audit.Checkpoint`` record among the last ``limit`` lines of the ledger
    (its seq and event; signature not checked: for a writer without the key, which must
    not build on an anchored ledger), or None. Unreadable lines are passed over."""
    n = 0
    for lf in reversed(ledger_files(active)):
        for _, raw in lines_back(lf.path):
            n += 1
            try:
                rec = parse_line(raw)
            except ValueError:
                rec = None
            if rec is not None and is_checkpoint(rec["event"]):
                return rec["seq"], rec["event"]
            if n >= limit:
                return None
    return None


_SEQ_AT_END = re.compile(rb'"seq":(\d+),"v":\d+\}\s*$')


def _seq_of(raw: bytes) -> int | None:
    m = _SEQ_AT_END.search(raw)  # every writer's records end with seq and v
    if m is not None:
        return int(m.group(1))
    try:
        return int(parse_line(raw)["seq"])
    except ValueError:
        return None


def find_record(active: Path, seq: int) -> tuple[Path, int, bytes] | None:
    """The line holding record ``seq`` (file, byte offset, bytes), or None: found through
    the rotated files' names (their first seq), then read back from the end of that file
    only (bounded by the file's size)."""
    files = ledger_files(active)
    for lf in reversed(files):
        first = lf.first_seq
        if first is None:
            rec = first_record(lf.path)
            first = rec["seq"] if rec is not None else None
        if first is not None and first > seq:
            continue
        for off, raw in lines_back(lf.path):
            got = _seq_of(raw)
            if got == seq:
                return lf.path, off, raw
            if got is not None and got < seq:
                return None
    return None


def refuse_at(path: Path, offset: int, seq: int | None, why: str) -> NoReturn:
    """``AuditFileError`` naming ``path``'s line at ``offset`` (see ``check_tail``)."""
    _refuse(_Line(path, offset, b""), seq, why)


def _refuse(where: _Line, seq: int | None, why: str) -> NoReturn:
    at = f"{where.path}:{line_number(where.path, where.offset)}"
    what = f" (seq {seq})" if seq is not None else ""
    raise AuditFileError(
        f"{at}{what}: {why}. Refusing to continue the audit chain on it: inspect the files "
        "with `pdp audit verify --key KEYFILE DIR`, keep them as evidence (move the audit "
        "files and their .anchors aside) and start on a new audit file")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ledger_of(path: Path) -> Path:
    """The active-file path of the ledger ``path`` belongs to (itself, or the file a rotated
    ``<name>.<first seq>`` was rotated from)."""
    m = _ROTATED.search(path.name)
    return path.with_name(path.name[: m.start()]) if m else path


def ledgers_in(directory: Path) -> list[Path]:
    """The active-file paths of every ledger in ``directory`` (``audit.jsonl``, the
    ``audit-w<i>.jsonl`` of ``--workers``...), also those whose active file is gone and
    only rotated files remain."""
    names = set()
    for name in os.listdir(directory):
        m = _ROTATED.search(name)
        base = name[: m.start()] if m else name
        if base.endswith(".jsonl") and (directory / name).is_file():
            names.add(base)
    return [directory / n for n in sorted(names)]


def history_files(paths: Sequence[str | Path], *, every_ledger: bool = False) -> list[Path]:
    """Every file of the audit history: each path's rotated siblings then the file itself;
    a directory means its ``audit.jsonl`` (``every_ledger``: each ledger in it, one after
    the other)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        actives = [p]
        if p.is_dir():
            actives = ledgers_in(p) if every_ledger else [p / "audit.jsonl"]
        for active in actives:
            for f in _one_history(active):
                if f not in out:
                    out.append(f)
    return out


def _one_history(p: Path) -> list[Path]:
    found = [f.path for f in ledger_files(p)]
    if not found and p.is_file():
        found = [p]
    return found
