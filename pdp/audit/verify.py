"""Verify audit files: report the first edited, removed, inserted or reordered record.

Every record must hash to its ``hash`` field and link to its predecessor (``seq`` + 1 and
``prev`` = predecessor's hash), across rotated files. At the first break the neighbourhood is
inspected to say *what* happened, because "line 812 is wrong" is less useful to an auditor
than "seq 811 was removed":

* edited     - a record's content does not match its own hash (or was re-hashed, and so no
  longer matches its successor's ``prev``);
* removed    - seqs are missing and do not turn up nearby;
* reordered  - the missing seq does turn up a little later;
* inserted   - a seq that was already seen shows up again (a copy or a forged record);
* renamed    - a rotated file's name (its first seq) is not its first record's seq, though
  the records chain on (look-ups by name, as the writer's, would miss them).

Limits of the chain alone, said plainly: it cannot show that records were cut off its *end*,
nor that someone edited a record and recomputed every later hash (re-chaining), and a run that
starts above seq 1 is only noted (older files may have been archived), unless a rotated file's
name (its first seq) disagrees with its content. An incomplete final line of the last file is
what ``kill -9`` mid-write leaves; without anchors it is a warning.

With ``--key`` (the anchor key the writer signed checkpoints with, see anchors.py) the signed
checkpoints close those gaps, each reported as its own kind:

* rechained  - a checkpoint's MAC is fine but the chain no longer has the head it signed (or
  the record an anchor names is no longer that checkpoint): records were changed, inserted or
  removed and the later hashes recomputed;
* forged     - a checkpoint's MAC does not match its content;
* wrong_key  - checkpoints carry another key id than the given keys' (a checkpoint of
  another key id at a record for which the anchor file holds the given key's checkpoint is
  ``rechained`` instead: a checkpoint was forged in place of the signed one), or a key that
  another replaced signs again (a key change goes one way: ``--key`` is repeated for a ledger
  signed before and after one, each checkpoint checked with the key its id names);
* truncated  - the latest anchor (from the anchor file, outside the ledger) names more records
  than the ledger has: records cut off the end, or a torn final line that was acknowledged;
* removed    - also: a rotated file a checkpoint names is gone; records cut off the start
  (see ``_head_cut``); an anchor file whose ledger has no file left (``_orphan_anchors``);
* unanchored - ``--key`` was given but no checkpoint exists anywhere (a ledger merely younger
  than its first checkpoint is a warning, see ``_too_young``);
* anchors_missing - the ledger holds checkpoints but the anchor file beside it is gone, or
  ends before the ledger's last checkpoint (lines cut off it, or the file replaced). A copy
  given with ``--anchors`` may lag behind (it is shipped now and then): only a warning.

With or without ``--key``:

* appended   - records follow a shutdown checkpoint (``"final": true``) without the
  checkpoint a restarted writer begins with: they were appended after the writer stopped.

Every line is checked as bytes: a v3 record's hash covers the line as written, so a line
that parses to the same values but is not the writer's bytes (whitespace, ``\\u`` escapes)
is ``edited``, and a key given twice in an object (``json.loads`` keeps the last) is refused.

Without ``--key`` anchors are not checked, and the result says so.

Each ledger is a chain of its own: the files given (and those in a directory) are grouped by
ledger (``audit.jsonl``, the ``audit-w<i>.jsonl`` of ``--workers``, each with its rotated
``<name>.<first seq>`` files) and each group is verified on its own, with its own anchor file
(``<ledger>.anchors``, or the ``--anchors`` given); the result then holds one per ledger.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pdp.audit.anchors import (
    CHECKPOINT,
    TORN_TAIL,
    AnchorKey,
    AnchorKeyError,
    AnchorLine,
    Keyring,
    default_anchor_path,
    is_checkpoint,
    is_final,
    read_anchors,
)
from pdp.audit.chain import GENESIS, Record, check_line
from pdp.audit.files import ledger_files, ledger_of
from pdp.audit.settings import AuditSettings

Kind = Literal["edited", "removed", "inserted", "reordered", "malformed", "truncated",
               "rechained", "forged", "wrong_key", "unanchored", "appended",
               "anchors_missing", "renamed"]

#: How far ahead / back to look when classifying a break.
WINDOW = 10_000

_LEDGER = re.compile(r"^(?P<base>.+\.jsonl)(?:\.(?P<first>\d{12,}))?$")


@dataclass(frozen=True)
class Location:
    file: str
    line: int


@dataclass(frozen=True)
class Problem:
    kind: Kind
    file: str
    line: int
    seq: int | None
    detail: str


@dataclass
class VerifyResult:
    ok: bool
    count: int
    first_seq: int | None = None
    last_seq: int | None = None
    files: list[str] = field(default_factory=list)
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    #: What was checked against signed checkpoints (or that nothing was: no ``--key``).
    anchors: str = "not verified (no --key)"
    #: The ledger (its active file's path) these files belong to; None when the result
    #: combines several ledgers' (see ``ledgers``).
    ledger: str | None = None
    #: One result per ledger, when the paths held more than one (``audit-w<i>.jsonl`` of
    #: ``--workers``, ledgers in several directories): each verified on its own.
    ledgers: list[VerifyResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "ok" if self.ok else "tampered"

    def _problem_line(self) -> str:
        p = self.problem
        assert p is not None
        seq = f" (seq {p.seq})" if p.seq is not None else ""
        where = f"record at {p.file}:{p.line}" if p.line else f"at {p.file}"
        return f"TAMPERED: {p.kind} {where}{seq}: {p.detail}"

    def __str__(self) -> str:
        if self.ledgers:
            bad = [r for r in self.ledgers if not r.ok]
            head = (self._problem_line() if self.problem is not None
                    else f"ok: {len(self.ledgers)} ledgers, {self.count} records, "
                         f"{len(self.files)} file(s)")
            out = [head, f"ledgers: {len(self.ledgers)}, each its own chain and anchor file, "
                         f"verified separately; {len(bad)} tampered"]
            for r in self.ledgers:
                out.append(f"ledger {r.ledger}:")
                out.extend(f"  {line}" for line in str(r).splitlines())
            return "\n".join(out)
        if self.problem is not None:
            head = self._problem_line()
        elif self.count:
            head = (f"ok: {self.count} records, seq {self.first_seq}..{self.last_seq}, "
                    f"{len(self.files)} file(s)")
        else:
            head = f"ok: 0 records, {len(self.files)} file(s)"
        return "\n".join([head, f"anchors: {self.anchors}",
                          *(f"warning: {w}" for w in self.warnings)])


_Fail = Callable[[Kind, Location, int | None, str], VerifyResult]


@dataclass
class _Rec:
    seq: int
    hash: str
    prev: str
    loc: Location
    hash_ok: bool
    #: The event, kept for checkpoints and torn-tail notes only.
    event: dict[str, Any] | None = None
    #: Why the line does not verify (see chain.line_problem), when it does not.
    why: str | None = None


@dataclass
class _Bad:
    loc: Location
    error: str
    torn: bool


def order_paths(paths: Sequence[str | Path], skipped: list[str] | None = None) -> list[Path]:
    """Files to verify in chain order: rotated files by first seq, the active file last.

    Directories expand to the audit files in them. Shell globs put ``audit.jsonl`` before
    ``audit.jsonl.000000000001``; this puts it where it belongs, and leaves out what a glob
    like ``audit.jsonl*`` also matches but is no ledger file (``.anchors``, ``.lock``,
    ``.spool``, ``.torn-*``: ``<ledger>.jsonl.<anything but a first seq>``), as a directory
    does. Files that are not regular files (a FIFO would block the read forever) are left
    out and named in ``skipped``.
    """
    found: dict[Path, tuple[str, int, int]] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and _NOT_LEDGER.match(p.name):
            continue  # the writer's spool directory (``audit.jsonl.spool/``), from a glob
        candidates = sorted(p.iterdir()) if p.is_dir() else [p]
        for c in candidates:
            m = _LEDGER.match(c.name)
            if m is None and (p.is_dir() or _NOT_LEDGER.match(c.name)):
                continue
            if c.exists() and not c.is_file():
                if skipped is not None:
                    skipped.append(f"{c}: not a regular file, skipped")
                continue
            if m is None:
                found[c] = (c.name, 1, 0)
                continue
            first = m.group("first")
            found[c] = (m.group("base"), 0, int(first)) if first else (m.group("base"), 1, 0)
    return sorted(found, key=lambda c: (str(c.parent), *found[c]))


#: What the writer keeps beside a ledger that is not one of its files.
_NOT_LEDGER = re.compile(r"^.+\.jsonl\.(?!\d{12,}$).+$")


def _first_seq_hint(path: Path) -> int | None:
    m = _LEDGER.match(path.name)
    return int(m.group("first")) if m and m.group("first") else None


def _records(files: list[Path]) -> Iterator[_Rec | _Bad]:
    for fi, path in enumerate(files):
        last_file = fi == len(files) - 1
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete = lines[:-1]
        tail = lines[-1]  # b"" when the file ends with a newline
        for n, raw in enumerate(complete, start=1):
            yield _parse(raw, Location(str(path), n), torn=False)
        if tail:
            yield _parse(tail, Location(str(path), len(complete) + 1), torn=last_file)


def _parse(raw: bytes, loc: Location, torn: bool) -> _Rec | _Bad:
    try:
        rec: Record
        rec, why = check_line(raw)
    except ValueError as e:
        return _Bad(loc, str(e) or "not JSON", torn)
    ev = rec["event"]
    keep = isinstance(ev, dict) and ev.get("type") in (CHECKPOINT, TORN_TAIL)
    return _Rec(rec["seq"], rec["hash"], rec["prev"], loc, why is None, ev if keep else None,
                why)


def verify_paths(paths: Sequence[str | Path], key: AnchorKey | Keyring | None = None,
                 anchor_files: Sequence[str | Path] | None = None) -> VerifyResult:
    """Check the chain across ``paths`` (files or directories), then (with ``key``) the
    signed checkpoints in it and in the anchor files (default: ``<ledger>.anchors`` beside
    it); the first problem wins.

    Each ledger in the paths (``audit.jsonl``, the ``audit-w<i>.jsonl`` of ``--workers``,
    with their rotated files; ledgers in different directories) is its own chain with its
    own anchor file and is verified on its own; with more than one the result combines
    theirs (``ledgers``): ok when every one is, the first problem wins.

    A running writer may append, rotate (rename) or add files while they are read, which
    can look like a gap: a result that is not ok while the files changed during the read
    (or a listed file vanished) is read again, up to ``ATTEMPTS`` times; the same problem
    twice, or files that did not change, is the answer. ``ChangedWhileReading`` when the
    files never held still.

    Raises ``OSError`` when a file cannot be read (the CLI turns that into exit code 2).
    """
    last: Problem | None = None
    for _ in range(ATTEMPTS):
        before = _snapshot(paths)
        try:
            res = _verify_once(paths, key, anchor_files)
        except FileNotFoundError:
            if _snapshot(paths) == before:
                raise
            continue  # a listed file was renamed or removed under the read
        if res.ok or _snapshot(paths) == before or res.problem == last:
            return res
        last = res.problem
    raise ChangedWhileReading(
        "the audit files changed while being read (a running writer rotating or appending), "
        f"{ATTEMPTS} times: try again")


#: Reads of files a running writer keeps changing before ``verify_paths`` gives up.
ATTEMPTS = 5


class ChangedWhileReading(OSError):
    """The files changed during every read: not a verdict (the CLI's exit code 2)."""


def _snapshot(paths: Sequence[str | Path]) -> frozenset[tuple[str, int, int, int]]:
    """Name, inode, size and mtime of every file in the directories the paths name (or
    are in): what a running writer changes."""
    dirs = {Path(p) if Path(p).is_dir() else Path(p).parent for p in paths}
    out: set[tuple[str, int, int, int]] = set()
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            out.add((e.path, st.st_ino, st.st_size, st.st_mtime_ns))
    return frozenset(out)


def _verify_once(paths: Sequence[str | Path], key: AnchorKey | Keyring | None,
                 anchor_files: Sequence[str | Path] | None) -> VerifyResult:
    """One read of the paths (see ``verify_paths``)."""
    skipped: list[str] = []
    files = [f for f in order_paths(paths, skipped) if f.exists()]
    groups: dict[Path, list[Path]] = {}
    for f in files:  # order_paths keeps a ledger's files together, in chain order
        groups.setdefault(ledger_of(f), []).append(f)
    ring = None if key is None else Keyring.of(key)
    results = [_verify_ledger(fs, ring, anchor_files) for fs in groups.values()]
    for led, r in zip(groups, results, strict=True):
        r.ledger = str(led)
    if not anchor_files:
        results.extend(_orphan_anchors(paths, set(groups), ring))
    orphaned = {r.problem.file for r in results if r.problem is not None}
    for raw in paths:  # a path given that is not there: an error, unless its ledger is gone
        p = Path(raw)
        if not p.exists() and str(default_anchor_path(ledger_of(p))) not in orphaned:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not results:
        raise FileNotFoundError("no audit files found in " + ", ".join(map(str, paths)))
    results[0].warnings.extend(skipped)
    if len(results) == 1:
        return results[0]
    bad = next((r for r in results if not r.ok), None)
    return VerifyResult(
        ok=bad is None, count=sum(r.count for r in results),
        files=[f for r in results for f in r.files],
        problem=bad.problem if bad is not None else None,
        warnings=[w for r in results for w in r.warnings],
        anchors="; ".join(f"{r.ledger}: {r.anchors}" for r in results),
        ledgers=results)


def _anchor_sources(files: Sequence[Path],
                    anchor_files: Sequence[str | Path] | None) -> list[Path]:
    """The anchor files a ledger of ``files`` is checked against."""
    if anchor_files:
        return [Path(a) for a in anchor_files]
    out: list[Path] = []
    for f in files:
        src = default_anchor_path(ledger_of(Path(f)))
        if src not in out:
            out.append(src)
    return out


def _line_counts(sources: Sequence[Path]) -> dict[str, int]:
    """Complete lines in each anchor file now (absent: 0)."""
    out: dict[str, int] = {}
    for src in sources:
        try:
            out[str(src)] = src.read_bytes().count(b"\n")
        except OSError:
            out[str(src)] = 0
    return out


def _orphan_anchors(paths: Sequence[str | Path], ledgers: set[Path],
                    key: Keyring | None) -> list[VerifyResult]:
    """Anchor files (``<ledger>.anchors``) beside the given paths whose ledger has no file
    left: the writer never deletes its ledger, so one holding checkpoints of it (signed
    with the key, when one is given) means the ledger was deleted (``removed``)."""
    out: list[VerifyResult] = []
    for src in _anchor_files_near(paths):
        led = src.with_name(src.name[: -len(".anchors")])
        if led in ledgers:
            continue
        try:
            found = read_anchors(src, led.name)[0]
        except OSError:
            continue
        if key is not None:
            found = [a for a in found if _signed_by(key, a.event)]
        if not found:
            continue
        last = max(_int(a.event.get("seq")) + 1 for a in found)
        r = VerifyResult(ok=False, count=0, ledger=str(led), problem=Problem(
            "removed", str(src), 0, None,
            f"the anchor file holds {len(found)} checkpoint(s) of ledger {led.name} (the "
            f"last at seq {last}), but no file of that ledger is left: it was deleted"))
        if key is not None:
            r.anchors = f"checked with key id {key.key_id}: failed"
        out.append(r)
    return out


def _anchor_files_near(paths: Sequence[str | Path]) -> list[Path]:
    """The ``*.jsonl.anchors`` files in the given directories, and beside given files."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            cands = sorted(p.glob("*.jsonl.anchors"))
        else:
            cands = [default_anchor_path(ledger_of(p))]
            if p.name.endswith(".jsonl.anchors"):
                cands.append(p)
        out.extend(c for c in cands if c.is_file() and c not in out)
    return out


def _signed_by(key: Keyring, event: dict[str, Any]) -> bool:
    k = key.get(event.get("key_id"))
    return k is not None and k.signed(event)


def _int(value: Any) -> int:
    return value if type(value) is int else 0


def _verify_ledger(files: list[Path], key: Keyring | None,
                   anchor_files: Sequence[str | Path] | None) -> VerifyResult:
    """``verify_paths`` for the files (in chain order) of one ledger.

    The anchor files' lines are counted *before* the ledger is read: a running writer
    appends an anchor only after the ledger holds its checkpoint, so an anchor line that
    was there before the read names only records the read sees; lines added during the
    read may name newer records and are not taken for a truncation."""
    early = _line_counts(_anchor_sources(files, anchor_files)) if key is not None else {}
    res, seen = _verify_chain(files)
    if res.problem is None:
        _notes(res, seen)
        if key is not None:
            res.anchors = f"checked with key id {key.key_id}: failed"
            _verify_anchors(res, seen, key, anchor_files, early)
    elif key is not None:
        res.anchors = "not checked: the hash chain itself is broken"
    return res


@dataclass
class _Seen:
    """What the chain pass keeps for the anchor checks."""

    checkpoints: list[_Rec] = field(default_factory=list)
    torn_tails: list[_Rec] = field(default_factory=list)
    #: The incomplete final line the chain pass stopped at, if any.
    torn: Location | None = None


def _verify_chain(files: list[Path]) -> tuple[VerifyResult, _Seen]:
    """The hash chain of one ledger's ``files`` (in chain order)."""
    result = VerifyResult(ok=True, count=0, files=[str(f) for f in files])
    hints = {str(f): _first_seq_hint(f) for f in files}
    first_in_file: set[str] = set()
    stream = _records(files)
    prev: _Rec | None = None
    recent: OrderedDict[int, _Rec] = OrderedDict()
    seen = _Seen()
    final: _Rec | None = None  # the shutdown checkpoint just before, if the last was one

    def fail(kind: Kind, loc: Location, seq: int | None, detail: str) -> VerifyResult:
        result.ok = False
        result.problem = Problem(kind, loc.file, loc.line, seq, detail)
        return result

    for item in stream:
        if isinstance(item, _Bad):
            if item.torn:
                seen.torn = item.loc
                result.warnings.append(
                    f"{item.loc.file}:{item.loc.line}: incomplete final line (a write cut "
                    "short by a crash; acknowledged only if an anchor covers it), not counted")
                break
            return fail("malformed", item.loc, None, f"unreadable line: {item.error}"), seen
        rec = item
        if not rec.hash_ok:
            return fail("edited", rec.loc, rec.seq,
                        rec.why or "content does not match its hash"), seen
        if final is not None and not _resumes(rec) \
                and ledger_of(Path(final.loc.file)) == ledger_of(Path(rec.loc.file)):
            return fail("appended", rec.loc, rec.seq,
                        f"records after the shutdown checkpoint at seq {final.seq} "
                        f"({final.loc.file}:{final.loc.line}): appended after the writer "
                        "stopped (a restarted writer starts with a checkpoint of its "
                        "own)"), seen
        final = rec if is_final(rec.event) else None
        if rec.event is not None:
            (seen.checkpoints if rec.event.get("type") == CHECKPOINT
             else seen.torn_tails).append(rec)
        hint = hints.get(rec.loc.file)
        if rec.loc.file not in first_in_file:
            first_in_file.add(rec.loc.file)
            if prev is not None and hint is not None and rec.seq != hint \
                    and rec.seq == prev.seq + 1 and rec.prev == prev.hash:
                return fail("renamed", rec.loc, rec.seq,
                            f"the file's name says its first record is seq {hint}, but it is "
                            f"seq {rec.seq} (the records chain on: the file was renamed, so "
                            "look-ups by name miss its records)"), seen
            if prev is None and hint is not None and rec.seq != hint:
                if rec.seq > hint:
                    return fail("removed", rec.loc, rec.seq,
                                f"file starts at seq {rec.seq} but its name says {hint}: "
                                f"records {hint}..{rec.seq - 1} missing"), seen
                return fail("inserted", rec.loc, rec.seq,
                            f"file starts at seq {rec.seq} but its name says {hint}"), seen
        if prev is None:
            if rec.seq == 1 and rec.prev != GENESIS:
                return fail("edited", rec.loc, rec.seq,
                            "first record does not start the chain"), seen
            if rec.seq != 1:
                result.warnings.append(
                    f"chain starts at seq {rec.seq} (earlier files archived, or not given: "
                    "pass the directory to include rotated files)")
        else:
            expected = prev.seq + 1
            if rec.seq != expected or rec.prev != prev.hash:
                return _classify(result, fail, prev, rec, stream, recent), seen
        recent[rec.seq] = rec
        if len(recent) > WINDOW:
            recent.popitem(last=False)
        prev = rec
        result.count += 1
        if result.first_seq is None:
            result.first_seq = rec.seq
        result.last_seq = rec.seq
    if result.count == 0 and not result.warnings:
        result.warnings.append("no records")
    return result, seen


def _resumes(rec: _Rec) -> bool:
    """Whether ``rec`` can be the checkpoint a restarted writer begins with after a
    shutdown checkpoint, as far as the chain alone can tell: a checkpoint signing the head
    it follows, with a key id and a MAC. A bare ``{"type": "Audit.Checkpoint"}`` (or a
    copy of an older checkpoint) would let records be appended after a clean stop."""
    ev = rec.event
    return (is_checkpoint(ev) and ev is not None and ev.get("seq") == rec.seq - 1
            and ev.get("head") == rec.prev and isinstance(ev.get("key_id"), str)
            and isinstance(ev.get("mac"), str))


def _keyless(ev: dict[str, Any]) -> bool:
    """A checkpoint without a key id or MAC: no writer writes one."""
    return not isinstance(ev.get("key_id"), str) or not isinstance(ev.get("mac"), str)


def _ledgers(result: VerifyResult) -> list[Path]:
    """The ledgers (active-file paths) the verified files belong to, in order."""
    out: list[Path] = []
    for f in result.files:
        led = ledger_of(Path(f))
        if led not in out:
            out.append(led)
    return out


def _notes(result: VerifyResult, seen: _Seen) -> None:
    """Torn lines the writer moved aside at a restart: reported, never silent."""
    for rec in seen.torn_tails:
        ev = rec.event or {}
        result.warnings.append(
            f"{rec.loc.file}:{rec.loc.line} (seq {rec.seq}): at a restart the writer moved a "
            f"torn final line ({ev.get('bytes')} bytes, after seq {ev.get('after_seq')}) aside "
            f"to {ev.get('moved_to')} (a write cut short by a crash)")
    noted = {str((rec.event or {}).get("moved_to")) for rec in seen.torn_tails}
    for led in _ledgers(result):
        if not led.parent.is_dir():
            continue
        for torn in sorted(led.parent.glob(led.name + ".torn-*")):
            if torn.name not in noted:
                result.warnings.append(
                    f"{torn}: a torn final line moved aside at a restart (a write cut short "
                    "by a crash)")


def _short(h: Any) -> str:
    return f"{str(h)[:12]}…"


def _verify_anchors(result: VerifyResult, seen: _Seen, key: Keyring,
                    anchor_files: Sequence[str | Path] | None,
                    early: dict[str, int] | None = None) -> None:
    """The checks ``--key`` adds (see the module docstring); sets ``result.problem``.
    ``early``: the anchor files' line counts before the ledger was read (see
    ``_verify_ledger``); anchors after them that name records beyond the read are left
    out (a running writer added them since)."""
    ledgers = _ledgers(result)
    names = {led.name: led for led in ledgers}

    def fail(kind: Kind, loc: Location, seq: int | None, detail: str) -> None:
        result.ok = False
        result.problem = Problem(kind, loc.file, loc.line, seq, detail)

    def signature(ev: dict[str, Any], loc: Location, what: str, seq: int | None) -> bool:
        if _keyless(ev):
            fail("forged", loc, seq,
                 f"{what} has no key id or MAC (key id {ev.get('key_id')!r}): no writer writes "
                 "one, it was forged")
            return False
        k = key.get(ev.get("key_id"))
        if k is None:
            fail("wrong_key", loc, seq,
                 f"{what} is signed with key id {ev.get('key_id')}, the given key's id is "
                 f"{key.key_id} (wrong --key, or checkpoints made with another key: after a "
                 "key change give every key the ledger was signed with, --key OLD --key NEW)")
            return False
        if not k.signed(ev):
            fail("forged", loc, seq,
                 f"{what}: its MAC does not match its content (the checkpoint was edited or "
                 "forged)")
            return False
        return True

    sources = _anchor_sources([Path(f) for f in result.files], anchor_files)

    def anchored_at(led: str, seq: int) -> AnchorLine | None:
        """An anchor signed with the key naming a checkpoint of ``led`` at record ``seq``."""
        for src in sources:
            if not src.exists():
                continue
            for a in read_anchors(src, led)[0]:
                k = key.get(a.event.get("key_id"))
                if a.event.get("seq") == seq - 1 and k is not None and k.signed(a.event):
                    return a
        return None

    # 1. Checkpoints in the ledger: signed, and signing the head the chain has.
    in_ledger: dict[tuple[str, int], _Rec] = {}
    covered: _Rec | None = None  # the last checkpoint that checked out
    current: tuple[str, int] | None = None  # the key signing now, since which checkpoint
    retired: dict[str, tuple[str, int]] = {}  # a key changed away from -> (by, at seq)
    for rec in seen.checkpoints:
        ev = rec.event or {}
        what = f"checkpoint at seq {rec.seq}"
        led = ledger_of(Path(rec.loc.file)).name
        if _keyless(ev):
            signature(ev, rec.loc, what, rec.seq)
            return
        kid = str(ev.get("key_id"))
        if current is None or kid != current[0]:
            if kid in retired:
                by, at = retired[kid]
                fail("wrong_key", rec.loc, rec.seq,
                     f"{what} is signed with key id {kid}, which key id {by} had replaced "
                     f"at seq {at}: a replaced key signing again (a leaked old key?)")
                return
            if current is not None:
                retired[current[0]] = (kid, rec.seq)
            current = (kid, rec.seq)
        if key.get(ev.get("key_id")) is None:
            # Not a key change when the anchor file has this key's checkpoint for this very
            # record: another checkpoint was put in its place.
            a = anchored_at(led, rec.seq)
            if a is not None:
                fail("rechained", rec.loc, rec.seq,
                     f"{what} claims key id {ev.get('key_id')}, but the anchor file "
                     f"({a.path}:{a.line}) holds the checkpoint signed with the given key "
                     f"for this record: the ledger's record {rec.seq} is not that "
                     "checkpoint, the ledger was rewritten after it (a forged checkpoint in "
                     "its place, the chain re-hashed)")
                return
        if not signature(ev, rec.loc, what, rec.seq):
            return
        if ev.get("ledger") != led:
            fail("forged", rec.loc, rec.seq,
                 f"{what} belongs to ledger {ev.get('ledger')}, not {led} (copied in)")
            return
        since = covered.seq + 1 if covered else result.first_seq
        if ev.get("seq") != rec.seq - 1:
            fail("rechained", rec.loc, rec.seq,
                 f"{what} was signed to follow seq {ev.get('seq')}: "
                 f"records between seq {since} and {rec.seq - 1} were inserted or removed and "
                 "the later hashes recomputed (re-chained)")
            return
        if ev.get("head") != rec.prev:
            fail("rechained", rec.loc, rec.seq,
                 f"{what} signed head {_short(ev.get('head'))} for seq {rec.seq - 1}, the chain "
                 f"has {_short(rec.prev)}: records between seq {since} and {rec.seq - 1} were "
                 "changed and every later hash recomputed (re-chained)")
            return
        in_ledger[(led, rec.seq)] = rec
        covered = rec

    # 2. The anchor files: outside the ledger, so they still name what was cut off its end.
    anchors: list[AnchorLine] = []
    for src in sources:
        if not src.exists():
            if anchor_files:
                raise FileNotFoundError(f"anchor file {src} not found")
            if seen.checkpoints:
                fail("anchors_missing", Location(str(src), 0), None,
                     f"anchor file {src} not found, yet the ledger holds "
                     f"{len(seen.checkpoints)} checkpoint(s) (the last at seq "
                     f"{seen.checkpoints[-1].seq}): it was deleted, so records cut off the end "
                     "of the ledger could not be detected (verify against a copy shipped "
                     "off the host with --anchors COPY)")
                return
            continue
        lines, warns = read_anchors(src)
        result.warnings.extend(warns)
        anchors.extend(a for a in lines if str(a.event.get("ledger")) in names
                       and not _newer_than_read(a, early, result.last_seq))
    for a in anchors:
        if not signature(a.event, Location(a.path, a.line), "anchor", None):
            return
    if not anchors and not seen.checkpoints and _too_young(result, sources):
        return
    if not anchors and not seen.checkpoints:
        fail("unanchored", Location(result.files[-1], 0), None,
             "no signed checkpoint found in the ledger or the anchor file although --key was "
             "given: the log was written without an anchor key, or every checkpoint was "
             "removed")
        return
    last = result.last_seq or 0
    latest = max(anchors, key=lambda a: int(a.event.get("seq", 0)), default=None)
    if latest is not None and int(latest.event["seq"]) + 1 > last:
        cp = int(latest.event["seq"]) + 1
        loc = Location(result.files[-1], 0)
        where = (f"the anchor file ({latest.path}:{latest.line}) has a checkpoint at seq {cp} "
                 f"covering seq {cp - 1}, the ledger ends at seq {last}")
        if seen.torn is not None:
            fail("truncated", seen.torn, last + 1,
                 f"the final line is cut short, yet it was acknowledged: {where}; "
                 f"records {last + 1}..{cp} are lost")
        elif cp == last + 1:
            fail("truncated", loc, cp, f"the last record (seq {cp}) was cut off the end: {where}")
        else:
            fail("truncated", loc, last + 1,
                 f"records {last + 1}..{cp} ({cp - last}) were deleted from the end: {where}")
        return
    if not anchor_files and _anchors_cut(result, fail, in_ledger, anchors, names):
        return
    if _head_cut(result, fail, in_ledger, anchors, names):
        return
    first = result.first_seq or 0
    for a in anchors:
        cp = int(a.event["seq"]) + 1
        if cp < first:
            continue  # in rotated files on disk but not given: checked by name below
        match = in_ledger.get((str(a.event.get("ledger")), cp))
        if match is None or (match.event or {}).get("mac") != a.event.get("mac"):
            fail("rechained", Location(a.path, a.line), cp,
                 f"the anchor names a checkpoint at seq {cp}, but the ledger's record {cp} is "
                 "not that checkpoint: records before it were changed, inserted or removed and "
                 "the chain re-hashed (re-chained)")
            return

    # 3. Rotated files the checkpoints name must still be there.
    verified = {str(Path(f)) for f in result.files}
    named: dict[str, tuple[dict[str, Any], str]] = {}
    for ev, what in [*((r.event or {}, f"checkpoint at seq {r.seq}") for r in in_ledger.values()),
                     *((a.event, f"anchor {a.path}:{a.line}") for a in anchors)]:
        for seg in ev.get("files") or ():
            if isinstance(seg, dict):
                named.setdefault(f"{ev.get('ledger')}/{seg.get('name')}", (seg, what))
    for ident, (seg, what) in named.items():
        owner = names.get(ident.split("/", 1)[0])
        if owner is None:
            continue
        path = owner.parent / str(seg.get("name"))
        if str(path) in verified:
            continue
        if not path.exists():
            fail("removed", Location(str(path), 0), seg.get("first"),
                 f"rotated file {path.name} (seqs {seg.get('first')}..{seg.get('last')}), named "
                 f"by the {what}, is missing: {_gone(path)}")
            return
        result.warnings.append(f"{path} (named by the {what}) was not given: pass the "
                               "directory to verify it")

    # 4. What the checkpoints did not cover (yet).
    top = max([*(int(a.event["seq"]) + 1 for a in anchors),
               *(r.seq for r in in_ledger.values())], default=0)
    if last > top and top:
        result.warnings.append(
            f"records {top + 1}..{last} are not covered by a checkpoint yet (written after the "
            "last one; a crash before the next checkpoint)")
    if anchor_files:  # a copy shipped off the host may lag behind the ledger
        last_anchor_seq = max((int(a.event["seq"]) + 1 for a in anchors), default=0)
        behind = [r for r in in_ledger.values() if r.seq > last_anchor_seq]
        if behind:
            result.warnings.append(
                f"{len(behind)} checkpoint(s) in the ledger (up to seq {behind[-1].seq}) are "
                "not in the given anchor file(s): records after seq "
                f"{last_anchor_seq} are checked by the ledger's own checkpoints only")
    result.anchors = (f"{len(in_ledger)} checkpoint(s) in the ledger and {len(anchors)} in the "
                      f"anchor file verified with key id {key.key_id}; covered up to seq {top}")


#: Records an anchored writer may write before its first checkpoint (the default
#: ``--audit-anchor-every-records``; the timer, ``--audit-anchor-every-s``, may come first).
YOUNG_RECORDS = AuditSettings.anchor_every_records


def _too_young(result: VerifyResult, sources: Sequence[Path]) -> bool:
    """A ledger that simply has no checkpoint *yet* (verified within the first
    ``--audit-anchor-every-s`` of its writer, or after a kill -9 then): a warning, not
    ``unanchored``. What the format gives to tell it from one whose checkpoints were
    removed: an anchored writer creates its (empty) anchor file when it opens the ledger,
    and never empties it; the whole chain from seq 1 is there; and there are fewer records
    than the writer anchors after at most. So: every anchor file exists and holds nothing
    at all, the chain starts at seq 1, and it has at most ``YOUNG_RECORDS`` records. A
    missing anchor file (a writer without the key), one with any line, a chain starting
    later or a longer one stays ``unanchored``."""
    if result.first_seq != 1 or result.count > YOUNG_RECORDS or not sources:
        return False
    for src in sources:
        try:
            if src.stat().st_size:
                return False
        except OSError:
            return False
    result.warnings.append(
        f"no checkpoint yet: records 1..{result.last_seq} are not covered (the writer's "
        "first checkpoint is due after --audit-anchor-every-s / -every-records, and the "
        f"anchor file {sources[0]} is still empty); verify again later")
    result.anchors = "none yet: the ledger is younger than its first checkpoint"
    return True


def _newer_than_read(a: AnchorLine, early: dict[str, int] | None,
                     last: int | None) -> bool:
    """An anchor line appended while the ledger was read, naming records past the read."""
    if early is None or a.line <= early.get(a.path, 0):
        return False
    seq = a.event.get("seq")
    return type(seq) is int and seq + 1 > (last or 0)


def _disk_first(led: Path, given_first: int) -> int:
    """The lowest seq a file of the ledger ``led`` holds on disk: the given files' first, or
    a rotated file's (its name) beside them that was not given."""
    firsts = [lf.first_seq for lf in ledger_files(led)
              if lf.first_seq is not None and lf.path.is_file()]
    return min([given_first, *firsts])


def _head_cut(result: VerifyResult, fail: Callable[[Kind, Location, int | None, str], None],
              in_ledger: dict[tuple[str, int], _Rec], anchors: list[AnchorLine],
              names: dict[str, Path]) -> bool:
    """Records cut off the *start* of the ledger. The writer never deletes a file, and
    every file it rotates is named (with its seqs) by its next checkpoint, so below the
    first record on disk there are only rotated files a checkpoint names (their absence is
    ``removed``, step 3), or nothing. So: an anchor signing a checkpoint below every file
    on disk, or a chain that starts above seq 1 where no checkpoint names a rotated file
    ending just before it (records cut out of a file's start, the anchors naming them cut
    too), is ``removed``. Rotated files that are on disk but not given stay a warning."""
    first = result.first_seq
    if first is None or len(names) != 1:
        return False
    name, led = next(iter(names.items()))
    low = _disk_first(led, first)
    segs = _named_segments(name, in_ledger, anchors)
    below = [a for a in anchors if int(a.event["seq"]) + 1 < low
             and not any(f <= int(a.event["seq"]) + 1 <= t for f, t in segs)]
    if below:
        a = min(below, key=lambda x: int(x.event["seq"]))
        cp = int(a.event["seq"]) + 1
        fail("removed", Location(result.files[0], 1), first,
             f"the anchor file ({a.path}:{a.line}) signs a checkpoint at seq {cp}, but no "
             f"file of the ledger holds records below seq {low} and no rotated file a "
             f"checkpoint names holds seq {cp}: records before seq {low} were cut off the "
             "start of the ledger")
        return True
    if low == 1 or low < first or any(t == low - 1 for _, t in segs):
        return False  # a named rotated file ends just before: step 3 says if it is there
    fail("removed", Location(result.files[0], 1), first,
         f"the chain starts at seq {first}, but no checkpoint names a rotated file ending at "
         f"seq {first - 1} (the writer names every file it rotates in its next checkpoint): "
         f"records 1..{first - 1} were cut off the start of the ledger")
    return True


def _named_segments(name: str, in_ledger: dict[tuple[str, int], _Rec],
                    anchors: list[AnchorLine]) -> list[tuple[int, int]]:
    """(first, last) of every rotated file of ledger ``name`` a checkpoint names."""
    out: list[tuple[int, int]] = []
    for ev in [*((r.event or {}) for r in in_ledger.values()), *(a.event for a in anchors)]:
        if ev.get("ledger") != name:
            continue
        for seg in ev.get("files") or ():
            if isinstance(seg, dict) and type(seg.get("first")) is int \
                    and type(seg.get("last")) is int:
                out.append((seg["first"], seg["last"]))
    return out


def _anchors_cut(result: VerifyResult, fail: Callable[[Kind, Location, int | None, str], None],
                 in_ledger: dict[tuple[str, int], _Rec], anchors: list[AnchorLine],
                 names: dict[str, Path]) -> bool:
    """The anchor file beside a ledger must hold the ledger's last checkpoint: one that
    ends before it was cut (or replaced), and then records cut off the ledger's end would
    go unseen. The one exception: the ledger's very last record is a checkpoint the anchor
    file lacks (a crash between the ledger's fsync and the anchor's append; the writer
    appends it at its next start) - a warning."""
    for name, led in names.items():
        mine = sorted((r for (lname, _), r in in_ledger.items() if lname == name),
                      key=lambda r: r.seq)
        if not mine:
            continue
        last_anchor = max((int(a.event["seq"]) + 1 for a in anchors
                           if a.event.get("ledger") == name), default=0)
        behind = [r for r in mine if r.seq > last_anchor]
        if not behind:
            continue
        src = default_anchor_path(led)
        if len(behind) == 1 and behind[0].seq == result.last_seq:
            result.warnings.append(
                f"{src} lacks the ledger's last checkpoint (seq {behind[0].seq}): a crash "
                "between the ledger's fsync and the anchor file's append (the writer appends "
                "it at its next start)")
            continue
        ends = (f"ends at the checkpoint at seq {last_anchor}" if last_anchor
                else "holds no checkpoint of this ledger")
        fail("anchors_missing", Location(str(src), 0), behind[0].seq,
             f"the anchor file {ends}, but the ledger has {len(behind)} "
             f"{'later ' if last_anchor else ''}checkpoint(s) "
             f"(seq {behind[0].seq}..{behind[-1].seq}): anchors were removed from its end, or "
             "the file was replaced; records cut off the end of the ledger could go unseen "
             "(verify against a copy shipped off the host with --anchors COPY)")
        return True
    return False


def _classify(result: VerifyResult, fail: _Fail, prev: _Rec, rec: _Rec,
              stream: Iterator[_Rec | _Bad], recent: OrderedDict[int, _Rec]) -> VerifyResult:
    expected = prev.seq + 1
    ahead = [x for x in itertools.islice(stream, WINDOW) if isinstance(x, _Rec)]
    nxt = ahead[0] if ahead else None
    if rec.seq == expected:  # right number, wrong link
        if nxt is not None and nxt.seq == rec.seq and nxt.prev == prev.hash:
            return fail("inserted", rec.loc, rec.seq,
                        f"forged record: the next one (line {nxt.loc.line}) carries the same seq "
                        "and links to the previous record")
        if nxt is not None and nxt.prev == rec.hash:
            return fail("edited", prev.loc, prev.seq,
                        "content was changed and re-hashed: the next record no longer links "
                        "to it")
        return fail("edited", rec.loc, rec.seq, "does not link to the previous record")
    if rec.seq > expected:
        dup = next((x for x in ahead if x.seq == rec.seq and x.hash == rec.hash), None)
        if dup is not None:
            return fail("inserted", rec.loc, rec.seq,
                        f"copy of the record at {dup.loc.file}:{dup.loc.line}")
        found = next((x for x in ahead if x.seq == expected), None)
        if found is not None:
            return fail("reordered", rec.loc, rec.seq,
                        f"seq {rec.seq} comes before seq {expected} "
                        f"(at {found.loc.file}:{found.loc.line})")
        missing = (f"seq {expected}" if rec.seq == expected + 1
                   else f"seqs {expected}..{rec.seq - 1}")
        if rec.loc.line == 1 and rec.loc.file != prev.loc.file:
            gone = rotated_name(Path(rec.loc.file), expected)
            if gone is not None and not gone.exists():
                return fail("removed", rec.loc, rec.seq,
                            f"rotated file {gone.name} is missing: {missing} "
                            f"{_gone(gone, 'deleted with it')}")
        return fail("removed", rec.loc, rec.seq, f"{missing} missing before this record")
    # rec.seq < expected: a seq we have already seen.
    seen = recent.get(rec.seq)
    if seen is not None and seen.hash == rec.hash:
        return fail("inserted", rec.loc, rec.seq,
                    f"copy of the record at {seen.loc.file}:{seen.loc.line}")
    before = recent.get(rec.seq - 1)
    if seen is not None and before is not None and rec.prev == before.hash:
        return fail("inserted", seen.loc, seen.seq,
                    f"forged record: seq {rec.seq} at {rec.loc.file}:{rec.loc.line} is the one "
                    "the chain continues from")
    return fail("inserted", rec.loc, rec.seq, f"seq {rec.seq} appears again after seq {prev.seq}")


#: What logrotate & co. add when they compress a rotated file.
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z")


def _gone(path: Path, deleted: str = "deleted") -> str:
    """Why a rotated file is not there: compressed (a ``.gz`` beside it: verify reads plain
    files only) reads differently from deleted."""
    packed = next((path.with_name(path.name + ext) for ext in _COMPRESSED
                   if path.with_name(path.name + ext).exists()), None)
    if packed is None:
        return deleted
    return (f"not read: {packed.name} is there, compressed (verify reads plain files only: "
            "decompress it and verify again)")


def rotated_name(path: Path, first_seq: int) -> Path | None:
    """The name the file holding ``first_seq`` would have, beside ``path`` (same ledger)."""
    m = _LEDGER.match(path.name)
    return path.with_name(f"{m.group('base')}.{first_seq:012d}") if m else None


def main(argv: list[str]) -> int:
    """``pdp audit verify PATH...``: prints the result; 0 ok, 1 tampered, 2 error."""
    ap = argparse.ArgumentParser(prog="pdp audit verify",
                                 description="Verify the hash chain of pdp audit files.")
    ap.add_argument("paths", nargs="+", help="audit files or directories holding them")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--key", metavar="FILE", action="append",
                    help="anchor key file (the audit_anchor_key_file the writer used): also "
                         "verify the signed checkpoints (re-chaining, records cut off the end);"
                         " after a key change, every key the ledger was signed with")
    ap.add_argument("--anchors", metavar="FILE", action="append",
                    help="anchor file(s) to check against, e.g. a copy shipped off the host "
                         "(default: <ledger>.anchors beside it)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        key = Keyring(tuple(AnchorKey.from_file(k) for k in args.key)) if args.key else None
    except AnchorKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        res = verify_paths(args.paths, key, args.anchors)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = asdict(res)
        out["status"] = res.status
        print(json.dumps(out, indent=2))
    else:
        print(res)
    return 0 if res.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
