"""The strings extension library (cel-go ``ext.Strings``): charAt, indexOf, lastIndexOf,
lowerAscii, upperAscii, replace, split, substring, trim, join, reverse, format,
strings.quote.  Indices count Unicode code points, as Python strings do."""

from __future__ import annotations

import math
from typing import Any

from . import meter as M
from .errors import CelEvalError
from .functions import Registry
from .stdlib import as_dur, as_ts, format_double, no_overload, type_name
from .values import TypeValue, UInt, format_duration, format_timestamp


def _s(fn: str, *args: Any) -> None:
    if any(type(a) is not str for a in args):
        raise no_overload(fn, *args)


def _i(fn: str, *args: Any) -> None:
    if any(type(a) is not int for a in args):
        raise no_overload(fn, *args)


def char_at(s: Any, i: Any) -> str:
    _s("charAt", s)
    _i("charAt", i)
    if not 0 <= i <= len(s):
        raise CelEvalError(f"index out of range: {i}")
    return s[i:i + 1]  # type: ignore[no-any-return]


def index_of(s: Any, sub: Any, start: Any = 0) -> int:
    _s("indexOf", s, sub)
    _i("indexOf", start)
    if not 0 <= start <= len(s):
        raise CelEvalError(f"index out of range: {start}")
    return s.find(sub, start)  # type: ignore[no-any-return]


def last_index_of(s: Any, sub: Any, end: Any = None) -> int:
    _s("lastIndexOf", s, sub)
    if end is None:
        return s.rfind(sub)  # type: ignore[no-any-return]
    _i("lastIndexOf", end)
    if not 0 <= end < max(len(s), 1) and not (end == 0 and not s):
        raise CelEvalError(f"index out of range: {end}")
    return s.rfind(sub, 0, end + len(sub))  # type: ignore[no-any-return]


# ASCII-only case mapping at C speed (str.upper would also map non-ASCII letters)
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_map(s: str, upper: bool) -> str:
    return s.translate(_UPPER if upper else _LOWER)


def lower_ascii(s: Any) -> str:
    _s("lowerAscii", s)
    return _ascii_map(s, False)


def upper_ascii(s: Any) -> str:
    _s("upperAscii", s)
    return _ascii_map(s, True)


def replace(s: Any, old: Any, new: Any, n: Any = -1) -> str:
    _s("replace", s, old, new)
    _i("replace", n)
    return s.replace(old, new, n if n >= 0 else -1)  # type: ignore[no-any-return]


def split(s: Any, sep: Any, n: Any = -1) -> list[str]:
    _s("split", s, sep)
    _i("split", n)
    if n == 0:
        return []
    if sep == "":
        if n > 0 and len(s) > n:  # only the n - 1 first characters are split off
            return [*s[:n - 1], s[n - 1:]]
        return list(s)
    if n < 0:
        return s.split(sep)  # type: ignore[no-any-return]
    return s.split(sep, n - 1)  # type: ignore[no-any-return]


def substring(s: Any, start: Any, end: Any = None) -> str:
    _s("substring", s)
    if end is None:
        end = len(s)
    _i("substring", start, end)
    if not (0 <= start <= len(s)) or not (0 <= end <= len(s)) or start > end:
        raise CelEvalError(f"substring out of range: [{start}:{end}]")
    return s[start:end]  # type: ignore[no-any-return]


_WS = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
      "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def trim(s: Any) -> str:
    _s("trim", s)
    return s.strip(_WS)  # type: ignore[no-any-return]


def join(lst: Any, sep: Any = "") -> str:
    if not isinstance(lst, list | tuple) or type(sep) is not str:
        raise no_overload("join", lst, sep)
    if any(type(x) is not str for x in lst):
        raise CelEvalError("join: list must contain only strings")
    return sep.join(lst)


def reverse(s: Any) -> str:
    _s("reverse", s)
    return s[::-1]  # type: ignore[no-any-return]


_QUOTE = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
          "\v": "\\v", "\\": "\\\\", '"': '\\"'}


# the backslash first: the escapes the others add must not be escaped again
_QUOTE_ORDER = sorted(_QUOTE.items(), key=lambda kv: kv[0] != "\\")


def quote(s: Any) -> str:
    """One ``str.replace`` per escaped character present (C speed, ~3 ms for 1 MB): a
    generator over the characters took ~75 ms for 1 MB with no clock read on the way, and
    ``str.translate`` to multi-character escapes still ~50 ms."""
    _s("strings.quote", s)
    for c, esc in _QUOTE_ORDER:
        if c in s:
            s = s.replace(c, esc)
    return '"' + s + '"'  # type: ignore[no-any-return]


# -- format --------------------------------------------------------------------------------

def _fmt_double_s(f: float) -> str:
    if f != f:
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    return format_double(f)


def _to_s(v: Any, tk: M.Ticker) -> str:
    tk.step()
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is bool:
        return "true" if v else "false"
    if t is int or t is UInt:
        return str(int(v))
    if t is float:
        return _fmt_double_s(v)
    if t is bytes:
        return v.decode("utf-8", errors="replace")  # type: ignore[no-any-return]
    if v is None:
        return "null"
    if t is TypeValue:
        return v.name  # type: ignore[no-any-return]
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_to_s(x, tk) for x in v) + "]"
    if isinstance(v, dict):
        items = sorted((_to_s(k, tk), _to_s(x, tk)) for k, x in v.items())
        return "{" + ", ".join(f"{k}: {x}" for k, x in items) + "}"
    ts = as_ts(v)
    if ts is not None:
        return format_timestamp(ts)
    d = as_dur(v)
    if d is not None:
        return format_duration(d)
    raise CelEvalError(f"string clause can't format {type_name(v)}")


def _special(v: Any) -> str | None:
    if type(v) is float and (v != v or math.isinf(v)):
        return _fmt_double_s(v)
    return None


def _format_one(verb: str, prec: int | None, v: Any, tk: M.Ticker) -> str:
    t = type(v)
    if verb == "s":
        return _to_s(v, tk)
    if verb == "d":
        sp = _special(v)
        if sp is not None:
            return sp
        if t is int or t is UInt:
            return str(int(v))
        raise CelEvalError("error during formatting: decimal clause can only be used on "
                           "integers")
    if verb in "fe":
        sp = _special(v)
        if sp is not None:
            return sp
        if t in (int, UInt, float):
            p = 6 if prec is None else prec
            return f"{float(v):.{p}{verb}}"
        raise CelEvalError("error during formatting: fixed-point clause can only be used on "
                           "ints, uints, and doubles")
    if verb == "b":
        if t is bool:
            return "1" if v else "0"
        if t is int or t is UInt:
            return format(int(v), "b")
        raise CelEvalError("error during formatting: only ints, uints, and bools can be "
                           "formatted as binary")
    if verb == "o":
        if t is int or t is UInt:
            return format(int(v), "o")
        raise CelEvalError("error during formatting: octal clause can only be used on ints "
                           "and uints")
    if verb in "xX":
        if t is int or t is UInt:
            out = format(int(v), "x")
        elif t is str:
            out = v.encode("utf-8").hex()
        elif t is bytes:
            out = v.hex()
        else:
            raise CelEvalError("error during formatting: only ints, uints, bytes, and strings "
                               "can be formatted as hex")
        return out.upper() if verb == "X" else out
    raise CelEvalError(f'could not parse formatting clause: unrecognized formatting clause '
                       f'"{verb}"')


def format_str(dl: float, s: Any, args: Any) -> str:
    """``s.format(args)`` (a clocked implementation, see functions.Function): the text
    between clauses is copied in one slice, and every clause and every element %s renders
    is a step of the clock (a 1 MB format text walked a character at a time took ~140 ms,
    a %s of a 100 000-element list ~45 ms, neither reading the clock)."""
    if type(s) is not str or not isinstance(args, list | tuple):
        raise no_overload("format", s, args)
    tk = M.Ticker(dl)
    out: list[str] = []
    i = 0
    ai = 0
    n = len(s)
    while i < n:
        tk.step()
        j = s.find("%", i)
        if j < 0:
            out.append(s[i:])
            break
        if j > i:
            out.append(s[i:j])
        i = j + 1
        if i < n and s[i] == "%":
            out.append("%")
            i += 1
            continue
        prec = None
        if i < n and s[i] == ".":
            j = i + 1
            while j < n and s[j].isdigit():
                j += 1
            prec = int(s[i + 1:j] or "0")
            i = j
        if i >= n:
            raise CelEvalError("could not parse formatting clause: unexpected end of string")
        verb = s[i]
        i += 1
        if verb not in "sdfeboxX":
            raise CelEvalError(f'could not parse formatting clause: unrecognized formatting '
                               f'clause "{verb}"')
        if ai >= len(args):
            raise CelEvalError("index out of range: not enough arguments for format string")
        out.append(_format_one(verb, prec, args[ai], tk))
        ai += 1
    return "".join(out)


def register_strings(r: Registry) -> None:
    r.add("charAt", "string.(int)->string", char_at)
    r.add("indexOf", "string.(string)->int; string.(string, int)->int", index_of,
          grow=M.grow_scan)
    r.add("lastIndexOf", "string.(string)->int; string.(string, int)->int", last_index_of,
          grow=M.grow_scan)
    r.add("lowerAscii", "string.()->string", lower_ascii, grow=M.grow_same("lowerAscii"))
    r.add("upperAscii", "string.()->string", upper_ascii, grow=M.grow_same("upperAscii"))
    r.add("replace", "string.(string, string)->string; string.(string, string, int)->string",
          replace, cost=1, grow=M.grow_replace)
    r.add("split", "string.(string)->list(string); string.(string, int)->list(string)",
          split, cost=1, grow=M.grow_split)
    r.add("substring", "string.(int)->string; string.(int, int)->string", substring,
          grow=M.grow_substring)
    r.add("trim", "string.()->string", trim, grow=M.grow_same("trim"))
    r.add("join", "list(string).()->string; list(string).(string)->string", join, cost=1,
          grow=M.grow_join)
    r.add("reverse", "string.()->string", reverse, grow=M.grow_same("reverse"))
    r.add("format", "string.(list(dyn))->string", format_str, cost=1, grow=M.grow_format,
          clocked=True)
    r.add("strings.quote", "string->string", quote, grow=M.grow_quote)
