"""RE2 patterns are compiled within a memory budget: a short pattern that expands into a
huge program (``\\pL{440}``) is refused as a CEL error instead of taking ~300 ms and ~1 MiB of
the event loop, and a refused pattern is not compiled again."""

from __future__ import annotations

import pytest

from pdp.cel import CelCompileError, CelEvalError, new_pdp_environment
from pdp.cel import regex as R


def test_a_pattern_over_the_budget_is_an_evaluation_error() -> None:
    prog = new_pdp_environment().compile("agent.id.matches(agent.labels['re'])")
    with pytest.raises(CelEvalError, match="pattern too large"):
        prog.evaluate({"agent": {"id": "x", "labels": {"re": r"\pL{440}"}}})
    assert prog.evaluate({"agent": {"id": "édge-7", "labels": {"re": r"^\pL+-[0-9]+$"}}})


def test_a_literal_pattern_over_the_budget_is_refused_at_admission() -> None:
    with pytest.raises(CelCompileError, match="pattern too large"):
        new_pdp_environment().compile(r"agent.id.matches('\\pL{440}')")


def test_a_refused_pattern_is_not_compiled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    pattern = r"\pL{439}(refused-once)"
    with pytest.raises(CelEvalError):
        R.compile_re(pattern)
    calls: list[str] = []
    real = R.re2.compile
    monkeypatch.setattr(R.re2, "compile", lambda p, **kw: calls.append(p) or real(p, **kw))
    R.compile_re.cache_clear()  # not the compiled-pattern cache: the refusal is remembered
    with pytest.raises(CelEvalError, match="pattern too large"):
        R.compile_re(pattern)
    assert calls == []
