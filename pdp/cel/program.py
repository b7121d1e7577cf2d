"""Public entry points: Environment (declarations + functions), Program, Budget."""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pdp.turns import clock

from . import ast as A
from .checker import Checker
from .codegen import CodeGen
from .core import register_core
from .cost import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_INPUT_ELEMENTS,
    InputSizes,
    estimate_detail,
)
from .errors import CelCompileError, CelError, DeadlineExceeded
from .functions import Registry
from .literals import check_literals
from .meter import DEFAULT_MAX_LIST, DEFAULT_MAX_STRING, Limits
from .parser import parse
from .references import conjunction, conjuncts, references
from .runtime import to_cel_error
from .types import T, parse_type
from .unparse import unparse


class Budget:
    """Per-decision evaluation budget: a cost limit and a ``time.monotonic()`` deadline.

    One Budget may be shared by several evaluations of the same decision; ``cost`` is the
    total charged so far."""

    __slots__ = ("cost", "cost_limit", "deadline", "deadline_at", "limit")

    def __init__(self, deadline: float | None = None, cost_limit: int | None = None) -> None:
        self.deadline = deadline
        self.cost_limit = cost_limit
        self.cost = 0
        self.limit: float = math.inf if cost_limit is None else cost_limit
        self.deadline_at: float = math.inf if deadline is None else deadline


class Program:
    """A compiled expression: call :meth:`evaluate` with an activation (name -> value)."""

    __slots__ = ("_fn", "check_errors", "cost_estimate", "cost_hotspot", "reads",
                 "result_type", "source", "source_hash", "uses_budget")

    def __init__(self, source: str, fn: Callable[[Any, Any], Any], cost_estimate: int,
                 result_type: T, check_errors: list[CelCompileError],
                 uses_budget: bool = True, cost_hotspot: str = "",
                 reads: frozenset[str] = frozenset()) -> None:
        self.source = source
        self.source_hash = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self._fn = fn
        self.cost_estimate = cost_estimate
        self.result_type = result_type
        self.check_errors = check_errors
        self.uses_budget = uses_budget
        self.cost_hotspot = cost_hotspot  # "line:column `text`: why", the costliest part
        # Variables it reads: "var" (the whole value) or "var.field" (see references.py).
        self.reads = reads

    def evaluate(self, activation: Mapping[str, Any], budget: Budget | None = None) -> Any:
        """Evaluate; raises CelEvalError, or DeadlineExceeded / CostLimitExceeded."""
        if budget is None:
            if self.uses_budget:
                budget = Budget()
        elif budget.deadline is not None and clock() > budget.deadline:
            raise DeadlineExceeded("evaluation deadline exceeded before start")
        try:
            return self._fn(activation, budget)
        except CelError:
            raise
        except Exception as e:
            raise to_cel_error(e) from None


class Environment:
    """Variable declarations and the function library that expressions compile against.

    Size bounds (see cost.py and meter.py): ``max_input_bytes`` / ``max_input_elements``
    are what the static estimate assumes of any input string / list or map (the admission
    worst case); ``max_string_bytes`` / ``max_list_size`` are the hard caps on any value
    built during evaluation, enforced before the value is built (SizeLimitExceeded).
    ``assumed_size`` is the former name of ``max_input_elements``."""

    def __init__(self, variables: Mapping[str, T | str] | None = None, container: str = "",
                 extensions: Iterable[str] = ("strings", "math", "encoders", "optionals",
                                              "domain"),
                 assumed_size: int | None = None, *,
                 max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
                 max_input_elements: int = DEFAULT_MAX_INPUT_ELEMENTS,
                 max_string_bytes: int = DEFAULT_MAX_STRING,
                 max_list_size: int = DEFAULT_MAX_LIST,
                 strict_literals: bool = False) -> None:
        self.decls: dict[str, T] = {}
        # literal timestamps, durations, time zones and regexes that can only fail are
        # refused at compile time (literals.py); off for plain CEL (conformance)
        self.strict_literals = strict_literals
        self._key = ""  # cache_key, once computed
        self._key_decls: dict[str, T] | None = None
        self.container = container
        if assumed_size is not None:
            max_input_elements = assumed_size
        self.assumed_size = max_input_elements
        self.inputs = InputSizes(max_input_bytes, max_input_elements)
        self.limits = Limits(max_string_bytes, max_list_size)
        self.registry = Registry()
        register_core(self.registry)
        from .extensions import register_extensions
        extensions = tuple(extensions)
        register_extensions(self.registry, extensions)
        # ``.?`` / ``[?`` come with the optional library, as in cel-go's OptionalTypes
        self.optional_syntax = "optionals" in extensions
        for k, v in (variables or {}).items():
            self.declare(k, v)

    def declare(self, name: str, typ: T | str) -> None:
        """Declare a variable (``typ`` as a T or in the compact syntax: ``map(string, dyn)``)."""
        self.decls[name] = parse_type(typ) if isinstance(typ, str) else typ
        self._key = ""

    def parse(self, source: str) -> A.Expr:
        tree: A.Expr = _with_recursion(lambda: parse(source, self.optional_syntax))
        return tree

    def compile(self, source: str, max_cost: int | None = None, check: bool = True) -> Program:
        """Parse, check and generate code; raises CelCompileError.

        ``check=False`` evaluates without rejecting type errors (they surface at runtime)."""
        tree = self.parse(source)
        chk = _with_recursion(lambda: Checker(source, self.decls, self.registry,
                                              self.container, strict=check).check(tree))
        if self.strict_literals:
            check_literals(tree, source)
        est = _with_recursion(lambda: estimate_detail(
            tree, self.registry, self.inputs, self.limits, chk.types, chk.calls))
        hotspot = _describe(source, est.hotspot, est.note)
        if max_cost is not None and est.cost > max_cost:
            raise CelCompileError(
                f"estimated worst-case cost {est.cost} exceeds the limit {max_cost}; "
                f"the costliest part is {hotspot}", source,
                est.hotspot.offset if est.hotspot is not None else 0)
        gen = CodeGen(source, chk, self.registry, self.limits)
        fn = _with_recursion(lambda: gen.generate(tree))
        return Program(source, fn, est.cost, chk.result, chk.errors, gen.uses_budget,
                       hotspot, references(tree, chk))

    def compile_conjuncts(self, source: str, keep: Callable[[frozenset[str]], bool]
                          ) -> Program | None:
        """For ``a && b && c``: the conjuncts whose reads ``keep`` accepts, as one program
        (None when that is none or all of them). Used to find, once for many requests, a
        part of a deny expression that is false for all of them: then the whole is false
        (CEL's ``&&`` is false as soon as any side is, whatever the others give). Compiled
        from the checked tree of ``source``, not from re-written text."""
        tree = self.parse(source)
        chk = _with_recursion(lambda: Checker(source, self.decls, self.registry,
                                              self.container).check(tree))
        if chk.errors:
            return None
        parts = conjuncts(tree)
        kept = [c for c in parts if keep(references(c, chk))]
        if not kept or len(kept) == len(parts):
            return None
        sub = conjunction(kept)
        chk = _with_recursion(lambda: Checker(source, self.decls, self.registry,
                                              self.container).check(sub))
        est = _with_recursion(lambda: estimate_detail(
            sub, self.registry, self.inputs, self.limits, chk.types, chk.calls))
        gen = CodeGen(source, chk, self.registry, self.limits)
        fn = _with_recursion(lambda: gen.generate(sub))
        return Program(source, fn, est.cost, chk.result, chk.errors, gen.uses_budget,
                       "", references(sub, chk))

    def cache_key(self) -> str:
        """Identity of this environment for the program cache (declarations in full: two
        record types of one name may have different fields). Remembered until a declaration
        changes through declare."""
        key = getattr(self, "_key", "")
        if key and getattr(self, "_key_decls", None) is self.decls:
            return key
        parts = [self.container, repr(self.inputs), str(self.limits.max_string),
                 str(self.limits.max_list), f"strict_literals={self.strict_literals}"]
        parts += [f"{k}:{v!r}" for k, v in sorted(self.decls.items())]
        parts += sorted(self.registry.funcs)
        self._key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
        self._key_decls = self.decls
        return self._key


def _describe(source: str, node: A.Expr | None, note: str) -> str:
    """``1:5 `text`` (why)`` for an admission message."""
    if node is None:
        return "the whole expression"
    from .errors import _line_col
    line, col = _line_col(source, node.offset)
    text = unparse(node)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{line}:{col} `{text}`" + (f" ({note})" if note else "")


def _with_recursion(fn: Callable[[], Any]) -> Any:
    """Deep (but bounded by the parser) trees need more than Python's default stack."""
    old = sys.getrecursionlimit()
    if old < 10000:
        sys.setrecursionlimit(10000)
    try:
        return fn()
    except RecursionError:
        raise CelCompileError("expression too deeply nested", "", -1) from None
    finally:
        if old < 10000:
            sys.setrecursionlimit(old)
