"""Second adversarial round on the cost model: scans and Python-speed loops charge before
they run and read the clock as they go.

No test here measures time: a budget whose ``deadline_at`` is already past (-1) shows
whether the clock is read at a given point at all; charges are read from ``Budget.cost``."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from pdp.cel import Budget, CelEvalError, DeadlineExceeded, new_pdp_environment, pdp_environment
from pdp.cel.ext_encoders import b64_decode, b64_encode
from pdp.cel.ext_strings import format_str
from pdp.cel.meter import hex_clause

ENV = pdp_environment()
UNLIMITED = 10**12


def cfg(**kw: Any) -> dict[str, Any]:
    return {"config": kw}


def cost(src: str, act: dict[str, Any]) -> int:
    b = Budget(cost_limit=UNLIMITED)
    ENV.compile(src).evaluate(act, b)
    return b.cost


def past_deadline() -> Budget:
    """A budget whose deadline the generated code sees as passed (the real one is far)."""
    b = Budget(deadline=time.monotonic() + 3600, cost_limit=UNLIMITED)
    b.deadline_at = -1.0
    return b


# -- x in list ------------------------------------------------------------------------------

def test_a_scan_charge_in_a_loop_reads_the_clock_when_it_crosses_a_check_point() -> None:
    """Two iterations whose ticks never cross a clock check point: the scan's own charge
    (16 384 elements: 256 units) does. Before, only the constant tick could trigger the
    clock, so a loop of costly scans read it once in ~50 iterations (17 ms late)."""
    prog = ENV.compile("config.l.all(x, x in config.big)")
    act = cfg(l=[0, 0], big=[0] * 16_384)
    assert prog.evaluate(act, Budget(cost_limit=UNLIMITED)) is True
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(act, past_deadline())


def test_a_membership_test_outside_loops_is_charged_by_the_list() -> None:
    small = cost("-1 in config.l", cfg(l=[0] * 10))
    big = cost("-1 in config.l", cfg(l=[0] * 100_000))
    assert big - small >= 100_000 // 64
    # a map is one key test, whatever its size
    assert cost("-1 in config.m", cfg(m={str(i): i for i in range(100_000)})) == small


def test_a_long_scalar_scan_reads_the_clock() -> None:
    """A scan of 10 000 numbers is charged 156 units (no check point crossed): the scan
    itself reads the clock between slices."""
    prog = ENV.compile("-1 in config.l")
    act = cfg(l=list(range(10_000)))
    assert prog.evaluate(act, Budget(cost_limit=UNLIMITED)) is False
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(act, past_deadline())


@pytest.mark.parametrize("src,expected", [
    ("1 in config.bools", False),      # true is not the number 1 in CEL
    ("1 in config.floats", True),      # 1 == 1.0
    ("1u in config.floats", True),
    ("2.0 in config.ints", True),
    ("config.nan in config.nans", False),  # NaN equals nothing
    ("3 in config.ints", False),
    ("config.ints[9999] in config.ints", True),
])
def test_membership_keeps_cel_equality(src: str, expected: bool) -> None:
    act = cfg(bools=[True] * 9000, floats=[0.5] * 9000 + [1.0], ints=[2] * 10_000,
              nan=float("nan"), nans=[float("nan")] * 9000)
    assert ENV.compile(src).evaluate(act, Budget(cost_limit=UNLIMITED)) is expected


def test_contains_of_a_literal_is_charged_by_the_receiver() -> None:
    small = cost('config.s.contains("b")', cfg(s="a"))
    assert cost('config.s.contains("b")', cfg(s="a" * 640_000)) - small >= 10_000


# -- clocked implementations (Python loops over their input) -------------------------------

def test_a_clocked_function_gets_the_evaluation_deadline_first() -> None:
    env = new_pdp_environment()
    seen: list[Any] = []

    def probe(dl: float, s: Any) -> bool:
        seen.append((dl, s))
        return True

    env.registry.add("probe", "string->bool", probe, clocked=True)
    b = Budget(deadline=time.monotonic() + 3600, cost_limit=UNLIMITED)
    assert env.compile('probe("x")').evaluate({}, b) is True
    assert seen == [(b.deadline_at, "x")]
    assert env.compile('probe("y")').evaluate({}) is True  # no budget: no deadline
    assert seen[-1] == (math.inf, "y")


@pytest.mark.parametrize("call", [
    lambda dl: format_str(dl, "%s", [[""] * 5000]),      # %s of a list: a step per element
    lambda dl: format_str(dl, "%%" * 5000, []),          # a step per clause
    lambda dl: b64_decode(dl, "QUFB" * 200_000),         # a chunk at a time
    lambda dl: b64_encode(dl, b"x" * 600_000),
])
def test_clocked_implementations_read_the_clock(call: Callable[[float], Any]) -> None:
    call(math.inf)
    with pytest.raises(DeadlineExceeded):
        call(-1.0)


def test_chunked_base64_keeps_its_results_and_errors() -> None:
    data = bytes(range(256)) * 3000  # several chunks
    text = base64.b64encode(data).decode()
    assert b64_encode(math.inf, data) == text
    assert b64_decode(math.inf, text) == data
    assert b64_decode(math.inf, text.rstrip("=")) == data
    bad = text[:8] + "=" + text[9:]  # padding in the first chunk only
    with pytest.raises(CelEvalError, match="invalid input"):
        b64_decode(math.inf, bad)


def test_format_keeps_its_output() -> None:
    src = '"%s|%d|%%|%.2f|%x|%X|%s".format(["a", 7, 1.255, "hi", 255, [1, "b"]])'
    assert ENV.compile(src).evaluate({}) == 'a|7|%|1.25|6869|FF|[1, b]'
    assert ENV.compile('config.s.format([])').evaluate(cfg(s="ab" * 10_000)) == "ab" * 10_000


@pytest.mark.parametrize("fmt,expected", [
    ("%s x", False), ("100%%", False), ("%x", True), ("%.3X", True), ("%" * 100, False),
    ("%" * 5000 + "x", True),  # too many clauses to look at: assumed
])
def test_hex_clause_detection(fmt: str, expected: bool) -> None:
    assert hex_clause(fmt) is expected


def test_quote_escapes_every_special_character_once() -> None:
    src = 'strings.quote(config.s)'
    assert ENV.compile(src).evaluate(cfg(s='a"b\\c\n\t\a\b\f\r\v\U0001F600')) == \
        '"a\\"b\\\\c\\n\\t\\a\\b\\f\\r\\v\U0001F600"'


@pytest.mark.parametrize("s,n,expected", [
    ("abc", 2, ["a", "bc"]), ("abc", 1, ["abc"]), ("abc", 3, ["a", "b", "c"]),
    ("abc", 9, ["a", "b", "c"]), ("abc", -1, ["a", "b", "c"]), ("abc", 0, []), ("", 2, []),
])
def test_split_by_characters_with_a_limit(s: str, n: int, expected: list[str]) -> None:
    assert ENV.compile(f'config.s.split("", {n})').evaluate(cfg(s=s)) == expected


# -- == of lists and maps ---------------------------------------------------------------------

@pytest.mark.parametrize("src", ["config.a == config.b", "config.a != config.b"])
def test_equality_of_lists_is_charged_by_their_length(src: str) -> None:
    small = cost(src, cfg(a=[0] * 10, b=[0] * 10))
    assert cost(src, cfg(a=[0] * 64_000, b=[0] * 64_000)) - small >= 1000
    assert cost(src, cfg(a=[0] * 64_000, b=[0])) == small  # lengths differ: decided at once
    maps = cfg(a={str(i): i for i in range(64_000)}, b={str(i): i for i in range(64_000)})
    assert cost(src, maps) - small >= 1000


def test_equality_of_inputs_is_in_the_estimate() -> None:
    # 1000 iterations (the assumed input size), each comparing two 1000-item lists
    one = ENV.compile("config.a.all(x, config.b == config.c)").cost_estimate
    assert one >= 1000 * (1 + ENV.assumed_size // 64)
    assert ENV.compile("config.b == []").cost_estimate < 10


# -- regular expressions built at run time ---------------------------------------------------

def test_every_pattern_compile_reads_the_clock() -> None:
    """A short pattern may take milliseconds to compile (or to refuse): ``\\pL{100}`` is 8
    characters, charged like 8 characters. A new pattern per item: the clock is read after
    each compile, not only when the charges reach a check point."""
    prog = ENV.compile('config.items.all(x, "a".matches("\\\\pL{10}" + string(x)) || true)')
    act = cfg(items=list(range(3)))
    assert prog.evaluate(act, Budget(cost_limit=UNLIMITED)) is True
    fresh = cfg(items=[10_000 + i for i in range(3)])  # patterns not compiled yet
    with pytest.raises(DeadlineExceeded, match="compiling"):
        prog.evaluate(fresh, past_deadline())
    # cached patterns compile nothing: no clock read of their own
    assert prog.evaluate(fresh, Budget(cost_limit=UNLIMITED)) is True
    b = past_deadline()
    assert prog.evaluate(fresh, b) is True


def test_a_refused_pattern_reads_the_clock_too() -> None:
    prog = ENV.compile('config.items.all(x, "a".matches("(" + string(x)) || true)')
    with pytest.raises(DeadlineExceeded, match="compiling"):
        prog.evaluate(cfg(items=[20_000]), past_deadline())


@pytest.mark.parametrize("fn", ["startsWith", "endsWith"])
def test_a_computed_prefix_is_charged_by_its_length(fn: str) -> None:
    src = f"config.s.{fn}(config.p)"
    small = cost(src, cfg(s="a", p="a"))
    assert cost(src, cfg(s="a" * 640_000, p="a" * 640_000)) - small >= 10_000
    assert ENV.compile(src).cost_estimate >= ENV.inputs.max_string // 64
    # a literal prefix: its length is the policy's own, inlined and not charged
    assert cost(f'config.s.{fn}("a")', cfg(s="a" * 640_000)) <= small
