"""Verify audit files: report the first edited, removed, inserted or reordered record.

Every record must hash to its ``hash`` field and link to its predecessor (``seq`` + 1 and
``prev`` = predecessor's hash), across rotated files. At the first break the neighbourhood is
inspected to say *what* happened, because "line 812 is wrong" is less useful to an auditor
than "seq 811 was removed":

* edited     - a record's content does not match its own hash (or was re-hashed, and so no
  longer matches its successor's ``prev``);
* removed    - seqs are missing and do not turn up nearby;
* reordered  - the missing seq does turn up a little later;
* inserted   - a seq that was already seen shows up again (a copy or a forged record).

Limits, said plainly: a chain cannot show that records were cut off its *end* (compare the last
seq with the Redis stream or a copy), and a run that starts above seq 1 is only noted (older
files may have been archived), unless a rotated file's name (its first seq) disagrees with its
content. An incomplete final line of the last file is what ``kill -9`` mid-write leaves; it is
a warning, not tampering (such a record was never acknowledged - see files.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pdp.audit.chain import GENESIS, Record, hash_ok, parse_line

Kind = Literal["edited", "removed", "inserted", "reordered", "malformed"]

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

    @property
    def status(self) -> str:
        return "ok" if self.ok else "tampered"

    def __str__(self) -> str:
        if self.problem is not None:
            p = self.problem
            seq = f" (seq {p.seq})" if p.seq is not None else ""
            head = f"TAMPERED: {p.kind} record at {p.file}:{p.line}{seq}: {p.detail}"
        elif self.count:
            head = (f"ok: {self.count} records, seq {self.first_seq}..{self.last_seq}, "
                    f"{len(self.files)} file(s)")
        else:
            head = f"ok: 0 records, {len(self.files)} file(s)"
        return "\n".join([head, *(f"warning: {w}" for w in self.warnings)])


_Fail = Callable[[Kind, Location, int | None, str], VerifyResult]


@dataclass
class _Rec:
    seq: int
    hash: str
    prev: str
    loc: Location
    hash_ok: bool


@dataclass
class _Bad:
    loc: Location
    error: str
    torn: bool


def order_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files to verify in chain order: rotated files by first seq, the active file last.

    Directories expand to the audit files in them. Shell globs put ``audit.jsonl`` before
    ``audit.jsonl.000000000001``; this puts it where it belongs.
    """
    found: dict[Path, tuple[str, int, int]] = {}
    for raw in paths:
        p = Path(raw)
        candidates = sorted(p.iterdir()) if p.is_dir() else [p]
        for c in candidates:
            m = _LEDGER.match(c.name)
            if m is None:
                if p.is_dir():
                    continue
                found[c] = (c.name, 1, 0)
                continue
            first = m.group("first")
            found[c] = (m.group("base"), 0, int(first)) if first else (m.group("base"), 1, 0)
    return sorted(found, key=lambda c: (str(c.parent), *found[c]))


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
        rec: Record = parse_line(raw)
    except ValueError as e:
        return _Bad(loc, str(e) or "not JSON", torn)
    return _Rec(rec["seq"], rec["hash"], rec["prev"], loc, hash_ok(rec))


def verify_paths(paths: Sequence[str | Path]) -> VerifyResult:
    """Check the chain across ``paths`` (files or directories); the first problem wins.

    Raises ``OSError`` when a file cannot be read (the CLI turns that into exit code 2).
    """
    files = order_paths(paths)
    result = VerifyResult(ok=True, count=0, files=[str(f) for f in files])
    if not files:
        raise FileNotFoundError("no audit files found in " + ", ".join(map(str, paths)))
    hints = {str(f): _first_seq_hint(f) for f in files}
    first_in_file: set[str] = set()
    stream = _records(files)
    prev: _Rec | None = None
    recent: OrderedDict[int, _Rec] = OrderedDict()

    def fail(kind: Kind, loc: Location, seq: int | None, detail: str) -> VerifyResult:
        result.ok = False
        result.problem = Problem(kind, loc.file, loc.line, seq, detail)
        return result

    for item in stream:
        if isinstance(item, _Bad):
            if item.torn:
                result.warnings.append(
                    f"{item.loc.file}:{item.loc.line}: incomplete final line (a write cut "
                    "short by a crash; never acknowledged), not counted")
                break
            return fail("malformed", item.loc, None, f"unreadable line: {item.error}")
        rec = item
        if not rec.hash_ok:
            return fail("edited", rec.loc, rec.seq, "content does not match its hash")
        hint = hints.get(rec.loc.file)
        if rec.loc.file not in first_in_file:
            first_in_file.add(rec.loc.file)
            if prev is None and hint is not None and rec.seq != hint:
                if rec.seq > hint:
                    return fail("removed", rec.loc, rec.seq,
                                f"file starts at seq {rec.seq} but its name says {hint}: "
                                f"records {hint}..{rec.seq - 1} missing")
                return fail("inserted", rec.loc, rec.seq,
                            f"file starts at seq {rec.seq} but its name says {hint}")
        if prev is None:
            if rec.seq == 1 and rec.prev != GENESIS:
                return fail("edited", rec.loc, rec.seq, "first record does not start the chain")
            if rec.seq != 1:
                result.warnings.append(
                    f"chain starts at seq {rec.seq} (earlier files archived, or not given: "
                    "pass the directory to include rotated files)")
        else:
            expected = prev.seq + 1
            if rec.seq != expected or rec.prev != prev.hash:
                return _classify(result, fail, prev, rec, stream, recent)
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
    return result


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


def main(argv: list[str]) -> int:
    """``pdp audit verify PATH...``: prints the result; 0 ok, 1 tampered, 2 error."""
    ap = argparse.ArgumentParser(prog="pdp audit verify",
                                 description="Verify the hash chain of pdp audit files.")
    ap.add_argument("paths", nargs="+", help="audit files or directories holding them")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        res = verify_paths(args.paths)
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
