"""YAML loading that remembers where each value came from.

Policy validation errors must name file, line and field path; the parser's events have the
marks, so we build plain Python values from them and keep a path -> line:column index.

A policy text comes from an admin call or a file and is parsed on the event loop, so the build
is bounded while it runs (as configs are, ``pdp/engine/configparse.py``): values after alias
expansion, nesting depth and integer length are counted event by event, and so are the
documents of the text and the values of all of them together; a text over a limit stops where
it crossed it (``PolicyYAMLLimit``, with that line:column).

Values are JSON's (mappings, lists, strings, numbers, booleans, null) plus the timestamps YAML
resolves implicitly (freeze windows are written ``2026-12-20T00:00:00Z``, unquoted): an
explicit tag for anything else (``!!timestamp``, ``!!binary``, ``!!set``, ``!!omap``,
``!!pairs``) is refused at the tag, so no Python value (bytes, a set) reaches a policy or the
text of an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
import yaml.composer
import yaml.constructor

Path_ = tuple[str | int, ...]

#: Limits of one policy document, checked while it is built (a YAML "billion laughs" of a few
#: hundred bytes stops at the alias that crosses the count, not after expanding 10^8 values).
#: Policy documents are small: a large one has a few hundred values. Values count after alias
#: expansion (an alias counts every value of its anchor again), keys included.
MAX_VALUES = 10_000
#: Nested mappings and sequences, after alias expansion (as configs: engine/configparse.py).
MAX_DEPTH = 64
#: Digits of an integer: the longest in-range spelling is 64 binary digits (Python refuses to
#: convert a decimal of more than 4300 digits, and converting one is quadratic).
MAX_INT_DIGITS = 64

#: Documents of one text (``---`` separated), empty ones included, and values of all its
#: documents together (counted as MAX_VALUES counts them): a policy file holds a few policies,
#: and a text of 65 000 empty documents took half a second to read. The admin API takes one
#: policy per call and sets a far smaller document count (``pdp/server/admin.py``).
MAX_DOCUMENTS = 1_000
MAX_TOTAL_VALUES = 100_000

#: libyaml's parser when PyYAML has it (the usual wheels do): the pure-Python one was most of
#: start-up with thousands of policies. Same nodes, same marks (line:column), same values.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PolicyYAMLLimit(yaml.MarkedYAMLError):
    """Well-formed YAML over one of the limits above, or with a tag a policy cannot hold;
    ``problem_mark`` is where the limit was crossed and ``path`` the field path there.
    ``label`` goes before the problem in a policy error ("policy YAML"; none for the texts
    that name what they count themselves, as "one policy per call: ...")."""

    def __init__(self, problem: str, mark: Any, path: Path_ = (), *,
                 label: str = "policy YAML") -> None:
        super().__init__(None, None, problem, mark)
        self.path = path
        self.label = label


@dataclass(frozen=True)
class ExprLocation:
    """Where a scalar (a CEL expression) is in its file, to turn an offset in the parsed
    string into the file's line and column: an error in an expression must point into the
    YAML the author edits, whether the scalar is plain, quoted, folded (``>``) or literal."""

    file: str
    line: int        # 1-based, of the scalar's first character (its indicator or quote)
    column: int
    raw: str         # the scalar's text as written in the file
    style: str       # "" plain, "'", '"', "|" or ">"

    def position(self, value: str, offset: int) -> tuple[int, int]:
        """File (line, column) of ``value[offset]``: the n-th non-blank character of the
        value is the n-th non-blank character of the scalar's text (folding and indenting
        only move blanks); the scalar's start when that does not hold."""
        raw, start = self.raw, 0
        if self.style in ("|", ">"):
            nl = raw.find("\n")
            start = len(raw) if nl < 0 else nl + 1
        elif self.style in ("'", '"'):
            start = 1
        offset = max(0, min(offset, len(value)))
        while offset < len(value) and value[offset].isspace():
            offset += 1
        wanted = sum(1 for c in value[:offset] if not c.isspace())
        seen, i, last = 0, start, start
        while i < len(raw):
            c = raw[i]
            width = 1  # characters of raw text for one character of the value
            if self.style == '"' and c == "\\":
                esc = raw[i + 1:i + 2]
                if esc in ("t", "n", "r", " ", "\n", "\t", "_", "N", "L", "P"):
                    i += 2  # an escape giving a blank (or a line continuation)
                    continue
                width = {"x": 4, "u": 6, "U": 10}.get(esc, 2)
            elif self.style == "'" and raw.startswith("''", i):
                width = 2
            if not c.isspace():
                if seen == wanted:
                    return self._line_col(i)
                seen += 1
                last = i + width
            i += width
        if seen == wanted and seen:  # the end of the expression (a syntax error at EOF)
            return self._line_col(last)
        return self.line, self.column

    def _line_col(self, i: int) -> tuple[int, int]:
        before = self.raw[:i]
        nl = before.rfind("\n")
        if nl < 0:
            return self.line, self.column + i
        return self.line + before.count("\n"), i - nl


@dataclass
class Located:
    """One YAML document as plain values, plus where every path starts (1-based)."""

    value: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    start_line: int = 1
    # scalar paths -> (start index, end index in the stream, style), for ExprLocation
    spans: dict[Path_, tuple[int, int, str]] = field(default_factory=dict)
    text: str = ""

    def location(self, path: Path_, file: str) -> ExprLocation | None:
        """Where the scalar at ``path`` is written (None: not a scalar of this document)."""
        span = self.spans.get(path)
        if span is None or not self.text:
            return None
        line, column = self.positions[path]
        return ExprLocation(file, line, column, self.text[span[0]:span[1]], span[2])

    def where(self, path: Path_) -> tuple[int, int]:
        """Closest known position for ``path`` (falls back to the nearest parent)."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (self.start_line, 1))


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_documents(text: str, *, max_documents: int = MAX_DOCUMENTS,
                   max_total_values: int = MAX_TOTAL_VALUES,
                   one_policy: bool = False) -> list[Located]:
    """All documents of a YAML stream (``---`` separated); raises yaml.YAMLError.

    Built straight from the parser's events with an explicit stack (no recursion, in PyYAML's
    composer or here), counting values after alias expansion and nesting depth as it goes:
    a document over ``MAX_VALUES`` or ``MAX_DEPTH``, or with an integer longer than
    ``MAX_INT_DIGITS``, stops at the event that crossed the limit with a ``PolicyYAMLLimit``
    at its line:column (a YAML error, so every caller that reports YAML errors reports it).
    So does a text of more than ``max_documents`` documents (empty ones count: ``---`` alone
    or ``~``), at the first one too many, and one of more than ``max_total_values`` values in
    all. ``one_policy`` (the admin API's texts): the text holds one policy, so reading stops
    at the first value of a second non-empty document ("one policy per call").
    """
    docs: list[Located] = []
    # A byte-order mark is not counted by the parser's marks: without it, every column of
    # the first line (and every character index) is one off in the text the spans cut.
    text = text.removeprefix("\ufeff")
    loader = _Loader(text)
    stream = _Stream(max_total_values)
    seen, first = 0, None
    try:
        while True:
            event = loader.get_event()
            if event is None or isinstance(event, yaml.StreamEndEvent):
                break
            if not isinstance(event, yaml.DocumentStartEvent):
                continue
            seen += 1
            if seen > max_documents:
                if one_policy:
                    raise PolicyYAMLLimit(
                        f"one policy per call: more than {max_documents} YAML documents"
                        " (empty ones count)", event.start_mark, label="")
                raise PolicyYAMLLimit(f"more than {max_documents} YAML documents in one"
                                      " file (empty ones count)", event.start_mark)
            if one_policy:
                root = loader.peek_event()
                if not _is_null(loader, root):
                    if first is not None:
                        line = root.start_mark.line + 1
                        raise PolicyYAMLLimit(
                            f"one policy per call: found a second document at line {line}"
                            f" (the first is at line {first})", root.start_mark, label="")
                    first = root.start_mark.line + 1
            docs.append(_Document(loader, text, stream).build())
    finally:
        loader.dispose()
    return docs


@dataclass(frozen=True)
class _Marked:
    """A place in the text where no event is (a parser error's mark), for ``_limit``."""

    start_mark: Any


def _is_null(loader: Any, event: Any) -> bool:
    """Whether ``event``, the first of a document, is all of it and null (an empty document:
    ``---`` alone, ``~``, ``null``)."""
    if not isinstance(event, yaml.ScalarEvent):
        return False
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    return bool(tag == _T + "null")


class _Stream:
    """What is counted over all the documents of a text."""

    __slots__ = ("aliased", "max_values", "values")

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self.values = 0
        self.aliased = False


_T = "tag:yaml.org,2002:"
_INT_TAG, _STR_TAG, _MERGE_TAG, _VALUE_TAG = _T + "int", _T + "str", _T + "merge", _T + "value"
_TIMESTAMP_TAG = _T + "timestamp"
_MAP_TAG, _SEQ_TAG = _T + "map", _T + "seq"

#: Tags of values JSON does not have, and what to write instead. Refused when written
#: (``!!timestamp 2001-12-14``); an unquoted timestamp YAML resolves implicitly is kept, as
#: freeze windows use it.
_REFUSED_TAGS = {
    _T + "timestamp": "write a quoted string",
    _T + "binary": "write a quoted string",
    _T + "set": "write a list",
    _T + "omap": "write a mapping (its keys keep their order)",
    _T + "pairs": "write a list of mappings",
}


def _tag_text(tag: str) -> str:
    """A tag as it is usually written: ``!!timestamp`` for YAML's own."""
    shown = "!!" + tag[len(_T):] if tag.startswith(_T) else tag
    return shown if len(shown) <= 60 else shown[:60] + "..."


class _MergeKey:
    """The key of a merge (``<<: *defaults``)."""


_MERGE = _MergeKey()


class _Node:
    """A built value before it is placed: shared by every alias of it, and expanded (fresh
    containers and positions for each path) only at the end, once the counts are known to be
    within the limits. ``count`` is its values after alias expansion, ``height`` its nesting
    (0 for a scalar)."""

    __slots__ = ("count", "height", "is_map", "items", "kids", "mark", "span", "value")

    def __init__(self, mark: Any, *, value: Any = None, span: tuple[int, int, str] | None = None,
                 kids: list[_Node] | None = None,
                 items: list[tuple[Any, Any, _Node]] | None = None,
                 count: int = 1, height: int = 0) -> None:
        self.mark = mark
        self.value = value
        self.span = span
        self.kids = kids    # a sequence's items
        self.items = items  # a mapping's (key, key mark, value), merges flattened
        self.is_map = items is not None
        self.count = count
        self.height = height


class _Frame:
    """An open mapping or sequence."""

    __slots__ = ("anchor", "has_key", "is_map", "items", "key", "key_mark", "kids", "mark",
                 "merges", "nodes0", "path")

    def __init__(self, event: Any, is_map: bool, path: Path_, nodes0: int) -> None:
        self.mark = event.start_mark
        self.anchor: str | None = event.anchor
        self.is_map = is_map
        self.path = path
        self.nodes0 = nodes0
        self.kids: list[_Node] = []
        self.items: list[tuple[Any, Any, _Node]] = []
        self.merges: list[tuple[Any, Any, _Node]] = []
        self.key: Any = None
        self.key_mark: Any = None
        self.has_key = False

    def child_path(self) -> Path_:
        if not self.is_map:
            return (*self.path, len(self.kids))
        return (*self.path, "<<" if self.key is _MERGE else str(self.key))


class _Document:
    """One document, from its DocumentStartEvent to its DocumentEndEvent."""

    def __init__(self, loader: Any, text: str, stream: _Stream) -> None:
        self.loader = loader
        self.text = text
        self.stream = stream
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Node] = {}
        self.nodes = 0
        self.aliased = False  # an alias was expanded: counts are after expansion
        self.root: _Node | None = None

    def build(self) -> Located:
        get, stack = self._get_event, self.stack
        while True:
            event = get()
            if isinstance(event, yaml.ScalarEvent):
                top = stack[-1] if stack else None
                self._count(1, event)
                start: Any = event.start_mark
                end = event.end_mark
                assert start is not None and end is not None  # the parser marks every event
                if self.text[start.index:start.index + 1] in ("&", "!"):
                    start = _past_properties(self.text, start)  # where the value is written
                span = (start.index, end.index, event.style or "")
                if top is not None and top.is_map and not top.has_key:
                    key = self._scalar(event, in_key=True)
                    if event.anchor is not None:
                        self._anchor(event, _Node(start, value=key, span=span))
                    self._key(top, key, start)
                    continue
                node = _Node(start, value=self._scalar(event, in_key=False), span=span)
                if event.anchor is not None:
                    self._anchor(event, node)
                self._place(node)
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                top = stack[-1] if stack else None
                if top is not None and top.is_map and not top.has_key:
                    mark: Any = event.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None, "mapping keys must be scalars", mark)
                if len(stack) >= MAX_DEPTH:
                    self._limit(f"nesting deeper than {MAX_DEPTH} levels", event)
                self._check_collection_tag(event)
                self._count(1, event)
                if event.anchor is not None:
                    self._check_anchor(event)
                path = top.child_path() if top is not None else ()
                stack.append(_Frame(event, isinstance(event, yaml.MappingStartEvent), path,
                                    self.nodes))
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                self._close(stack.pop())
            elif isinstance(event, yaml.AliasEvent):
                self._alias(event)
            elif isinstance(event, yaml.DocumentEndEvent) or event is None:
                break
        root = self.root if self.root is not None else _Node(None, value=None)
        line = root.mark.line + 1 if root.mark is not None else 1
        loc = Located(None, start_line=line, text=self.text)
        if root.mark is not None:
            loc.value = _expand(root, (), loc.positions, loc.spans)
        return loc

    # -- limits ----------------------------------------------------------------------------------

    def _count(self, n: int, event: Any) -> None:
        self.nodes += n
        self.stream.values += n
        if self.nodes > MAX_VALUES:
            self._limit(f"more than {MAX_VALUES} values"
                        + (" after alias expansion (aliases expand)" if self.aliased else ""),
                        event)
        if self.stream.values > self.stream.max_values:
            self._limit(f"more than {self.stream.max_values} values in all the documents of"
                        " one file" + (" (aliases expand)" if self.stream.aliased else ""),
                        event)

    def _get_event(self) -> Any:
        """The next event; libyaml's own depth limit (PyYAML >= 6.0.4, at 1 000 levels,
        met when the scanner reads a flow collection ahead) reads as ours, at its place."""
        try:
            return self.loader.get_event()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            if mark is None or "maximum nesting depth" not in str(getattr(exc, "problem", "")):
                raise
            self._limit(f"nesting deeper than {MAX_DEPTH} levels", _Marked(mark))

    def _limit(self, problem: str, event: Any, *, label: str = "policy YAML") -> NoReturn:
        top = self.stack[-1] if self.stack else None
        path: Path_ = ()
        if top is not None:
            path = top.child_path() if not top.is_map or top.has_key else top.path
        raise PolicyYAMLLimit(problem, event.start_mark, path, label=label)

    # -- values ----------------------------------------------------------------------------------

    def _scalar(self, event: Any, *, in_key: bool) -> Any:
        """A scalar's value as PyYAML's safe loader constructs it."""
        tag, text = event.tag, event.value
        if tag in _REFUSED_TAGS:  # written: an implicit timestamp resolves below, and stays
            self._refuse_tag(tag, event)
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, text, event.implicit)
        if in_key and tag == _MERGE_TAG:
            return _MERGE
        if in_key and tag == _VALUE_TAG:
            tag = _STR_TAG  # "=" as a key is the string "="
        if tag == _INT_TAG:
            digits = text.replace("_", "").lstrip("+-")
            if digits[:2].lower() in ("0x", "0b"):
                digits = digits[2:]
            n = len(digits.replace(":", ""))
            if n > MAX_INT_DIGITS:
                self._limit(f"integer too long: {n} digits (at most {MAX_INT_DIGITS})", event)
        if tag == _TIMESTAMP_TAG:  # kept as written: read strictly where a time is due
            return text  # (PyYAML took "+05:99" as +06:39 and seconds in offsets)
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # ValueError, KeyError, ...: the text does not fit its tag
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown!r} is not a valid {tag}: {str(exc)[:200]}",
                event.start_mark) from None
        finally:
            self.loader.constructed_objects.pop(node, None)

    def _check_collection_tag(self, event: Any) -> None:
        """A mapping or sequence is built as the plain one it is written as, so a tag that
        would make it something else (``!!set``, ``!!omap``, a local tag) is refused, never
        ignored."""
        tag = event.tag
        if tag is None or tag == "!":
            return
        if tag == (_MAP_TAG if isinstance(event, yaml.MappingStartEvent) else _SEQ_TAG):
            return
        self._refuse_tag(tag, event)

    def _refuse_tag(self, tag: str, event: Any) -> NoReturn:
        instead = _REFUSED_TAGS.get(tag)
        self._limit(f"YAML tag {_tag_text(tag)} is not supported in a policy"
                    + (f": {instead}" if instead else ""), event, label="")

    def _key(self, top: _Frame, key: Any, mark: Any) -> None:
        if key is not _MERGE and not isinstance(key, str | int | float | bool):
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", mark)
        top.key, top.key_mark, top.has_key = key, mark, True

    def _place(self, node: _Node) -> None:
        if not self.stack:
            self.root = node
            return
        top = self.stack[-1]
        if not top.is_map:
            top.kids.append(node)
            return
        if top.key is _MERGE:
            self._merge(top, node)
        else:
            top.items.append((top.key, top.key_mark, node))
        top.key, top.key_mark, top.has_key = None, None, False

    def _merge(self, top: _Frame, node: _Node) -> None:
        """``<<: *a`` or ``<<: [*a, *b]``, as PyYAML's ``flatten_mapping``: merged entries come
        first (a list's sources last to first), and a key given again is a duplicate."""
        if node.items is not None:
            top.merges.extend(node.items)
        elif node.kids is not None:
            for kid in node.kids:
                if kid.items is None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", top.mark,
                        "expected a mapping for merging", kid.mark)
            for kid in reversed(node.kids):
                top.merges.extend(kid.items or ())
        else:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", top.mark,
                "expected a mapping or list of mappings for merging", node.mark)

    def _close(self, frame: _Frame) -> None:
        count, height = self.nodes - frame.nodes0, 0
        if frame.is_map:
            items = frame.merges + frame.items
            seen: set[Any] = set()
            for key, key_mark, value in items:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_mark)
                seen.add(key)
                height = max(height, value.height)
            node = _Node(frame.mark, items=items, count=count, height=height + 1)
        else:
            height = max((kid.height for kid in frame.kids), default=0)
            node = _Node(frame.mark, kids=frame.kids, count=count, height=height + 1)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = node
        self._place(node)

    def _check_anchor(self, event: Any) -> None:
        name = event.anchor
        if name in self.anchors or any(f.anchor == name for f in self.stack):
            raise yaml.composer.ComposerError(
                None, None, f"found duplicate anchor {name!r}", event.start_mark)

    def _anchor(self, event: Any, node: _Node) -> None:
        self._check_anchor(event)
        self.anchors[event.anchor] = node

    def _alias(self, event: Any) -> None:
        name = event.anchor
        node = self.anchors.get(name)
        if node is None:
            problem = (f"alias *{name} is inside the node it refers to (a cycle)"
                       if any(f.anchor == name for f in self.stack)
                       else f"found undefined alias {name!r}")
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
        if len(self.stack) + node.height > MAX_DEPTH:
            self._limit(f"nesting deeper than {MAX_DEPTH} levels (after alias expansion)",
                        event)
        self.aliased = self.stream.aliased = True
        self._count(node.count, event)
        top = self.stack[-1] if self.stack else None
        if top is not None and top.is_map and not top.has_key:
            if node.kids is not None or node.items is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", event.start_mark)
            self._key(top, node.value, event.start_mark)
            return
        self._place(node)


class _Mark:
    """A position (what a parser mark gives: line, column from 0, character index)."""

    __slots__ = ("column", "index", "line")

    def __init__(self, index: int, line: int, column: int) -> None:
        self.index, self.line, self.column = index, line, column


def _past_properties(text: str, mark: Any) -> _Mark:
    """The first character of a scalar's value: a scalar event's mark is at its anchor
    (``&a``) or tag (``!!str``), which put every position after them off by their length."""
    i, line, column = mark.index, mark.line, mark.column
    n = len(text)
    while i < n and text[i] in "&!":
        while i < n and text[i] not in " \t\r\n":
            i, column = i + 1, column + 1
        while i < n and text[i] in " \t\r\n":
            if text[i] == "\n":
                i, line, column = i + 1, line + 1, 0
            else:
                i, column = i + 1, column + 1
    return _Mark(i, line, column)


def _expand(node: _Node, path: Path_, pos: dict[Path_, tuple[int, int]],
            spans: dict[Path_, tuple[int, int, str]]) -> Any:
    """The plain value of ``node`` at ``path``, recording where every path starts. Recursive,
    but no deeper than MAX_DEPTH and no more calls than MAX_VALUES: both were checked while
    building."""
    pos[path] = (node.mark.line + 1, node.mark.column + 1)
    if node.items is not None:
        return {key: _expand(value, (*path, str(key)), pos, spans)
                for key, _, value in node.items}
    if node.kids is not None:
        return [_expand(kid, (*path, i), pos, spans) for i, kid in enumerate(node.kids)]
    if node.span is not None:
        spans[path] = node.span
    return node.value
