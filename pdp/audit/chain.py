"""The hash chain: sequence numbers, canonical serialization and SHA-256 links.

A record is ``{"v": 2, "seq": n, "prev": <hash of record n-1>, "event": {...}, "hash": h}``
where ``h = sha256(canonical_v(record without "hash"))``. Canonical = JSON with sorted keys, no
whitespace, UTF-8 (not ASCII-escaped). Any edit of a record changes its hash; removing,
inserting or reordering records breaks the ``seq`` / ``prev`` links. Readers re-canonicalize
what they parse, so the on-disk line need not itself be canonical (it puts ``hash`` first).

Two format versions, each record names its own:

* ``v: 2`` (written now): the canonical text is orjson's (``OPT_SORT_KEYS``). orjson is used
  because encoding is most of the writer's cost per event, and it is several times faster
  than the json module.
* ``v: 1``: the canonical text is the json module's (``sort_keys``, ``allow_nan=False``). Files
  written before v2 verify as they are, and the writer still uses v1 for an event orjson
  cannot encode (an integer beyond 64 bits).

The two spell some floats differently (``1e-05`` / ``0.00001``), which is why the version is
part of the record. Non-finite floats have no JSON form: the API refuses them in requests;
one that reaches the writer anyway is written as ``null`` in v2.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from pdp.audit.events import to_jsonable

Record = dict[str, Any]

FORMAT_VERSION = 2
GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    """Format v1's canonical text (also the masking hash's input: stable across versions)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def canonical_v2(value: Any) -> bytes:
    """Format v2's canonical text."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


_CANONICAL: dict[int, Callable[[Any], bytes]] = {1: canonical, 2: canonical_v2}

# What the writer encodes an event with: v2's canonical form, refusing (TypeError) the values
# to_jsonable would turn into something else first (datetimes, dataclasses, subclasses of
# str / int / dict / list), so the fast and the general path write the same bytes.
_WRITE_OPTS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
               | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS)


def record_hash(record: Record) -> str:
    """Hash of everything in the record except its own ``hash`` field, canonicalized the
    way its ``v`` says; "" (matches nothing) for an unknown version or unencodable content."""
    version = record.get("v")
    encode = _CANONICAL.get(version) if type(version) is int else None
    if encode is None:
        return ""
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        return hashlib.sha256(encode(body)).hexdigest()
    except (TypeError, ValueError):
        return ""


@dataclass(frozen=True)
class ChainHead:
    """Where the chain stands: the last written record's seq and hash (0 / GENESIS if none)."""

    seq: int = 0
    hash: str = GENESIS


#: (type, tenant) of an event object, as found in it.
Tags = tuple[Any, Any]


def tags_of(event: Any) -> Tags | None:
    return (event.get("type"), event.get("tenant")) if isinstance(event, dict) else None


class Entry:
    """One chained record: its serialized line (with trailing newline) and hash. The parsed
    record is made when first asked for (watchers, the Redis sink); most records are only
    written, and holding every event as Python objects until then costs the collector."""

    __slots__ = ("_record", "hash", "line", "seq", "tags")

    def __init__(self, seq: int, line: bytes, hash: str, record: Record | None = None,
                 tags: Tags | None = None) -> None:
        self.seq, self.line, self.hash, self._record = seq, line, hash, record
        if tags is None and record is not None:
            tags = tags_of(record.get("event"))
        #: The event's ``type`` and ``tenant`` (None: the event is not a JSON object), what
        #: sinks and watchers filter on, without parsing the line.
        self.tags = tags

    @property
    def record(self) -> Record:
        if self._record is None:
            self._record = parse_line(self.line)
        return self._record


@dataclass(slots=True)
class EncodedEvent:
    """An event's canonical text (pure JSON data, masked) and the format version that text
    is in; ``make_entry`` embeds the text as is. Bytes, not objects: it waits in the queue."""

    text: bytes
    version: int
    tags: Tags | None = None


# A string no event can hold (NUL + a per-process random nonce): it stands in for the shared
# policies list while the rest of the event is encoded, then the list's cached text replaces it.
_HOLE = "\x00pdp-" + secrets.token_hex(16) + "\x00"
_HOLE_TEXT = orjson.dumps(_HOLE)
_SHARED_TEXT: dict[int, tuple[Any, bytes]] = {}


def _shared_text(value: Any) -> bytes:
    hit = _SHARED_TEXT.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    text = orjson.dumps(value, option=_WRITE_OPTS)
    if len(_SHARED_TEXT) >= 4096:
        _SHARED_TEXT.clear()
    _SHARED_TEXT[id(value)] = (value, text)
    return text


def _fast_text(event: dict[str, Any]) -> bytes:
    """v2 text of a plain-JSON event; the evaluated-policies list, shared by every decision
    of the same selection, is encoded once and spliced in. TypeError if not plain JSON."""
    policies = event.get("policies")
    if type(policies) is list and len(policies) > 2:
        shared = _shared_text(policies)
        return orjson.dumps({**event, "policies": _HOLE},
                            option=_WRITE_OPTS).replace(_HOLE_TEXT, shared, 1)
    return orjson.dumps(event, option=_WRITE_OPTS)


def encode_event(event: Any) -> EncodedEvent:
    """The canonical text of ``event`` reduced to pure JSON data.

    One C-speed pass when the event is plain JSON data already (the decision path's events
    are); otherwise ``to_jsonable`` first; v1 only for what orjson cannot encode at all.
    Raises (TypeError / ValueError) only for text that is not valid Unicode.
    """
    if type(event) is dict:
        try:
            return EncodedEvent(_fast_text(event), 2, tags_of(event))
        except TypeError:
            pass
    data = to_jsonable(event)
    try:
        return EncodedEvent(orjson.dumps(data, option=orjson.OPT_SORT_KEYS), 2, tags_of(data))
    except TypeError:  # e.g. an int beyond 64 bits: the json module's canonical form
        return EncodedEvent(canonical(data), 1, tags_of(data))


def make_entry(event: Any, head: ChainHead) -> Entry:
    """Chain ``event`` after ``head`` (encoding it unless ``encode_event`` already did)."""
    enc = event if type(event) is EncodedEvent else encode_event(event)
    seq = head.seq + 1
    text, prev = enc.text, head.hash.encode("ascii")
    tail = b'","seq":%d,"v":%d}' % (seq, enc.version)
    digest = hashlib.sha256(b"".join((b'{"event":', text, b',"prev":"', prev, tail))
                            ).hexdigest()
    line = b"".join((b'{"hash":"', digest.encode("ascii"), b'","event":', text, b',"prev":"',
                     prev, tail, b"\n"))
    return Entry(seq, line, digest, tags=enc.tags)


def _no_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; accepting them would let an edit hide behind v2's null.
    raise ValueError(f"{name} is not JSON")


def parse_line(line: bytes) -> Record:
    """Parse one line into a record; ValueError if it is not a record-shaped JSON object."""
    rec = json.loads(line, parse_constant=_no_constant)
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
    return Entry(rec["seq"], line, rec["hash"], rec)


def hash_ok(record: Record) -> bool:
    return record_hash(record) == record.get("hash")
