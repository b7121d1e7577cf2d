"""``matches()`` backed by RE2: linear-time matching, so no pattern can cause ReDoS."""

from __future__ import annotations

import functools
from typing import Any

import re2

from pdp.turns import clock

from .errors import CelEvalError, DeadlineExceeded
from .stdlib import no_overload, short_repr

_NO_MATCH = (-1, -1)
try:  # google-re2's low-level matcher: several µs cheaper per call than ``search``
    from re2 import _re2
    _UNANCHORED: Any = _re2.RE2.Anchor.UNANCHORED
    _FAST = callable(getattr(re2.compile("a"), "_regexp", None) and
                     getattr(re2.compile("a")._regexp, "Match", None))
except (ImportError, AttributeError):  # a release without it: the public API, same answers
    _FAST = False


#: RE2's memory budget per pattern (program and DFA). Matching is linear whatever the
#: pattern, but compiling is not free: with RE2's default (8 MiB) a 12-byte ``\pL{440}``
#: took ~300 ms and ~1 MiB to compile, on the event loop, and the cache kept it. Within this
#: budget the largest patterns compile in a few ms, and bigger ones fail fast ("pattern too
#: large") as a CEL error.
MAX_MEM = 512 << 10
#: Compiled patterns kept (each at most MAX_MEM), and refused ones remembered so that a
#: pattern refused once is not compiled again on every request.
CACHED = 256
_refused: dict[str, str] = {}
#: The longest pattern compiled: RE2 compiles in time and memory proportional to the text
#: (a 3.8 MB pattern took 200 ms), and both caches key on it. Far beyond any real pattern.
MAX_PATTERN = 16 * 1024


def _reason(e: Exception) -> str:
    """RE2's message as text (the binding passes it as bytes: ``b'missing ): ('``)."""
    arg = e.args[0] if len(e.args) == 1 else None
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace")
    return str(e)


@functools.lru_cache(maxsize=CACHED)
def compile_re(pattern: str) -> Any:
    """Compile (and cache) an RE2 pattern; invalid patterns are CEL errors.

    Returns the low-level RE2 object when this google-re2 has it (the Python ``search``
    wrapper costs several µs per call decoding match offsets we never need), else the
    public compiled pattern: the fast path relies on a private part of the library, so
    it is checked at import and never required."""
    if len(pattern) > MAX_PATTERN:
        raise CelEvalError(f"regular expression {short_repr(pattern)} is longer than the limit of"
                           f" {MAX_PATTERN} characters")
    why = _refused.get(pattern)
    if why is None:
        try:
            opts = re2.Options()
            opts.log_errors = False
            opts.max_mem = MAX_MEM
            compiled = re2.compile(pattern, options=opts)
            return compiled._regexp if _FAST else compiled
        except Exception as e:  # re2.error and friends
            why = _reason(e)
            if len(_refused) >= CACHED:
                _refused.clear()
            _refused[pattern] = why
    raise CelEvalError(f"invalid regular expression {short_repr(pattern)}: {why[:200]}")


def matches(dl: float, s: Any, pattern: Any) -> bool:
    """True when ``pattern`` matches anywhere in ``s`` (RE2 semantics, unanchored).

    Clocked (functions.Function): a pattern not in the cache is compiled first, and RE2
    expands counted repetitions, so 8 characters (``\\pL{100}``, charged 1 unit) can take
    ~4 ms to compile or to refuse. A loop building a new pattern per item ran 80 ms on a
    50 ms deadline before its charges reached a clock check: the clock is read after every
    compile, whether it succeeded or not."""
    if type(s) is not str or type(pattern) is not str:
        raise no_overload("matches", s, pattern)
    misses = compile_re.cache_info().misses
    try:
        rx = compile_re(pattern)
    finally:
        if compile_re.cache_info().misses != misses and clock() > dl:
            raise DeadlineExceeded("evaluation deadline exceeded (compiling a pattern)")
    if not _FAST:
        return rx.search(s) is not None
    b = s.encode("utf-8")
    return bool(rx.Match(_UNANCHORED, b, 0, len(b))[0] != _NO_MATCH)
