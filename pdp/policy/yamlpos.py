"""YAML loading that remembers where each value came from.

Policy validation errors must name file, line and field path; PyYAML's composed node tree has
the marks, so we build plain Python values from it and keep a path -> line:column index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

#: libyaml's parser when PyYAML has it (the usual wheels do): the pure-Python one was most of
#: start-up with thousands of policies. Same nodes, same marks (line:column), same values.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def load_documents(text: str) -> list[Located]:
    """All documents of a YAML stream (``---`` separated); raises yaml.YAMLError."""
    docs = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            loc = Located(None, start_line=node.start_mark.line + 1, text=text)
            loc.value = _build(loader, node, (), loc.positions, loc.spans)
            docs.append(loc)
    finally:
        loader.dispose()
    return docs


def _build(loader: Any, node: yaml.Node, path: Path_,
           pos: dict[Path_, tuple[int, int]],
           spans: dict[Path_, tuple[int, int, str]] | None = None) -> Any:
    pos[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if spans is not None and isinstance(node, yaml.ScalarNode):
        spans[path] = (node.start_mark.index, node.end_mark.index, node.style or "")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark)
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            child = (*path, str(key))
            out[key] = _build(loader, value_node, child, pos, spans)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), pos, spans)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
