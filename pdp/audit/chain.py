"""The hash chain: sequence numbers, canonical serialization and SHA-256 links.

A record is ``{"v": 1, "seq": n, "prev": <hash of record n-1>, "event": {...}, "hash": h}``
where ``h = sha256(canonical(record without "hash"))``. Canonical = JSON with sorted keys, no
whitespace, UTF-8, no NaN. Any edit of a record changes its hash; removing, inserting or
reordering records breaks the ``seq`` / ``prev`` links. Readers re-canonicalize what they
parse, so the on-disk line need not itself be canonical (it puts ``hash`` first for humans).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]

FORMAT_VERSION = 1
GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def record_hash(record: Record) -> str:
    """Hash of everything in the record except its own ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """Where the chain stands: the last written record's seq and hash (0 / GENESIS if none)."""

    seq: int = 0
    hash: str = GENESIS


@dataclass(frozen=True)
class Entry:
    """One chained record and its serialized line (with trailing newline)."""

    seq: int
    line: bytes
    record: Record


def make_entry(event: Any, head: ChainHead) -> Entry:
    """Chain ``event`` (already pure JSON data) after ``head``."""
    seq = head.seq + 1
    body = {"v": FORMAT_VERSION, "seq": seq, "prev": head.hash, "event": event}
    raw = canonical(body)
    digest = hashlib.sha256(raw).hexdigest()
    line = b'{"hash":"' + digest.encode("ascii") + b'",' + raw[1:] + b"\n"
    record = {**body, "hash": digest}
    return Entry(seq, line, record)


def parse_line(line: bytes) -> Record:
    """Parse one line into a record; ValueError if it is not a record-shaped JSON object."""
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    seq, h, prev = rec.get("seq"), rec.get("hash"), rec.get("prev")
    if type(seq) is not int or not isinstance(h, str) or not isinstance(prev, str):
        raise ValueError("missing seq / prev / hash")
    if "event" not in rec:
        raise ValueError("missing event")
    return rec


def entry_from_line(line: bytes) -> Entry:
    rec = parse_line(line)
    if not line.endswith(b"\n"):
        line += b"\n"
    return Entry(rec["seq"], line, rec)


def hash_ok(record: Record) -> bool:
    return record_hash(record) == record.get("hash")
