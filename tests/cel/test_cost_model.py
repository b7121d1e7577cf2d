"""The cost model: every operation is charged, building operations are charged (and capped)
by what they will produce before producing it, the static estimate follows value sizes and
refuses growth at admission naming the sub-expression, generated code has no builtins.

No test here measures time: "before allocating" is shown by the exception type (never a
MemoryError) and by an implementation spy that is never called."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pdp.cel import (
    Budget,
    BudgetExceeded,
    CelCompileError,
    CostLimitExceeded,
    DeadlineExceeded,
    Environment,
    new_pdp_environment,
    pdp_environment,
)
from pdp.cel.cost import static_nodes
from pdp.cel.errors import SizeLimitExceeded
from pdp.cel.meter import DEFAULT_MAX_LIST, DEFAULT_MAX_STRING

ENV = pdp_environment()
UNLIMITED = 10**12


def cost(src: str, act: dict[str, Any], env: Environment = ENV) -> int:
    b = Budget(cost_limit=UNLIMITED)
    env.compile(src).evaluate(act, b)
    return b.cost


def growth(src: str, small: dict[str, Any], big: dict[str, Any]) -> int:
    return cost(src, big) - cost(src, small)


def cfg(**kw: Any) -> dict[str, Any]:
    return {"config": kw}


# -- every operation is charged ----------------------------------------------------------

def test_straight_line_code_charges_its_node_count() -> None:
    src = 'config.a + 1 == 3 && config.b == "x"'
    prog = ENV.compile(src)
    b = Budget(cost_limit=UNLIMITED)
    assert prog.evaluate(cfg(a=2, b="x"), b) is True
    assert b.cost == static_nodes(ENV.parse(src)) > 0
    assert prog.evaluate(cfg(a=2, b="x")) is True  # no budget: nothing to charge
    with pytest.raises(CostLimitExceeded):
        prog.evaluate(cfg(a=2, b="x"), Budget(cost_limit=3))


def test_loop_iterations_charge_their_body() -> None:
    small = cost("config.l.all(x, x > 0)", cfg(l=[1] * 10))
    bigger_body = cost("config.l.all(x, x > 0 && x < 10 && x != 5)", cfg(l=[1] * 10))
    # 10 iterations, each 8 nodes more
    assert bigger_body - small == 10 * 8


# -- size-proportional charges ---------------------------------------------------------------

N = 64 * 1000  # 1000 units of growth between the small and the big input


@pytest.mark.parametrize("src,small,big", [
    ("(config.s + config.s).size()", cfg(s=""), cfg(s="a" * (N // 2))),
    ("(config.l + config.l).size()", cfg(l=[]), cfg(l=[1] * (N // 2))),
    ('config.s.replace("a", "bb").size()', cfg(s=""), cfg(s="a" * (N // 3))),
    ('config.l.join(",").size()', cfg(l=[]), cfg(l=["a" * 63] * 1000)),
    ('"%s".format([config.s]).size()', cfg(s=""), cfg(s="a" * N)),
    ("config.s.upperAscii().size()", cfg(s=""), cfg(s="a" * N)),
    ("config.s.lowerAscii().size()", cfg(s=""), cfg(s="A" * N)),
    ('config.s.split(",").size()', cfg(s=""), cfg(s="a" * N)),
    ("string(config.b).size()", cfg(b=b""), cfg(b=b"a" * N)),
    ("bytes(config.s).size()", cfg(s=""), cfg(s="a" * N)),
    ("config.s.substring(1).size()", cfg(s="a"), cfg(s="a" * (N + 1))),
    ('config.s.matches("b")', cfg(s=""), cfg(s="a" * N)),
    ('cel.bind(a, config.s + config.s, cel.bind(b, a + a, b + b)).size()', cfg(s=""),
     cfg(s="a" * (N // 14))),
])
def test_builders_are_charged_by_what_they_produce(src: str, small: dict[str, Any],
                                                   big: dict[str, Any]) -> None:
    assert growth(src, small, big) >= 1000 - 2


def test_collecting_comprehensions_charge_result_growth() -> None:
    for src in ("config.l.map(x, x).size()", "config.l.filter(x, x > 0).size()",
                "config.l.transformList(i, x, x).size()"):
        assert growth(src, cfg(l=[]), cfg(l=[1] * 1000)) >= 1000


def test_nested_comprehensions_multiply() -> None:
    src = "config.l.all(x, config.l.all(y, x + y > 0))"
    c10 = cost(src, cfg(l=[1] * 10))
    c40 = cost(src, cfg(l=[1] * 40))
    assert c40 > 14 * c10  # quadratic: 16x the iterations


def test_list_membership_in_a_loop_is_charged_by_the_list() -> None:
    src = "config.l.all(x, x in config.l)"
    assert growth(src, cfg(l=[1] * 10), cfg(l=[1] * 640)) >= 640 * (640 // 64)
    with pytest.raises(CostLimitExceeded):  # quadratic: stopped by the budget
        ENV.compile(src).evaluate(cfg(l=list(range(20_000))), Budget(cost_limit=1_000_000))


# -- the charge comes before the value -------------------------------------------------------

@pytest.mark.parametrize("src,act", [
    ('config.s.replace("a", config.s)', cfg(s="a" * 40_000)),        # 1.6 G characters
    ("cel.bind(a, config.s + config.s, cel.bind(b, a + a, cel.bind(c, b + b, "
     "cel.bind(d, c + c, d + d))))", cfg(s="a" * 40_000_000)),    # 1.28 G characters
    ('"%.1000000000f".format([1.0])', {}),
    ('config.l.join(config.s)', cfg(l=["a"] * 1000, s="b" * 1_000_000)),
    ('config.s.split("")', cfg(s="a" * 2_000_000)),
    ("config.l + config.l", cfg(l=[0] * 60_000)),
    ("config.l.map(x, x)", cfg(l=[0] * 200_000)),
    ("config.m.transformMapEntry(k, v, {k: v, k + 'x': v})", cfg(m={str(i): i for i in
                                                                      range(60_000)})),
    ('bytes(config.s + config.s)', cfg(s="é" * 3_000_000)),
])
def test_oversized_results_are_refused_before_they_exist(src: str, act: dict[str, Any]
                                                         ) -> None:
    prog = ENV.compile(src)
    with pytest.raises(SizeLimitExceeded) as ei:
        prog.evaluate(act, Budget(cost_limit=UNLIMITED))
    assert isinstance(ei.value, CostLimitExceeded)
    assert "cel_max_string_bytes" in str(ei.value) or "cel_max_list_size" in str(ei.value)


def test_the_implementation_is_not_called_when_the_charge_exceeds_the_budget() -> None:
    env = new_pdp_environment()
    calls: list[Any] = []
    f = env.registry.get("replace")
    assert f is not None and f.impl is not None
    real = f.impl

    def spy(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    f.impl = f.member_impl = spy
    prog = env.compile('config.s.replace("a", "bb")')
    with pytest.raises(CostLimitExceeded):
        prog.evaluate(cfg(s="a" * 1_000_000), Budget(cost_limit=1000))
    assert calls == []
    assert prog.evaluate(cfg(s="a"), Budget(cost_limit=1000)) == "bb"
    assert len(calls) == 1


def test_size_errors_are_never_absorbed_by_logical_operators() -> None:
    prog = ENV.compile("(config.s + config.s).size() > 0 || true")
    with pytest.raises(SizeLimitExceeded):
        prog.evaluate(cfg(s="a" * 3_000_000), Budget(cost_limit=UNLIMITED))
    assert prog.evaluate(cfg(s="a"), Budget(cost_limit=UNLIMITED)) is True


def test_large_charges_check_the_clock_at_once() -> None:
    prog = ENV.compile("(config.s + config.s).size() > 0")  # straight-line apart from '+'
    b = Budget(deadline=time.monotonic() + 3600, cost_limit=UNLIMITED)
    b.deadline_at = -1.0  # the clock is past the deadline for the generated code only
    assert prog.evaluate(cfg(s="a" * 10), b) is True  # small charges wait for a loop
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(cfg(s="a" * 100_000), b)


# -- hard caps ---------------------------------------------------------------------------------

def test_caps_are_configurable_and_name_the_limit() -> None:
    env = Environment({"config": "dyn"}, max_string_bytes=1000, max_list_size=10)
    assert env.compile("config.s + config.s").evaluate(cfg(s="a" * 500)) == "a" * 1000
    with pytest.raises(SizeLimitExceeded, match=r"1001 characters.*limit of 1000"):
        env.compile("config.s + config.s + 'x'").evaluate(cfg(s="a" * 500))
    assert len(env.compile("config.l + config.l").evaluate(cfg(l=[1] * 5))) == 10
    with pytest.raises(SizeLimitExceeded, match="cel_max_list_size"):
        env.compile("config.l + config.l").evaluate(cfg(l=[1] * 6))
    with pytest.raises(SizeLimitExceeded, match="cel_max_list_size"):
        env.compile("config.l.map(x, x * 2)").evaluate(cfg(l=[1] * 11))


def test_default_caps() -> None:
    assert DEFAULT_MAX_STRING == 4 * 1024 * 1024
    assert DEFAULT_MAX_LIST == 100_000
    assert isinstance(SizeLimitExceeded("x"), BudgetExceeded)


# -- the static estimate --------------------------------------------------------------------------

def _bind_chain(n: int, first: str = '"ab"') -> str:
    src = f"cel.bind(s1, {first}, "
    for i in range(1, n):
        src += f"cel.bind(s{i + 1}, s{i} + s{i},\n  "
    return src + f"s{n}.size() > 0" + ")" * n


ADVERSARIAL = {
    "replace chain": ('"a".replace("a", "{s}").replace("a", "{s}").replace("a", "{s}")'
                      ".size() > 0").format(s="a" * 700),
    "bind doubling": _bind_chain(30),
    "input doubling": _bind_chain(8, "config.s"),
    "format precision": '"%.200000000f".format([1.0]).size() > 0',
    "nested loops": "config.a.all(x, config.b.all(y, config.c.all(z, x == y)))",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_expressions_are_refused_at_admission(name: str) -> None:
    src = ADVERSARIAL[name]
    assert ENV.compile(src).cost_estimate > 100_000_000  # settings.cel_max_cost_estimate
    with pytest.raises(CelCompileError, match="costliest part is") as ei:
        ENV.compile(src, max_cost=100_000_000)
    assert ei.value.line >= 1 and ei.value.column >= 1


def test_refusal_names_the_sub_expression() -> None:
    src = _bind_chain(30)
    with pytest.raises(CelCompileError) as ei:
        ENV.compile(src, max_cost=100_000_000)
    msg = str(ei.value)
    assert "`s29 + s29`" in msg and "over the limit of 4194304" in msg
    assert ei.value.line == 29  # the line of that sub-expression
    src = ADVERSARIAL["replace chain"]
    with pytest.raises(CelCompileError, match=r'costliest part is 1:\d+ `"a"\.replace'):
        ENV.compile(src, max_cost=100_000_000)


def test_estimate_uses_declared_input_sizes() -> None:
    src = 'config.s.replace(",", ", ").size() > 0'
    small = Environment({"config": "dyn"}, max_input_bytes=1000).compile(src)
    big = Environment({"config": "dyn"}, max_input_bytes=1_000_000).compile(src)
    assert big.cost_estimate > 100 * small.cost_estimate
    loops = "config.l.exists(x, x == 1)"
    assert (Environment({"config": "dyn"}, max_input_elements=10_000).compile(loops)
            .cost_estimate > 5 * ENV.compile(loops).cost_estimate)


@pytest.mark.parametrize("src,act", [
    ('"exporter " + config.l.filter(x, x.startsWith("d"))[0] + " is not allowed"',
     cfg(l=["a" * 500] * 999 + ["d" * 400_000])),
    ('config.l.map(x, x + "!").join(",").size() > 0', cfg(l=["abc"] * 1000)),
    ('config.s.split(",").exists(p, p.upperAscii() == "X")', cfg(s="ab," * 30_000)),
    ('config.l.all(x, x.matches("^[a-z]+$"))', cfg(l=["a" * 1000] * 1000)),
    ("config.s.replace('a', 'bb').size() > 0", cfg(s="a" * 1_000_000)),
])
def test_runtime_cost_stays_within_the_estimate_for_inputs_within_the_maxima(
        src: str, act: dict[str, Any]) -> None:
    prog = ENV.compile(src)
    b = Budget(cost_limit=UNLIMITED)
    prog.evaluate(act, b)
    assert b.cost <= prog.cost_estimate


def test_typical_policies_stay_cheap() -> None:
    for src in ('type(config) == map && "exporters" in config && config.exporters.exists('
                'n, config.exporters[n].endpoint.matches("^[a-z.]+:[0-9]+$"))',
                '"the debug exporter is not allowed on production agent " + agent.id'):
        assert ENV.compile(src, max_cost=1_000_000).cost_estimate <= 1_000_000


# -- sandbox ---------------------------------------------------------------------------------------

def test_generated_code_has_no_builtins() -> None:
    for src in ("1 + 1", 'config.l.map(x, x + "a").join(",")', "[1, 2].exists(x, x == 2)"):
        fn = ENV.compile(src)._fn
        assert fn.__globals__["__builtins__"] == {}
    assert ENV.compile('["a"].map(x, x + "b").join(",")').evaluate({}) == "ab"


# -- equality and membership of values built from shared parts -----------------------------

def _shared(levels: int, expr: str) -> str:
    """``l<levels-1>``: ten references to the level below, ``levels`` deep: a few hundred
    characters whose value, walked element by element, has 10**levels leaves."""
    src = "cel.bind(l0, [1,2,3,4,5,6,7,8,9,10], "
    for i in range(1, levels):
        src += f"cel.bind(l{i}, [" + ",".join([f"l{i - 1}"] * 10) + "], "
    return src + expr + ")" * levels


@pytest.mark.parametrize("expr", [
    "l7 == l7", "l7 != l7", "l7 in [l7]", "[l7].exists(x, x == l7)",
    "{'a': l7} == {'a': l7}", "optional.of(l7) == optional.of(l7)"])
def test_equality_of_shared_structure_stops_at_the_deadline(expr: str) -> None:
    """Equality and ``in`` walk lists and maps element by element: over values built from
    shared parts that walk is exponential in the expression's length (10**8 leaves here).
    It stops at the deadline instead of running for minutes."""
    prog = ENV.compile(_shared(8, expr))
    with pytest.raises(DeadlineExceeded):
        prog.evaluate(cfg(), Budget(deadline=time.monotonic() + 0.05, cost_limit=UNLIMITED))


def test_bounded_equality_keeps_cel_semantics() -> None:
    for src, want in [("[dyn(1), [2, 3]] == [dyn(1.0), dyn([2u, 3])]", True),
                      ("[1, 2] == [1, 2, 3]", False), ("dyn({'a': [1]}) == {'a': [1.0]}", True),
                      ("[1] in [[1], [2]]", True), ("[0.0/0.0] == [0.0/0.0]", False),
                      ("dyn({1: 'a'}) == {1u: 'a'}", True), ("[dyn(1)] != [dyn('1')]", True)]:
        assert ENV.compile(src).evaluate({}, Budget(deadline=time.monotonic() + 5)) is want, src


# -- helpers that parse or scan their arguments ---------------------------------------------

@pytest.mark.parametrize(("src", "small", "big"), [
    ("duration(config.a) > duration('0s')", cfg(a="1s"), cfg(a="1s" * 100)),
    ("compareVersions(config.a, config.b) >= 0", cfg(a="1", b="1"),
     cfg(a="1", b=".".join(["1"] * 120))),
    ('config.b.versionAtLeast(config.a)', cfg(a="1", b="1"),
     cfg(a=".".join(["1"] * 120), b="1")),
    ('config.a.inCidr(config.b)', cfg(a="10.0.0.1", b="10.0.0.0/8"),
     cfg(a="10.0.0.1", b="10.0.0.0/8" + " " * 200)),
    ('config.a.endpointHost() != ""', cfg(a="h:1"), cfg(a="h" * 4000 + ":1")),
    ("math.least(config.l) >= 0", cfg(l=[1]), cfg(l=list(range(1000)))),
])
def test_helpers_are_charged_by_every_argument(src: str, small: dict[str, Any],
                                               big: dict[str, Any]) -> None:
    """Parsing and scanning helpers cost by the size of all their arguments (math.least by
    its elements: each is a comparison), as the static estimate assumes."""
    assert growth(src, small, big) > 0
    prog = ENV.compile(src)
    b = Budget(cost_limit=UNLIMITED)
    prog.evaluate(big, b)
    assert b.cost <= prog.cost_estimate


def test_an_element_wise_helper_costs_a_unit_per_element() -> None:
    assert growth("math.greatest(config.l) >= 0", cfg(l=[1]),
                  cfg(l=list(range(6401)))) >= 6400


@pytest.mark.parametrize(("src", "value", "problem"), [
    ("duration(config.s)", "1s" * 200, "longer than 256 characters"),
    ("timestamp(config.s)", "2026-01-01T00:00:00Z" + "0" * 300, "cannot parse timestamp"),
    ("now.getHours(config.s)", "Europe/" + "x" * 300, "longer than 256 characters"),
    ("compareVersions(config.s, '1')", "1." * 200, "longer than the 256 characters"),
    ("config.s.versionAtLeast('1')", "1." * 200, "longer than the 256 characters"),
    ("quantity(config.s)", "1" * 300, "longer than the 256 characters"),
    ("'10.0.0.1'.inCidr(config.s)", "1" * 300, "longer than the 256 characters"),
    ("config.s.endpointHost()", "h" * 9000, "longer than the 8192 characters"),
    ("isLocalhost(config.s)", "h" * 9000, "longer than the 8192 characters"),
    ("'x'.matches(config.s)", "a" * (16 * 1024 + 1), "longer than the limit of 16384"),
    ("config.m[config.s]", "k" * 100_000, "no such key"),
])
def test_overlong_texts_are_errors_with_a_short_message(src: str, value: str,
                                                        problem: str) -> None:
    """A text far longer than any real duration, version, zone, address or pattern is an
    error (one call's time and the caches' memory stay bounded), and the message quotes
    only its start."""
    from pdp.cel import CelEvalError

    with pytest.raises(CelEvalError) as ei:
        ENV.compile(src).evaluate({"config": {"s": value, "m": {}},
                                   "now": __import__("datetime").datetime.now(
                                       __import__("datetime").UTC)}, Budget())
    assert problem in str(ei.value)
    assert len(str(ei.value)) < 400
