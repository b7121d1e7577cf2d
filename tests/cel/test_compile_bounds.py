"""What bounds the work of compiling one expression: chains in a row, nodes in all.

Compiling runs on the server's event loop (admission, start-up, store updates), so its work
must be bounded by the expression, not only by its length in characters: before these
limits a 100 KB expression of select chains took seconds (bench/cel_compile_bench.py)."""

from __future__ import annotations

import pytest

from pdp.cel import CelCompileError, new_pdp_environment
from pdp.cel.parser import MAX_CHAIN, MAX_NODES
from pdp.cel.types import DYN, INT, STRING, Subst, T


@pytest.fixture(scope="module")
def env():  # type: ignore[no-untyped-def]
    return new_pdp_environment()


def test_a_chain_of_selections_up_to_the_limit_compiles(env) -> None:  # type: ignore[no-untyped-def]
    prog = env.compile("config" + ".c" * MAX_CHAIN + " == 1")
    assert prog.cost_estimate > 0


@pytest.mark.parametrize("expr", [
    "config" + ".c" * (MAX_CHAIN + 1) + " == 1",
    "config" + "[0]" * (MAX_CHAIN + 1) + " == 1",
    "config" + ".c" * (MAX_CHAIN // 2) + "[0]" * (MAX_CHAIN // 2 + 1) + " == 1",
    # the chain goes on through parentheses
    "((config" + ".c" * 60 + ")" + ".c" * 30 + ")" + ".c" * 11 + " == 1",
])
def test_a_longer_chain_is_refused_where_it_goes_over(env, expr: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CelCompileError) as info:
        env.compile(expr)
    assert f"more than {MAX_CHAIN} selections, indexes or calls in a row" in str(info.value)
    assert info.value.column > 1  # at the step over the limit, not the start


def test_an_expression_over_the_node_limit_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    ok = "agent.id in [" + ",".join(f"'a{i}'" for i in range(MAX_NODES - 10)) + "]"
    assert env.compile(ok).evaluate({"agent": {"id": "a7"}}) is True
    over = " || ".join(f"agent.id == 'a{i}'" for i in range(MAX_NODES // 3 + 1))
    with pytest.raises(CelCompileError) as info:
        env.compile(over)
    assert f"more than {MAX_NODES} nodes" in str(info.value)


def test_many_repeated_chains_compile_and_evaluate(env) -> None:  # type: ignore[no-untyped-def]
    """The path cache and the dotted-name lookup are remembered per node: many long chains
    still compile, and each evaluates to the value it reads."""
    chain = "config.a" + ".b" * 40
    prog = env.compile("[" + ",".join([chain] * 20) + "].all(x, x == 7)")
    value: object = 7
    for _ in range(40):
        value = {"b": value}
    assert prog.evaluate({"config": {"a": value}}) is True


def test_subst_undo_forgets_only_the_bindings_after_the_mark() -> None:
    s = Subst()
    a, b, c = T("param", (), "A"), T("param", (), "B"), T("param", (), "C")
    assert s.assignable(a, INT)
    mark = s.mark()
    assert s.assignable(b, STRING)
    assert not s.assignable(T("list", (c,), ""), INT)  # fails: nothing of it stays bound
    s.undo(mark)
    assert s.resolve(a) == INT
    assert s.resolve(b) == b and s.resolve(c) == c
    assert s.resolve(DYN) == DYN
