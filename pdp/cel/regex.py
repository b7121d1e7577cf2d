"""``matches()`` backed by RE2: linear-time matching, so no pattern can cause ReDoS."""

from __future__ import annotations

import functools
from typing import Any

import re2

from .errors import CelEvalError
from .stdlib import no_overload

_NO_MATCH = (-1, -1)
try:  # google-re2's low-level matcher: several µs cheaper per call than ``search``
    from re2 import _re2
    _UNANCHORED: Any = _re2.RE2.Anchor.UNANCHORED
    _FAST = callable(getattr(re2.compile("a"), "_regexp", None) and
                     getattr(re2.compile("a")._regexp, "Match", None))
except (ImportError, AttributeError):  # a release without it: the public API, same answers
    _FAST = False


@functools.lru_cache(maxsize=1024)
def compile_re(pattern: str) -> Any:
    """Compile (and cache) an RE2 pattern; invalid patterns are CEL errors.

    Returns the low-level RE2 object when this google-re2 has it (the Python ``search``
    wrapper costs several µs per call decoding match offsets we never need), else the
    public compiled pattern: the fast path relies on a private part of the library, so
    it is checked at import and never required."""
    try:
        opts = re2.Options()
        opts.log_errors = False
        compiled = re2.compile(pattern, options=opts)
    except Exception as e:  # re2.error and friends
        raise CelEvalError(f"invalid regular expression {pattern!r}: {e}") from None
    return compiled._regexp if _FAST else compiled


def matches(s: Any, pattern: Any) -> bool:
    """True when ``pattern`` matches anywhere in ``s`` (RE2 semantics, unanchored)."""
    if type(s) is not str or type(pattern) is not str:
        raise no_overload("matches", s, pattern)
    if not _FAST:
        return compile_re(pattern).search(s) is not None
    b = s.encode("utf-8")
    return bool(compile_re(pattern).Match(_UNANCHORED, b, 0, len(b))[0] != _NO_MATCH)
