"""Literal arguments that can only fail are refused when a pdp policy is compiled, at the
literal, and plain CEL (the conformance suite's environment) still fails them at evaluation."""

from __future__ import annotations

import pytest

from pdp.cel import CelCompileError, CelEvalError, Environment, new_pdp_environment


@pytest.mark.parametrize(("expr", "literal", "why"), [
    ('now < timestamp("2026-13-01T00:00:00Z")', "2026-13-01T00:00:00Z", "cannot parse timestamp"),
    ('duration("5 minutes") > duration("1s")', "5 minutes", "cannot parse duration"),
    ('now.getHours("Amercia/New_York") < 9', "Amercia/New_York", "unknown time zone"),
    ('now.getDayOfWeek("localtime") == 1', "localtime", "depends on the host"),
    ("agent.id.matches('(')", "(", "invalid regular expression"),
    ("matches(agent.id, '[')", "[", "invalid regular expression"),
])
def test_a_literal_that_always_fails_is_refused_at_compile_time(
        expr: str, literal: str, why: str) -> None:
    with pytest.raises(CelCompileError) as info:
        new_pdp_environment().compile(expr)
    text = str(info.value)
    assert "would fail at every evaluation" in text and why in text
    quote = max(expr.find("'" + literal), expr.find('"' + literal))
    assert info.value.column == quote + 1  # at the literal's opening quote (1-based)


@pytest.mark.parametrize("expr", [
    'now >= timestamp("2026-12-20T00:00:00Z")',
    'duration("90m") > duration("1h")',
    'now.getHours("Europe/Berlin") < 9',
    'now.getHours("+05:30") < 9',
    "agent.id.matches('^edge-[0-9]+$')",
    "now.getHours(agent.labels['tz']) < 9",  # not a literal: checked when it runs
])
def test_valid_or_dynamic_arguments_compile(expr: str) -> None:
    new_pdp_environment().compile(expr)


def test_plain_cel_still_fails_such_literals_at_evaluation() -> None:
    prog = Environment().compile("timestamp('10000-01-01T00:00:00Z')")
    with pytest.raises(CelEvalError):
        prog.evaluate({})
