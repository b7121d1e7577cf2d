"""Agents of a step that differ only in their id share one stateless verdict; everything
per agent (decision id, counters, audit record, policies reading agent.id) stays per agent,
and the answers are the ones each agent gets on its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pdp.cel import pdp_environment
from pdp.engine.buckets import id_free, message_id_free, reads_agent_id, request_key
from pdp.engine.request import CheckRequest
from tests.engine.test_batch_sharing import _count_deny
from tests.engine.test_engine import CEL, engine_for, push


def step(n: int, config: str = "a: 1", labels: dict[str, str] | None = None,
         **kw: Any) -> list[CheckRequest]:
    """Requests the way the batch conversion builds them: shared parts are one object."""
    first = push(config=config, agent="a0", labels=labels or {"env": "prod"},
                 rollout={"id": "r1", "step": 1}, change={"subject": "x"}, **kw)
    return [first] + [replace(first, agent={**first.agent, "id": f"a{i}"})  # type: ignore[dict-item]
                      for i in range(1, n)]


@pytest.mark.parametrize(("source", "reads"), [
    ("config.a == 1", False),
    ("agent.labels.env == 'prod' && has(agent.group)", False),
    ("agent.labels['id'] == 'x'", False),  # a label named id, not the agent's id
    ("agent.id == 'a3'", True),
    ("has(agent.id)", True),
    ("agent['id'] == 'a3'", True),
    ("agent.exists(k, k == 'id')", True),
    ("string(agent) != ''", True),
    ("[1].exists(agent, agent == 1)", False),  # the comprehension's own `agent`
    ("[agent].exists(a, a.labels.x == 'y')", True),  # the whole agent, through a local
])
def test_which_cel_reads_the_agent_id(source: str, reads: bool) -> None:
    """From what the checker resolved (pdp.cel.references), not from the text."""
    assert reads_agent_id(pdp_environment().compile(source).reads) is reads


def test_request_keys_differ_exactly_where_answers_may() -> None:
    reqs = step(3)
    assert request_key(reqs[0]) == request_key(reqs[1]) == request_key(reqs[2])
    other_labels = replace(reqs[0], agent={"id": "z", "labels": {"env": "dev"}})
    assert request_key(other_labels) != request_key(reqs[0])
    one_vs_float = replace(reqs[0], agent={"id": "z", "labels": {"env": "prod"}, "n": 1})
    assert request_key(one_vs_float) != request_key(
        replace(reqs[0], agent={"id": "z", "labels": {"env": "prod"}, "n": 1.0}))
    assert request_key(replace(reqs[0], rollout={"id": "r1", "step": 1})) != request_key(
        reqs[0])  # not the shared object: not assumed equal
    assert request_key(replace(reqs[0], agent={"id": "z", "x": object()})) is None
    # Values that compare equal in Python but not in CEL, and shapes that could be mistaken
    # for one another, give different keys.
    def key(**agent: Any) -> Any:
        return request_key(replace(reqs[0], agent={"id": "z", **agent}))

    assert key(labels={"1": "a"}) != key(labels={1: "a"}) != key(labels={True: "a"})
    assert key(g="x") != key(g=["x"]) != key(g={"x": "x"})
    assert key(g=[]) != key(g=()) and key(g=[]) != key(g={})
    assert key(a="x", b="y") != key(a="y", b="x")
    assert key(a="x", b="y") == key(a="x", b="y")
    assert key(m={"k": 1}) != key(m={"k": 1.0}) != key(m={"k": "1"})


async def test_a_bucket_is_evaluated_once_and_answers_match_one_by_one() -> None:
    engine, audit = engine_for(
        CEL.format(name="cfg", extra="", deny="config.a == 2")
        + "---\n" + CEL.format(name="lbl", extra="", deny="agent.labels.env == 'dev'")
        + "---\n" + CEL.format(name="clock", extra="",
                                deny="now < timestamp('2000-01-01T00:00:00Z')")
        + "---\ntenant: t\nname: cool\nrule: {cooldown: {minutes: 5, scope: agent}}\n")
    cfg, lbl, clock = (_count_deny(engine, n) for n in ("cfg", "lbl", "clock"))
    decisions = await engine.check_batch(step(20), 1.0)
    assert all(d.allowed for d in decisions)
    assert (cfg.calls, lbl.calls, clock.calls) == (1, 1, 1)
    assert len({d.decision_id for d in decisions}) == 20
    assert len({d.decided_at for d in decisions}) == 1  # one instant per step
    assert [x["subject"]["agent_id"] for x in audit.decisions[-20:]] == [
        f"a{i}" for i in range(20)]
    # The per-agent cooldown was reserved per agent: the same agents again are denied,
    # a new agent is not.
    again = await engine.check_batch(step(3), 1.0)
    assert [[r.code for r in d.reasons] for d in again] == [["COOLDOWN_ACTIVE"]] * 3
    alone = await engine.check(push(agent="new", labels={"env": "prod"},
                                    rollout={"id": "r1", "step": 1}), 1.0)
    assert alone.allowed
    # Denies are shared with their reasons; another label set is its own bucket.
    dev = await engine.check_batch(step(5, labels={"env": "dev"}) + step(5, config="a: 2"),
                                   1.0)
    assert [[r.policy for r in d.reasons] for d in dev] == [["lbl"]] * 5 + [["cfg"]] * 5
    one_by_one = [await engine.check(r, 1.0) for r in step(2, labels={"env": "dev"})]
    assert [[(r.policy, r.code, r.message) for r in d.reasons] for d in one_by_one] == [
        [(r.policy, r.code, r.message) for r in d.reasons] for d in dev[:2]]
    assert [p.name for p in one_by_one[0].evaluated] == [p.name for p in dev[0].evaluated]


async def test_a_policy_reading_the_agent_id_keeps_every_agent_apart() -> None:
    engine, _ = engine_for(CEL.format(name="agt", extra="", deny="agent.id == 'a3'")
                           + "---\n" + CEL.format(name="cfg", extra="", deny="config.a == 2"))
    agt, cfg = _count_deny(engine, "agt"), _count_deny(engine, "cfg")
    assert not id_free(next(p for p in engine.policies.policies if p.name == "agt"))
    decisions = await engine.check_batch(step(10), 1.0)
    assert [d.allowed for d in decisions] == [i != 3 for i in range(10)]
    assert agt.calls == 10 and cfg.calls == 1  # the older per-policy sharing still applies


async def test_an_id_reading_policy_whose_other_conjuncts_are_false_does_not_split() -> None:
    engine, _ = engine_for(
        CEL.format(name="mixed", extra="", deny="config.a == 2 && agent.id == 'a3'")
        + "---\n" + CEL.format(name="lbl", extra="", deny="agent.labels.env == 'dev'"))
    lbl = _count_deny(engine, "lbl")
    decisions = await engine.check_batch(step(10), 1.0)  # config.a == 1: false for all
    assert all(d.allowed for d in decisions) and lbl.calls == 1
    decisions = await engine.check_batch(step(10, config="a: 2"), 1.0)
    assert [d.allowed for d in decisions] == [i != 3 for i in range(10)]
    assert lbl.calls == 11  # the id decides: every agent on its own


async def test_a_message_naming_the_agent_is_made_per_agent_when_it_denies() -> None:
    engine, _ = engine_for(CEL.format(name="lbl", extra="", deny="agent.labels.env == 'dev'")
                           .replace("rule:\n  cel:\n",
                                    "rule:\n  cel:\n    message: '\"no \" + agent.id'\n"))
    [p] = [p for p in engine.policies.policies if p.name == "lbl"]
    assert id_free(p) and not message_id_free(p)
    lbl = _count_deny(engine, "lbl")
    ok = await engine.check_batch(step(5), 1.0)  # allowed: the message is never needed
    assert all(d.allowed for d in ok) and lbl.calls == 1
    denied = await engine.check_batch(step(3, labels={"env": "dev"}), 1.0)
    assert [r.message for d in denied for r in d.reasons] == ["no a0", "no a1", "no a2"]


async def test_explain_and_budget_outcomes_are_not_shared() -> None:
    engine, _ = engine_for(CEL.format(name="lbl", extra="", deny="agent.labels.env == 'dev'"))
    lbl = _count_deny(engine, "lbl")
    decisions = await engine.check_batch(step(4, labels={"env": "dev"}, explain=True), 1.0)
    assert all(d.explanations for d in decisions)
    assert lbl.calls >= 4  # each agent evaluated (and explained) on its own
    spin = CEL.format(name="spin", extra="",
                      deny="[1,2,3,4,5,6,7,8,9,10].all(x, [1,2,3,4,5,6,7,8,9,10].all(y, "
                           "[1,2,3,4,5,6,7,8,9,10].all(z, x + y + z > 0 && agent.labels.env "
                           "== 'prod')))")
    engine, _ = engine_for(spin)
    counted = _count_deny(engine, "spin")
    engine.options.cost_limit = 10  # every agent runs out of its own cost budget
    decisions = await engine.check_batch(step(3), 1.0)
    assert [[r.code for r in d.reasons] for d in decisions] == [["COST_LIMIT_EXCEEDED"]] * 3
    assert counted.calls == 3


def test_decision_ids_are_random_version_4_uuids() -> None:
    import uuid

    from pdp.engine.ids import new_decision_id, new_decision_ids

    ids = [new_decision_id() for _ in range(2000)] + new_decision_ids(2000)
    assert len(set(ids)) == len(ids)
    assert new_decision_ids(0) == []
    for s in ids:
        u = uuid.UUID(s)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, s)


async def test_counter_rules_of_shared_scopes_are_taken_from_the_bucket() -> None:
    engine, _ = engine_for(
        "tenant: t\nname: cap\nrule: {daily_cap: {max_count: 12, scope: rollout}}\n"
        "---\ntenant: t\nname: cool\nrule: {cooldown: {minutes: 5, scope: agent}}\n")
    calls: dict[str, int] = {"cap": 0, "cool": 0}
    for p in engine.policies.policies:
        def counting(ctx: Any, budget: Any, p: Any = p, inner: Any = p.scope_key) -> Any:
            calls[p.name] += 1
            return inner(ctx, budget)
        object.__setattr__(p, "scope_key", counting)
    reserved: list[list[Any]] = []
    inner_reserve = engine.counters.reserve_batch

    async def spy(tenant: str, items: Any, *, timeout: float) -> Any:
        reserved.extend(list(rules) for rules in items)
        return await inner_reserve(tenant, items, timeout=timeout)

    engine.counters.reserve_batch = spy  # type: ignore[method-assign]
    decisions = await engine.check_batch(step(20), 1.0)
    assert [d.allowed for d in decisions] == [i < 12 for i in range(20)]
    assert {r.code for d in decisions[12:] for r in d.reasons} == {"DAILY_CAP_EXCEEDED"}
    # Both scopes worked out once, for the bucket's first agent; every other agent takes
    # the cooldown rule at its own id (and the very same rollout-wide cap rule).
    assert calls == {"cap": 1, "cool": 1}
    assert [[r.scope_key for r in rules] for rules in reserved] == [
        ["rollout:r1", f"agent:a{i}"] for i in range(20)]
    assert len({id(rules[0]) for rules in reserved}) == 1
    first_cool = reserved[0][1]
    assert all(replace(rules[1], scope_key=first_cool.scope_key) == first_cool
               for rules in reserved)
    engine, _ = engine_for(
        "tenant: t\nname: cap\nrule: {daily_cap: {max_count: 12, scope: rollout}}\n")
    [p] = engine.policies.policies
    calls = {"cap": 0}
    inner = p.scope_key
    object.__setattr__(p, "scope_key", lambda ctx, budget: (
        calls.__setitem__("cap", calls["cap"] + 1), inner(ctx, budget))[1])
    decisions = await engine.check_batch(step(20), 1.0)
    assert [d.allowed for d in decisions] == [i < 12 for i in range(20)]
    assert calls == {"cap": 1}  # only rollout-scoped: the bucket's rules are reused


async def test_single_decisions_reuse_their_counter_rules() -> None:
    """A tenant-wide rule is one object call after call (built and validated once); an
    agent-scoped one is per agent, and the cap still counts every decision."""
    engine, _ = engine_for(
        "tenant: t\nname: cap\nrule: {daily_cap: {max_count: 3, scope: tenant}}\n")
    seen: list[Any] = []
    inner = engine.counters.reserve_batch

    async def spy(tenant: str, items: Any, *, timeout: float) -> Any:
        seen.extend(r for rules in items for r in rules)
        return await inner(tenant, items, timeout=timeout)

    engine.counters.reserve_batch = spy  # type: ignore[method-assign]
    decisions = [await engine.check(push(agent=f"a{i}"), 1.0) for i in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert len(seen) == 5 and all(r is seen[0] for r in seen)


async def test_decisions_log_denies_at_info_and_allows_only_at_debug() -> None:
    """The decision log line is the server's (telemetry.log_decision, in the call's span):
    a deny at info, an allow at debug only; the engine itself writes none."""
    import structlog
    from structlog.testing import capture_logs

    from pdp.logging import configure_logging
    from pdp.telemetry import log_decision

    engine, _ = engine_for(CEL.format(name="p", extra="", deny="agent.id == 'bad'"))
    allowed = await engine.check(push(), 1.0)
    denied = await engine.check(push(agent="bad"), 1.0)
    try:
        for level, allow_line in (("debug", True), ("info", False)):
            configure_logging(level)
            log = structlog.get_logger(f"pdp.test.{level}")
            with capture_logs() as logs:
                for d in (allowed, denied):
                    log_decision(log, "t", "push", d)
            events = [x["event"] for x in logs]
            assert ("decision_allowed" in events) is allow_line, level
            assert "decision_denied" in events, level
    finally:
        structlog.reset_defaults()
