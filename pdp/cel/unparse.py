"""CEL source text from a tree: canonical spacing, minimal parentheses.

Why a module of its own: admission messages name the costliest sub-expression and
explanations name the sub-expressions behind a deny, both by re-printing part of a tree.
"""

from __future__ import annotations

from typing import Any

from . import ast as A
from .values import UInt

_BINARY = {"_||_": ("||", 1), "_&&_": ("&&", 2), "_<_": ("<", 3), "_<=_": ("<=", 3),
           "_>_": (">", 3), "_>=_": (">=", 3), "_==_": ("==", 3), "_!=_": ("!=", 3),
           "@in": ("in", 3), "_+_": ("+", 4), "_-_": ("-", 4), "_*_": ("*", 5),
           "_/_": ("/", 5), "_%_": ("%", 5)}
_OPERATORS = {*_BINARY, "!_", "-_", "_?_:_", "_[_]"}
_TOP = 0
_UNARY = 6
_POSTFIX = 7




def _quote(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def literal(v: Any) -> str:
    """A constant as CEL source."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, UInt):
        return f"{int(v)}u"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, bytes):
        return 'b"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C)
                              else f"\\x{b:02x}" for b in v) + '"'
    return repr(v)  # pragma: no cover - the parser makes no other constants


def unparse(e: A.Expr) -> str:
    """CEL source text for ``e`` (canonical spacing, minimal parentheses)."""
    return _unparse(e)[0]


def _entry(k: A.Expr, v: A.Expr) -> str:
    if isinstance(v, A.Call) and v.function == "@optelem" and v.target is None:
        return f"?{unparse(k)}: {unparse(v.args[0])}"
    return f"{unparse(k)}: {unparse(v)}"


def _wrap(e: A.Expr, min_prec: int) -> str:
    text, prec = _unparse(e)
    return f"({text})" if prec < min_prec else text


def _unparse(e: A.Expr) -> tuple[str, int]:
    if isinstance(e, A.Const):
        return literal(e.value), _POSTFIX
    if isinstance(e, A.Ident):
        return ("." if e.leading_dot else "") + e.name, _POSTFIX
    if isinstance(e, A.Select):
        text = f"{_wrap(e.operand, _POSTFIX)}.{e.field}"
        return (f"has({text})", _POSTFIX) if e.test_only else (text, _POSTFIX)
    if isinstance(e, A.ListExpr):
        return "[" + ", ".join(unparse(x) for x in e.elements) + "]", _POSTFIX
    if isinstance(e, A.MapExpr):
        return "{" + ", ".join(_entry(k, v) for k, v in e.entries) + "}", _POSTFIX
    if isinstance(e, A.StructExpr):
        return e.type_name + "{" + ", ".join(f"{k}: {unparse(v)}" for k, v in e.fields) \
            + "}", _POSTFIX
    if isinstance(e, A.Comprehension):
        if e.kind == "bind":
            return f"cel.bind({e.var}, {unparse(e.range)}, {unparse(e.args[0])})", _POSTFIX
        names = [e.var] + ([e.var2] if e.var2 else [])
        args = ", ".join([*names, *(unparse(a) for a in e.args)])
        return f"{_wrap(e.range, _POSTFIX)}.{e.kind}({args})", _POSTFIX
    assert isinstance(e, A.Call)
    f = e.function
    if e.target is None:
        if f in _BINARY:
            op, prec = _BINARY[f]
            left, right = e.args
            return f"{_wrap(left, prec)} {op} {_wrap(right, prec + 1)}", prec
        if f == "!_":
            return "!" + _wrap(e.args[0], _UNARY), _UNARY
        if f == "-_":
            return "-" + _wrap(e.args[0], _UNARY), _UNARY
        if f == "_?_:_":
            c, a, b = e.args
            return f"{_wrap(c, 1)} ? {_wrap(a, 1)} : {_wrap(b, _TOP)}", _TOP
        if f == "_[_]":
            return f"{_wrap(e.args[0], _POSTFIX)}[{unparse(e.args[1])}]", _POSTFIX
        if f == "_[?_]":
            return f"{_wrap(e.args[0], _POSTFIX)}[?{unparse(e.args[1])}]", _POSTFIX
        if f == "_?._" and isinstance(e.args[1], A.Const):
            return f"{_wrap(e.args[0], _POSTFIX)}.?{e.args[1].value}", _POSTFIX
        if f == "@optelem":
            return "?" + unparse(e.args[0]), _TOP
        return f"{f}(" + ", ".join(unparse(a) for a in e.args) + ")", _POSTFIX
    return (f"{_wrap(e.target, _POSTFIX)}.{f}(" + ", ".join(unparse(a) for a in e.args)
            + ")", _POSTFIX)
