"""A CEL rule's variables and the nodes of all its expressions are bounded per policy: each
variable compiles against the ones before it, on the event loop (5 000 took 27 s)."""

from __future__ import annotations

import pytest

from pdp.cel import ProgramCache, new_pdp_environment
from pdp.policy.compiled import MAX_POLICY_NODES, MAX_VARIABLES, compile_policy
from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError


def rule(variables: dict[str, str], deny: str = "false") -> str:
    lines = "".join(f"      {k}: '{v}'\n" for k, v in variables.items())
    return (f"tenant: acme\nname: v\nrule:\n  cel:\n    variables:\n{lines}"
            f"    deny: '{deny}'\n")


def compile_text(text: str) -> object:
    return compile_policy(load_text(text)[0], new_pdp_environment(), ProgramCache(100))


def test_up_to_the_variable_limit_compiles_each_against_the_ones_before() -> None:
    variables = {f"v{i}": (f"variables.v{i - 1} + 1" if i else "1") for i in range(MAX_VARIABLES)}
    last = f"variables.v{MAX_VARIABLES - 1}"
    compiled = compile_text(rule(variables, deny=f"{last} != {MAX_VARIABLES}"))
    assert len(compiled.variables) == MAX_VARIABLES  # type: ignore[attr-defined]


def test_one_variable_over_the_limit_is_refused_at_it() -> None:
    variables = {f"v{i}": "1" for i in range(MAX_VARIABLES + 1)}
    with pytest.raises(PolicyError) as info:
        compile_text(rule(variables))
    err = info.value
    assert err.field_path == f"rule.cel.variables.v{MAX_VARIABLES}"
    assert f"more than {MAX_VARIABLES} variables" in str(err)
    assert err.line == 6 + MAX_VARIABLES  # the line of the first one over


def test_the_nodes_of_all_expressions_together_are_bounded() -> None:
    big = "[" + ",".join(["1"] * 900) + "].size() > 0"  # ~900 nodes, under one expression's limit
    variables = {n: big for n in ("a", "b", "c")}
    assert 2 * 900 < MAX_POLICY_NODES < 3 * 900
    with pytest.raises(PolicyError) as info:
        compile_text(rule(variables))
    assert info.value.field_path == "rule.cel.variables.c"
    assert f"more than {MAX_POLICY_NODES} nodes together" in str(info.value)
