"""Type checker: resolves names, picks overloads and deduces a type for every node.

Gradual typing: ``dyn`` values pass any check and are verified at runtime.  In strict mode
the first error raises :class:`CelCompileError`; in lenient mode (conformance
``disableCheck``) errors are recorded and the offending nodes become ``dyn``, so that the
runtime reports them instead.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from . import ast as A
from . import types as TY
from .errors import CelCompileError
from .functions import Overload, Registry
from .parser import OPT_ELEMENT, OPT_INDEX, OPT_SELECT
from .types import DYN, Subst, T

TYPE_NAMES: dict[str, T] = {
    "int": TY.INT, "uint": TY.UINT, "double": TY.DOUBLE, "bool": TY.BOOL,
    "string": TY.STRING, "bytes": TY.BYTES, "null_type": TY.NULL,
    "list": TY.list_of(DYN), "map": TY.map_of(DYN, DYN), "type": T("type"),
    "google.protobuf.Timestamp": TY.TIMESTAMP, "google.protobuf.Duration": TY.DURATION,
}
# runtime type-value name for each type identifier
TYPE_VALUE_NAMES = {
    "int": "int", "uint": "uint", "double": "double", "bool": "bool", "string": "string",
    "bytes": "bytes", "null_type": "null_type", "list": "list", "map": "map", "type": "type",
    "google.protobuf.Timestamp": "google.protobuf.Timestamp",
    "google.protobuf.Duration": "google.protobuf.Duration",
}


@dataclass(slots=True)
class Resolved:
    """How an identifier (or a qualified Select chain) resolved."""

    kind: str  # "var" (declared variable), "local" (macro variable), "type", "unknown"
    name: str


@dataclass(slots=True)
class CheckResult:
    """Side tables produced by the checker, keyed by ``id(node)``."""

    types: dict[int, T] = field(default_factory=dict)
    refs: dict[int, Resolved] = field(default_factory=dict)
    calls: dict[int, tuple[str, bool]] = field(default_factory=dict)  # fn name, is member
    overloads: dict[int, list[Overload]] = field(default_factory=dict)
    errors: list[CelCompileError] = field(default_factory=list)
    result: T = DYN


class Checker:
    """Checks one expression against declarations and a function registry."""

    def __init__(self, source: str, decls: dict[str, T], registry: Registry,
                 container: str = "", strict: bool = True) -> None:
        self.src = source
        self.decls = decls
        self.reg = registry
        self.container = container
        self.strict = strict
        self.out = CheckResult()
        self.s = Subst()
        self.scopes: list[dict[str, T]] = []
        # ``a.b.c`` as a dotted name, per select node: each node of a chain asks for its own,
        # which without memory walks the chain below it again (quadratic in its length)
        self._dotted: dict[int, tuple[str, bool] | None] = {}

    # -- entry ---------------------------------------------------------------------------
    def check(self, e: A.Expr) -> CheckResult:
        t = self.visit(e)
        for k, v in list(self.out.types.items()):
            self.out.types[k] = self.s.finalize(v)
        self.out.result = self.s.finalize(t)
        return self.out

    def error(self, msg: str, node: A.Expr, offset: int | None = None) -> T:
        exc = CelCompileError(msg, self.src, node.offset if offset is None else offset)
        if self.strict:
            raise exc
        self.out.errors.append(exc)
        return DYN

    def _set(self, e: A.Expr, t: T) -> T:
        self.out.types[id(e)] = t
        return t

    def visit(self, e: A.Expr) -> T:
        return self._set(e, self._visit(e))

    # -- names ---------------------------------------------------------------------------
    def _candidates(self, name: str, leading_dot: bool) -> list[str]:
        if leading_dot or not self.container:
            return [name]
        parts = self.container.split(".")
        out = [".".join([*parts[:i], name]) for i in range(len(parts), 0, -1)]
        return [*out, name]

    def _local(self, name: str) -> T | None:
        for sc in reversed(self.scopes):
            if name in sc:
                return sc[name]
        return None

    def resolve_name(self, name: str, leading_dot: bool) -> Resolved | None:
        if not leading_dot and "." not in name:
            lt = self._local(name)
            if lt is not None:
                return Resolved("local", name)
        for cand in self._candidates(name, leading_dot):
            if cand in self.decls:
                return Resolved("var", cand)
        if name in TYPE_NAMES:
            return Resolved("type", name)
        return None

    def _qualified(self, e: A.Expr) -> tuple[str, bool] | None:
        """``a.b.c`` as a dotted name when ``e`` is an identifier/select chain."""
        if isinstance(e, A.Ident):
            return e.name, e.leading_dot
        if isinstance(e, A.Select) and not e.test_only:
            key = id(e)
            if key in self._dotted:
                return self._dotted[key]
            inner = self._qualified(e.operand)
            out = None if inner is None else (inner[0] + "." + e.field, inner[1])
            self._dotted[key] = out
            return out
        return None

    def _type_of_ref(self, r: Resolved) -> T:
        if r.kind == "local":
            lt = self._local(r.name)
            assert lt is not None
            return lt
        if r.kind == "var":
            return self.decls[r.name]
        return TY.type_of(TYPE_NAMES[r.name])

    # -- nodes ---------------------------------------------------------------------------
    def _visit(self, e: A.Expr) -> T:
        if isinstance(e, A.Const):
            return _const_type(e.value)
        if isinstance(e, A.Ident):
            r = self.resolve_name(e.name, e.leading_dot)
            if r is None:
                self.out.refs[id(e)] = Resolved("unknown", e.name)
                return self.error(f"undeclared reference to '{e.name}' "
                                  f"(in container '{self.container}')", e)
            self.out.refs[id(e)] = r
            return self._type_of_ref(r)
        if isinstance(e, A.Select):
            return self._select(e)
        if isinstance(e, A.Call):
            return self._call(e)
        if isinstance(e, A.ListExpr):
            elem: T = TY.fresh_param()
            first = True
            for x in e.elements:
                xt = self.visit(x)
                elem = xt if first else self.s.join(elem, xt)
                first = False
            return TY.list_of(elem)
        if isinstance(e, A.MapExpr):
            kt: T = TY.fresh_param()
            vt: T = TY.fresh_param()
            first = True
            for k, v in e.entries:
                ktt, vtt = self.visit(k), self.visit(v)
                if ktt.kind not in ("string", "int", "uint", "bool", "dyn", "param", "error"):
                    self.error(f"unsupported map key type: {ktt}", k)
                kt = ktt if first else self.s.join(kt, ktt)
                vt = vtt if first else self.s.join(vt, vtt)
                first = False
            return TY.map_of(kt, vt)
        if isinstance(e, A.StructExpr):
            for _, v in e.fields:
                self.visit(v)
            return self.error(f"undeclared reference to '{e.type_name}' "
                              f"(message types are not supported)", e)
        if isinstance(e, A.Comprehension):
            return self._comprehension(e)
        raise AssertionError(type(e))

    def _select(self, e: A.Select) -> T:
        if not e.test_only:
            q = self._qualified(e)
            if q is not None:
                name, dot = q
                root = name.split(".")[0]
                if dot or self._local(root) is None:
                    for cand in self._candidates(name, dot):
                        if cand in self.decls:
                            self.out.refs[id(e)] = Resolved("var", cand)
                            return self.decls[cand]
                    if name in TYPE_NAMES:
                        self.out.refs[id(e)] = Resolved("type", name)
                        return TY.type_of(TYPE_NAMES[name])
        ot = self.s.resolve(self.visit(e.operand))
        if ot.kind == "object":
            ft = self.field_of(ot, e.field, e)
            return TY.BOOL if e.test_only else ft
        if ot.kind == "map":
            if not self.s.assignable(ot.params[0], TY.STRING):
                return self.error(f"type '{ot}' does not support field selection", e)
            res = ot.params[1]
        elif ot.kind in ("dyn", "error", "param"):
            res = DYN
        elif ot.kind == "optional":
            inner = self.s.resolve(ot.params[0])
            if inner.kind == "object":
                res = TY.optional_of(self.field_of(inner, e.field, e))
            elif inner.kind == "map":
                res = TY.optional_of(inner.params[1])
            elif inner.kind in ("dyn", "param"):
                res = TY.optional_of(DYN)
            else:
                return self.error(f"type '{inner}' does not support field selection", e)
            if e.test_only:
                return TY.BOOL
            return res
        else:
            return self.error(f"type '{ot}' does not support field selection", e)
        return TY.BOOL if e.test_only else res

    def field_of(self, t: T, name: str, at: A.Expr) -> T:
        """The type of field ``name`` of object type ``t``; an unknown field is an error
        naming the closest declared one (a typo must fail at admission, not deny later)."""
        ft = t.field(name)
        if ft is not None:
            return ft
        names = [n for n, _ in t.fields]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = (f"; did you mean `{close[0]}`?" if close
                else f"; its fields are {', '.join(names)}")
        start = self.src.find(name, at.offset)  # point at the name, not at the dot
        return self.error(f"no field `{name}` on {t.name}{hint}", at,
                          start if start >= 0 else at.offset)

    def _optional_access(self, e: A.Call) -> T:
        """``a.?f`` / ``a[?k]``: optional.of the field / element when present, else none;
        on an optional operand, none stays none."""
        base = self.s.resolve(self.visit(e.args[0]))
        key = e.args[1]
        kt = self.visit(key)
        inner = base
        if base.kind == "optional":
            inner = self.s.resolve(base.params[0])
        if inner.kind in ("dyn", "param", "error"):
            return TY.optional_of(DYN)
        if e.function == OPT_SELECT:
            assert isinstance(key, A.Const)
            if inner.kind == "object":
                return TY.optional_of(self.field_of(inner, str(key.value), e))
            if inner.kind == "map" and self.s.assignable(inner.params[0], TY.STRING):
                return TY.optional_of(inner.params[1])
            return self.error(f"type '{self.s.finalize(inner)}' does not support field "
                              f"selection", e)
        if inner.kind == "list" and self.s.assignable(TY.INT, kt):
            return TY.optional_of(inner.params[0])
        if inner.kind == "map" and self.s.assignable(inner.params[0], kt):
            return TY.optional_of(inner.params[1])
        if inner.kind == "object" and self.s.assignable(TY.STRING, kt):
            return TY.optional_of(DYN)
        return self.error(f"found no matching overload for '_[?_]' applied to "
                          f"'({self.s.finalize(base)}, {self.s.finalize(kt)})'", e)

    def _call(self, e: A.Call) -> T:
        fn = e.function
        if fn in (OPT_SELECT, OPT_INDEX) and e.target is None:
            return self._optional_access(e)
        if fn == OPT_ELEMENT and e.target is None:
            vt = self.s.resolve(self.visit(e.args[0]))
            if vt.kind == "optional":
                return vt.params[0]
            if vt.kind in ("dyn", "param", "error"):
                return DYN
            return self.error(f"expected type 'optional_type' but found "
                              f"'{self.s.finalize(vt)}'", e.args[0])
        if fn in ("_&&_", "_||_"):
            for a in e.args:
                at = self.visit(a)
                if not self.s.assignable(TY.BOOL, at):
                    self.error(f"expected type 'bool' but found '{self.s.finalize(at)}'", a)
            return TY.BOOL
        if fn == "_?_:_":
            ct = self.visit(e.args[0])
            if not self.s.assignable(TY.BOOL, ct):
                self.error(f"expected type 'bool' but found '{self.s.finalize(ct)}'", e.args[0])
            ta, tb = self.visit(e.args[1]), self.visit(e.args[2])
            return self.s.join(ta, tb)
        member = e.target is not None
        name = fn.lstrip(".")
        if e.target is not None:
            q = self._qualified(e.target)
            if q is not None and not (self._local(q[0].split(".")[0]) and not q[1]):
                for cand in self._candidates(q[0] + "." + name, q[1]):
                    if self.reg.get(cand) is not None:
                        var = self.resolve_name(q[0], q[1])
                        if var is None or var.kind == "type":
                            name, member = cand, False
                            break
        else:
            for cand in self._candidates(name, fn.startswith(".")):
                if self.reg.get(cand) is not None:
                    name = cand
                    break
        args = ([e.target] if member and e.target is not None else []) + list(e.args)
        arg_types = [self.visit(a) for a in args]
        self.out.calls[id(e)] = (name, member)
        f = self.reg.get(name)
        if f is None:
            return self.error(f"undeclared reference to '{name}' "
                              f"(in container '{self.container}')", e)
        matched, results = self._overloads(f.overloads, member, arg_types)
        if not matched and any(self.s.resolve(t).kind == "object" for t in arg_types):
            # a record passed whole to a function none of whose overloads takes it is dyn
            # there (checked at run time, as before sections were typed); its fields stay typed
            arg_types = [DYN if self.s.resolve(t).kind == "object" else t for t in arg_types]
            matched, results = self._overloads(f.overloads, member, arg_types)
        if not matched:
            shown = [str(self.s.finalize(t)) for t in arg_types]
            sig = (f"{shown[0]}.({', '.join(shown[1:])})" if member
                   else f"({', '.join(shown)})")
            return self.error(f"found no matching overload for '{name}' applied to '{sig}'"
                              + _operands(name, args, shown), e)
        self.out.overloads[id(e)] = matched
        res = results[0]
        if not any(TY.is_dynish(self.s.resolve(t)) for t in arg_types):
            return res  # concrete arguments: the first matching overload decides
        for r in results[1:]:
            if self.s.resolve(r) != self.s.resolve(res):
                return DYN
        return res

    def _overloads(self, overloads: list[Overload], member: bool, arg_types: list[T]
                   ) -> tuple[list[Overload], list[T]]:
        """The overloads the argument types fit, and their result types."""
        matched: list[Overload] = []
        results: list[T] = []
        for ov in overloads:
            if ov.member != member or len(ov.params) != len(arg_types):
                continue
            inst: dict[str, T] = {}
            params = [self._instantiate(p, inst) for p in ov.params]
            saved = self.s.mark()
            if all(self.s.assignable(p, at) for p, at in zip(params, arg_types, strict=True)):
                matched.append(ov)
                results.append(self._instantiate(ov.result, inst))
            else:
                self.s.undo(saved)
        return matched, results

    def _instantiate(self, t: T, inst: dict[str, T]) -> T:
        if t.kind == "param":
            if t.name not in inst:
                inst[t.name] = TY.fresh_param()
            return inst[t.name]
        if t.params:
            return T(t.kind, tuple(self._instantiate(p, inst) for p in t.params), t.name)
        return t

    def _comprehension(self, e: A.Comprehension) -> T:
        rt = self.s.resolve(self.visit(e.range))
        k = e.kind
        if k == "bind":
            self.scopes.append({e.var: rt})
            try:
                return self.visit(e.args[0])
            finally:
                self.scopes.pop()
        if k in ("optMap", "optFlatMap"):
            if rt.kind == "optional":
                inner = rt.params[0]
            elif rt.kind in ("dyn", "param", "error"):
                inner = DYN
            else:
                return self.error(f"found no matching overload for '{k}' applied to "
                                  f"'{rt}'", e)
            self.scopes.append({e.var: inner})
            try:
                bt = self.visit(e.args[0])
            finally:
                self.scopes.pop()
            if k == "optMap":
                return TY.optional_of(bt)
            return bt
        if rt.kind == "list":
            v1, v2 = (TY.INT, rt.params[0]) if e.var2 else (rt.params[0], DYN)
        elif rt.kind == "map":
            v1, v2 = rt.params[0], rt.params[1]
        elif rt.kind == "object":
            v1, v2 = TY.STRING, DYN
        elif rt.kind in ("dyn", "param", "error"):
            v1, v2 = DYN, DYN
        else:
            return self.error(f"expression of type '{rt}' cannot be the range of a "
                              f"comprehension (must be list, map, or dynamic)", e.range)
        scope = {e.var: v1}
        if e.var2:
            scope[e.var2] = v2
        self.scopes.append(scope)
        try:
            ts = [self.visit(a) for a in e.args]
        finally:
            self.scopes.pop()
        if k in ("all", "exists", "exists_one"):
            if not self.s.assignable(TY.BOOL, ts[0]):
                self.error(f"expected type 'bool' but found '{self.s.finalize(ts[0])}'", e.args[0])
            return TY.BOOL
        if len(ts) == 2 and not self.s.assignable(TY.BOOL, ts[0]):
            self.error(f"expected type 'bool' but found '{self.s.finalize(ts[0])}'", e.args[0])
        if k == "filter":
            if not self.s.assignable(TY.BOOL, ts[0]):
                self.error(f"expected type 'bool' but found '{self.s.finalize(ts[0])}'", e.args[0])
            return TY.list_of(v1 if not e.var2 else v2)
        if k in ("map", "transformList"):
            return TY.list_of(ts[-1])
        if k == "transformMap":
            return TY.map_of(v1, ts[-1])
        if k == "transformMapEntry":
            last = self.s.resolve(ts[-1])
            if last.kind == "map":
                return last
            return TY.map_of(DYN, DYN)
        raise AssertionError(k)


_OPERATOR_TEXT = {"_==_": "==", "_!=_": "!=", "_<_": "<", "_<=_": "<=", "_>_": ">",
                  "_>=_": ">=", "_+_": "+", "_-_": "-", "_*_": "*", "_/_": "/", "_%_": "%",
                  "@in": "in"}


def _operands(name: str, args: list[A.Expr], shown: list[str]) -> str:
    """For an operator on typed operands, which operand has which type (the author sees
    ``agent.labels.env`` is a string, not just ``(string, int)``)."""
    op = _OPERATOR_TEXT.get(name)
    if op is None or len(args) != 2 or "dyn" in shown:
        return ""
    from .unparse import unparse

    a, b = (unparse(x) for x in args)
    return f": `{a}` is {shown[0]} and `{b}` is {shown[1]}, `{op}` needs matching types"


def _const_type(v: object) -> T:
    from .values import UInt

    if v is None:
        return TY.NULL
    t = type(v)
    if t is bool:
        return TY.BOOL
    if t is int:
        return TY.INT
    if t is UInt:
        return TY.UINT
    if t is float:
        return TY.DOUBLE
    if t is str:
        return TY.STRING
    if t is bytes:
        return TY.BYTES
    raise AssertionError(t)
