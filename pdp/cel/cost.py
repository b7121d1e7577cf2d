"""Static worst-case cost estimate, computed at admission.

The unit is the runtime counter's (meter.py): 1 per evaluated node, ``1 + body nodes`` per
comprehension iteration, and ``1 + n // 64`` for an operation building or scanning ``n``
characters / elements.  The estimate follows the *sizes* of values as well as their cost:

* inputs (declared variables) are at most ``InputSizes.max_string`` characters and their
  collections at most ``max_elements`` elements (like the Kubernetes estimator uses schema
  maxima); literals have their exact size;
* ``+``, replace, join, split, format... produce sizes from their operands' worst cases, so a
  chain of replaces or of ``cel.bind`` doublings grows geometrically here as it would at
  runtime;
* a comprehension iterates at most as many times as its range has elements (built lists
  are capped at ``Limits.max_list``); nested comprehensions multiply.  The whole input is
  bounded, so the elements of a range are assumed to share its characters: the iteration
  variable (and ``range[var]``) holds the average share;
* a value that could only exist above the hard size caps is charged one unit per character
  or element, not per 64: the runtime would refuse it, so an expression that needs one is
  refused at admission instead of failing every evaluation.

:func:`estimate` returns the total and the costliest sub-expression, which the admission
error names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from . import ast as A
from .functions import Registry
from .meter import DEFAULT_MAX_LIST, DEFAULT_MAX_STRING, Limits, units
from .types import T

DEFAULT_MAX_INPUT_BYTES = 1024 * 1024
DEFAULT_MAX_INPUT_ELEMENTS = 1000
DEFAULT_ASSUMED_SIZE = DEFAULT_MAX_INPUT_ELEMENTS  # the former name of the element bound

_LOOPS = frozenset({"all", "exists", "exists_one", "map", "filter", "transformList",
                    "transformMap", "transformMapEntry"})
_SCALAR = frozenset({"int", "uint", "double", "bool", "null_type", "timestamp", "duration",
                     "type"})
_NUMBER_TEXT = 330  # longest rendering of one scalar (meter._SCALAR_TEXT)


def static_nodes(e: A.Expr) -> int:
    """Nodes evaluated (at most) once per evaluation of the enclosing scope: comprehension
    bodies are charged per iteration instead."""
    if isinstance(e, A.Comprehension) and e.kind in _LOOPS:
        return 1 + static_nodes(e.range)
    return 1 + sum(static_nodes(c) for c in A.children(e))


def loop_body_nodes(e: A.Comprehension) -> int:
    """The per-iteration charge of a comprehension loop."""
    return 1 + sum(static_nodes(a) for a in e.args)


@dataclass(frozen=True)
class InputSizes:
    """Declared maxima of the input: characters of any string (and of the whole input),
    elements of any list or map."""

    max_string: int = DEFAULT_MAX_INPUT_BYTES
    max_elements: int = DEFAULT_MAX_INPUT_ELEMENTS


class Sz(NamedTuple):
    """Worst-case size of a value: characters it holds (all of them, for a container) and
    elements (for a list / map)."""

    chars: int
    elems: int


_ZERO = Sz(0, 0)


class Estimate(NamedTuple):
    cost: int
    hotspot: A.Expr | None  # the costliest sub-expression
    note: str               # why it is costly ("" if only by repetition)


class _Estimator:
    def __init__(self, registry: Registry, inputs: InputSizes, limits: Limits,
                 types: dict[int, T] | None, calls: dict[int, tuple[str, bool]] | None
                 ) -> None:
        self.reg = registry
        self.inputs = inputs
        self.limits = limits
        self.types = types or {}
        self.calls = calls or {}
        self.scopes: list[dict[str, tuple[Sz, tuple[str, ...] | None, Sz | None]]] = []
        # per node: cost of one evaluation (children included), evaluations, note
        self.cost: dict[int, int] = {}
        self.times: dict[int, int] = {}
        self.notes: dict[int, str] = {}
        self.kids: dict[int, list[A.Expr]] = {}

    # -- helpers -------------------------------------------------------------------------
    def kind(self, e: A.Expr) -> str:
        t = self.types.get(id(e))
        return t.kind if t is not None else "dyn"

    def built(self, e: A.Expr, s: Sz, chars_counted: bool, elems_counted: bool) -> int:
        """Units for building ``s``: per 64 within the caps, per 1 beyond them."""
        own = 0
        if chars_counted:
            if s.chars > self.limits.max_string:
                self.notes[id(e)] = (f"may build a string of {s.chars} characters, over the "
                                     f"limit of {self.limits.max_string}")
                own = max(own, s.chars)
            else:
                own = max(own, units(s.chars))
        if elems_counted:
            if s.elems > self.limits.max_list:
                self.notes[id(e)] = (f"may build a list of {s.elems} elements, over the "
                                     f"limit of {self.limits.max_list}")
                own = max(own, s.elems)
            else:
                own = max(own, units(s.elems))
        return own

    def lookup(self, name: str) -> tuple[Sz, tuple[str, ...] | None, Sz | None] | None:
        for sc in reversed(self.scopes):
            if name in sc:
                return sc[name]
        return None

    def path(self, e: A.Expr) -> tuple[str, ...] | None:
        """Structural key of ``a.b["c"]`` paths, to recognise ``range[var]``."""
        out: list[str] = []
        while True:
            if isinstance(e, A.Select) and not e.test_only:
                out.append("." + e.field)
                e = e.operand
            elif (isinstance(e, A.Call) and e.function == "_[_]" and e.target is None
                  and isinstance(e.args[1], A.Const)):
                out.append(repr(e.args[1].value))
                e = e.args[0]
            elif isinstance(e, A.Ident):
                out.append(e.name)
                return tuple(reversed(out))
            else:
                return None

    def literal_str(self, e: A.Expr) -> str | None:
        return e.value if isinstance(e, A.Const) and isinstance(e.value, str) else None

    # -- walk ----------------------------------------------------------------------------
    def est(self, e: A.Expr, times: int) -> tuple[int, Sz]:
        self.times[id(e)] = times
        cost, size = self._est(e, times)
        self.cost[id(e)] = cost
        return cost, size

    def _est(self, e: A.Expr, times: int) -> tuple[int, Sz]:
        if isinstance(e, A.Const):
            v = e.value
            return 1, (Sz(len(v), 0) if isinstance(v, str | bytes) else _ZERO)
        if isinstance(e, A.Ident):
            found = self.lookup(e.name)
            if found is not None:
                return 1, found[0]
            return 1, self.input_size(e)
        if isinstance(e, A.Comprehension):
            return self.comprehension(e, times)
        kids = A.children(e)
        self.kids[id(e)] = kids
        sub = [self.est(k, times) for k in kids]
        cost = 1 + sum(c for c, _ in sub)
        sizes = [s for _, s in sub]
        if isinstance(e, A.Select):
            if e.test_only:
                return cost, _ZERO
            return cost, _ZERO if self.kind(e) in _SCALAR else sizes[0]
        if isinstance(e, A.ListExpr):
            return cost, Sz(sum(s.chars for s in sizes), len(sizes))
        if isinstance(e, A.MapExpr):
            return cost, Sz(sum(s.chars for s in sizes), len(e.entries))
        if isinstance(e, A.Call):
            own, size = self.call(e, sizes)
            return cost + own, size
        return cost, _ZERO

    def input_size(self, e: A.Expr) -> Sz:
        if self.kind(e) in _SCALAR:
            return _ZERO
        return Sz(self.inputs.max_string, self.inputs.max_elements)

    def comprehension(self, e: A.Comprehension, times: int) -> tuple[int, Sz]:
        self.kids[id(e)] = [e.range, *e.args]
        rcost, rsz = self.est(e.range, times)
        if e.kind not in _LOOPS:  # bind, optMap, optFlatMap: the body runs once
            self.scopes.append({e.var: (rsz, None, None)})
            try:
                bcost, bsz = self.est(e.args[0], times)
            finally:
                self.scopes.pop()
            return 1 + rcost + bcost, bsz
        n = _literal_size(e.range)
        if n is None:
            n = min(rsz.elems, max(self.limits.max_list, self.inputs.max_elements))
        share = Sz(-(-rsz.chars // n) if n else 0, rsz.elems)
        key = self.path(e.range)
        scope: dict[str, tuple[Sz, tuple[str, ...] | None, Sz | None]] = {
            e.var: (share, key, share)}
        if e.var2:
            scope[e.var2] = (share, None, None)
        self.scopes.append(scope)
        try:
            body = [self.est(a, times * max(n, 1)) for a in e.args]
        finally:
            self.scopes.pop()
        cost = 1 + rcost + n * (1 + sum(c for c, _ in body))
        k = e.kind
        if k in ("all", "exists", "exists_one"):
            return cost, _ZERO
        last = body[-1][1]
        if k == "filter" or self.is_var(e.args[-1], e.var):
            size = Sz(rsz.chars, n)
        elif k == "transformMapEntry":
            size = Sz(n * last.chars, n * max(last.elems, 1))
        else:
            size = Sz(n * last.chars + (rsz.chars if k == "transformMap" else 0), n)
        return cost + self.built(e, size, False, True), size

    def is_var(self, e: A.Expr, name: str) -> bool:
        return isinstance(e, A.Ident) and e.name == name and self.lookup(name) is None

    def call(self, e: A.Call, sizes: list[Sz]) -> tuple[int, Sz]:
        fn = e.function
        if fn == "_+_" and e.target is None:
            ka, kb = (self.kind(a) for a in e.args)
            if ka in _SCALAR or kb in _SCALAR:
                return 0, _ZERO
            a, b = sizes
            s = Sz(a.chars + b.chars, a.elems + b.elems)
            k = self.kind(e)
            return self.built(e, s, k != "list", k not in ("string", "bytes")), s
        if fn == "_[_]" and e.target is None:
            c, i = e.args
            if isinstance(i, A.Ident):
                found = self.lookup(i.name)
                if found is not None and found[1] is not None and found[1] == self.path(c):
                    assert found[2] is not None
                    return 0, found[2]  # range[var]: one element's share
            return 0, _ZERO if self.kind(e) in _SCALAR else sizes[0]
        if fn in ("_?._", "_[?_]", "@optelem") and e.target is None:
            return 0, sizes[0]  # the optional holds (a part of) its operand
        if fn in ("_==_", "_!=_") and any(self.kind(a) not in _SCALAR for a in e.args) \
                and not any(self.kind(a) in ("string", "bytes") for a in e.args):
            # two lists or maps are compared element by element
            return units(min(sizes[0].elems, sizes[1].elems)), _ZERO
        if fn == "@in":  # a list membership test scans the list
            return (0 if self.kind(e.args[1]) == "map" else units(sizes[1].elems)), _ZERO
        if fn in ("_&&_", "_||_", "_?_:_", "!_", "-_") or fn.startswith("_"):
            if fn == "_?_:_":
                return 0, Sz(max(sizes[1].chars, sizes[2].chars),
                             max(sizes[1].elems, sizes[2].elems))
            return 0, _ZERO
        name, member = self.calls.get(id(e), (fn.lstrip("."), e.target is not None))
        if not member and e.target is not None:  # ``math.least(l)``: ``math`` is a namespace
            sizes = sizes[1:]
        rule = _RULES.get(name)
        f = self.reg.get(name)
        if rule is not None and f is not None and f.grow is not None and any(
                len(o.params) == len(sizes) for o in f.overloads):
            # (an unchecked tree may call it with any number of arguments: no overload
            # takes them, the call fails at runtime, and the generic estimate below does)
            return rule(self, e, sizes)
        result = _ZERO if self.kind(e) in _SCALAR else Sz(
            max((s.chars for s in sizes), default=0), max((s.elems for s in sizes), default=0))
        if f is not None and f.cost:  # as the generated code charges: every argument
            return f.cost + sum(units(max(s.chars, s.elems)) for s in sizes), result
        return 0, result

    def args(self, e: A.Call) -> list[A.Expr]:
        return ([e.target] if e.target is not None else []) + list(e.args)


# -- rules of the size-aware built-ins (mirror meter.grow_*) ---------------------------------

def _replace(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    args = est.args(e)
    s = sz[0].chars
    old = est.literal_str(args[1])
    new = sz[2].chars
    old_len = len(old) if old is not None else 0
    size = s
    if new > old_len:
        count = s // old_len if old_len else s + 1
        if len(args) > 3 and isinstance(args[3], A.Const) and type(args[3].value) is int \
                and args[3].value >= 0:
            count = min(count, args[3].value)
        size += count * (new - old_len)
    out = Sz(size, 0)
    return est.built(e, Sz(s + size, 0), True, False), out


def _split(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    args = est.args(e)
    s = sz[0].chars
    sep = est.literal_str(args[1])
    count = s // len(sep) + 1 if sep else s + 1
    out = Sz(s, count)
    return units(s) + est.built(e, out, False, True), out


def _join(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    lst = sz[0]
    sep = sz[1].chars if len(sz) > 1 else 0
    out = Sz(lst.chars + sep * lst.elems, 0)
    return est.built(e, Sz(out.chars + lst.elems, 0), True, False), out


def _format(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    args = est.args(e)
    fmt = est.literal_str(args[0])
    if fmt is None:  # a computed format string may carry any precision
        out = Sz(est.limits.max_string, 0)
        return units(out.chars), out
    from .meter import _PREC, hex_clause
    size = len(fmt) + sum(int(p) for p in _PREC.findall(fmt))
    per_char = 8 if hex_clause(fmt) else 1
    values = sz[1] if len(sz) > 1 else _ZERO  # unchecked ``s.format()``: fails at run time
    size += _NUMBER_TEXT * max(values.elems, 1) + per_char * values.chars
    out = Sz(size, 0)
    return est.built(e, out, True, False), out


def _same(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    out = Sz(sz[0].chars, 0)
    return est.built(e, out, True, False), out


def _quote(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    out = Sz(2 * sz[0].chars + 2, 0)
    return est.built(e, out, True, False), out


def _scan(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    return units(sz[0].chars), _ZERO


def _prefix(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    if est.literal_str(est.args(e)[1]) is not None:
        return 0, _ZERO  # inlined, not charged (codegen.string_method)
    return units(sz[1].chars), _ZERO


def _each(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    if len(sz) == 1:
        return 1 + sz[0].elems, _ZERO
    return 1 + len(sz), _ZERO


def _matches(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    return 4 + units(sz[0].chars + sz[1].chars), _ZERO


def _to_string(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    k = est.kind(est.args(e)[0])
    if k in ("bytes", "dyn"):
        return _same(est, e, sz)
    return 1, Sz(_NUMBER_TEXT if k != "string" else sz[0].chars, 0)


def _to_bytes(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    out = Sz(4 * sz[0].chars, 0)  # UTF-8: up to 4 bytes a character
    return est.built(e, out, True, False), out


def _b64_encode(est: _Estimator, e: A.Call, sz: list[Sz]) -> tuple[int, Sz]:
    out = Sz(4 * ((sz[0].chars + 2) // 3), 0)
    return est.built(e, out, True, False), out


_Rule = Callable[[_Estimator, A.Call, list[Sz]], tuple[int, Sz]]
_RULES: dict[str, _Rule] = {
    "replace": _replace, "split": _split, "join": _join, "format": _format,
    "lowerAscii": _same, "upperAscii": _same, "trim": _same, "reverse": _same,
    "substring": _same, "base64.decode": _same, "strings.quote": _quote,
    "indexOf": _scan, "lastIndexOf": _scan, "matches": _matches, "string": _to_string,
    "bytes": _to_bytes, "base64.encode": _b64_encode,
    "math.greatest": _each, "math.least": _each, "startsWith": _prefix, "endsWith": _prefix,
}


def estimate_detail(e: A.Expr, registry: Registry, inputs: InputSizes | None = None,
                    limits: Limits | None = None, types: dict[int, T] | None = None,
                    calls: dict[int, tuple[str, bool]] | None = None) -> Estimate:
    """Worst-case cost units for evaluating ``e`` once, and where they go."""
    est = _Estimator(registry, inputs or InputSizes(), limits or Limits(), types, calls)
    total, _ = est.est(e, 1)
    node = e
    while True:  # descend while one child accounts for most of the cost
        share = est.cost[id(node)] * est.times[id(node)]
        if id(node) in est.notes:
            break
        best = max(est.kids.get(id(node), []),
                   key=lambda k: est.cost[id(k)] * est.times[id(k)], default=None)
        if best is None or 2 * est.cost[id(best)] * est.times[id(best)] <= share:
            break
        if isinstance(node, A.Comprehension) and best is not node.range \
                and not _has_hotspot(est, best):
            break  # the loop itself is the cost, not one part of its body
        node = best
    return Estimate(total, node, est.notes.get(id(node), ""))


def _has_hotspot(est: _Estimator, e: A.Expr) -> bool:
    """A size note or a nested comprehension under ``e`` (worth naming over the loop)."""
    if id(e) in est.notes or isinstance(e, A.Comprehension):
        return True
    return any(_has_hotspot(est, k) for k in est.kids.get(id(e), []))


def estimate(e: A.Expr, registry: Registry, assumed_size: int = DEFAULT_ASSUMED_SIZE,
             max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
             max_string: int = DEFAULT_MAX_STRING, max_list: int = DEFAULT_MAX_LIST) -> int:
    """Worst-case cost units for evaluating ``e`` once (untyped: dyn everywhere)."""
    return estimate_detail(e, registry, InputSizes(max_input_bytes, assumed_size),
                           Limits(max_string, max_list)).cost


def _literal_size(e: A.Expr) -> int | None:
    if isinstance(e, A.ListExpr):
        return len(e.elements)
    if isinstance(e, A.MapExpr):
        return len(e.entries)
    return None
