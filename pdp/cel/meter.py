"""Runtime size accounting: what an operation will build is charged, and capped, before it
is built.

Units (shared with the static estimate in cost.py and with ``Budget.cost_limit``):

* every evaluated AST node costs 1 unit; generated code charges the static node count of
  the expression once at entry and ``1 + nodes of the body`` per comprehension iteration;
* an operation that builds or scans a string, bytes, list or map additionally costs
  ``1 + n // 64`` units where ``n`` is the number of characters / bytes / elements it
  produces or traverses (``+``, replace, join, format, split, substring, upper/lowerAscii,
  string()/bytes(), base64, matches, collecting comprehensions...).

The charge is computed here from the operands (``str.count`` and ``len`` only, linear in
the inputs and allocation-free) *before* the result exists, and a result larger than the
hard caps (``Limits``: characters of a string / bytes, elements of a list / map) raises
:class:`SizeLimitExceeded` instead of being built.  Without this, a chain of three
``replace`` calls or of ``cel.bind`` doublings builds gigabytes between two budget checks.

Each ``grow_*`` function takes ``(limits, deadline, *call arguments)`` and returns the
units to charge (0 when the operands are of types the operation does not build from; the
implementation then raises its usual error).  A charge of ``LARGE_CHARGE`` units or more
checks the clock at once (``_charge``; :func:`charged` wraps grow functions that do not),
so a few big operations cannot run far past the deadline between the periodic checks of
loops.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pdp.turns import clock

from .errors import DeadlineExceeded, SizeLimitExceeded

CHARS_PER_UNIT_SHIFT = 6          # 1 unit per 64 characters / bytes / elements
LARGE_CHARGE = 64                 # units (4096 characters) that check the clock at once
DEFAULT_MAX_STRING = 4 * 1024 * 1024  # characters of a str, bytes of a bytes
DEFAULT_MAX_LIST = 100_000        # elements of a list, entries of a map

Grow = Callable[..., int]


class Limits:
    """The hard caps on an intermediate value (checked before the value is built)."""

    __slots__ = ("max_list", "max_string")

    def __init__(self, max_string: int = DEFAULT_MAX_STRING,
                 max_list: int = DEFAULT_MAX_LIST) -> None:
        self.max_string = max_string
        self.max_list = max_list


class Ticker:
    """The clock for an implementation that loops in Python (a ``clocked`` function): read
    it once per ``every`` steps, raising DeadlineExceeded past ``dl``."""

    __slots__ = ("dl", "left")

    def __init__(self, dl: float) -> None:
        self.dl = dl
        self.left = TICK_EVERY

    def step(self, k: int = 1) -> None:
        self.left -= k
        if self.left <= 0:
            self.left = TICK_EVERY
            if clock() > self.dl:
                raise DeadlineExceeded("evaluation deadline exceeded")


TICK_EVERY = 1024  # Python-level steps (well under 1 ms) between two reads of the clock


def units(n: int) -> int:
    """Cost of producing or traversing ``n`` characters / elements."""
    return 1 + (n >> CHARS_PER_UNIT_SHIFT)


def _charge(n: int, dl: float) -> int:
    """Units for ``n`` characters / elements; a large charge checks the clock at once."""
    u = 1 + (n >> CHARS_PER_UNIT_SHIFT)
    if u >= LARGE_CHARGE and clock() > dl:
        raise DeadlineExceeded("evaluation deadline exceeded")
    return u


def _str_cap(lim: Limits, n: int, what: str) -> None:
    if n > lim.max_string:
        raise SizeLimitExceeded(f"{what} would build {n} characters, over the limit of "
                                f"{lim.max_string} (cel_max_string_bytes)")


def _list_cap(lim: Limits, n: int, what: str) -> None:
    if n > lim.max_list:
        raise SizeLimitExceeded(f"{what} would build {n} elements, over the limit of "
                                f"{lim.max_list} (cel_max_list_size)")


def charged(grow: Grow, lim: Limits, dl: float, *args: Any) -> int:
    """Units for a call about to happen, through a grow function that may not check the
    clock itself (the built-in ones here do, via _charge)."""
    n = grow(lim, dl, *args)
    if n >= LARGE_CHARGE and clock() > dl:
        raise DeadlineExceeded("evaluation deadline exceeded")
    return n


# -- operators -----------------------------------------------------------------------------

def grow_add(lim: Limits, dl: float, a: Any, b: Any) -> int:
    """``a + b``: strings, bytes and lists are charged and capped by the sum of lengths."""
    if isinstance(a, str | bytes):
        if type(b) is not type(a) and not isinstance(b, type(a)):
            return 0
        n = len(a) + len(b)
        _str_cap(lim, n, "'+'")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        n = len(a) + len(b)
        _list_cap(lim, n, "'+'")
    else:
        return 0
    return _charge(n, dl)


def grow_collect(lim: Limits, dl: float, rng: Any) -> int:
    """A map / transformList / transformMap comprehension builds one entry per element."""
    if not isinstance(rng, list | tuple | dict):
        return 0
    _list_cap(lim, len(rng), "comprehension")
    return _charge(len(rng), dl)


def merge_cap(lim: Limits, acc: dict[Any, Any], entry: Any) -> None:
    """transformMapEntry: the merged map stays within the cap."""
    if isinstance(entry, dict):
        _list_cap(lim, len(acc) + len(entry), "transformMapEntry")


# -- string functions ----------------------------------------------------------------------

def _all_str(*args: Any) -> bool:
    return all(isinstance(a, str) for a in args)


def grow_replace(lim: Limits, dl: float, s: Any, old: Any, new: Any, n: Any = -1) -> int:
    """Worst case ``len(s) + count * (len(new) - len(old))``, count by ``str.count``."""
    if not _all_str(s, old, new) or type(n) is not int:
        return 0
    size = len(s)
    if len(new) > len(old) and n != 0:
        count = len(s) + 1 if old == "" else s.count(old)
        if n > 0:
            count = min(count, n)
        size += count * (len(new) - len(old))
    _str_cap(lim, size, "replace")
    return _charge(len(s) + size, dl)


def grow_split(lim: Limits, dl: float, s: Any, sep: Any, n: Any = -1) -> int:
    """One element per separator (or per character for ``""``); traverses ``s``."""
    if not _all_str(s, sep) or type(n) is not int:
        return 0
    count = len(s) if sep == "" else s.count(sep) + 1
    if n >= 0:
        count = min(count, n)
    _list_cap(lim, count, "split")
    return _charge(len(s) + count, dl)


def grow_join(lim: Limits, dl: float, lst: Any, sep: Any = "") -> int:
    """The sum of the parts plus the separators."""
    if not isinstance(lst, list | tuple) or not isinstance(sep, str):
        return 0
    if not all(type(x) is str for x in lst):
        return units(len(lst))  # join raises its error
    size = sum(map(len, lst)) + len(sep) * max(0, len(lst) - 1)
    _str_cap(lim, size, "join")
    return _charge(size + len(lst), dl)


def grow_same(what: str) -> Grow:
    """Functions whose result is at most as long as their string receiver."""
    def grow(lim: Limits, dl: float, s: Any, *rest: Any) -> int:
        if not isinstance(s, str):
            return 0
        _str_cap(lim, len(s), what)
        return _charge(len(s), dl)
    return grow


def grow_each(lim: Limits, dl: float, v: Any, *rest: Any) -> int:
    """Functions that look at every element of a list in Python (math.greatest over a
    list): one unit per element, not per 64 -- each costs a comparison, not a memcpy."""
    u = 1 + (len(v) if isinstance(v, list | tuple) else len(rest))
    if u >= LARGE_CHARGE and clock() > dl:
        raise DeadlineExceeded("evaluation deadline exceeded")
    return u


def grow_scan(lim: Limits, dl: float, s: Any, *rest: Any) -> int:
    """Functions that traverse their receiver and build nothing big (indexOf, ...)."""
    return _charge(len(s), dl) if isinstance(s, str | bytes) else 0


def grow_prefix(lim: Limits, dl: float, s: Any, p: Any) -> int:
    """startsWith / endsWith: compare as many characters as the prefix has (a literal
    prefix is inlined by the code generator and not charged: its length is the policy's)."""
    return _charge(len(p), dl) if isinstance(s, str) and isinstance(p, str) else 0


def grow_substring(lim: Limits, dl: float, s: Any, start: Any, end: Any = None) -> int:
    if not isinstance(s, str):
        return 0
    size = len(s)
    if type(start) is int and (end is None or type(end) is int):
        stop = len(s) if end is None else end
        if 0 <= start <= stop <= len(s):
            size = stop - start
    _str_cap(lim, size, "substring")
    return _charge(size, dl)


def grow_quote(lim: Limits, dl: float, s: Any) -> int:
    if not isinstance(s, str):
        return 0
    size = 2 * len(s) + 2  # every character may become an escape
    _str_cap(lim, size, "strings.quote")
    return _charge(size, dl)


def grow_matches(lim: Limits, dl: float, s: Any, pattern: Any) -> int:
    """RE2 is linear in the input: charged by the text and the pattern."""
    if not _all_str(s, pattern):
        return 0
    return 3 + _charge(len(s) + len(pattern), dl)


_PREC = re.compile(r"%\.([0-9]+)")
_HEX = re.compile(r"%(?:\.[0-9]*)?[xX]")
_SCALAR_TEXT = 330  # the longest text of a number: %f of 1.8e308, binary of a uint64


def grow_format(lim: Limits, dl: float, fmt: Any, args: Any) -> int:
    """The format text, each argument's longest rendering and every explicit precision."""
    if not isinstance(fmt, str) or not isinstance(args, list | tuple):
        return 0
    size = len(fmt) + sum(int(p) for p in _PREC.findall(fmt))
    _str_cap(lim, size, "format")
    per_char = 8 if hex_clause(fmt) else 1  # %x of a string: 2 hex digits per UTF-8 byte
    size += _text_size(lim, dl, args, per_char, lim.max_string - size)
    _str_cap(lim, size, "format")
    return _charge(size, dl)


_HEX_SCAN = 4096  # '%' signs looked at one by one; a text with more is assumed to use %x


def hex_clause(fmt: str) -> bool:
    """Whether ``fmt`` may hold a %x / %X clause, at C speed: ``_HEX.search`` over a text of
    1 M '%' signs took ~33 ms (every position a candidate), before any charge or clock."""
    if "x" not in fmt and "X" not in fmt:
        return False
    if fmt.count("%") > _HEX_SCAN:
        return True  # (at worst an over-estimate of 8x for string arguments)
    i = fmt.find("%")
    while i >= 0:
        if _HEX.match(fmt, i):
            return True
        i = fmt.find("%", i + 1)
    return False


def _text_size(lim: Limits, dl: float, v: Any, per_char: int, room: int) -> int:
    """An upper bound of the text of ``v`` (stops once over ``room``: shared references
    can make a small value render to an exponentially long text)."""
    total = 0
    stack = [v]
    seen = 0
    while stack:
        x = stack.pop()
        seen += 1
        if not seen & 4095 and clock() > dl:
            raise DeadlineExceeded("evaluation deadline exceeded")
        if isinstance(x, str):
            total += per_char * len(x)
        elif isinstance(x, bytes):
            total += 2 * len(x)
        elif isinstance(x, list | tuple):
            total += 2 + 2 * len(x)
            stack.extend(x)
        elif isinstance(x, dict):
            total += 2 + 4 * len(x)
            for k, val in x.items():
                stack.append(k)
                stack.append(val)
        else:
            total += _SCALAR_TEXT
        if total > room:
            return total
    return total


# -- conversions and encoders --------------------------------------------------------------

def grow_to_string(lim: Limits, dl: float, v: Any) -> int:
    if isinstance(v, bytes):
        _str_cap(lim, len(v), "string()")
        return _charge(len(v), dl)
    return 0


def grow_to_bytes(lim: Limits, dl: float, v: Any) -> int:
    if isinstance(v, str):
        size = len(v) if v.isascii() else 4 * len(v)
        _str_cap(lim, size, "bytes()")
        return _charge(size, dl)
    return 0


def grow_b64_encode(lim: Limits, dl: float, b: Any) -> int:
    if not isinstance(b, bytes):
        return 0
    size = 4 * ((len(b) + 2) // 3)
    _str_cap(lim, size, "base64.encode")
    return _charge(size, dl)


def grow_b64_decode(lim: Limits, dl: float, s: Any) -> int:
    if not isinstance(s, str):
        return 0
    _str_cap(lim, len(s), "base64.decode")
    return _charge(len(s), dl)
