"""Literal arguments that can only fail, refused when a policy is compiled.

Why: ``timestamp("2026-13-01T00:00:00Z")``, ``duration("5 minutes")``,
``now.getHours("Amercia/New_York")`` or ``s.matches("(")`` fail at every evaluation: a policy
holding one passes lint and admission, then denies with POLICY_ERROR from the day the clock
reaches it, for a reason the author could have been told at once. cel-go offers the same
checks as validators (Kubernetes turns them on); the CEL conformance suite expects such
literals to fail at evaluation, so the check belongs to pdp's environment
(``Environment(strict_literals=True)``), not to CEL's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ast as A
from .errors import CelCompileError, CelError
from .regex import compile_re
from .stdlib import _zone, to_duration, to_timestamp

#: Timestamp accessors whose one argument is a time zone.
ZONED = frozenset({"getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate",
                   "getDayOfWeek", "getHours", "getMinutes", "getSeconds",
                   "getMilliseconds"})


def check_literals(root: A.Expr, source: str) -> None:
    """Raise CelCompileError at the first literal argument that cannot be evaluated."""
    todo = [root]
    while todo:
        e = todo.pop()
        if isinstance(e, A.Call):
            _check_call(e, source)
        todo.extend(A.children(e))


def _check_call(e: A.Call, source: str) -> None:
    fn = e.function.lstrip(".")
    if e.target is None and fn in ("timestamp", "duration") and len(e.args) == 1:
        _try(e.args[0], to_timestamp if fn == "timestamp" else to_duration,
             f"{fn}(…)", source)
    elif e.target is not None and fn in ZONED and len(e.args) == 1:
        _try(e.args[0], _zone, f"{fn}(…): the time zone", source)
    elif fn == "matches":
        pattern = e.args[0] if e.target is not None else e.args[-1] if e.args else None
        if pattern is not None:
            _try(pattern, compile_re, "matches(…): the regular expression", source)


def _try(arg: A.Expr, convert: Callable[[Any], Any], what: str, source: str) -> None:
    if not isinstance(arg, A.Const) or type(arg.value) is not str:
        return
    try:
        convert(arg.value)
    except CelError as exc:
        raise CelCompileError(f"{what} {arg.value!r} would fail at every evaluation: {exc}",
                              source, arg.offset) from None
