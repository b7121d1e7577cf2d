"""Parsed CEL expression tree.

Macros are kept as dedicated nodes (not expanded into generic comprehensions) so code
generation can emit a tight, specialised loop for each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True)
class Expr:
    """Base node; ``offset`` is the code-point offset in the source used for error carets."""

    offset: int


@dataclass(eq=False, slots=True)
class Const(Expr):
    value: Any


@dataclass(eq=False, slots=True)
class Ident(Expr):
    name: str
    leading_dot: bool = False


@dataclass(eq=False, slots=True)
class Select(Expr):
    operand: Expr
    field: str
    test_only: bool = False  # has(operand.field)


@dataclass(eq=False, slots=True)
class Call(Expr):
    function: str
    args: list[Expr]
    target: Expr | None = None


@dataclass(eq=False, slots=True)
class ListExpr(Expr):
    elements: list[Expr]


@dataclass(eq=False, slots=True)
class MapExpr(Expr):
    entries: list[tuple[Expr, Expr]]


@dataclass(eq=False, slots=True)
class StructExpr(Expr):
    type_name: str
    fields: list[tuple[str, Expr]]


@dataclass(eq=False, slots=True)
class Comprehension(Expr):
    """A macro: kind is one of the names in MACRO_KINDS; ``args`` depend on the kind.

    all/exists/exists_one/filter: [predicate]; map: [transform] or [filter, transform];
    two-variable forms use ``var2``; bind: range is the init value and args = [body].
    """

    kind: str
    range: Expr
    var: str
    var2: str | None
    args: list[Expr] = field(default_factory=list)


MACRO_KINDS = frozenset({
    "all", "exists", "exists_one", "map", "filter",
    "transformList", "transformMap", "transformMapEntry", "bind", "optMap", "optFlatMap",
})


def children(e: Expr) -> list[Expr]:
    """Direct sub-expressions, for generic walks (cost, sandbox checks)."""
    if isinstance(e, Select):
        return [e.operand]
    if isinstance(e, Call):
        return ([e.target] if e.target is not None else []) + list(e.args)
    if isinstance(e, ListExpr):
        return list(e.elements)
    if isinstance(e, MapExpr):
        return [x for kv in e.entries for x in kv]
    if isinstance(e, StructExpr):
        return [v for _, v in e.fields]
    if isinstance(e, Comprehension):
        return [e.range, *e.args]
    return []
