"""The hash chain: sequence numbers, the hashed text and SHA-256 links.

A record is ``{"hash": h, "event": {...}, "prev": <hash of record n-1>, "seq": n, "v": 3}``
where ``h = sha256(text of the record without "hash")``. Any edit of a record changes its
hash; removing, inserting or reordering records breaks the ``seq`` / ``prev`` links.

Three format versions, each record names its own:

* ``v: 3`` (written now): the text is orjson's, with the keys in the order the record has
  them, i.e. exactly the bytes of the line after its ``hash`` field. Nothing is sorted:
  sorting cost about half of encoding a decision, and a verifier needs no canonical-JSON
  rules, only the line. The verifier (``check_line``) hashes the line's own bytes: a line
  whose bytes differ from what was hashed (extra whitespace, ``\\u`` escapes, a key given
  twice so that a parser sees another value than the one hashed) does not verify, whatever
  it parses to.
* ``v: 2``: orjson's text with sorted keys (``OPT_SORT_KEYS``).
* ``v: 1``: the json module's text (``sort_keys``, ``allow_nan=False``). The writer still uses
  v1 for an event orjson cannot encode (an integer beyond 64 bits).

v1 and v2 records are checked as before: parsed, then re-encoded the way their ``v`` says
(files of older writers may differ in whitespace). In every version a key given twice in one
object is refused (``parse_line_strict``): no writer ever wrote one, and ``json.loads`` would
silently keep the last.

v1 and v2/v3 spell some floats differently (``1e-05`` / ``0.00001``), which is why the
version is part of the record. Non-finite floats have no JSON form: the API refuses them in
requests; one that reaches the writer anyway is written as ``null`` in v2 and v3.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pdp.audit.events import to_jsonable

Record = dict[str, Any]

FORMAT_VERSION = 3
GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    """Format v1's canonical text (also the masking hash's input: stable across versions)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def canonical_v2(value: Any) -> bytes:
    """Format v2's canonical text."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def text_v3(value: Any) -> bytes:
    """Format v3's text: orjson's, keys in the value's own order."""
    return orjson.dumps(value)


_CANONICAL: dict[int, Callable[[Any], bytes]] = {1: canonical, 2: canonical_v2, 3: text_v3}

# What the writer encodes an event with: v3's text, refusing (TypeError) the values
# to_jsonable would turn into something else first (datetimes, dataclasses, subclasses of
# str / int / dict / list), so the fast and the general path write the same bytes.
_WRITE_OPTS = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
               | orjson.OPT_PASSTHROUGH_SUBCLASS)


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


def encode_event(event: Any) -> EncodedEvent:
    """The text of ``event`` reduced to pure JSON data.

    One C-speed pass when the event is plain JSON data already (the decision path's events
    are); otherwise ``to_jsonable`` first; v1 only for what orjson cannot encode at all.
    Raises (TypeError / ValueError) only for text that is not valid Unicode.
    """
    if type(event) is dict:
        try:
            return EncodedEvent(orjson.dumps(event, option=_WRITE_OPTS), FORMAT_VERSION,
                                tags_of(event))
        except TypeError:
            pass
    data = to_jsonable(event)
    try:
        return EncodedEvent(text_v3(data), FORMAT_VERSION, tags_of(data))
    except TypeError:  # e.g. an int beyond 64 bits: the json module's canonical form
        return EncodedEvent(canonical(data), 1, tags_of(data))


def make_entry(event: Any, head: ChainHead) -> Entry:
    """Chain ``event`` after ``head`` (encoding it unless ``encode_event`` already did)."""
    return make_entries([event], head)[0]


def make_entries(events: Sequence[Any], head: ChainHead) -> list[Entry]:
    """Chain ``events`` in order after ``head``: what the writer does per batch, in one loop
    (the seq and previous hash are carried in locals, not a ChainHead per record)."""
    out: list[Entry] = []
    append = out.append
    seq, prev = head.seq, head.hash.encode()
    sha256, join = hashlib.sha256, b"".join
    for event in events:
        enc = event if type(event) is EncodedEvent else encode_event(event)
        seq += 1
        tail = b'","seq":' + str(seq).encode() + b',"v":' + str(enc.version).encode() + b"}"
        body = join((b'{"event":', enc.text, b',"prev":"', prev, tail))
        digest = sha256(body).hexdigest()
        prev = digest.encode()
        # The line is the hashed body with the hash put first: {"hash":"…",<body without {>
        # (positional arguments: this loop runs once per audit record).
        append(Entry(seq, join((b'{"hash":"', prev, b'",', memoryview(body)[1:], b"\n")),
                     digest, None, enc.tags))
    return out


def _no_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; accepting them would let an edit hide behind v2's null.
    raise ValueError(f"{name} is not JSON")


def parse_line(line: bytes) -> Record:
    """Parse one line into a record; ValueError if it is not a record-shaped JSON object."""
    return _record_shaped(loads(line, parse_constant=_no_constant))


def loads(line: bytes | str, **kw: Any) -> Any:
    """``json.loads`` whose every failure is a ValueError: a line nested too deeply for
    the parser (100 000 ``[``, written by someone who edits the files) raises
    RecursionError there, which every reader of audit files would otherwise have to know
    about to name the line instead of dying with a traceback."""
    try:
        return json.loads(line, **kw)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def _record_shaped(rec: Any) -> Record:
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    seq, h, prev = rec.get("seq"), rec.get("hash"), rec.get("prev")
    if type(seq) is not int or not isinstance(h, str) or not isinstance(prev, str):
        raise ValueError("missing seq / prev / hash")
    if "event" not in rec:
        raise ValueError("missing event")
    return rec


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r} in one object (the line was edited)")
            seen.add(k)
    return out


def parse_line_strict(line: bytes) -> Record:
    """``parse_line`` that also refuses a key given twice in any object (``json.loads``
    keeps the last one silently): what verifiers parse with."""
    return _record_shaped(loads(line, parse_constant=_no_constant,
                                object_pairs_hook=_unique_keys))


_HASH_PREFIX = b'{"hash":"'
_HEX = frozenset(b"0123456789abcdef")


def line_problem(line: bytes, record: Record) -> str | None:
    """Why ``line`` (one line of a ledger, newline optional) does not verify as ``record``
    (what it parsed to), or None.

    v3: the line's own bytes are checked: it must be ``{"hash":"<64 hex>",`` followed by the
    rest of the hashed text, and that text (``{`` + the rest) must hash to the hash. Nothing
    is re-encoded, so bytes that parse to the same values but differ from what was hashed
    are caught. Older versions: re-encoded from the parsed record, as their ``v`` says.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if record.get("v") != FORMAT_VERSION or type(record.get("v")) is not int:
        return None if hash_ok(record) else "content does not match its hash"
    n = len(_HASH_PREFIX)
    given = line[n:n + 64]
    if not line.startswith(_HASH_PREFIX) or line[n + 64:n + 66] != b'",' \
            or len(given) != 64 or not _HEX.issuperset(given):
        return ("not in canonical form: a v3 line starts with its hash field "
                '({"hash":"<64 hex>",) as the writer wrote it; these bytes are not the '
                "hashed text (content does not match its hash)")
    if given.decode() != record["hash"]:
        return ("not in canonical form: the hash field's bytes differ from the hash they "
                "parse to (content does not match its hash)")
    body = b"{" + line[n + 66:]
    if hashlib.sha256(body).hexdigest() != record["hash"]:
        return "content does not match its hash (the line's bytes are not the ones hashed)"
    return None


def check_line(line: bytes) -> tuple[Record, str | None]:
    """Parse ``line`` strictly (ValueError if it is no record, or has a duplicate key) and
    say why it does not verify (None: it does): what verifiers and the writer's start-up
    check use."""
    rec = parse_line_strict(line)
    return rec, line_problem(line, rec)


def entry_from_line(line: bytes) -> Entry:
    rec = parse_line(line)
    if not line.endswith(b"\n"):
        line += b"\n"
    return Entry(rec["seq"], line, rec["hash"], rec)


def hash_ok(record: Record) -> bool:
    return record_hash(record) == record.get("hash")
