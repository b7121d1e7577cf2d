"""CEL edges the conformance suite does not cover, each checked against cel-go's behaviour
(Go's strconv / math / overflow rules it builds on): exact duration getters, Go's
rounding, conversion bounds and syntax, literals that cannot be represented, map keys a
Python dict cannot keep apart, and error texts that never leak a Python repr."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pdp.cel import Budget, CelCompileError, CelEvalError, pdp_environment

ENV = pdp_environment()


def run(src: str) -> Any:
    return ENV.compile(src).evaluate({}, Budget(deadline=time.monotonic() + 5))


@pytest.mark.parametrize(("src", "want"), [
    ("duration('999999999.999999999s').getSeconds()", 999999999),
    ("duration('-999999999.999999999s').getSeconds()", -999999999),
    ("duration('9000000000.999999999s').getMilliseconds()", 999),
    ("duration('-1.5s').getMilliseconds()", -500),
    ("duration('3599999999.999999999s').getHours()", 999999),
    ("duration('-90s').getMinutes()", -1),
    ("math.round(0.49999999999999994)", 0.0), ("math.round(4503599627370497.0)",
                                               4503599627370497.0),
    ("math.round(2.5)", 3.0), ("math.round(-2.5)", -3.0), ("math.round(-0.4)", -0.0),
    ("string(math.ceil(-0.5))", "-0"), ("string(math.trunc(-0.5))", "-0"),
    ("int(9223372036854774784.0)", 9223372036854774784), ("uint(-0.0) == 0u", True),
    ("double('-Inf') < 0.0", True), ("double('.5e1')", 5.0), ("double('1E3')", 1000.0),
    ("{true: 1, 2: 3}[true]", 1),
])
def test_values(src: str, want: Any) -> None:
    got = run(src)
    assert got == want and type(got) is type(want), (src, got)
    if isinstance(want, float) and want == 0:
        assert str(got) == str(want), (src, got)  # the sign of zero too


@pytest.mark.parametrize(("src", "problem"), [
    ("uint(-0.5)", "range"), ("uint('+5')", "cannot convert '+5' to uint"),
    ("double(' 1.5')", "cannot convert"), ("double('1_000')", "cannot convert"),
    ("double('\\uff11\\uff12')", "cannot convert"), ("double('1e400')", "out of range"),
    ("size({1: 'a', true: 'b'})", "map keys true and 1 cannot be in one map"),
    ("{0: 'a', false: 'b'}", "map keys false and 0"),
    ("{1: 'a', 1u: 'b'}", "repeated key: 1u"),
    ("int('" + "1" * 5000 + "')", "(5000 characters)"),
    ("uint('" + "1" * 5000 + "')", "(5000 characters)"),
])
def test_errors(src: str, problem: str) -> None:
    with pytest.raises(CelEvalError) as err:
        run(src)
    assert problem in str(err.value) and len(str(err.value)) < 300, str(err.value)


@pytest.mark.parametrize(("src", "problem"), [
    ("9" * 4301, "integer literal out of range"), ("1" * 41 + "u", "integer literal out of"),
    ("1e309", "floating point literal out of range"),
])
def test_literals_that_cannot_be_values_are_refused_at_compile(src: str, problem: str) -> None:
    with pytest.raises(CelCompileError) as err:
        ENV.compile(src)
    assert problem in str(err.value)


def test_error_texts_are_not_python_reprs() -> None:
    from pdp.cel.regex import compile_re

    with pytest.raises(CelEvalError) as err:
        compile_re("(")
    assert "b'" not in str(err.value) and "missing )" in str(err.value)
    env = pdp_environment()
    prog = env.compile("bytes(config.s).size() > 0")
    with pytest.raises(CelEvalError) as err:
        prog.evaluate({"config": {"s": "a\udc80b"}}, Budget(deadline=time.monotonic() + 5))
    assert "Unicode" in str(err.value) and "Error" not in str(err.value)


@pytest.mark.parametrize(("src", "want"), [
    ("1 in {1: 'a'}", True), ("dyn(1u) in dyn({1: 'a'})", True), ("1.0 in dyn({1: 'a'})", True),
    ("2 in {1: 'a'}", False), ("1.5 in dyn({1: 'a'})", False),
    ("true in {true: 'a'}", True), ("dyn(1) in dyn({true: 'a'})", False),
    ("dyn(true) in dyn({1: 'a'})", False), ("{true: 'a', 2: 'b'}[true]", "a"),
    ("dyn({1: 'a'})[1u]", "a"), ("dyn({5u: 'x'})[5]", "x"),
])
def test_map_keys_keep_cel_semantics_in_one_probe(src: str, want: Any) -> None:
    assert run(src) == want, src


def test_a_number_key_lookup_does_not_compare_with_every_key() -> None:
    """A lookup is one hash probe, not a scan: with 100 000 int keys, -1 in m compared the
    probe with every key (no budget charged it)."""
    from pdp.cel.stdlib import _NumProbe, map_get

    compared = 0
    original = _NumProbe.__eq__

    def counting(self: _NumProbe, other: object) -> bool:
        nonlocal compared
        compared += 1
        return original(self, other)

    m = {i: i for i in range(100_000)}
    _NumProbe.__eq__ = counting  # type: ignore[method-assign]
    try:
        assert map_get(m, -1) == (False, None) and map_get(m, 99_999) == (True, 99_999)
    finally:
        _NumProbe.__eq__ = original  # type: ignore[method-assign]
    assert compared <= 4
