"""A config's YAML, parsed under limits and a deadline, straight from libyaml's events.

The parse is bounded before and while it runs: the text's size is checked first (by the
cache), then the value is built from the event stream (``ConfigBuild``), counting nodes (after
alias expansion), nesting depth and scalar length as it goes and looking at the clock every
``CHECK_EVERY`` events. libyaml reads the text through ``_Feed`` in chunks, which looks at the
clock and at how much text went by without an event: a scanner stuck in one long token (a
4 MB scalar or comment) is stopped there, not after it. A limit or the decision's deadline
stops the parse itself; nothing is left running on a thread. The values equal
``yaml.load(text, Loader=ConfigLoader)`` (safe YAML 1.1 without implicit timestamps), except
where a limit refuses the text.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import yaml
import yaml.constructor
import yaml.events
import yaml.nodes

from pdp.engine.request import InvalidRequest

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml's event parser; PyYAML built without libyaml gives the same events, slower.
_CParser: Any = getattr(getattr(yaml, "cyaml", None), "CParser", None)


class ConfigLoader(_BaseLoader):  # type: ignore[misc]
    """Safe YAML without implicit timestamps: policies see the text the author wrote."""

    yaml_implicit_resolvers = {
        k: [(tag, regexp) for tag, regexp in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


MAX_DEPTH = 64
# Nodes after alias expansion. A large real collector config has a few thousand; 100 000 is
# far above that and still parses in tens of milliseconds (bench/config_parse.py).
MAX_NODES = 100_000
MAX_SCALAR_CHARS = 64 * 1024
CACHE_BYTES = 64 * 1024 * 1024
# Nodes of all cached configs together. The cache lives as long as the process and is not
# frozen (app.start), so every full collection traverses it: ~6-9 ms per 100 000 nodes of
# maps and lists. This bounds that pause (the byte bound alone let ~500 000 nodes stay).
CACHE_NODES = 250_000
# Misses larger than this are parsed on the event loop in slices of SLICE_S seconds, yielding
# in between, so other calls are answered meanwhile (see ConfigCache.load for why not a thread).
SLICE_PARSE_BYTES = 16 * 1024
SLICE_S = 0.001
CHECK_EVERY = 256  # events between looks at the clock (a power of two)
FEED_CHUNK = 16 * 1024  # bytes handed to libyaml at a time (its own raw buffer's size)

# Retained-size estimate of a parsed value (bytes), summed while building: every node costs
# NODE_BYTES (the object's header plus its slot in a list), a scalar also its text's length,
# every mapping entry ENTRY_BYTES (the dict's hash table; merged entries too, merging copies
# them), an alias only its pointer. Against tracemalloc: 0.85-1.4x of the real size for
# collector-like configs, ~1.9x for lists of small ints (bools, None and small ints are
# shared objects), so mostly an over-estimate, the safe side for a memory bound.
NODE_BYTES = 64
ENTRY_BYTES = 48
ALIAS_BYTES = 8

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # int64 and uint64 together
_INT_MAX_CHARS = 66  # "0b" and 64 binary digits: the longest in-range spelling


class ConfigRejected(ValueError):
    """Well-formed YAML over a safety limit (a YAML bomb): the engine denies INVALID_CONFIG."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ParseDeadlineExceeded(ConfigRejected):
    """The decision's deadline ran out while the config was being parsed.

    A subclass of ConfigRejected so that a caller which only knows ConfigRejected still
    denies (fail-closed); the engine catches this one first and denies DEADLINE_EXCEEDED.
    """


_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = _T + "str", _T + "int", _T + "float", _T + "bool", _T + "null"
_MERGE_TAG, _VALUE_TAG, _SET = _T + "merge", _T + "value", _T + "set"
_SEQ_TAGS = (None, "!", _T + "seq")
_MAP_TAGS = (None, "!", _T + "map", _SET)
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}
# Implicit resolvers of plain scalars by first character ("" = the empty scalar), as
# ConfigLoader has them; a first character without an entry is always a string.
_PLAIN: dict[str, list[tuple[str, Any]]] = {
    k: v for k, v in ConfigLoader.yaml_implicit_resolvers.items() if k is not None and v}
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name


_MERGE = _Sentinel("<<")  # the key of a merge ("<<: *defaults")

_Scalar = yaml.events.ScalarEvent
_Alias = yaml.events.AliasEvent
_MapStart, _MapEnd = yaml.events.MappingStartEvent, yaml.events.MappingEndEvent
_SeqStart, _SeqEnd = yaml.events.SequenceStartEvent, yaml.events.SequenceEndEvent
_DocStart, _StreamEnd = yaml.events.DocumentStartEvent, yaml.events.StreamEndEvent


class _Feed:
    """The text, handed to libyaml chunk by chunk, so that a long token cannot outrun the bound.

    Why: libyaml scans a whole scalar (or comment) before it emits its event, so the per-event
    checks of ``ConfigBuild.run`` see a 4 MB scalar only after scanning all of it. Every
    chunk libyaml asks for passes here: past the deadline, or past ``max_gap`` bytes since
    the build loop last saw an event, the parse stops at once.
    """

    __slots__ = ("data", "deadline", "field", "gap", "max_gap", "max_scalar", "pos")

    def __init__(self, data: bytes, field: str, deadline: float | None, max_scalar: int) -> None:
        self.data = data
        self.pos = 0
        self.field = field
        self.deadline = deadline
        self.max_scalar = max_scalar
        # A scalar of max_scalar characters is at most 4 bytes each in UTF-8, plus the chunk
        # libyaml was reading when it started and the one it looks ahead into.
        self.max_gap = 4 * max_scalar + 2 * FEED_CHUNK
        self.gap = 0  # bytes fed since the build loop last took an event (it resets this)

    def read(self, size: int) -> bytes:
        pos = self.pos
        chunk = self.data[pos:pos + min(size, FEED_CHUNK)]
        self.pos = pos + len(chunk)
        self.gap += len(chunk)
        if self.gap > self.max_gap:
            raise ConfigRejected(self.field, f"more than {self.max_gap} bytes without a value"
                                 f" near byte {pos} (a scalar or comment longer than"
                                 f" {self.max_scalar} characters)")
        if pos and self.deadline is not None and time.monotonic() >= self.deadline:
            raise ParseDeadlineExceeded(self.field,
                                        "the decision deadline ran out while parsing")
        return chunk


class _Frame:
    """An open mapping or sequence: what is built so far and where it started."""

    __slots__ = ("anchor", "container", "has_key", "is_map", "key", "mark", "merges", "nodes0",
                 "size0", "tag")

    def __init__(self, container: Any, is_map: bool, anchor: str | None, tag: str | None,
                 nodes0: int, size0: int, mark: Any) -> None:
        self.container = container
        self.is_map = is_map
        self.key: Any = None
        self.has_key = False
        self.anchor = anchor
        self.tag = tag
        self.nodes0 = nodes0
        self.size0 = size0
        self.mark = mark
        self.merges: list[dict[Any, Any]] | None = None


class ConfigBuild:
    """One bounded parse of one text, resumable: ``run`` returns False when a slice ends."""

    def __init__(self, text: str, field: str, *, deadline: float | None = None,
                 max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
                 max_scalar: int = MAX_SCALAR_CHARS) -> None:
        self.field = field
        self.deadline = deadline
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_scalar = max_scalar
        self.feed: _Feed | None = None
        if _CParser is None:
            parser: Any = yaml.SafeLoader(text)
        elif len(text) * 4 <= 4 * max_scalar + 2 * FEED_CHUNK:
            parser = _CParser(text)  # too short for a token to outrun the bound: no feed
        else:
            self.feed = _Feed(text.encode(), field, deadline, max_scalar)
            parser = _CParser(self.feed)
        self.next_event = parser.get_event
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # value, nodes, estimated bytes
        self.nodes = 0
        self.size = 0
        self.documents = 0
        self.root: Any = None
        self.done = False

    def run(self, until: float | None = None) -> bool:
        """Build until the end (True) or until the monotonic time ``until`` (False).

        Raises ConfigRejected over a limit, ParseDeadlineExceeded at the deadline and
        InvalidRequest for YAML that is not valid or has no safe Python value. The loop keeps
        its counters in locals (written back around the rare paths): it runs once per event.
        """
        if self.done:
            return True
        deadline, field = self.deadline, self.field
        if deadline is not None and time.monotonic() >= deadline:
            raise ParseDeadlineExceeded(field, "the decision deadline ran out while parsing")
        get, stack, anchors, plain = self.next_event, self.stack, self.anchors, _PLAIN
        feed = self.feed if self.feed is not None else _Feed(b"", field, None, 0)  # a sink
        max_nodes, max_scalar = self.max_nodes, self.max_scalar
        nodes, size = self.nodes, self.size
        top = stack[-1] if stack else None
        count = 0
        try:
            while True:
                count += 1
                if not count & (CHECK_EVERY - 1):
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        raise ParseDeadlineExceeded(
                            field, "the decision deadline ran out while parsing")
                    if until is not None and now >= until:
                        self.nodes, self.size = nodes, size
                        return False
                event = get()
                feed.gap = 0
                kind = type(event)
                if kind is _Scalar:
                    text = event.value
                    if len(text) > max_scalar:
                        self._reject(f"a scalar of {len(text)} characters (the limit is"
                                     f" {max_scalar})")
                    tag = event.tag
                    if tag is not None and tag != "!":
                        value = self._tagged(tag, text, event)
                    elif not event.implicit[0]:  # quoted (libyaml: "! 'x'" is resolved)
                        value = text
                    else:
                        resolvers = plain.get(text[:1])
                        if resolvers is None:
                            value = text
                        elif (len(text) < 19 and text.isdigit() and text.isascii()
                              and (text[0] != "0" or len(text) == 1)):
                            value = int(text)  # a plain decimal: the common number
                        else:
                            value = self._resolve(text, resolvers, event)
                    nodes += 1
                    size += NODE_BYTES + len(text)
                    if nodes > max_nodes:
                        self._too_many()
                    if event.anchor is not None:
                        self._new_anchor(event)
                        anchors[event.anchor] = (value, 1, NODE_BYTES + len(text))
                    if top is None:
                        self.root = value
                    elif not top.is_map:
                        top.container.append(value)
                    elif not top.has_key:
                        if value in top.container:
                            self._duplicate(value, event)
                        top.key, top.has_key = value, True
                    elif top.key is _MERGE:
                        self._merge(top, value, event)
                    else:
                        top.container[top.key] = value
                        top.has_key = False
                elif kind is _MapStart or kind is _SeqStart:
                    is_map = kind is _MapStart
                    tag = event.tag
                    if tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                        self._invalid(f"tag {tag} is not supported on a"
                                      f" {'mapping' if is_map else 'sequence'}", event)
                    if len(stack) >= self.max_depth:
                        self._reject(f"nesting deeper than {self.max_depth} levels")
                    if event.anchor is not None:
                        self._new_anchor(event)
                    top = _Frame({} if is_map else [], is_map, event.anchor, tag, nodes, size,
                                 event.start_mark)
                    stack.append(top)
                    nodes += 1
                    size += NODE_BYTES
                    if nodes > max_nodes:
                        self._too_many()
                elif kind is _MapEnd or kind is _SeqEnd:
                    self.nodes, self.size = nodes, size
                    self._close(stack.pop())
                    nodes, size = self.nodes, self.size
                    top = stack[-1] if stack else None
                elif kind is _Alias:
                    self.nodes, self.size = nodes, size
                    self._alias(event)
                    nodes, size = self.nodes, self.size
                elif kind is _DocStart:
                    self.documents += 1
                    if self.documents > 1:
                        self._invalid("expected a single document in the stream", event)
                elif kind is _StreamEnd or event is None:
                    self.nodes, self.size = nodes, size
                    self.done = True
                    return True
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            if "maximum nesting depth" in problem:  # libyaml's own limit (PyYAML >= 6.0.4)
                raise ConfigRejected(field, f"nesting deeper than {self.max_depth} levels at"
                                            f" {self.path()} ({where.strip()})") from None
            raise InvalidRequest(field, f"not valid YAML{where}: {problem}") from None

    # -- the rare paths, out of the loop -------------------------------------------------------

    def _put(self, value: Any, event: Any) -> None:
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        if not frame.is_map:
            frame.container.append(value)
        elif not frame.has_key:
            if isinstance(value, list | dict | set):
                self._invalid("a mapping key is a sequence or mapping (unhashable)", event)
            if value in frame.container:
                self._duplicate(value, event)
            frame.key, frame.has_key = value, True
        elif frame.key is _MERGE:
            self._merge(frame, value, event)
        else:
            frame.container[frame.key] = value
            frame.has_key = False

    def _close(self, frame: _Frame) -> None:
        value = frame.container
        if frame.merges is not None:
            merged: dict[Any, Any] = {}
            for source in frame.merges:
                merged.update(source)
            merged.update(value)
            value = merged
        if frame.is_map:
            self.size += ENTRY_BYTES * len(value)  # a dict's hash table
        if frame.tag == _SET:
            value = set(value)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (value, self.nodes - frame.nodes0,
                                          self.size - frame.size0)
        self._put(value, frame)

    def _new_anchor(self, event: Any) -> None:
        name = event.anchor
        if name in self.anchors or any(frame.anchor == name for frame in self.stack):
            self._invalid(f"found duplicate anchor {name}", event)

    def _alias(self, event: Any) -> None:
        name = event.anchor
        entry = self.anchors.get(name)
        if entry is None:
            if any(frame.anchor == name for frame in self.stack):
                self._reject(f"alias *{name} is inside the node it refers to (a cycle)")
            self._invalid(f"found undefined alias {name}", event)
        value, nodes, _ = entry
        self.nodes += nodes
        self.size += ALIAS_BYTES
        if self.nodes > self.max_nodes:
            self._too_many()
        self._put(value, event)

    def _merge(self, frame: _Frame, value: Any, event: Any) -> None:
        """``<<: *a`` or ``<<: [*a, *b]``: explicit keys win, then earlier sources."""
        if isinstance(value, dict):
            sources = [value]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            sources = value[::-1]
        else:
            self._invalid("expected a mapping or list of mappings for merging", event)
        if frame.merges is not None:  # a second ``<<`` key: parsers differ on which wins
            self._duplicate("<<", event)
        frame.merges = []
        frame.merges.extend(sources)
        frame.has_key = False

    def _resolve(self, text: str, resolvers: list[tuple[str, Any]], event: Any) -> Any:
        tag = next((tag for tag, regexp in resolvers if regexp.match(text)), None)
        if tag is None:
            return text
        if tag == _INT:
            return self._int(text)
        if tag == _FLOAT:
            return _float(text)
        if tag == _BOOL:
            return _BOOLS[text.lower()]
        if tag == _NULL:
            return None
        in_key = bool(self.stack) and self.stack[-1].is_map and not self.stack[-1].has_key
        if in_key and tag == _MERGE_TAG:
            return _MERGE
        if in_key and tag == _VALUE_TAG:
            return text  # "=" as a key is the string "="
        self._invalid(f"could not determine a constructor for the tag {tag}", event)

    def _tagged(self, tag: str, text: str, event: Any) -> Any:
        """A scalar with an explicit tag (``!!str 123``); other tags are not valid configs."""
        if tag == _STR:
            return text
        if tag == _NULL:
            return None
        if tag == _MERGE_TAG and self.stack and self.stack[-1].is_map \
                and not self.stack[-1].has_key:
            return _MERGE
        try:
            if tag == _INT:
                return self._int(text)
            if tag == _FLOAT:
                return _float(text)
            if tag == _BOOL:
                return _BOOLS[text.lower()]
            if tag in (_T + "binary", _T + "timestamp"):
                node = yaml.nodes.ScalarNode(tag, text, event.start_mark, event.end_mark)
                method = "construct_yaml_" + tag[len(_T):]
                return getattr(_CONSTRUCTOR, method)(node)
        except (ConfigRejected, InvalidRequest):
            raise
        except Exception:  # ValueError, KeyError, ...: the text does not fit its tag
            self._invalid(f"{text[:40]!r} is not a valid {tag}", event)
        self._invalid(f"tag {tag} is not supported on a scalar", event)

    def _int(self, text: str) -> int:
        """An int in int64/uint64 range; longer or larger spellings are refused by path."""
        digits = text.replace("_", "")
        sign = -1 if digits[:1] == "-" else 1
        digits = digits.lstrip("+-")
        if len(digits) > _INT_MAX_CHARS:
            self._reject("integer out of range", at=True)
        if not digits:
            raise ValueError("no digits")
        if digits == "0":
            value = 0
        elif digits.startswith("0b"):
            value = int(digits[2:], 2)
        elif digits.startswith("0x"):
            value = int(digits[2:], 16)
        elif digits[0] == "0":
            value = int(digits, 8)
        elif ":" in digits:  # sexagesimal, e.g. 1:30 = 90
            value = 0
            for part in digits.split(":"):
                value = value * 60 + int(part)
        else:
            value = int(digits)
        value *= sign
        if not _INT_MIN <= value <= _INT_MAX:
            self._reject("integer out of range", at=True)
        return value

    def path(self) -> str:
        """Where the parse is in the config, e.g. ``exporters.otlp.endpoints[2]``."""
        out = ""
        for frame in self.stack:
            if not frame.is_map:
                out += f"[{len(frame.container)}]"
            elif frame.has_key:
                key = "<<" if frame.key is _MERGE else str(frame.key)
                out += f".{key}" if out else key
            else:
                return f"a key in {out or 'the top-level mapping'}"
        return out or "the top level"

    def _too_many(self) -> NoReturn:
        self._reject(f"more than {self.max_nodes} values after alias expansion"
                     " (a YAML bomb?)")

    def _reject(self, problem: str, at: bool = False) -> NoReturn:
        raise ConfigRejected(self.field, f"value at {self.path()}: {problem}" if at else
                             f"{problem} at {self.path()}")

    def _duplicate(self, key: Any, event: Any) -> NoReturn:
        """A key given twice in one mapping. YAML forbids it, parsers differ on which value
        wins (PyYAML the last, others the first or an error), so what pdp decides on might
        not be what the agent applies: refused, never guessed. Keys equal as values count as
        the same (1, 1.0 and true are one key of a map here, as they would be in CEL)."""
        shown = repr(key) if not isinstance(key, str) else f"'{key[:64]}'"
        self._invalid(f"found duplicate key {shown} in a mapping", event)

    def _invalid(self, problem: str, event: Any) -> NoReturn:
        mark = getattr(event, "start_mark", None) or getattr(event, "mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidRequest(self.field, f"not valid YAML{where}: {problem}")


def _float(text: str) -> float:
    """YAML 1.1 floats: underscores, .inf/.nan in any case, sexagesimal (1:30.5)."""
    digits = text.replace("_", "").lower()
    sign = -1.0 if digits[:1] == "-" else 1.0
    digits = digits.lstrip("+-")
    if digits == ".inf":
        return sign * float("inf")
    if digits == ".nan":
        return float("nan")
    if ":" in digits:
        value = 0.0
        for part in digits.split(":"):
            value = value * 60 + float(part)
        return sign * value
    return sign * float(digits)


def parse_config(text: str, field: str, *, deadline: float | None = None,
                 max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
                 max_scalar: int = MAX_SCALAR_CHARS) -> tuple[Any, int]:
    """The parsed value of ``text`` and its estimated retained size in bytes, in one go."""
    build = ConfigBuild(text, field, deadline=deadline, max_nodes=max_nodes, max_depth=max_depth,
                   max_scalar=max_scalar)
    build.run()
    return build.root, build.size
