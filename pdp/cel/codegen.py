"""Compile a checked CEL tree to one Python function via the ``ast`` module.

The generated function is ``def cel(_act, _bud)``.  Every value that comes from the policy
text is an ``ast.Constant`` (or a namespace slot for non-literal constants); identifiers in
generated code are synthetic (``_t3``, ``_l1``), never taken from user text.  Errors are
Python exceptions; ``&&``, ``||`` and the macros catch them where CEL says errors are
absorbed.

Cost (units in meter.py): the static node count of the expression is charged once at
entry, ``1 + nodes of the body`` on every comprehension iteration (the clock is checked
whenever the total crosses a multiple of 256 units), and operations that build strings,
bytes, lists or maps are charged, and capped, by what they will produce just before they
run.  The generated function's globals hold ``__builtins__ = {}`` and the helpers below:
nothing else of Python is reachable from generated code.
"""

from __future__ import annotations

import ast as py
import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from pdp.turns import clock

from . import ast as A
from . import domain as D
from . import ext_optionals as O
from . import meter as M
from . import runtime as R
from . import stdlib as S
from .checker import TYPE_VALUE_NAMES, CheckResult
from .cost import loop_body_nodes, static_nodes
from .errors import CelCompileError
from .functions import Registry
from .parser import OPT_ELEMENT, OPT_INDEX, OPT_SELECT
from .types import DEFERRED_OBJECTS, PROTO_OBJECTS, T
from .values import INT64_MAX, INT64_MIN, TYPE_VALUES, Optional

_BASE_NS: dict[str, Any] = {
    "_type": type, "_dict": dict, "_list": list, "_int": int, "_float": float, "_str": str,
    "_len": len, "_mono": clock, "_Exc": Exception,
    "_absorb": R.absorb, "_lerr": R.logic_err, "_rcond": R.raise_cond, "_iter": R.iter_range,
    "_pairs": R.iter_pairs, "_undeclared": R.undeclared, "_costx": R.cost_exceeded,
    "_dlx": R.deadline_exceeded, "_ovf": R.overflow, "_csz": R.size_cost,
    "_scanu": R.scan_units, "_equ": R.eq_units,
    "_eq": S.cel_eq, "_ne": S.cel_ne, "_eqb": S.eq_bounded, "_neb": S.ne_bounded,
    "_inb": S.in_bounded, "_lt": S.lt, "_le": S.le, "_gt": S.gt, "_ge": S.ge,
    "_add": S.add, "_sub": S.sub, "_mul": S.mul, "_div": S.div, "_mod": S.mod,
    "_neg": S.neg, "_not": S.logical_not, "_index": S.index, "_sel": S.select,
    "_has": S.has_field, "_hasset": S.has_set_field, "_in": S.contains_in, "_size": S.size,
    "_mkmap": S.make_map,
    "_Opt": Optional, "_noov": S.raise_no_overload, "_merge": None, "_UNSET": object(),
    "_startswith": str.startswith, "_endswith": str.endswith,
    "_KNOWN": S.KNOWN_EXACT_TYPES, "_tyis": S.is_type_named,
    "_optsel": O.opt_select, "_optidx": O.opt_index, "_optlist": O.opt_list,
    "_optmap": O.opt_map, "_vget": R.deferred_value,
}
# pure conversions whose literal calls are evaluated at compile time (immutable results)
_FOLDABLE = (S.to_duration, S.to_timestamp)
# receiver-only built-ins cached like path steps when repeated (``ep.endpointHost()``)
_PURE_MEMBERS = (D.endpoint_host, D.endpoint_port, D.is_localhost)
#: Static kinds whose values are never a list or map: ``==`` / ``in`` on them need no walk.
_SCALAR_KINDS = frozenset({"int", "uint", "double", "bool", "string", "bytes", "null",
                           "timestamp", "duration", "type"})
# namespace names of the exact Python types behind CEL type names (inlined type tests)
_EXACT_NS = {t: f"_xt{i}" for i, t in enumerate(S.EXACT_TYPE_NAMES)}
_BASE_NS.update({n: t for t, n in _EXACT_NS.items()})

_CMP_OPS = {"_<_": (py.Lt, "_lt"), "_<=_": (py.LtE, "_le"), "_>_": (py.Gt, "_gt"),
            "_>=_": (py.GtE, "_ge")}
_ARITH = {"_+_": (py.Add, "_add"), "_-_": (py.Sub, "_sub"), "_*_": (py.Mult, "_mul"),
          "_/_": (py.Div, "_div"), "_%_": (py.Mod, "_mod")}
MAX_BLOCK_DEPTH = 17  # CPython allows 20 statically nested blocks
CLOCK_MASK = 255  # loops check the clock when the cost total crosses a multiple of 256
# static kinds for which ``+`` never builds a string, bytes or list
_NO_BUILD = frozenset({"int", "uint", "double", "timestamp", "duration", "bool", "null_type"})


def _name(n: str) -> py.Name:
    return py.Name(id=n, ctx=py.Load())


def _store(n: str) -> py.Name:
    return py.Name(id=n, ctx=py.Store())


def _const(v: Any) -> py.expr:
    return py.Constant(value=v)


def _call(fn: str, *args: py.expr) -> py.Call:
    return py.Call(func=_name(fn), args=list(args), keywords=[])


def _assign(n: str, v: py.expr) -> py.Assign:
    return py.Assign(targets=[_store(n)], value=v, lineno=0)


def _is(a: py.expr, b: py.expr) -> py.Compare:
    return py.Compare(left=a, ops=[py.Is()], comparators=[b])


def _is_not(a: py.expr, b: py.expr) -> py.Compare:
    return py.Compare(left=a, ops=[py.IsNot()], comparators=[b])


def _raise(e: py.expr) -> py.Raise:
    return py.Raise(exc=e, cause=None)


class _Level:
    """Caching scope: the function body or one comprehension loop."""

    def __init__(self) -> None:
        self.vars: set[str] = set()      # python locals (re)bound on every iteration
        self.pre: list[py.stmt] = []     # cache resets before the loop
        self.per_iter: list[py.stmt] = []  # cache resets at the top of each iteration
        self.keys: dict[tuple[Any, ...], str] = {}


class CodeGen:
    """Generates the Python function for one checked expression."""

    def __init__(self, source: str, check: CheckResult, registry: Registry,
                 limits: M.Limits | None = None) -> None:
        self.src = source
        self.limits = limits or M.Limits()
        self.chk = check
        self.reg = registry
        # each node's path, once: every node of a chain asks for its own (quadratic if walked)
        self._paths: dict[int, tuple[Any, ...] | None] = {}
        self.ns: dict[str, Any] = dict(_BASE_NS)
        self.stmts: list[py.stmt] = []
        self.counter = itertools.count()
        self.locals: list[dict[str, str]] = []  # CEL macro var -> python local
        self.uses_budget = False
        # lazy path caching (loop-invariant hoisting + common subexpressions); levels[0] is
        # the function, one more level per enclosing comprehension loop
        self.levels: list[_Level] = [_Level()]
        self.path_counts: Counter[tuple[Any, ...]] = Counter()
        self.block_depth = 1  # the try/finally around the body

    # -- helpers -------------------------------------------------------------------------
    def tmp(self, prefix: str = "_t") -> str:
        return f"{prefix}{next(self.counter)}"

    def slot(self, value: Any, prefix: str = "_k") -> py.expr:
        """A namespace slot holding a constant that has no Python literal form."""
        n = self.tmp(prefix)
        self.ns[n] = value
        return _name(n)

    def constant(self, v: Any) -> py.expr:
        if v is None or type(v) in (bool, int, float, str, bytes):
            if type(v) is float and (math.isnan(v) or math.isinf(v)):
                return self.slot(v)
            return _const(v)
        return self.slot(v)

    def typ(self, e: A.Expr) -> T:
        return self.chk.types.get(id(e), T("dyn"))

    def block(self, fn: Callable[[], py.expr], target: str) -> list[py.stmt]:
        """Run ``fn`` collecting statements into a fresh block that ends assigning target."""
        saved = self.stmts
        self.stmts = []
        try:
            v = fn()
            self.stmts.append(_assign(target, v))
            return self.stmts
        finally:
            self.stmts = saved

    def guarded(self, e: A.Expr, target: str) -> list[py.stmt]:
        """Statements evaluating ``e`` into ``target``, errors captured as values."""
        if isinstance(e, A.Const):
            return [_assign(target, self.constant(e.value))]
        self.block_depth += 1
        self._depth_check(e)
        try:
            body = self.block(lambda: self.expr(e), target)
        finally:
            self.block_depth -= 1
        return [py.Try(
            body=body,
            handlers=[py.ExceptHandler(type=_name("_Exc"), name="_x", body=[
                _assign(target, _call("_absorb", _name("_x")))])],
            orelse=[], finalbody=[])]

    def _depth_check(self, e: A.Expr) -> None:
        if self.block_depth > MAX_BLOCK_DEPTH:
            raise CelCompileError("expression nests too many comprehensions / logical "
                                  "operators", self.src, e.offset)

    def _limit_check(self) -> py.If:
        return py.If(test=py.Compare(left=_name("_cost"), ops=[py.Gt()],
                                     comparators=[_name("_lim")]),
                     body=[py.Expr(_call("_costx", _name("_cost"), _name("_lim")))], orelse=[])

    def _clock_check(self, test: py.expr | None = None) -> py.If:
        clock: py.expr = py.Compare(left=_call("_mono"), ops=[py.Gt()],
                                    comparators=[_name("_dl")])
        if test is not None:
            clock = py.BoolOp(op=py.And(), values=[test, clock])
        return py.If(test=clock, body=[py.Expr(_call("_dlx"))], orelse=[])

    def tick(self, amount: int) -> list[py.stmt]:
        """Charge a constant (a loop iteration); check the limit, and the clock whenever
        the total crosses a multiple of CLOCK_MASK + 1 (every time for big charges)."""
        self.uses_budget = True
        crossed = None
        if amount <= CLOCK_MASK:
            crossed = py.Compare(left=py.BinOp(left=_name("_cost"), op=py.BitAnd(),
                                               right=_const(CLOCK_MASK)),
                                 ops=[py.Lt()], comparators=[_const(amount)])
        return [py.AugAssign(target=_store("_cost"), op=py.Add(), value=_const(amount)),
                self._limit_check(), self._clock_check(crossed)]

    def charge(self, amount: py.expr, clock: bool = False) -> None:
        """Charge a computed amount now (before the operation it pays for)."""
        self.stmts.extend(self.charge_stmts(amount, clock))

    def charge_stmts(self, amount: py.expr, clock: bool = False) -> list[py.stmt]:
        """The statements of a computed charge: the limit is checked, and the clock too
        when ``clock`` or when the charge makes the total cross a multiple of CLOCK_MASK + 1.
        Without the crossing test, a loop whose iterations each charge a scan (``x in l``,
        ``s.indexOf(t)`` of 4 000 elements) read the clock only when its constant tick
        happened to cross: once in ~50 iterations, 17 ms past a 50 ms deadline."""
        self.uses_budget = True
        before = self.tmp()
        out: list[py.stmt] = [
            _assign(before, _name("_cost")),
            py.AugAssign(target=_store("_cost"), op=py.Add(), value=amount),
            self._limit_check()]
        if clock:
            out.append(self._clock_check())
        else:
            crossed = py.Compare(left=py.BinOp(left=_name(before), op=py.BitXor(),
                                               right=_name("_cost")),
                                 ops=[py.Gt()], comparators=[_const(CLOCK_MASK)])
            out.append(self._clock_check(crossed))
        return out

    def grow_fn(self, grow: M.Grow) -> py.expr:
        """A namespace slot calling ``grow`` with this environment's caps; the built-in
        grow functions check the clock on large charges themselves, others go through
        meter.charged."""
        if getattr(grow, "__module__", None) == M.__name__:
            return self.slot(functools.partial(grow, self.limits), "_g")
        return self.slot(functools.partial(M.charged, grow, self.limits), "_g")

    # -- entry ---------------------------------------------------------------------------
    def generate(self, root: A.Expr) -> Callable[[Any, Any], Any]:
        self.count_paths(root)
        result = self.expr(root)
        entry = static_nodes(root)
        body = [*self.levels[0].pre, *self.stmts, py.Return(value=result)]
        if self.uses_budget:
            body.insert(0, self._limit_check())
            prologue: list[py.stmt] = [
                _assign("_cost", py.BinOp(
                    left=py.Attribute(value=_name("_bud"), attr="cost", ctx=py.Load()),
                    op=py.Add(), right=_const(entry))),
                _assign("_lim", py.Attribute(value=_name("_bud"), attr="limit", ctx=py.Load())),
                _assign("_dl", py.Attribute(value=_name("_bud"), attr="deadline_at",
                                            ctx=py.Load())),
            ]
            save = py.Assign(targets=[py.Attribute(value=_name("_bud"), attr="cost",
                                                   ctx=py.Store())],
                             value=_name("_cost"), lineno=0)
            body = [*prologue, py.Try(body=body, handlers=[], orelse=[], finalbody=[save])]
        else:  # straight-line code: one charge at entry, only when there is a budget
            bc = py.Attribute(value=_name("_bud"), attr="cost", ctx=py.Load())
            body.insert(0, py.If(test=_is_not(_name("_bud"), _const(None)), body=[
                py.AugAssign(target=py.Attribute(value=_name("_bud"), attr="cost",
                                                 ctx=py.Store()),
                             op=py.Add(), value=_const(entry)),
                py.If(test=py.Compare(left=bc, ops=[py.Gt()], comparators=[
                    py.Attribute(value=_name("_bud"), attr="limit", ctx=py.Load())]),
                      body=[py.Expr(_call("_costx", bc, py.Attribute(
                          value=_name("_bud"), attr="limit", ctx=py.Load())))],
                      orelse=[])], orelse=[]))
        fn = py.FunctionDef(
            name="cel", args=py.arguments(
                posonlyargs=[], args=[py.arg(arg="_act"), py.arg(arg="_bud")],
                kwonlyargs=[], kw_defaults=[], defaults=[]),
            body=body, decorator_list=[], returns=None, lineno=0)
        mod = py.Module(body=[fn], type_ignores=[])
        _locate(mod)
        try:
            code = compile(mod, "<cel>", "exec")
        except (SyntaxError, RecursionError) as e:
            raise CelCompileError(f"expression too complex to compile: {e}", self.src,
                                  0) from None
        ns = self.ns
        ns["__builtins__"] = {}  # generated code reaches only what the namespace passes
        exec(code, ns)
        compiled: Callable[[Any, Any], Any] = ns["cel"]
        return compiled

    # -- expressions ---------------------------------------------------------------------
    def expr(self, e: A.Expr) -> py.expr:
        if isinstance(e, A.Const):
            return self.constant(e.value)
        if isinstance(e, A.Ident):
            return self.ident(e)
        if isinstance(e, A.Select):
            return self.select(e)
        if isinstance(e, A.Call):
            return self.call(e)
        if isinstance(e, A.ListExpr):
            if any(_opt_element(x) is not None for x in e.elements):
                return _call("_optlist", py.Tuple(elts=[py.Tuple(elts=[
                    _const(_opt_element(x) is not None),
                    self.expr(_opt_element(x) or x)], ctx=py.Load()) for x in e.elements],
                    ctx=py.Load()))
            return py.List(elts=[self.expr(x) for x in e.elements], ctx=py.Load())
        if isinstance(e, A.MapExpr):
            return self.map_expr(e)
        if isinstance(e, A.Comprehension):
            return self.comprehension(e)
        if isinstance(e, A.StructExpr):
            return _call("_undeclared", _const(e.type_name))
        raise AssertionError(type(e))

    def ident(self, e: A.Expr) -> py.expr:
        r = self.chk.refs.get(id(e))
        if r is None:
            name = e.name if isinstance(e, A.Ident) else "?"
            return _call("_undeclared", _const(name))
        if r.kind == "local":
            for sc in reversed(self.locals):
                if r.name in sc:
                    return _name(sc[r.name])
            raise AssertionError(r.name)
        if r.kind == "var":
            return py.Subscript(value=_name("_act"), slice=_const(r.name), ctx=py.Load())
        if r.kind == "type":
            return self.slot(TYPE_VALUES[TYPE_VALUE_NAMES[r.name]], "_ty")
        return _call("_undeclared", _const(r.name))

    def _path_key(self, e: A.Expr) -> tuple[Any, ...] | None:
        """Structural key of a path expression (CEL names), for counting repeats."""
        path = self._path(e)
        return path if path is not None and len(path) > 2 else None

    def _path(self, e: A.Expr) -> tuple[Any, ...] | None:
        """``(kind, name, *steps)`` when ``e`` is a variable followed by steps (none or
        more), else None."""
        key = id(e)
        if key in self._paths:
            return self._paths[key]
        step: Any
        if isinstance(e, A.Select) and not e.test_only and key not in self.chk.refs:
            inner, step = e.operand, e.field
        elif (isinstance(e, A.Call) and e.function == "_[_]" and e.target is None
              and isinstance(e.args[1], A.Const)):
            v = e.args[1].value
            inner, step = e.args[0], (type(v).__name__, v)
        elif (isinstance(e, A.Call) and e.function == "_[_]" and e.target is None
              and self._local_name(e.args[1]) is not None):
            inner, step = e.args[0], ("@local", self._local_name(e.args[1]))
        elif (member := self._pure_member(e)) is not None:
            assert isinstance(e, A.Call) and e.target is not None
            inner, step = e.target, ("()", member)
        else:
            r = self.chk.refs.get(key)
            out = (r.kind, r.name) if r is not None and r.kind in ("var", "local") else None
            self._paths[key] = out
            return out
        below = self._path(inner)
        out = None if below is None else (*below, step)
        self._paths[key] = out
        return out

    def _local_name(self, e: A.Expr) -> str | None:
        """The CEL name when ``e`` is a comprehension / bind variable."""
        if isinstance(e, A.Ident):
            r = self.chk.refs.get(id(e))
            if r is not None and r.kind == "local":
                return r.name
        return None

    def _py_local(self, name: str) -> str:
        for sc in reversed(self.locals):
            if name in sc:
                return sc[name]
        raise AssertionError(name)

    def count_paths(self, e: A.Expr) -> None:
        key = self._path_key(e)
        if key is not None:
            self.path_counts[key] += 1
        for c in A.children(e):
            self.count_paths(c)

    def cached(self, e: A.Expr, gen: Callable[[], py.expr]) -> py.expr:
        """Evaluate a path (``a.b["c"]``, ``a.b[n].c``) once per scope, lazily.

        The cache lives in the innermost scope that binds a variable the path depends on
        (its root, the variables it is indexed by): the function for paths over declared
        variables, else the iteration of the comprehension binding them.  Used from a
        deeper loop the path is loop-invariant and cached even when it occurs once; in its
        own scope only repeated paths are cached.  A failing evaluation is not cached, so
        errors and short circuits behave exactly as without caching."""
        key = self._path_key(e)
        if key is None:
            return gen()
        pyroot = self._py_local(key[1]) if key[0] == "local" else key[1]
        steps = [(s[0], self._py_local(s[1])) if type(s) is tuple and s[0] == "@local" else s
                 for s in key[2:]]
        deps = {s[1] for s in steps if type(s) is tuple and s[0] == "@local"}
        if key[0] == "local":
            deps.add(pyroot)
        home = 0
        if deps:
            for i in range(len(self.levels) - 1, -1, -1):
                if deps & self.levels[i].vars:
                    home = i
                    break
            else:
                return gen()  # a variable no scope knows of: do not cache
        if home == len(self.levels) - 1 and self.path_counts[key] < 2:
            return gen()
        level = self.levels[home]
        inits = level.per_iter if home > 0 else level.pre
        full = (key[0], pyroot, *steps)
        h = level.keys.get(full)
        if h is None:
            h = level.keys[full] = self.tmp("_h")
            inits.append(_assign(h, _name("_UNSET")))
        inner = gen()
        return py.IfExp(test=_is_not(_name(h), _name("_UNSET")), body=_name(h),
                        orelse=py.NamedExpr(target=_store(h), value=inner))

    def select(self, e: A.Select) -> py.expr:
        if id(e) in self.chk.refs:
            return self.ident(e)
        if not e.test_only:
            return self.cached(e, lambda: self._select(e))
        return self._select(e)

    def _select(self, e: A.Select) -> py.expr:
        operand = self.expr(e.operand)
        f = _const(e.field)
        ot = self.typ(e.operand)
        if not e.test_only and ot.kind == "object" and ot.name in DEFERRED_OBJECTS:
            return _call("_vget", operand, f)
        if e.test_only and ot.kind == "object" and ot.name in PROTO_OBJECTS:
            return _call("_hasset", operand, f)
        t = self.tmp()
        if e.test_only:
            fast: py.expr = py.Compare(left=f, ops=[py.In()], comparators=[_name(t)])
            slow = _call("_has", _name(t), f)
        else:
            fast = py.Subscript(value=_name(t), slice=f, ctx=py.Load())
            slow = _call("_sel", _name(t), f)
        test = _is(_call("_type", py.NamedExpr(target=_store(t), value=operand)),
                   _name("_dict"))
        return py.IfExp(test=test, body=fast, orelse=slow)

    def map_expr(self, e: A.MapExpr) -> py.expr:
        if any(_opt_element(v) is not None for _, v in e.entries):
            return _call("_optmap", py.Tuple(elts=[py.Tuple(elts=[
                self.expr(k), self.expr(_opt_element(v) or v),
                _const(_opt_element(v) is not None)], ctx=py.Load()) for k, v in e.entries],
                ctx=py.Load()))
        keys = [k.value for k, _ in e.entries if isinstance(k, A.Const)]
        if (len(keys) == len(e.entries) and all(type(k) is str for k in keys)
                and len(set(keys)) == len(keys)):
            return py.Dict(keys=[_const(k) for k in keys],
                           values=[self.expr(v) for _, v in e.entries])
        pairs: list[py.expr] = [py.Tuple(elts=[self.expr(k), self.expr(v)], ctx=py.Load())
                 for k, v in e.entries]
        return _call("_mkmap", py.Tuple(elts=pairs, ctx=py.Load()))

    # -- calls ---------------------------------------------------------------------------
    def call(self, e: A.Call) -> py.expr:
        fn = e.function
        if fn in ("_&&_", "_||_"):
            return self.logical(e)
        if fn == "_?_:_":
            return self.conditional(e)
        args = e.args
        if fn in ("_==_", "_!=_"):
            return self.equality(e, fn == "_!=_")
        if fn in _CMP_OPS:
            return self.compare(e)
        if fn in _ARITH:
            return self.arith(e)
        if fn == "!_":
            if self.typ(args[0]).kind == "bool":
                return py.UnaryOp(op=py.Not(), operand=self.expr(args[0]))
            return _call("_not", self.expr(args[0]))
        if fn == "-_":
            return _call("_neg", self.expr(args[0]))
        if fn == "_[_]":
            return self.index(e)
        if fn in (OPT_SELECT, OPT_INDEX):
            return _call("_optsel" if fn == OPT_SELECT else "_optidx", self.expr(args[0]),
                         self.expr(args[1]))
        if fn == "@in":
            return self.in_op(e)
        if e.target is not None and not args and self._pure_member(e) is not None:
            return self.cached(e, lambda: self.function_call(e))
        return self.function_call(e)

    def _pure_member(self, e: A.Expr) -> str | None:
        """The name when ``e`` is ``x.f()`` of a pure built-in worth caching like a path
        (``ep.endpointHost()``): same value for the same receiver, no budget charge."""
        if not (isinstance(e, A.Call) and e.target is not None and not e.args):
            return None
        name, member = self.chk.calls.get(id(e), (e.function.lstrip("."), True))
        f = self.reg.get(name)
        if not member or f is None or f.cost or f.member_impl not in _PURE_MEMBERS:
            return None
        return name

    def function_call(self, e: A.Call) -> py.expr:
        fn = e.function
        args = e.args
        name, member = self.chk.calls.get(id(e), (fn.lstrip("."), e.target is not None))
        f = self.reg.get(name)
        impl = None
        if f is not None:
            impl = f.member_impl if member else f.impl
        all_args = ([e.target] if member and e.target is not None else []) + list(args)
        if name == "size" and len(all_args) == 1:
            k = self.typ(all_args[0]).kind
            if k in ("string", "list", "map", "bytes"):
                return _call("_len", self.expr(all_args[0]))
            return _call("_size", self.expr(all_args[0]))
        if impl is None:
            for a in all_args:  # evaluate arguments so their errors win, as the reference
                self.stmts.append(py.Expr(self.expr(a)))
            return _call("_undeclared", _const(name))
        assert f is not None
        folded = self.fold(f.impl if not member else None, all_args)
        if folded is not None:
            return folded
        if (member and name in ("startsWith", "endsWith", "contains") and len(all_args) == 2
                and isinstance(all_args[1], A.Const) and type(all_args[1].value) is str):
            return self.string_method(name, self.expr(all_args[0]), all_args[1],
                                      self.slot(impl, "_f"))
        py_args: list[py.expr] = [self.expr(a) for a in all_args]
        if f.grow is not None and py_args:
            temps = [self.tmp() for _ in py_args]
            for t, pa in zip(temps, py_args, strict=True):
                self.stmts.append(_assign(t, pa))
            py_args = [_name(t) for t in temps]
            self.charge(py.Call(func=self.grow_fn(f.grow), args=[_name("_dl"), *py_args],
                                keywords=[]))
        elif f.cost and py_args:  # the base cost and the size of every argument
            temps = [self.tmp() for _ in py_args]
            for t, pa in zip(temps, py_args, strict=True):
                self.stmts.append(_assign(t, pa))
            py_args = [_name(t) for t in temps]
            amount: py.expr = _const(f.cost)
            for t in temps:
                amount = py.BinOp(left=amount, op=py.Add(), right=_call("_csz", _name(t)))
            self.charge(amount, clock=True)
        fslot = self.slot(impl, "_f")
        if f.clocked:  # it reads the clock itself, against this evaluation's deadline
            self.uses_budget = True
            py_args = [_name("_dl"), *py_args]
        return py.Call(func=fslot, args=py_args, keywords=[])

    def fold(self, impl: Callable[..., Any] | None, args: list[A.Expr]) -> py.expr | None:
        """``duration("60s")`` / ``timestamp("...")`` of a literal: computed once, here.
        Only the standard implementations (not user overrides), and only when they succeed
        (a failing literal keeps failing at runtime, as before)."""
        if impl not in _FOLDABLE or len(args) != 1 or not isinstance(args[0], A.Const):
            return None
        try:
            value = impl(args[0].value)
        except Exception:
            return None
        return self.slot(value, "_k")

    def index(self, e: A.Call) -> py.expr:
        k = e.args[1]
        if isinstance(k, A.Const) or self._local_name(k) is not None:
            return self.cached(e, lambda: self._index(e))
        return self._index(e)

    def _index(self, e: A.Call) -> py.expr:
        c, k = e.args
        kname = self._local_name(k)
        if kname is not None:  # a comprehension variable: no side effects, never fails
            tc, tk = self.tmp(), self._py_local(kname)
            test: py.expr = py.BoolOp(op=py.And(), values=[
                _is(_call("_type", py.NamedExpr(target=_store(tc), value=self.expr(c))),
                    _name("_dict")),
                _is(_call("_type", _name(tk)), _name("_str"))])
            return py.IfExp(test=test, body=py.Subscript(value=_name(tc), slice=_name(tk),
                                                          ctx=py.Load()),
                            orelse=_call("_index", _name(tc), _name(tk)))
        if not isinstance(k, A.Const):
            tc, tk = self.tmp(), self.tmp()
            self.stmts.append(_assign(tc, self.expr(c)))
            self.stmts.append(_assign(tk, self.expr(k)))
            test = py.BoolOp(op=py.And(), values=[
                _is(_call("_type", _name(tc)), _name("_dict")),
                _is(_call("_type", _name(tk)), _name("_str"))])
            return py.IfExp(test=test, body=py.Subscript(value=_name(tc), slice=_name(tk),
                                                          ctx=py.Load()),
                            orelse=_call("_index", _name(tc), _name(tk)))
        if isinstance(k, A.Const) and type(k.value) is str:
            t = self.tmp()
            test = _is(_call("_type", py.NamedExpr(target=_store(t), value=self.expr(c))),
                       _name("_dict"))
            return py.IfExp(test=test, body=py.Subscript(value=_name(t), slice=_const(k.value),
                                                          ctx=py.Load()),
                            orelse=_call("_index", _name(t), _const(k.value)))
        return _call("_index", self.expr(c), self.expr(k))

    def in_op(self, e: A.Call) -> py.expr:
        """``x in c``: a map is one key test; a list is scanned, charged by its length
        before the scan (in or out of loops: the static estimate charges every scan), and
        the scan itself reads the clock as it goes (stdlib.in_bounded)."""
        x, c = e.args
        if isinstance(x, A.Const) and type(x.value) is str:
            # "k" in m: a dict key test; anything else through the charged scan
            t = self.tmp()
            lit = _const(x.value)
            self.stmts.append(_assign(t, self.expr(c)))
            return self.scan_charged(_is(_call("_type", _name(t)), _name("_dict")),
                                     py.Compare(left=lit, ops=[py.In()],
                                                comparators=[_name(t)]), lit, t)
        consts = [el for el in c.elements if isinstance(el, A.Const)] \
            if isinstance(c, A.ListExpr) else []
        if (isinstance(c, A.ListExpr) and consts and len(consts) == len(c.elements)
                and all(type(el.value) is str for el in consts)):
            # x in ["a", "b"]: only a string can equal a string (never an error)
            t = self.tmp()
            strs = self.slot(frozenset(el.value for el in consts), "_k")
            return py.BoolOp(op=py.And(), values=[
                _is(_call("_type", py.NamedExpr(target=_store(t), value=self.expr(x))),
                    _name("_str")),
                py.Compare(left=_name(t), ops=[py.In()], comparators=[strs])])
        tx, tc = self.tmp(), self.tmp()
        self.stmts.append(_assign(tx, self.expr(x)))
        self.stmts.append(_assign(tc, self.expr(c)))
        both = py.BoolOp(op=py.And(), values=[
            _is(_call("_type", _name(tc)), _name("_dict")),
            _is(_call("_type", _name(tx)), _name("_str"))])
        return self.scan_charged(both, py.Compare(left=_name(tx), ops=[py.In()],
                                                  comparators=[_name(tc)]), _name(tx), tc)

    def scan_charged(self, fast_test: py.expr, fast: py.expr, x: py.expr, t: str) -> py.expr:
        """``fast`` (a dict key test) when ``fast_test``, else the charged, clock-reading
        generic test."""
        v = self.tmp("_v")
        charge = self.charge_stmts(_call("_scanu", _name(t)))
        self.stmts.append(py.If(test=fast_test, body=[_assign(v, fast)], orelse=[
            *charge, _assign(v, _call("_inb", _name("_dl"), x, _name(t)))]))
        return _name(v)

    def string_method(self, name: str, recv: py.expr, arg: A.Const,
                      impl_slot: py.expr) -> py.expr:
        """Inline ``s.startsWith("lit")`` (and friends) when ``s`` is a string; contains
        scans the whole receiver, so it is charged by it first (as the estimate does)."""
        t = self.tmp()
        if name == "contains":
            self.stmts.append(_assign(t, recv))
            self.charge(_call("_scanu", _name(t)))
            recv = _name(t)
        test = _is(_call("_type", py.NamedExpr(target=_store(t), value=recv)), _name("_str"))
        lit = _const(arg.value)
        fast: py.expr
        if name == "contains":
            fast = py.Compare(left=lit, ops=[py.In()], comparators=[_name(t)])
        else:
            fast = _call("_startswith" if name == "startsWith" else "_endswith", _name(t), lit)
        return py.IfExp(test=test, body=fast,
                        orelse=py.Call(func=impl_slot, args=[_name(t), lit], keywords=[]))

    def _type_literal(self, e: A.Expr) -> str | None:
        """The runtime type-value name when ``e`` is a type identifier (``map``)."""
        if not isinstance(e, A.Ident | A.Select):
            return None
        r = self.chk.refs.get(id(e))
        if r is None or r.kind != "type":
            return None
        return TYPE_VALUE_NAMES.get(r.name)

    def _is_type_call(self, e: A.Expr) -> bool:
        """``type(x)`` calling the standard ``type`` function."""
        if not (isinstance(e, A.Call) and e.target is None and len(e.args) == 1):
            return False
        if self.chk.calls.get(id(e), (e.function.lstrip("."), False)) != ("type", False):
            return False
        f = self.reg.get("type")
        return f is not None and f.impl is S.type_of

    def type_test(self, e: A.Call, negate: bool) -> py.expr | None:
        """``type(x) == map`` (either operand order, ``!=`` too) as an exact-type test:
        ``type(v) is dict``; a value whose exact type is not one of the known ones goes
        through ``is_type_named`` (subclasses, unsupported values: ``type()`` fails there,
        as it would in the generic equality).  Errors of ``x`` propagate unchanged."""
        a, b = e.args
        for call, lit in ((a, b), (b, a)):
            name = self._type_literal(lit)
            if name is None or not self._is_type_call(call):
                continue
            assert isinstance(call, A.Call)
            v, t = self.tmp(), self.tmp()
            first = py.NamedExpr(target=_store(t), value=_call(
                "_type", py.NamedExpr(target=_store(v), value=self.expr(call.args[0]))))
            exact = [_EXACT_NS[ty] for ty, n in S.EXACT_TYPE_NAMES.items() if n == name]
            slow = py.BoolOp(op=py.And(), values=[
                py.Compare(left=_name(t), ops=[py.NotIn()], comparators=[_name("_KNOWN")]),
                _call("_tyis", _name(v), _const(name))])
            if not exact:
                first_test: py.expr = py.BoolOp(op=py.And(), values=[
                    py.Compare(left=first, ops=[py.NotIn()], comparators=[_name("_KNOWN")]),
                    _call("_tyis", _name(v), _const(name))])
            else:
                tests: list[py.expr] = [_is(first, _name(exact[0]))]
                tests += [_is(_name(t), _name(x)) for x in exact[1:]]
                first_test = py.BoolOp(op=py.Or(), values=[*tests, slow])
            return py.UnaryOp(op=py.Not(), operand=first_test) if negate else first_test
        return None

    def equality(self, e: A.Call, negate: bool) -> py.expr:
        tt = self.type_test(e, negate)
        if tt is not None:
            return tt
        a, b = e.args
        if isinstance(a, A.Const) and not isinstance(b, A.Const):
            a, b = b, a
        ta, tb = self.typ(a).kind, self.typ(b).kind
        plain = False
        if isinstance(b, A.Const):
            v = b.value
            if v is None:
                return (_is_not if negate else _is)(self.expr(a), _const(None))
            if type(v) is bool:
                return (_is_not if negate else _is)(self.expr(a), _const(v))
            if type(v) in (str, bytes) or (type(v) in (int, float) and v not in (0, 1)):
                plain = True
        if ta == tb and ta in ("int", "uint", "double", "string", "bytes", "bool"):
            plain = True
        if plain:
            op = py.NotEq() if negate else py.Eq()
            return py.Compare(left=self.expr(a), ops=[op], comparators=[self.expr(b)])
        if self.may_hold_containers(a) or self.may_hold_containers(b):
            # a list or map walked element by element: charged by its length first (as the
            # estimate does), bounded by the deadline as it goes (stdlib)
            x, y = self.tmp(), self.tmp()
            self.stmts.append(_assign(x, self.expr(a)))
            self.stmts.append(_assign(y, self.expr(b)))
            self.charge(_call("_equ", _name(x), _name(y)))
            return _call("_neb" if negate else "_eqb", _name("_dl"), _name(x), _name(y))
        return _call("_ne" if negate else "_eq", self.expr(a), self.expr(b))

    def may_hold_containers(self, e: A.Expr) -> bool:
        """Whether ``e``'s value may be a list or map (or an optional of one)."""
        return self.typ(e).kind not in _SCALAR_KINDS

    def compare(self, e: A.Call) -> py.expr:
        op, helper = _CMP_OPS[e.function]
        a, b = e.args
        ta, tb = self.typ(a).kind, self.typ(b).kind
        if ta == tb and ta in ("int", "uint", "double", "string", "bytes"):
            return py.Compare(left=self.expr(a), ops=[op()], comparators=[self.expr(b)])
        if isinstance(b, A.Const) and type(b.value) in (int, float) and ta != "bool":
            t = self.tmp()
            test = _is(_call("_type", py.NamedExpr(target=_store(t), value=self.expr(a))),
                       _name("_int" if type(b.value) is int else "_float"))
            return py.IfExp(test=test, body=py.Compare(left=_name(t), ops=[op()],
                                                       comparators=[self.expr(b)]),
                            orelse=_call(helper, _name(t), self.expr(b)))
        return _call(helper, self.expr(a), self.expr(b))

    def arith(self, e: A.Call) -> py.expr:
        op, helper = _ARITH[e.function]
        a, b = e.args
        ta, tb = self.typ(a).kind, self.typ(b).kind
        if e.function == "_+_" and ta not in _NO_BUILD and tb not in _NO_BUILD:
            return self.concat(a, b, ta, tb)
        if ta == tb and e.function in ("_+_", "_-_", "_*_"):
            if ta == "double" or (ta in ("string", "bytes") and e.function == "_+_"):
                return py.BinOp(left=self.expr(a), op=op(), right=self.expr(b))
            if ta == "int":
                t = self.tmp()
                val = py.BinOp(left=self.expr(a), op=op(), right=self.expr(b))
                rng = py.Compare(left=_const(INT64_MIN),
                                 ops=[py.LtE(), py.LtE()],
                                 comparators=[py.NamedExpr(target=_store(t), value=val),
                                              _const(INT64_MAX)])
                return py.IfExp(test=rng, body=_name(t), orelse=_call("_ovf"))
        return _call(helper, self.expr(a), self.expr(b))

    def concat(self, a: A.Expr, b: A.Expr, ta: str, tb: str) -> py.expr:
        """``+`` that may build a string, bytes or list: charged and capped by the sum of
        the operand sizes before the result is built."""
        t1, t2 = self.tmp(), self.tmp()
        self.stmts.append(_assign(t1, self.expr(a)))
        self.stmts.append(_assign(t2, self.expr(b)))
        self.charge(py.Call(func=self.grow_fn(M.grow_add),
                            args=[_name("_dl"), _name(t1), _name(t2)], keywords=[]))
        if ta == tb and ta in ("string", "bytes"):
            return py.BinOp(left=_name(t1), op=py.Add(), right=_name(t2))
        return _call("_add", _name(t1), _name(t2))

    # -- logic ---------------------------------------------------------------------------
    def _flatten(self, e: A.Expr, fn: str, out: list[A.Expr]) -> None:
        if isinstance(e, A.Call) and e.function == fn and e.target is None:
            for a in e.args:
                self._flatten(a, fn, out)
        else:
            out.append(e)

    def logical(self, e: A.Call) -> py.expr:
        is_and = e.function == "_&&_"
        ops: list[A.Expr] = []
        self._flatten(e, e.function, ops)
        short = _const(not is_and)  # the value that decides the result
        r, err, v = self.tmp("_r"), self.tmp("_e"), self.tmp("_v")
        self.stmts.append(_assign(r, _const(is_and)))
        self.stmts.append(_assign(err, _const(None)))
        for i, op in enumerate(ops):
            step = self.guarded(op, v)
            step.append(py.If(
                test=_is(_name(v), short),
                body=[_assign(r, short)],
                orelse=[py.If(test=_is_not(_name(v), _const(is_and)), body=[
                    py.If(test=_is(_name(err), _const(None)),
                          body=[_assign(err, _call("_lerr", _name(v), _const(e.function)))],
                          orelse=[])], orelse=[])]))
            if i == 0:
                self.stmts.extend(step)
            else:
                self.stmts.append(py.If(test=_is_not(_name(r), short), body=step, orelse=[]))
        self.stmts.append(py.If(
            test=py.BoolOp(op=py.And(), values=[_is_not(_name(r), short),
                                                _is_not(_name(err), _const(None))]),
            body=[_raise(_name(err))], orelse=[]))
        return _name(r)

    def conditional(self, e: A.Call) -> py.expr:
        c, a, b = e.args
        ct = self.tmp("_c")
        r = self.tmp("_r")
        self.stmts.append(_assign(ct, self.expr(c)))
        body_a = self.block(lambda: self.expr(a), r)
        body_b = self.block(lambda: self.expr(b), r)
        self.stmts.append(py.If(
            test=_is(_name(ct), _const(True)), body=body_a,
            orelse=[py.If(test=_is(_name(ct), _const(False)), body=body_b,
                          orelse=[py.Expr(_call("_rcond", _name(ct)))])]))
        return _name(r)

    # -- comprehensions ------------------------------------------------------------------
    def comprehension(self, e: A.Comprehension) -> py.expr:
        k = e.kind
        rng = self.expr(e.range)
        if k == "bind":
            lv = self.tmp("_l")
            self.stmts.append(_assign(lv, rng))
            self.levels[-1].vars.add(lv)
            self.locals.append({e.var: lv})
            try:
                return self.expr(e.args[0])
            finally:
                self.locals.pop()
        if k in ("optMap", "optFlatMap"):
            return self.opt_map(e, rng)
        l1 = self.tmp("_l")
        l2 = self.tmp("_l") if e.var2 else None
        scope = {e.var: l1}
        if e.var2 and l2:
            scope[e.var2] = l2
        r = self.tmp("_r")
        self.locals.append(scope)
        self.block_depth += 1
        self._depth_check(e)
        level = _Level()
        level.vars = {l1} | ({l2} if l2 else set())
        self.levels.append(level)
        if k in ("map", "transformList", "transformMap") and len(e.args) == 1:
            rv = self.tmp()
            self.stmts.append(_assign(rv, rng))
            self.charge(py.Call(func=self.grow_fn(M.grow_collect),
                                args=[_name("_dl"), _name(rv)], keywords=[]))
            rng = _name(rv)
        try:
            if l2 is None:
                target: py.expr = _store(l1)
                it = _call("_iter", rng)
            else:
                target = py.Tuple(elts=[_store(l1), _store(l2)], ctx=py.Store())
                it = _call("_pairs", rng)
            body = self.tick(loop_body_nodes(e))
            ntick = len(body)
            pre, post = self._comp_body(e, r, l1, l2, body)
            body[ntick:ntick] = level.per_iter
        finally:
            self.block_depth -= 1
            self.locals.pop()
            self.levels.pop()
        self.stmts.extend(level.pre)
        self.stmts.extend(pre)
        self.stmts.append(py.For(target=target, iter=it, body=body, orelse=[], lineno=0))
        self.stmts.extend(post)
        return _name(r)

    def _comp_body(self, e: A.Comprehension, r: str, l1: str, l2: str | None,
                   body: list[py.stmt]) -> tuple[list[py.stmt], list[py.stmt]]:
        k = e.kind
        v = self.tmp("_v")
        if k in ("all", "exists"):
            decide = k == "exists"  # the predicate value that ends the loop
            err = self.tmp("_e")
            body.extend(self.guarded(e.args[0], v))
            body.append(py.If(test=_is(_name(v), _const(decide)),
                              body=[_assign(r, _const(decide)), py.Break()],
                              orelse=[py.If(
                                  test=py.BoolOp(op=py.And(), values=[
                                      _is_not(_name(v), _const(not decide)),
                                      _is(_name(err), _const(None))]),
                                  body=[_assign(err, _call("_lerr", _name(v),
                                                           _const(k)))], orelse=[])]))
            pre: list[py.stmt] = [_assign(r, _const(not decide)), _assign(err, _const(None))]
            post: list[py.stmt] = [py.If(
                test=py.BoolOp(op=py.And(), values=[_is(_name(r), _const(not decide)),
                                                    _is_not(_name(err), _const(None))]),
                body=[_raise(_name(err))], orelse=[])]
            return pre, post
        if k == "exists_one":
            n = self.tmp("_n")
            body.extend(self.block(lambda: self.expr(e.args[0]), v))
            body.append(py.If(
                test=_is(_name(v), _const(True)),
                body=[py.AugAssign(target=_store(n), op=py.Add(), value=_const(1))],
                orelse=[py.If(test=_is_not(_name(v), _const(False)),
                              body=[py.Expr(_call("_noov", _const("exists_one"), _name(v)))],
                              orelse=[])]))
            return ([_assign(n, _const(0))],
                    [_assign(r, py.Compare(left=_name(n), ops=[py.Eq()],
                                           comparators=[_const(1)]))])
        # collecting macros
        elem_var = l1 if l2 is None else l2
        if k in ("map", "transformList", "filter"):
            init: py.expr = py.List(elts=[], ctx=py.Load())
        else:
            init = py.Dict(keys=[], values=[])
        if k == "filter":
            filt: A.Expr | None = e.args[0]
            value_fn: Callable[[], py.expr] = lambda: _name(elem_var)  # noqa: E731
        else:
            filt = e.args[0] if len(e.args) == 2 else None
            last = e.args[-1]
            value_fn = lambda: self.expr(last)  # noqa: E731
        produce: list[py.stmt]
        if k in ("map", "transformList", "filter"):
            produce = self.block(value_fn, v)
            produce.append(py.Expr(py.Call(func=py.Attribute(value=_name(r), attr="append",
                                                             ctx=py.Load()),
                                           args=[_name(v)], keywords=[])))
        elif k == "transformMap":
            produce = self.block(value_fn, v)
            produce.append(py.Assign(targets=[py.Subscript(value=_name(r), slice=_name(l1),
                                                           ctx=py.Store())],
                                     value=_name(v), lineno=0))
        else:  # transformMapEntry
            produce = self.block(value_fn, v)
            self.ns["_merge"] = functools.partial(_merge_entry, self.limits)
            produce.append(py.Expr(_call("_merge", _name(r), _name(v))))
        if filt is not None:
            fv = self.tmp("_f")
            body.extend(self.block(lambda: self.expr(filt), fv))
            body.append(py.If(test=_is(_name(fv), _const(True)), body=produce, orelse=[
                py.If(test=_is_not(_name(fv), _const(False)),
                      body=[py.Expr(_call("_noov", _const("filter"), _name(fv)))],
                      orelse=[])]))
        else:
            body.extend(produce)
        return [_assign(r, init)], []

    def opt_map(self, e: A.Comprehension, rng: py.expr) -> py.expr:
        o, lv, r = self.tmp(), self.tmp("_l"), self.tmp("_r")
        self.levels[-1].vars.add(lv)
        self.stmts.append(_assign(o, rng))
        self.locals.append({e.var: lv})
        try:
            body: list[py.stmt] = [
                _assign(lv, py.Attribute(value=_name(o), attr="value", ctx=py.Load()))]
            inner = self.block(lambda: self.expr(e.args[0]), r)
        finally:
            self.locals.pop()
        body.extend(inner)
        if e.kind == "optMap":
            body.append(_assign(r, _call("_Opt", _const(True), _name(r))))
        self.ns["_optchk"] = _opt_check
        self.stmts.append(py.Expr(_call("_optchk", _name(o), _const(e.kind))))
        self.stmts.append(py.If(
            test=py.Attribute(value=_name(o), attr="has", ctx=py.Load()),
            body=body, orelse=[_assign(r, _name(o))]))
        return _name(r)


def _opt_element(e: A.Expr) -> A.Expr | None:
    """The value of a ``?`` list element / map entry (None: an ordinary one)."""
    if isinstance(e, A.Call) and e.function == OPT_ELEMENT and e.target is None:
        return e.args[0]
    return None


def _merge_entry(lim: M.Limits, acc: dict[Any, Any], entry: Any) -> None:
    M.merge_cap(lim, acc, entry)
    if not isinstance(entry, dict):
        raise S.no_overload("transformMapEntry", entry)
    for k, v in entry.items():
        if S.map_get(acc, k)[0]:
            raise S.err(f"insert failed: key {k!r} already exists")
        acc[k] = v


def _opt_check(o: Any, fn: str) -> None:
    if type(o) is not Optional:
        raise S.no_overload(fn, o)


def _locate(tree: py.AST) -> None:
    """Put every node without a location at line 1: compile() needs one on each node, and
    ``ast.fix_missing_locations``' recursive walk was half the time of compiling a large
    expression. (The generated code has no lines of its own; errors point into the CEL.)"""
    stack: list[py.AST] = [tree]
    pop, push, extend, node_type = stack.pop, stack.append, stack.extend, py.AST
    while stack:
        node = pop()
        d = node.__dict__
        if node._attributes:
            if "lineno" not in d:
                node.lineno = 1  # type: ignore[attr-defined]
            if "col_offset" not in d:
                node.col_offset = 0  # type: ignore[attr-defined]
            if "end_lineno" not in d:
                node.end_lineno = node.lineno  # type: ignore[attr-defined]
            if "end_col_offset" not in d:
                node.end_col_offset = 0  # type: ignore[attr-defined]
        for name in node._fields:
            v = d.get(name)
            if type(v) is list:
                extend([x for x in v if isinstance(x, node_type)])
            elif isinstance(v, node_type):
                push(v)
