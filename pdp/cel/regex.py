"""``matches()`` backed by RE2: linear-time matching, so no pattern can cause ReDoS."""

from __future__ import annotations

import functools
from typing import Any

import re2

from .errors import CelEvalError
from .stdlib import no_overload


@functools.lru_cache(maxsize=1024)
def compile_re(pattern: str) -> Any:
    """Compile (and cache) an RE2 pattern; invalid patterns are CEL errors."""
    try:
        opts = re2.Options()
        opts.log_errors = False
        return re2.compile(pattern, options=opts)
    except Exception as e:  # re2.error and friends
        raise CelEvalError(f"invalid regular expression {pattern!r}: {e}") from None


def matches(s: Any, pattern: Any) -> bool:
    """True when ``pattern`` matches anywhere in ``s`` (RE2 semantics, unanchored)."""
    if type(s) is not str or type(pattern) is not str:
        raise no_overload("matches", s, pattern)
    return compile_re(pattern).search(s) is not None
