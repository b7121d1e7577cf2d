"""Function declarations (for the checker) bound to their runtime implementations.

Signatures use a compact syntax: ``"int,int->int"`` for a global overload and
``"string.(string)->bool"`` for a receiver-style one.  A function has one Python
implementation that dispatches on runtime types itself, so the checker's overloads are
only about static typing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .types import T, parse_type


@dataclass(frozen=True, slots=True)
class Overload:
    """One typed signature; ``member`` means receiver-style (``recv.f(args)``)."""

    member: bool
    params: tuple[T, ...]  # receiver first for member overloads
    result: T


@dataclass(slots=True)
class Function:
    """A CEL function: its overloads and the Python callables implementing it.

    ``impl`` handles the global style, ``member_impl`` the receiver style (receiver first);
    ``cost`` is 0 for cheap functions, else the per-call base cost charged at runtime
    (plus the size of the first argument).  ``grow`` (see meter.py), when set, replaces
    that charge: it computes the charge from all the arguments before the call and refuses
    results over the size caps.  ``pure`` functions may be constant-folded.  A ``clocked``
    implementation loops in Python over its input (format's text, a list rendered by %s):
    it takes the evaluation's deadline (a ``time.monotonic()`` value, ``inf`` without one)
    as its first argument and reads the clock as it goes (``meter.Ticker``), since one call
    may run longer than the deadline leaves."""

    name: str
    overloads: list[Overload] = field(default_factory=list)
    impl: Callable[..., Any] | None = None
    member_impl: Callable[..., Any] | None = None
    cost: int = 0
    pure: bool = True
    grow: Callable[..., int] | None = None
    clocked: bool = False


def _split_top(text: str, sep: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [x.strip() for x in out]


def parse_sig(sig: str) -> Overload:
    lhs, res = sig.rsplit("->", 1)
    lhs = lhs.strip()
    if ".(" in lhs and lhs.endswith(")") and not lhs.startswith("("):
        recv, _, rest = lhs.partition(".(")
        params = [recv] + ([p for p in _split_top(rest[:-1], ",") if p])
        return Overload(True, tuple(parse_type(p) for p in params), parse_type(res.strip()))
    params = [p for p in _split_top(lhs, ",") if p] if lhs not in ("", "()") else []
    return Overload(False, tuple(parse_type(p) for p in params), parse_type(res.strip()))


class Registry:
    """All functions visible to one environment, by name."""

    def __init__(self) -> None:
        self.funcs: dict[str, Function] = {}

    def add(self, name: str, sigs: Iterable[str] | str, impl: Callable[..., Any] | None = None,
            member_impl: Callable[..., Any] | None = None, cost: int = 0,
            pure: bool = True, grow: Callable[..., int] | None = None,
            clocked: bool = False) -> None:
        if isinstance(sigs, str):
            sigs = [s for s in sigs.split(";") if s.strip()]
        f = self.funcs.get(name)
        if f is None:
            f = self.funcs[name] = Function(name)
        for s in sigs:
            f.overloads.append(parse_sig(s))
        if impl is not None:
            f.impl = impl
        if member_impl is not None:
            f.member_impl = member_impl
        if impl is not None and member_impl is None and any(o.member for o in f.overloads):
            f.member_impl = f.member_impl or impl
        f.cost = max(f.cost, cost)
        f.pure = f.pure and pure
        if grow is not None:
            f.grow = grow
        f.clocked = f.clocked or clocked

    def get(self, name: str) -> Function | None:
        return self.funcs.get(name)

    def copy(self) -> Registry:
        r = Registry()
        for k, f in self.funcs.items():
            r.funcs[k] = Function(f.name, list(f.overloads), f.impl, f.member_impl, f.cost,
                                  f.pure, f.grow, f.clocked)
        return r
