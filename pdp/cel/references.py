"""What an expression reads of its variables, from the checker's resolution of names.

Why: a policy decision point shares verdicts between requests (the agents of one rollout
step) only when the verdict cannot differ between them, and that is a property of what the
expression reads. It is worked out from the checked tree, never from a list kept by hand:
``agent.id`` read as a field is the path ``agent.id``; ``agent`` used any other way (passed
to a function, indexed dynamically, iterated) is the whole variable, ``agent``.
"""

from __future__ import annotations

from . import ast as A
from .checker import CheckResult


def references(tree: A.Expr, checked: CheckResult) -> frozenset[str]:
    """Declared variables read by ``tree``: ``var`` (the whole value) or ``var.field``."""
    out: set[str] = set()
    stack: list[tuple[A.Expr, A.Expr | None]] = [(tree, None)]
    while stack:
        e, parent = stack.pop()
        ref = checked.refs.get(id(e))
        if ref is not None and ref.kind == "var":
            root = ref.name
            if isinstance(parent, A.Select) and parent.operand is e and "." not in root:
                out.add(f"{root}.{parent.field}")
            elif (isinstance(parent, A.Call) and parent.function == "_?._"
                  and parent.args[0] is e and isinstance(parent.args[1], A.Const)
                  and "." not in root):
                out.add(f"{root}.{parent.args[1].value}")  # agent.?labels reads agent.labels
            else:
                out.add(root)
            if isinstance(e, A.Select):
                continue  # a qualified name resolved as a whole: nothing below it to read
        for c in A.children(e):
            stack.append((c, e))
    return frozenset(out)


def roots(reads: frozenset[str]) -> frozenset[str]:
    """The variables of ``reads`` (``agent.id`` -> ``agent``)."""
    return frozenset(r.split(".", 1)[0] for r in reads)


def conjuncts(tree: A.Expr) -> list[A.Expr]:
    """``a && b && c`` as [a, b, c] (any tree that is not a top-level ``&&``: [tree])."""
    out: list[A.Expr] = []
    stack = [tree]
    while stack:
        e = stack.pop()
        if isinstance(e, A.Call) and e.function == "_&&_" and e.target is None \
                and len(e.args) == 2:
            stack.extend(reversed(e.args))
        else:
            out.append(e)
    return out


def conjunction(parts: list[A.Expr]) -> A.Expr:
    """The ``&&`` of ``parts`` (left-nested, as the parser builds it)."""
    tree = parts[0]
    for p in parts[1:]:
        tree = A.Call(p.offset, "_&&_", [tree, p])
    return tree
