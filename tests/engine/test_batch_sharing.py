"""A step shares what is common to its agents: configs are audited once, per-agent-free CEL
policies are evaluated once, and nothing of that changes an answer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from pdp.cel import Budget
from pdp.engine.sharing import same, shareable
from tests.engine.test_engine import CEL, engine_for, push


async def test_config_text_is_audited_once_and_decisions_name_it_by_hash() -> None:
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"),
                               tenants=frozenset({"t", "u"}))
    prev = "a: 0\n"
    reqs = [push(config="a: 1\n", agent=f"a{i}", previous_config_yaml=prev) for i in range(5)]
    await engine.check_batch(reqs, 1.0)
    await engine.check(push(config="a: 1\n", agent="x"), 1.0)
    await engine.check(push(config="a: 1\n", agent="y", tenant="u"), 1.0)  # other tenant
    sha = hashlib.sha256(b"a: 1\n").hexdigest()
    seen = [e for e in audit.events if e["type"] == "Config.Seen"]
    assert [(e["tenant"], e["field"], e["config_sha256"]) for e in seen] == [
        ("t", "config", sha), ("t", "previous_config", hashlib.sha256(prev.encode()).hexdigest()),
        ("u", "config", sha)]
    assert seen[0]["request"] == {"config": "a: 1\n"}
    assert seen[1]["request"] == {"previous_config": prev}
    for d in audit.decisions:
        assert d["request"]["config_sha256"] == sha
        assert "config" not in d["request"]
    assert audit.decisions[-1]["request"]["previous_config_sha256"] is None
    # The evaluated policies are named too: one Policies.Seen per tenant and list.
    assert len({d["policies_sha256"] for d in audit.decisions if d["tenant"] == "t"}) == 1
    assert [e["tenant"] for e in audit.events if e["type"] == "Policies.Seen"] == ["t", "u"]


async def test_evaluated_policies_are_listed_once_per_tenant_and_named_by_hash() -> None:
    """A decision names its evaluated policy versions by the hash of their list; the list
    (name, version, content hash of each) is in a Policies.Seen event written before the
    first decision naming it. A different selection is a different list."""
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))
    await engine.check_batch([push(agent=f"a{i}") for i in range(3)], 1.0)
    await engine.check(push(agent="x"), 1.0)
    seen = [e for e in audit.events if e["type"] == "Policies.Seen"]
    assert len(seen) == 1
    listed = seen[0]["policies"]
    assert "p" in {p["name"] for p in listed}
    assert all(p["content_hash"].startswith("sha256:") and p["version"] for p in listed)
    assert audit.order.index(seen[0]) < audit.order.index(audit.decisions[0])
    for d in audit.decisions:
        assert d["policies_sha256"] == seen[0]["policies_sha256"] and "policies" not in d
    # The name is the hash of the list's JSON text: anyone holding the list can check it.
    text = json.dumps(listed, separators=(",", ":")).encode()
    assert hashlib.sha256(text).hexdigest() == seen[0]["policies_sha256"]


class _Counting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def evaluate(self, activation: Any, budget: Budget | None = None) -> Any:
        self.calls += 1
        return self.inner.evaluate(activation, budget=budget)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _count_deny(engine: Any, name: str) -> _Counting:
    [p] = [p for p in engine.policies.policies if p.name == name]
    counting = _Counting(p.deny)
    object.__setattr__(p, "deny", counting)
    return counting


async def test_policies_that_read_no_agent_are_evaluated_once_per_step() -> None:
    engine, _ = engine_for(
        CEL.format(name="cfg", extra="", deny="config.a == 2")
        + "---\n" + CEL.format(name="agt", extra="", deny="agent.id == 'a3'")
        + "---\n" + CEL.format(name="clock", extra="",
                                deny="now < timestamp('2000-01-01T00:00:00Z')"))
    cfg, agt, clock = (_count_deny(engine, n) for n in ("cfg", "agt", "clock"))
    decisions = await engine.check_batch([push(config="a: 1", agent=f"a{i}")
                                          for i in range(10)], 1.0)
    assert [d.allowed for d in decisions] == [i != 3 for i in range(10)]
    assert (cfg.calls, agt.calls, clock.calls) == (1, 10, 10)
    # Denies are shared too, with their message, for each agent.
    decisions = await engine.check_batch([push(config="a: 2", agent=f"c{i}")
                                          for i in range(4)], 1.0)
    assert [[r.policy for r in d.reasons] for d in decisions] == [["cfg"]] * 4
    assert cfg.calls == 2
    # Different configs in one batch are not confused.
    decisions = await engine.check_batch([push(config=f"a: {i % 3}", agent=f"b{i}")
                                          for i in range(6)], 1.0)
    assert [d.allowed for d in decisions] == [i % 3 != 2 for i in range(6)]


def test_only_cel_without_per_agent_variables_is_shared() -> None:
    engine, _ = engine_for(
        CEL.format(name="cfg", extra="", deny="config.exists(agent, agent == 'x')")
        + "---\n" + CEL.format(name="msg", extra="", deny="config.a == 1")
        .replace("rule:\n  cel:\n", "rule:\n  cel:\n    message: '\"x\" + agent.id'\n")
        + "---\n" + CEL.format(name="plain", extra="", deny="rollout.step > config.a")
        + "---\ntenant: t\nname: typed\nrule: {max_step_percent: {max_percent: 10}}\n"
        + "---\ntenant: t\nname: clock\nrule: {freeze_windows: {windows: [{start:"
        " '2001-01-01T00:00:00Z', end: '2001-01-02T00:00:00Z'}]}}\n")
    got = {p.name: shareable(p) for p in engine.policies.policies}
    # "cfg"'s `agent` is its comprehension variable (the checker resolves it as a local),
    # not the request's agent: it reads only the config.
    assert got == {"cfg": True, "msg": False, "plain": True, "typed": True, "clock": False}
    builtins = {p.name: shareable(p) for p in engine.policies.builtins}
    assert builtins == {"default-deny-exporter-removal": False,  # reads the agent
                        "default-deny-tls-insecure-on-non-localhost": True}


async def test_agent_free_conjuncts_that_are_false_skip_the_per_agent_part() -> None:
    engine, _ = engine_for(CEL.format(
        name="mixed", extra="", deny="config.a == 2 && agent.id == 'a3' && rollout.step >= 0"))
    mixed = _count_deny(engine, "mixed")
    decisions = await engine.check_batch([push(config="a: 1", agent=f"a{i}",
                                               rollout={"step": 1}) for i in range(10)], 1.0)
    assert all(d.allowed for d in decisions)
    assert mixed.calls == 0  # config.a == 2 is false: false for every agent
    decisions = await engine.check_batch([push(config="a: 2", agent=f"a{i}",
                                               rollout={"step": 1}) for i in range(10)], 1.0)
    assert [d.allowed for d in decisions] == [i != 3 for i in range(10)]
    assert mixed.calls == 10  # true: the agent part decides, per agent
    unary = await engine.check(push(config="a: 1", agent="a3", rollout={"step": 1}), 1.0)
    assert unary.allowed and mixed.calls == 11


def test_inputs_are_the_same_only_with_the_same_types() -> None:
    assert same({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]})
    assert not same({"a": 1}, {"a": 1.0}) and not same({"a": 1}, {"a": True})
    assert not same([1], [1, 2]) and not same(float("nan"), float("nan"))


async def test_seen_events_are_written_again_after_the_refresh_interval() -> None:
    """A reader of a trimmed stream, or of the recent files only, finds the config and the
    policies list a decision names within seen_refresh_s of history."""
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))

    def seen() -> list[str]:
        return [e["type"] for e in audit.events if e["type"].endswith(".Seen")]

    await engine.check(push(config="a: 1\n", agent="x"), 1.0)
    await engine.check(push(config="a: 1\n", agent="y"), 1.0)
    assert seen() == ["Config.Seen", "Policies.Seen"]  # once, while fresh
    engine.options = replace(engine.options, seen_refresh_s=0.0)  # every copy is "old"
    await engine.check(push(config="a: 1\n", agent="z"), 1.0)
    assert seen() == ["Config.Seen", "Policies.Seen"] * 2
