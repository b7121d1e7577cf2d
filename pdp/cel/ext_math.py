"""The math extension library (cel-go ``ext.Math``): greatest/least, rounding, abs, sign,
NaN/Inf tests and bit operations on int and uint."""

from __future__ import annotations

import math
from typing import Any

from . import meter as M
from .errors import CelEvalError
from .functions import Registry
from .stdlib import check_int, lt, no_overload
from .values import UInt

_NUMS = (int, UInt, float)
_INTS = frozenset({int, UInt})
_FLOATS = frozenset({float})


def _extreme(fn: str, args: tuple[Any, ...], pick_less: bool) -> Any:
    vals: Any = args
    if len(args) == 1 and isinstance(args[0], list | tuple):
        vals = args[0]
        if not vals:
            raise CelEvalError(f"{fn}(list) argument must not be empty")
        # A list of one kind of number: the builtin picks the same element (the first of
        # the extremes; NaN compares false both ways, as with lt) at C speed, so one call
        # over a 100 000-element list takes a few ms, not tens.
        kinds = set(map(type, vals))
        if kinds <= _INTS or kinds == _FLOATS:
            return min(vals) if pick_less else max(vals)
    best = None
    for v in vals:
        if type(v) not in _NUMS:
            raise no_overload(fn, v)
        if best is None or (lt(v, best) if pick_less else lt(best, v)):
            best = v
    return best


def greatest(*args: Any) -> Any:
    return _extreme("math.greatest", args, False)


def least(*args: Any) -> Any:
    return _extreme("math.least", args, True)


def _dbl(fn: str, v: Any) -> float:
    if type(v) is not float:
        raise no_overload(fn, v)
    return float(v)


def _signed(r: int, d: float) -> float:
    """``r`` as a double with ``d``'s sign when it is zero (Go: Ceil(-0.5) is -0)."""
    f = float(r)
    return math.copysign(f, d) if f == 0 else f


def ceil(v: Any) -> float:
    d = _dbl("math.ceil", v)
    return _signed(math.ceil(d), d) if math.isfinite(d) else d


def floor(v: Any) -> float:
    d = _dbl("math.floor", v)
    return _signed(math.floor(d), d) if math.isfinite(d) else d


def round_(v: Any) -> float:
    """Half away from zero, exactly (Go's math.Round, which cel-go uses): floor(|d| + 0.5)
    rounds 0.49999999999999994 up and moves odd integers above 2**52."""
    d = _dbl("math.round", v)
    if not math.isfinite(d):
        return d
    t = math.trunc(d)
    if abs(d - t) >= 0.5:  # exact: d and trunc(d) are within a factor of two
        t += 1 if d > 0 else -1
    return _signed(t, d)


def trunc(v: Any) -> float:
    d = _dbl("math.trunc", v)
    return _signed(math.trunc(d), d) if math.isfinite(d) else d


def abs_(v: Any) -> Any:
    t = type(v)
    if t is int:
        return check_int(abs(v))
    if t is float:
        return abs(v)
    if t is UInt:
        return v
    raise no_overload("math.abs", v)


def sign(v: Any) -> Any:
    t = type(v)
    if t is int:
        return (v > 0) - (v < 0)
    if t is UInt:
        return UInt(1 if v else 0)
    if t is float:
        if v != v:
            return v
        return float((v > 0) - (v < 0))
    raise no_overload("math.sign", v)


def is_nan(v: Any) -> bool:
    return math.isnan(_dbl("math.isNaN", v))


def is_inf(v: Any) -> bool:
    return math.isinf(_dbl("math.isInf", v))


def is_finite(v: Any) -> bool:
    return math.isfinite(_dbl("math.isFinite", v))


def _bits(fn: str, a: Any, b: Any) -> type:
    ta = type(a)
    if ta not in (int, UInt) or type(b) is not ta:
        raise no_overload(fn, a, b)
    return ta


def _wrap(ta: type, v: int) -> Any:
    if ta is UInt:
        return UInt(v & 0xFFFFFFFFFFFFFFFF)
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


def bit_and(a: Any, b: Any) -> Any:
    return _wrap(_bits("math.bitAnd", a, b), a & b)


def bit_or(a: Any, b: Any) -> Any:
    return _wrap(_bits("math.bitOr", a, b), a | b)


def bit_xor(a: Any, b: Any) -> Any:
    return _wrap(_bits("math.bitXor", a, b), a ^ b)


def bit_not(a: Any) -> Any:
    if type(a) not in (int, UInt):
        raise no_overload("math.bitNot", a)
    return _wrap(type(a), ~a)


def _shift_args(fn: str, a: Any, n: Any) -> None:
    if type(a) not in (int, UInt) or type(n) is not int:
        raise no_overload(fn, a, n)
    if n < 0:
        raise CelEvalError(f"{fn}() negative offset: {n}")


def shift_left(a: Any, n: Any) -> Any:
    _shift_args("math.bitShiftLeft", a, n)
    if n >= 64:
        return _wrap(type(a), 0)
    return _wrap(type(a), a << n)


def shift_right(a: Any, n: Any) -> Any:
    _shift_args("math.bitShiftRight", a, n)
    if n >= 64:
        return _wrap(type(a), 0)
    return _wrap(type(a), (a & 0xFFFFFFFFFFFFFFFF) >> n)


def register_math(r: Registry) -> None:
    nums = ["int", "uint", "double"]
    sigs = [f"{t}->{t}" for t in nums] + [f"list({t})->{t}" for t in nums]
    sigs.append("list(dyn)->dyn")
    for a in nums:
        for b in nums:
            sigs.append(f"{a},{b}->{a if a == b else 'dyn'}")
    for n in range(3, 13):
        for t in nums:
            sigs.append(",".join([t] * n) + f"->{t}")
        sigs.append(",".join(["dyn"] * n) + "->dyn")
    r.add("math.greatest", sigs, greatest, grow=M.grow_each)
    r.add("math.least", sigs, least, grow=M.grow_each)
    for name, fn in (("math.ceil", ceil), ("math.floor", floor), ("math.round", round_),
                     ("math.trunc", trunc)):
        r.add(name, "double->double", fn)
    r.add("math.abs", "int->int; uint->uint; double->double", abs_)
    r.add("math.sign", "int->int; uint->uint; double->double", sign)
    r.add("math.isNaN", "double->bool", is_nan)
    r.add("math.isInf", "double->bool", is_inf)
    r.add("math.isFinite", "double->bool", is_finite)
    r.add("math.bitAnd", "int,int->int; uint,uint->uint", bit_and)
    r.add("math.bitOr", "int,int->int; uint,uint->uint", bit_or)
    r.add("math.bitXor", "int,int->int; uint,uint->uint", bit_xor)
    r.add("math.bitNot", "int->int; uint->uint", bit_not)
    r.add("math.bitShiftLeft", "int,int->int; uint,int->uint", shift_left)
    r.add("math.bitShiftRight", "int,int->int; uint,int->uint", shift_right)
