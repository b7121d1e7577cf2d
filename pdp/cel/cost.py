"""Static worst-case cost estimate, computed at admission.

The unit matches the runtime counter: one unit per comprehension iteration plus the
declared cost of costly built-ins.  Sizes of runtime lists/maps are unknown, so a
comprehension over a non-literal range is assumed to iterate ``assumed_size`` times (like
the Kubernetes CEL estimator uses schema maximums); nested comprehensions multiply.
"""

from __future__ import annotations

from . import ast as A
from .functions import Registry

DEFAULT_ASSUMED_SIZE = 1000


def estimate(e: A.Expr, registry: Registry, assumed_size: int = DEFAULT_ASSUMED_SIZE) -> int:
    """Worst-case cost units for evaluating ``e`` once."""
    if isinstance(e, A.Comprehension):
        rng = estimate(e.range, registry, assumed_size)
        body = sum(estimate(a, registry, assumed_size) for a in e.args)
        if e.kind in ("bind", "optMap", "optFlatMap"):
            return rng + body
        n = _literal_size(e.range)
        size = assumed_size if n is None else n
        return rng + size * (1 + body)
    own = 0
    if isinstance(e, A.Call):
        f = registry.get(e.function)
        if f is not None and f.cost:
            own = f.cost + 1 + 64 // 64
    return own + sum(estimate(c, registry, assumed_size) for c in A.children(e))


def _literal_size(e: A.Expr) -> int | None:
    if isinstance(e, A.ListExpr):
        return len(e.elements)
    if isinstance(e, A.MapExpr):
        return len(e.entries)
    return None
