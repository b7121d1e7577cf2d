"""The largest serialized size a request can have while every field is within its limit.

Why: decoding costs time on the event loop before any field limit is looked at, and some
shapes cost far more than their bytes suggest (a map of 100 000 entries took 35-110 ms to
decode, longer than the decision deadline). A request larger than the largest *valid*
request of its type cannot pass the field limits anyway, so it is refused from its length
alone, before it is decoded. The bound is derived from :data:`pdp.server.limits.FIELD_LIMITS`
and the settings that bound the rest (``max_config_bytes``, ``max_batch_agents``), so a new
field or a changed limit moves it with no further edit. A type with any unbounded field
(recursion, a field bounded only elsewhere) has no ceiling and is decoded as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from pdp.server.limits import limit_of

_KEY = 5  # a field's key (tag and wire type) as a varint: field numbers below 2**29
_LENGTH = 5  # a length prefix as a varint: lengths below 2**35
_UTF8 = 4  # most bytes per character in UTF-8
_FIXED = {FieldDescriptor.TYPE_DOUBLE: 8, FieldDescriptor.TYPE_FIXED64: 8,
          FieldDescriptor.TYPE_SFIXED64: 8, FieldDescriptor.TYPE_FLOAT: 4,
          FieldDescriptor.TYPE_FIXED32: 4, FieldDescriptor.TYPE_SFIXED32: 4}
_VARINT = 10  # int64, uint64, enums, bools at their longest


class Ceilings:
    """Per request type, its largest valid serialized size (None: not bounded).

    ``items`` and ``byte_limits`` carry the limits that come from settings, by the field's
    full name (``pdp.v1.CheckPushBatchRequest.agents`` → ``max_batch_agents``,
    ``pdp.v1.Config.yaml`` → ``max_config_bytes``); they override :data:`FIELD_LIMITS`.
    """

    def __init__(self, items: Mapping[str, int] | None = None,
                 byte_limits: Mapping[str, int] | None = None) -> None:
        self.items = dict(items or {})
        self.byte_limits = dict(byte_limits or {})
        self._known: dict[str, int | None] = {}

    def of(self, desc: Descriptor) -> int | None:
        if desc.full_name not in self._known:
            self._known[desc.full_name] = self._message(desc, ())
        return self._known[desc.full_name]

    def value_ceiling(self, f: FieldDescriptor) -> int | None:
        """The largest valid single value of ``f`` on the wire, without its key and length
        prefix (one element of a repeated field, one entry of a map); None: unbounded."""
        lim = limit_of(f)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = f.message_type.fields_by_name["key"]
            value = f.message_type.fields_by_name["value"]
            k = self._scalar(key, lim.key_chars, ())
            v = self._scalar(value, lim.chars, ())
            return None if k is None or v is None else 2 * _KEY + k + v
        one = self._scalar(f, lim.chars, ())
        return None if one is None else one - _LENGTH

    def _message(self, desc: Descriptor, open_: tuple[str, ...]) -> int | None:
        if desc.full_name in open_:
            return None  # recursive: as deep as the sender likes
        total = 0
        for f in desc.fields:
            size = self._field(f, (*open_, desc.full_name))
            if size is None:
                return None
            total += size
        return total

    def _field(self, f: FieldDescriptor, open_: tuple[str, ...]) -> int | None:
        lim = limit_of(f)
        items = self.items.get(f.full_name, lim.items)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = f.message_type.fields_by_name["key"]
            value = f.message_type.fields_by_name["value"]
            k = self._scalar(key, lim.key_chars, open_)
            v = self._scalar(value, lim.chars, open_)
            if items is None or k is None or v is None:
                return None
            return items * (_KEY + _LENGTH + 2 * _KEY + k + v)
        one = self._scalar(f, lim.chars, open_)
        if one is None:
            return None
        if f.is_repeated:
            if items is None:
                return None
            return _KEY + _LENGTH + items * (_KEY + one)  # packed or not, this covers both
        return _KEY + one

    def _scalar(self, f: FieldDescriptor, chars: int | None,
                open_: tuple[str, ...]) -> int | None:
        """One value of ``f`` (without its key), at its longest."""
        if f.message_type is not None:
            sub = self._message(f.message_type, open_)
            return None if sub is None else _LENGTH + sub
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if f.full_name in self.byte_limits:
                return _LENGTH + self.byte_limits[f.full_name]
            if chars is None:
                return None
            per = _UTF8 if f.type == FieldDescriptor.TYPE_STRING else 1
            return _LENGTH + chars * per
        return _FIXED.get(f.type, _VARINT)


def too_large(n: int, ceiling: int, desc: Descriptor | None) -> str:
    """The INVALID_ARGUMENT text for a request refused by its length."""
    name = desc.name if desc is not None else "request"
    return (f"request of {n} bytes is larger than any valid {name} (at most {ceiling}"
            " bytes with every field at its limit); not decoded")
