"""Count a large request's entries on the wire, before it is decoded.

Why: a request can be within its type's size ceiling (ceilings.py: a config may take 4 MB)
and still cost far more to decode than to refuse: 100 000 device groups of a few bytes each
(790 KB) took 4 ms of the event loop to decode, only to be refused by a limit of 256. The
wire format says how many entries each field has without building them: this module walks a
request's fields (and into its sub-messages), counting each repeated or map field and
measuring each value, and stops at the first one over its limit. The walk costs at most
:data:`MAX_STEPS` field reads, whatever the request holds: a valid request has few fields
(every repeated field is bounded), and an invalid one is refused as soon as one field goes
over. When the budget runs out, or the bytes are not well-formed protobuf, the walk gives up
and the decoder decides, as before. The limits are the same as after decoding
(:data:`pdp.server.limits.FIELD_LIMITS` and the settings in :class:`Ceilings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from pdp.server.ceilings import Ceilings
from pdp.server.limits import limit_of, read_varint

WALK_MIN = 16 * 1024  # shorter requests decode in well under a millisecond: not walked
DESCEND_MIN = 1024  # a sub-message shorter than this cannot hold a costly field
MAX_STEPS = 4096  # field reads per request, across every level
MAX_ITEMS = 1024  # a type with a longer list (a batch's agents) is not walked: counting a
#                   valid one would spend the budget for nothing (it is counted after decoding)


@dataclass(slots=True)
class _Field:
    path: str  # the field's name, as limits.py names it
    items: int | None  # most entries (repeated and map fields), None: not repeated / unbounded
    ceiling: int | None  # most bytes of one value (length-delimited), None: unbounded
    chars: int | None  # a string's (or map value's) limit in characters, for the text
    key_chars: int | None  # a map key's limit in characters (maps only), for the text
    is_map: bool
    message: _Message | None  # walked into when long enough (not map entries)


@dataclass(slots=True)
class _Message:
    name: str
    fields: dict[int, _Field] = field(default_factory=dict)
    walkable: bool = True


class Overrun(Exception):
    """A field with more entries or bytes than any valid request has."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class _GiveUp(Exception):
    """Not worth walking further (budget spent) or not protobuf: the decoder decides."""


class WireScanner:
    """Per request type, the plan of its walk (built once from the descriptors)."""

    def __init__(self, ceilings: Ceilings) -> None:
        self.ceilings = ceilings
        self._plans: dict[str, _Message] = {}

    def plan(self, desc: Descriptor) -> _Message:
        found = self._plans.get(desc.full_name)
        if found is not None:
            return found
        msg = self._plans[desc.full_name] = _Message(desc.name)  # first: recursion ends
        for f in desc.fields:
            lim = limit_of(f)
            items = self.ceilings.items.get(f.full_name, lim.items) if f.is_repeated else None
            sub = f.message_type
            is_map = sub is not None and sub.GetOptions().map_entry
            ceiling = (self.ceilings.value_ceiling(f) if f.type in _LENGTH_DELIMITED
                       else None)
            if f.is_repeated and (items is None or items > MAX_ITEMS):
                msg.walkable = False
            msg.fields[f.number] = _Field(
                f.name, items, ceiling, lim.chars, lim.key_chars, is_map,
                self.plan(sub) if sub is not None and not is_map else None)
        return msg

    def scan(self, data: bytes, desc: Descriptor) -> Overrun | None:
        """The first field of ``data`` over its limit, or None (within limits, too short
        to be worth walking, or not walked to the end)."""
        plan = self.plan(desc)
        if len(data) < WALK_MIN or not plan.walkable:
            return None
        try:
            _walk(memoryview(data), 0, len(data), plan, "", [MAX_STEPS])
        except Overrun as exc:
            # Without its traceback: the walk's frames hold the request (and the caller's
            # frame, which keeps this result, would close a cycle with them).
            return exc.with_traceback(None)
        except (_GiveUp, IndexError, ValueError):  # not walkable to the end
            return None
        return None


_LENGTH_DELIMITED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES,
                     FieldDescriptor.TYPE_MESSAGE)


def _walk(buf: memoryview, pos: int, end: int, msg: _Message, prefix: str,
          steps: list[int]) -> None:
    counts: dict[int, int] = {}
    while pos < end:
        steps[0] -= 1
        if steps[0] < 0:
            raise _GiveUp
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = read_varint(buf, pos)
            length = 0
        elif wire == 1:
            pos += 8
            length = 0
        elif wire == 5:
            pos += 4
            length = 0
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            pos += length
        else:
            raise _GiveUp  # groups (never in pdp's protos) or garbage
        if pos > end:
            raise _GiveUp  # truncated: the decoder says what is wrong
        f = msg.fields.get(number)
        if f is None:
            continue  # an unknown field: skipped by the decoder too
        path = prefix + f.path
        n = counts[number] = counts.get(number, 0) + 1
        if f.items is not None and n > f.items:
            raise Overrun(path, f"more than {f.items} entries (the limit); not decoded")
        if wire != 2:
            continue
        descend = f.message is not None and f.message.walkable and length >= DESCEND_MIN
        if descend:  # first: a field inside names the problem better than its message
            assert f.message is not None
            at = f"{path}[{n - 1}]." if f.items is not None else path + "."
            _walk(buf, pos - length, pos, f.message, at, steps)
        if f.ceiling is not None and length > f.ceiling:
            entry = _entry_sizes(buf, pos - length, pos) if f.is_map else None
            raise Overrun(path, _too_long(f, length, entry))


_UTF8 = 4  # most bytes per character in UTF-8
_ENTRY_STEPS = 8  # field reads into one map entry (a valid one has two)


def _entry_sizes(buf: memoryview, pos: int, end: int) -> tuple[int, int | None] | None:
    """A map entry's key and (length-delimited) value sizes in bytes, the value None when
    it is not length-delimited; None when the entry is not readable in a few steps."""
    key = 0
    value: int | None = None
    steps = _ENTRY_STEPS
    try:
        while pos < end:
            steps -= 1
            if steps < 0:
                return None
            tag, pos = read_varint(buf, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = read_varint(buf, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                length, pos = read_varint(buf, pos)
                pos += length
                if number == 1:
                    key = length  # the last one counts, as for the decoder
                elif number == 2:
                    value = length
            else:
                return None
            if pos > end:
                return None
    except (IndexError, ValueError):
        return None
    return key, value


def _too_long(f: _Field, length: int, entry: tuple[int, int | None] | None = None) -> str:
    if f.is_map:
        head = f"an entry of {length} bytes is longer than the limits allow"
        key_most = None if f.key_chars is None else f.key_chars * _UTF8
        value_most = None if f.chars is None else f.chars * _UTF8
        if entry is not None:
            key, value = entry
            if key_most is not None and key > key_most:
                return (f"{head}: its key of {key} bytes is longer than the limit of"
                        f" {f.key_chars} characters (at most {key_most} bytes); not decoded")
            if value is not None and value_most is not None and value > value_most:
                return (f"{head}: its value of {value} bytes is longer than the limit of"
                        f" {f.chars} characters (at most {value_most} bytes); not decoded")
        limits = [f"keys {f.key_chars} characters" if f.key_chars is not None else "",
                  f"values {f.chars} characters" if f.chars is not None else ""]
        said = ", ".join(x for x in limits if x)
        return (f"{head} ({said}, 4 bytes each at most); not decoded" if said
                else f"{head}; not decoded")
    if f.message is not None:
        return (f"{length} bytes is larger than any valid {f.message.name} (at most"
                f" {f.ceiling} bytes); not decoded")
    if f.chars is not None:
        return (f"{length} bytes is longer than the limit of {f.chars} characters (at most"
                f" {f.ceiling} bytes); not decoded")
    return f"{length} bytes is larger than the limit of {f.ceiling} bytes; not decoded"
