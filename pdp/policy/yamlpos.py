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


@dataclass
class Located:
    """One YAML document as plain values, plus where every path starts (1-based)."""

    value: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    start_line: int = 1

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
            loc = Located(None, start_line=node.start_mark.line + 1)
            loc.value = _build(loader, node, (), loc.positions)
            docs.append(loc)
    finally:
        loader.dispose()
    return docs


def _build(loader: Any, node: yaml.Node, path: Path_,
           pos: dict[Path_, tuple[int, int]]) -> Any:
    pos[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
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
            out[key] = _build(loader, value_node, child, pos)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), pos) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
