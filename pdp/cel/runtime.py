"""Helpers that generated code calls besides the standard functions: error conversion,
iteration, budget failures."""

from __future__ import annotations

from typing import Any, NoReturn

from .errors import BudgetExceeded, CelError, CelEvalError, CostLimitExceeded, DeadlineExceeded
from .meter import CHARS_PER_UNIT_SHIFT
from .stdlib import no_overload, short_repr, type_name


def to_cel_error(e: BaseException) -> CelError:
    """Map any exception raised while evaluating into a CelError (never leak Python ones)."""
    if isinstance(e, CelError):
        return e
    if isinstance(e, KeyError):
        k = e.args[0] if e.args else "?"
        return CelEvalError(f"no such key: {short_repr(k)}" if type(k) is str
                            else f"no such key: {short_repr(repr(k))}")
    if isinstance(e, IndexError):
        return CelEvalError("index out of bounds")
    if isinstance(e, ZeroDivisionError):
        return CelEvalError("division by zero")
    if isinstance(e, OverflowError):
        return CelEvalError("numeric overflow")
    if isinstance(e, RecursionError):
        return CelEvalError("value nested too deeply")
    if isinstance(e, TypeError):
        return CelEvalError("no such overload")
    if isinstance(e, MemoryError):
        return CelEvalError("out of memory")
    if isinstance(e, UnicodeError):  # a lone surrogate cannot be UTF-8
        return CelEvalError("string is not valid Unicode text (a lone surrogate)")
    return CelEvalError(f"evaluation error: {type(e).__name__}")


class Deferred:
    """The error a named variable (a policy's ``variables:``) raised, kept as its value: it
    is raised where the variable is read, so ``has(x) && variables.v`` behaves as if the
    expression were written out there (an unread or short-circuited failure is harmless)."""

    __slots__ = ("error",)

    def __init__(self, error: CelError) -> None:
        self.error = error


def deferred_value(values: Any, name: str) -> Any:
    """``variables.name``: the value, or the error it evaluated to raised now."""
    v = values[name]
    if type(v) is Deferred:
        raise v.error
    return v


def absorb(e: BaseException) -> CelError:
    """Turn an exception into an error *value* that ``&&``/``||`` may absorb; budget
    exhaustion is never absorbed."""
    if isinstance(e, BudgetExceeded):
        raise e
    return to_cel_error(e)


def logic_err(v: Any, op: str) -> CelError:
    """The error to report when a logical operand was neither true nor false."""
    if isinstance(v, CelError):
        return v
    return no_overload(op, v)


def raise_cond(v: Any) -> NoReturn:
    if isinstance(v, CelError):
        raise v
    raise no_overload("_?_:_", v)


def iter_range(v: Any) -> Any:
    """The iteration range of a comprehension: a list's elements or a map's keys."""
    if isinstance(v, list | tuple | dict):
        return v
    raise CelEvalError(f"expression of type '{type_name(v)}' cannot be the range of a "
                       "comprehension")


def iter_pairs(v: Any) -> Any:
    """(index, element) for lists, (key, value) for maps: two-variable comprehensions."""
    if isinstance(v, list | tuple):
        return enumerate(v)
    if isinstance(v, dict):
        return v.items()
    raise CelEvalError(f"expression of type '{type_name(v)}' cannot be the range of a "
                       "comprehension")


def undeclared(name: str) -> NoReturn:
    raise CelEvalError(f"undeclared reference to '{name}'")


def cost_exceeded(used: int, limit: float) -> NoReturn:
    raise CostLimitExceeded(f"cost limit exceeded: {used} > {int(limit)}")


def deadline_exceeded() -> NoReturn:
    raise DeadlineExceeded("evaluation deadline exceeded")


def overflow() -> NoReturn:
    raise CelEvalError("integer overflow")


def scan_units(c: Any) -> int:
    """Cost units of a scan before it runs: ``x in c`` of a list (1 per 64 elements; a
    map is one key test), ``s.contains("lit")`` of a string (1 per 64 characters)."""
    if isinstance(c, list | tuple | str | bytes):
        return len(c) >> CHARS_PER_UNIT_SHIFT
    return 0


def eq_units(a: Any, b: Any) -> int:
    """Cost units of ``a == b`` before it runs: two lists (or two maps) of one length are
    compared element by element (1 per 64); anything else is decided at once. (Nested
    elements are not counted here: the walk reads the clock, stdlib.eq_bounded.)"""
    lists = isinstance(a, list | tuple) and isinstance(b, list | tuple)
    if (lists or (isinstance(a, dict) and isinstance(b, dict))) and len(a) == len(b):
        return len(a) >> CHARS_PER_UNIT_SHIFT
    return 0


def size_cost(v: Any) -> int:
    """Cost units for a costly built-in working on ``v`` (1 per 64 elements/characters)."""
    if isinstance(v, str | bytes | list | tuple | dict):
        return 1 + len(v) // 64
    return 1
