"""Explain mode: why did a (deny) expression evaluate to true?

Only used after the fact, for a request that asked for explanations and was denied, so the
normal evaluation path pays nothing. The expression is re-parsed and walked with a wanted
truth value: ``a && b`` true explains both operands, ``a || b`` true explains the first true
operand, ``!x`` flips the wanted value, ``e.exists(x, p)`` true finds the element that made
``p`` true (``e.all(x, p)`` false: the one that made it false) and records it under the
variable's name. At a leaf (a comparison, a function call, ...) the values of its select /
index paths and of non-boolean calls on them are recorded, keyed by their source text
(re-printed from the tree by :func:`unparse`, so spacing is canonical), plus the leaf itself.
Type guards (``type(x) == map``, ``has(x.f)``, ``"k" in some_map``) are not recorded.

Sub-expressions are evaluated by the real compiler (compiled once, cached per environment),
with comprehension variables declared as ``dyn`` variables, under one shared Budget.

An explanation is part of the decision, so it is bounded like one. Evaluations run under the
decision's Budget; what the Budget cannot see is bounded here: the parse of the rule (cached),
compiling a sub-expression (never one over ``MAX_EXPLAIN_NODES`` nodes, and not when the time
left is shorter than such a compile may take: compiling cannot pause), and rendering a value
(stops at ``MAX_VALUE_CHARS``, whatever the value's size).
"""

from __future__ import annotations

import copy
import itertools
import json
import time
import weakref
from collections.abc import Mapping
from typing import Any

from pdp.turns import clock

from . import ast as A
from . import runtime as R
from .errors import BudgetExceeded, CelError
from .parser import iter_nodes
from .program import Budget, Environment, Program
from .unparse import _OPERATORS, literal, unparse
from .values import Duration, Optional, Timestamp, TypeValue, UInt

MAX_VALUES = 32
MAX_VALUE_CHARS = 256
DEFAULT_EXPLAIN_SECONDS = 0.05
DEFAULT_EXPLAIN_COST = 1_000_000
TRUNCATED_KEY = "(explanation)"
#: Sub-expressions larger than this are not compiled again to be explained (their parts are):
#: a compile cannot pause for the event loop nor stop at the deadline, and costs ~20-40 µs
#: per node, so this keeps one compile to a few milliseconds.
MAX_EXPLAIN_NODES = 100
#: Time a compile of one node may take, to leave the rest of an explanation out rather than
#: start a compile the deadline cannot cover (generous: a loaded machine).
COMPILE_S_PER_NODE = 50e-6
OMITTED_KEY = "(explanation: omitted)"



# --------------------------------------------------------------------------- rendering


def render(value: Any) -> str:
    """A value as a short string: scalars as CEL prints them, containers as compact JSON."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float | UInt):
        text = str(value)
    elif isinstance(value, bytes):
        text = literal(value)
    elif isinstance(value, Timestamp | Duration | TypeValue | Optional):
        text = str(value)
    else:
        text = _bounded_json(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS - 1] + "…"
    return text


def _bounded_json(value: Any) -> str:
    """Compact JSON of ``value``, encoded only as far as ``MAX_VALUE_CHARS`` (a config's list
    of 100 000 items is not encoded whole to show its first 256 characters)."""
    encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=str)
    out: list[str] = []
    size = 0
    try:
        for chunk in encoder.iterencode(value):
            out.append(chunk)
            size += len(chunk)
            if size > MAX_VALUE_CHARS:
                break
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:MAX_VALUE_CHARS]
    return "".join(out)


# --------------------------------------------------------------------------- explain


class _Programs:
    """Compiled sub-expressions per environment and set of comprehension variables."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.envs: dict[tuple[str, ...], Environment] = {}
        self.programs: dict[tuple[str, tuple[str, ...]], Program | CelError] = {}
        self.trees: dict[str, A.Expr] = {}

    def tree(self, source: str) -> A.Expr:
        """The parsed rule (a rule of 1 000 nodes takes ~10 ms to parse: once, not per deny)."""
        found = self.trees.get(source)
        if found is None:
            found = self.env.parse(source)
            if len(self.trees) > 1024:
                self.trees.clear()
            self.trees[source] = found
        return found

    def cached(self, source: str, local_names: tuple[str, ...]) -> Program | CelError | None:
        return self.programs.get((source, local_names))

    def get(self, source: str, local_names: tuple[str, ...]) -> Program | CelError:
        key = (source, local_names)
        found = self.programs.get(key)
        if found is not None:
            return found
        env = self.envs.get(local_names)
        if env is None:
            env = copy.copy(self.env)
            env.decls = dict(self.env.decls)
            for name in local_names:
                env.declare(name, "dyn")
            self.envs[local_names] = env
        try:
            result: Program | CelError = env.compile(source, check=False)
        except CelError as exc:
            result = exc
        if len(self.programs) > 4096:
            self.programs.clear()
        self.programs[key] = result
        return result


_CACHES: weakref.WeakKeyDictionary[Environment, _Programs] = weakref.WeakKeyDictionary()


def parsed(env: Environment, source: str) -> A.Expr:
    """``env.parse(source)``, cached: explanations parse the same rules again and again."""
    return _programs(env).tree(source)


def _programs(env: Environment) -> _Programs:
    found = _CACHES.get(env)
    if found is None:
        found = _CACHES[env] = _Programs(env)
    return found


class _Failed:
    """Marker for a sub-expression that raised (its message is kept for the record)."""

    def __init__(self, message: str) -> None:
        self.message = message


class _TooLarge(_Failed):
    """Marker for a sub-expression over ``MAX_EXPLAIN_NODES``: not evaluated, not recorded."""


class _Exhausted(Exception):
    pass


class _Explainer:
    def __init__(self, env: Environment, activation: Mapping[str, Any], budget: Budget,
                 max_values: int) -> None:
        self.programs = _programs(env)
        self.activation = activation
        self.budget = budget
        self.max_values = max_values
        self.values: dict[str, str] = {}
        self.guards: list[tuple[A.Expr, dict[str, Any]]] = []
        self.sizes: dict[int, int] = {}
        self.omitted: set[int] = set()  # ids of the sub-expressions left out

    def size(self, e: A.Expr) -> int:
        """Nodes of ``e``, remembered (the walk asks for nested parts of the same tree)."""
        n = self.sizes.get(id(e))
        if n is None:
            n = sum(1 for _ in itertools.islice(iter_nodes(e), MAX_EXPLAIN_NODES + 1))
            self.sizes[id(e)] = n
        return n

    # -- evaluation ------------------------------------------------------------------
    def eval(self, e: A.Expr, scope: Mapping[str, Any]) -> Any:
        if isinstance(e, A.Const):
            return e.value
        nodes = self.size(e)
        if nodes > MAX_EXPLAIN_NODES:
            self.omitted.add(id(e))
            return _TooLarge("too large to evaluate again for an explanation")
        names = tuple(sorted(scope))
        source = unparse(e)
        prog = self.programs.cached(source, names)
        if prog is None:
            if clock() + nodes * COMPILE_S_PER_NODE > self.budget.deadline_at:
                raise _Exhausted()
            prog = self.programs.get(source, names)
        if isinstance(prog, CelError):
            return _Failed(str(prog))
        act = {**self.activation, **scope} if scope else self.activation
        try:
            return prog.evaluate(act, budget=self.budget)
        except BudgetExceeded:
            raise _Exhausted() from None
        except CelError as exc:
            return _Failed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def record(self, key: str, value: Any) -> None:
        if key in self.values:
            return
        if isinstance(value, _TooLarge):
            return  # its parts are recorded; the count is noted at the end
        if len(self.values) >= self.max_values:
            raise _Exhausted()
        self.values[key] = (f"<error: {value.message}>" if isinstance(value, _Failed)
                            else render(value))

    # -- the walk --------------------------------------------------------------------
    def why(self, e: A.Expr, want: bool, scope: dict[str, Any]) -> None:
        if isinstance(e, A.Call) and e.target is None:
            f = e.function
            if f in ("_&&_", "_||_"):
                ops: list[A.Expr] = []
                _flatten(e, f, ops)
                if (f == "_&&_") == want:  # every operand has the wanted value
                    for op in ops:
                        self.why(op, want, scope)
                    return
                for op in ops:
                    if self.eval(op, scope) is want:
                        self.why(op, want, scope)
                        return
                self.leaf(e, scope)
                return
            if f == "!_":
                self.why(e.args[0], not want, scope)
                return
            if f == "_?_:_":
                c, a, b = e.args
                cond = self.eval(c, scope)
                if isinstance(cond, bool):
                    self.why(c, cond, scope)
                    self.why(a if cond else b, want, scope)
                    return
        # exists -> true and all -> false are decided by one element: find it
        if (isinstance(e, A.Comprehension) and e.kind in ("exists", "all") and len(e.args) == 1
                and (e.kind == "exists") == want and self.element(e, want, scope)):
            return
        if isinstance(e, A.Comprehension) and e.kind == "bind":
            value = self.eval(e.range, scope)
            if not isinstance(value, _Failed):
                self.record(e.var, value)
                self.why(e.args[0], want, {**scope, e.var: value})
                return
        self.leaf(e, scope)

    def element(self, e: A.Comprehension, want: bool, scope: dict[str, Any]) -> bool:
        rng = self.eval(e.range, scope)
        if isinstance(rng, _Failed):
            return False
        try:
            items = list(R.iter_pairs(rng) if e.var2 else R.iter_range(rng))
        except CelError:
            return False
        for item in items:
            inner = dict(scope)
            if e.var2:
                inner[e.var], inner[e.var2] = item
            else:
                inner[e.var] = item
            if self.eval(e.args[0], inner) is want:
                self.record_path(e.range, scope)
                self.record(e.var, inner[e.var])
                if e.var2:
                    self.record(e.var2, inner[e.var2])
                self.why(e.args[0], want, inner)
                return True
        return False

    def leaf(self, e: A.Expr, scope: dict[str, Any]) -> None:
        if self.is_guard(e, scope):
            self.guards.append((e, scope))
            return
        self.parts(e, scope)
        self.record(unparse(e), self.eval(e, scope))

    def is_guard(self, e: A.Expr, scope: dict[str, Any]) -> bool:
        if isinstance(e, A.Select) and e.test_only:
            return True
        if isinstance(e, A.Call) and e.target is None and e.function in ("_==_", "_!=_"):
            return any(isinstance(a, A.Call) and a.function == "type" and a.target is None
                       for a in e.args)
        if isinstance(e, A.Call) and e.target is None and e.function == "@in":
            return isinstance(self.eval(e.args[1], scope), dict)
        return False

    def record_path(self, e: A.Expr, scope: dict[str, Any]) -> None:
        """Record a range expression when it is a path (``config.exporters``), not a var."""
        if isinstance(e, A.Select | A.Call) and _is_path(e):
            self.record(unparse(e), self.eval(e, scope))

    def parts(self, e: A.Expr, scope: dict[str, Any]) -> None:
        """Record the paths and non-boolean calls on paths inside a leaf."""
        for child in _children_no_macros(e):
            if _is_path(child) and not isinstance(child, A.Ident):
                self.record(unparse(child), self.eval(child, scope))
                for idx in _index_args(child):
                    self.parts(idx, scope)
                continue
            self.parts(child, scope)
            if (isinstance(child, A.Call) and child.function not in _OPERATORS
                    and child.function != "type" and _contains_path(child)):
                value = self.eval(child, scope)
                if not isinstance(value, bool):
                    self.record(unparse(child), value)


def _flatten(e: A.Expr, fn: str, out: list[A.Expr]) -> None:
    if isinstance(e, A.Call) and e.function == fn and e.target is None:
        for a in e.args:
            _flatten(a, fn, out)
    else:
        out.append(e)


def _is_path(e: A.Expr) -> bool:
    while True:
        if isinstance(e, A.Select) and not e.test_only:
            e = e.operand
        elif isinstance(e, A.Call) and e.function == "_[_]" and e.target is None:
            e = e.args[0]
        else:
            return isinstance(e, A.Ident)


def _index_args(e: A.Expr) -> list[A.Expr]:
    out: list[A.Expr] = []
    while True:
        if isinstance(e, A.Select):
            e = e.operand
        elif isinstance(e, A.Call) and e.function == "_[_]":
            if not isinstance(e.args[1], A.Const | A.Ident):
                out.append(e.args[1])
            e = e.args[0]
        else:
            return out


def _contains_path(e: A.Expr) -> bool:
    return any((_is_path(c) and not isinstance(c, A.Ident)) or _contains_path(c)
               for c in _children_no_macros(e))


def _children_no_macros(e: A.Expr) -> list[A.Expr]:
    if isinstance(e, A.Comprehension):
        return []
    return A.children(e)


def explain_expression(env: Environment, source: str, activation: Mapping[str, Any], *,
                       want: bool = True, budget: Budget | None = None,
                       max_values: int = MAX_VALUES, tree: A.Expr | None = None
                       ) -> dict[str, str]:
    """Sub-expression values (source text -> value) that made ``source`` evaluate to ``want``.

    Best effort and bounded: stops at ``max_values`` entries or when ``budget`` (default
    50 ms, 1 000 000 cost units) runs out, noting it under ``"(explanation)"``.
    """
    if budget is None:
        budget = Budget(deadline=time.monotonic() + DEFAULT_EXPLAIN_SECONDS,
                        cost_limit=DEFAULT_EXPLAIN_COST)
    ex = _Explainer(env, activation, budget, max_values)
    try:
        if tree is None:  # ``source`` parsed (a caller holding the tree passes it)
            tree = ex.programs.tree(source)
        ex.why(tree, want, {})
        if not ex.values:  # only guards decided it (e.g. `"debug" in config.exporters`)
            # the last presence check is the condition (earlier ones guard its access)
            for e, scope in reversed(ex.guards):
                if isinstance(e, A.Call) and e.function in ("_==_", "_!=_"):
                    continue  # type(x) == map says nothing about why
                ex.record(unparse(e), ex.eval(e, scope))
                if isinstance(e, A.Call) and e.function == "@in":
                    key, container = e.args
                    element = A.Call(e.offset, "_[_]", [container, key])
                    ex.record(unparse(element), ex.eval(element, scope))
                break
    except _Exhausted:
        ex.values[TRUNCATED_KEY] = "truncated (value or budget limit reached)"
    except CelError as exc:
        ex.values[TRUNCATED_KEY] = f"cannot explain: {exc}"
    if ex.omitted:
        ex.values[OMITTED_KEY] = (f"{len(ex.omitted)} sub-expression(s) over {MAX_EXPLAIN_NODES}"
                                  " nodes not evaluated again (their parts are shown)")
    return ex.values
