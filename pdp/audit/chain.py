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
import secrets
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)

Record = dict[str, Any]

FORMAT_VERSION = 1
GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _unserializable(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# The C encoder json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
# allow_nan=False) builds per call, built once (no circular check: events are pure JSON data
# from to_jsonable, which has no cycles). Same bytes as canonical(); tests/audit check it.
_C_ENCODE = c_make_encoder(None, _unserializable, encode_basestring, None, ":", ",", True,
                           False, False) if c_make_encoder is not None else None

#: id(value) -> (value, its canonical text); the value is held so the id stays its own.
Memo = dict[int, tuple[Any, str]]


def _encode(value: Any) -> str:
    if _C_ENCODE is None:  # pragma: no cover - CPython always has the C encoder
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    return "".join(_C_ENCODE(value, 0))


_LITERALS: dict[Any, str] = {True: "true", False: "false", None: "null"}


def _encode_shared(value: Any, memo: Memo, depth: int) -> str:
    """Canonical text of ``value``, reusing the text of containers already encoded in this
    batch (a step's events share their policies list, rollout, change...)."""
    t = type(value)
    if t is str:
        return encode_basestring(value)
    if t is bool or value is None:
        return _LITERALS[value]
    if t is int:
        return int.__repr__(value)
    if t is not dict and t is not list:
        return _encode(value)
    hit = memo.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    if t is dict and depth and all(type(k) is str for k in value):
        text = "{" + ",".join(encode_basestring(k) + ":"
                              + _encode_shared(value[k], memo, depth - 1)
                              for k in sorted(value)) + "}"
    else:
        text = _encode(value)
    memo[id(value)] = (value, text)
    return text


def canonical_body(event: Any, seq: int, prev: str, memo: Memo | None = None) -> bytes:
    """``canonical({"v": 1, "seq": seq, "prev": prev, "event": event})``, built from parts
    so containers shared between the events of one batch are serialized once."""
    if memo is None or type(event) is not dict or not all(type(k) is str for k in event):
        return canonical({"v": FORMAT_VERSION, "seq": seq, "prev": prev, "event": event})
    enc = encode_basestring
    text = "".join(["{\"event\":{",
                    ",".join(enc(k) + ":" + _encode_shared(event[k], memo, 1)
                             for k in sorted(event)),
                    "},\"prev\":", enc(prev), ",\"seq\":", _encode(seq),
                    ",\"v\":", str(FORMAT_VERSION), "}"])
    return text.encode("utf-8")


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


class CanonicalEvent(dict[str, Any]):
    """An event whose canonical JSON text is already known (the C encoder produced it while
    checking that the event is plain JSON data); ``make_entry`` embeds it as is."""

    __slots__ = ("canonical_text",)

    canonical_text: str


_CANONICAL_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     allow_nan=False).encode


# A string no event can hold (NUL + a per-process random nonce): it stands in for the shared
# policies list while the rest of the event is encoded, then the list's cached text replaces it.
_HOLE = "\x00pdp-" + secrets.token_hex(16) + "\x00"
_HOLE_TEXT = _CANONICAL_ENCODE(_HOLE)
_SHARED_TEXT: dict[int, tuple[Any, str]] = {}


def _shared_text(value: Any) -> str:
    hit = _SHARED_TEXT.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    text = _CANONICAL_ENCODE(value)
    if len(_SHARED_TEXT) >= 4096:
        _SHARED_TEXT.clear()
    _SHARED_TEXT[id(value)] = (value, text)
    return text


def canonical_event(event: Any) -> CanonicalEvent | None:
    """``event`` with its canonical text, or None when it is not plain JSON data (then the
    slower ``to_jsonable`` path normalizes it): one C-speed pass instead of two Python walks.
    The evaluated-policies list, shared by every decision of the same selection, is encoded
    once and spliced in."""
    if type(event) is not dict:
        return None
    try:
        policies = event.get("policies")
        if type(policies) is list and len(policies) > 2:
            shared = _shared_text(policies)
            text = _CANONICAL_ENCODE({**event, "policies": _HOLE}).replace(_HOLE_TEXT, shared, 1)
        else:
            text = _CANONICAL_ENCODE(event)
    except (TypeError, ValueError):  # non-JSON types, mixed key types, NaN / infinity
        return None
    out = CanonicalEvent(event)
    out.canonical_text = text
    return out


def make_entry(event: Any, head: ChainHead, memo: Memo | None = None) -> Entry:
    """Chain ``event`` (already pure JSON data) after ``head``. ``memo`` (one per batch of
    entries) lets containers the events share be serialized once."""
    seq = head.seq + 1
    body = {"v": FORMAT_VERSION, "seq": seq, "prev": head.hash, "event": event}
    text = getattr(event, "canonical_text", None)
    if text is not None:  # encoded once already (CanonicalEvent): the same bytes, no re-walk
        raw = "".join(["{\"event\":", text, ",\"prev\":", encode_basestring(head.hash),
                       ",\"seq\":", str(seq), ",\"v\":", str(FORMAT_VERSION), "}"]
                      ).encode("utf-8")
    else:
        raw = canonical_body(event, seq, head.hash, memo)
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
