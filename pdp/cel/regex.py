"""``matches()`` backed by RE2: linear-time matching, so no pattern can cause ReDoS."""

from __future__ import annotations

import functools
from typing import Any

import re2
from re2 import _re2

from .errors import CelEvalError
from .stdlib import no_overload

_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


@functools.lru_cache(maxsize=1024)
def compile_re(pattern: str) -> Any:
    """Compile (and cache) an RE2 pattern; invalid patterns are CEL errors.

    Returns the low-level RE2 object: the ``re2`` module's Python ``search`` wrapper
    costs several µs per call decoding match offsets we never need."""
    try:
        opts = re2.Options()
        opts.log_errors = False
        return re2.compile(pattern, options=opts)._regexp
    except Exception as e:  # re2.error and friends
        raise CelEvalError(f"invalid regular expression {pattern!r}: {e}") from None


def matches(s: Any, pattern: Any) -> bool:
    """True when ``pattern`` matches anywhere in ``s`` (RE2 semantics, unanchored)."""
    if type(s) is not str or type(pattern) is not str:
        raise no_overload("matches", s, pattern)
    b = s.encode("utf-8")
    return bool(compile_re(pattern).Match(_UNANCHORED, b, 0, len(b))[0] != _NO_MATCH)
