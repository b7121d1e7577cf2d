"""The bound, in-process: drafts after the answer, one budget per step shared fairly, the
loop kept turning, messages capped, scope expressions that run out of budget."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import replace
from typing import Any

import pytest

from pdp.engine.reasons import cap_message
from pdp.engine.shadow import ShadowOptions
from tests.engine.test_engine import CEL, engine_for, push
from tests.support.wait import runs_meanwhile

# Quadratic over the config's items: runs for minutes unless the budget stops it.
RUNAWAY = "config.items.all(x, !config.items.exists(y, y == x + 1000000))"
ITEMS = "items: [" + ",".join(str(i) for i in range(3000)) + "]"


async def _poll(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_runaway_draft_changes_nothing_of_the_live_decision() -> None:
    """The draft burns its own budget after the answer: the live policies, the counter
    reservation and the answer are those of the same request without the draft."""
    live = ("tenant: t\nname: cap\nrule: {daily_cap: {max_count: 100}}\n---\n"
            + CEL.format(name="quiet", extra="", deny="config.items.size() == 0"))
    engine, audit = engine_for(live + "---\n"
                               + CEL.format(name="runaway", extra="status: draft\n",
                                            deny=RUNAWAY))
    plain, _ = engine_for(live)
    d = await engine.check(push(ITEMS), 0.05)
    p = await plain.check(push(ITEMS), 0.05)
    assert d.allowed and p.allowed and d.reasons == p.reasons == []
    assert d.shadow_denies == []
    # ... and the draft is evaluated afterwards, under its own budget, fail-closed.
    await _poll(lambda: any(e["type"] == "Policy.WouldDeny" for e in audit.events),
                "the draft's would-deny")
    [would] = [e for e in audit.events if e["type"] == "Policy.WouldDeny"]
    assert would["decision_id"] == d.decision_id and would["policy"] == "runaway"
    assert would["code"] in ("DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED")
    if would["code"] == "DEADLINE_EXCEEDED":  # the drafts' own budget, not the decision's
        assert "shadow budget" in would["message"] and "decision" not in would["message"]


async def test_drafts_wait_while_an_answer_is_in_progress(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Drafts observe answers: while a call is in its answer path (turns.foreground) the
    shadow runner waits, and evaluates the drafts once the answer is out."""
    from pdp import turns
    from pdp.engine import shadow

    monkeypatch.setattr(turns, "EVERY_S", 0.0)  # its waits are loop turns
    monkeypatch.setattr(shadow, "START_DELAY_S", 0.0)
    engine, audit = engine_for(
        CEL.format(name="draft", extra="status: draft\n", deny="true"))
    with turns.foreground():
        decisions = await engine.check_batch([push(agent=f"a{i}") for i in range(3)], 1.0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert engine.shadow.backlog == 3
        assert not [e for e in audit.events if e["type"] == "Policy.WouldDeny"]
    await _poll(lambda: engine.shadow.backlog == 0, "the drafts to be evaluated")
    would = [e for e in audit.events if e["type"] == "Policy.WouldDeny"]
    assert [e["decision_id"] for e in would] == [d.decision_id for d in decisions]


async def test_shadow_backlog_is_bounded_skips_are_counted_and_noted() -> None:
    engine, audit = engine_for(
        CEL.format(name="draft", extra="status: draft\n", deny="true"))
    engine.options = replace(engine.options, shadow=ShadowOptions(backlog=5))
    # A 20-agent step hands 20 jobs over in one go, with no loop turn in between.
    decisions = await engine.check_batch([push(agent=f"a{i}") for i in range(20)], 1.0)
    assert all(d.allowed for d in decisions)
    assert engine.shadow.backlog == 5 and engine.shadow.skipped == 15
    notes = [e for e in audit.events if e["type"] == "Shadow.Skipped"]
    assert notes and notes[0]["count"] == 15 and "backlog" in notes[0]["message"]
    await _poll(lambda: engine.shadow.backlog == 0, "the backlog to drain")
    would = [e for e in audit.events if e["type"] == "Policy.WouldDeny"]
    assert [e["decision_id"] for e in would] == [d.decision_id for d in decisions[:5]]
    assert [e["subject"]["agent_id"] for e in would] == [f"a{i}" for i in range(5)]


async def test_shutdown_notes_shadow_work_left_undone() -> None:
    engine, audit = engine_for(CEL.format(name="draft", extra="status: draft\n", deny="true"))
    await engine.check_batch([push(agent=f"a{i}") for i in range(3)], 1.0)
    engine.shadow.drain()
    notes = [e for e in audit.events if e["type"] == "Shadow.Skipped"]
    assert notes[-1]["count"] == 3 and notes[-1]["reason"] == "shutting down"


async def test_a_draft_cut_short_by_shutdown_is_counted_as_skipped() -> None:
    """A draft being evaluated when the server stops leaves a trace: it is counted and
    noted with the drafts that never started, not lost between the two."""
    engine, audit = engine_for(CEL.format(name="draft", extra="status: draft\n",
                                          deny=RUNAWAY))
    engine.options = replace(engine.options, shadow=replace(
        engine.options.shadow, budget_s=600.0, cost_limit=10**15, share=1.0))  # never ends
    await engine.check_batch([push(ITEMS, agent=f"a{i}") for i in range(3)], 5.0)
    await _poll(lambda: engine.shadow._running_job is not None, "a draft being evaluated")
    engine.shadow.drain()
    notes = [e for e in audit.events if e["type"] == "Shadow.Skipped"]
    assert notes[-1]["count"] == 3 and notes[-1]["reason"] == "shutting down"
    assert engine.shadow.evaluated == 0 and engine.shadow.skipped == 3


async def test_a_step_shares_its_budget_fairly_every_agent_gets_its_turn() -> None:
    """A slow policy in a step: every agent is evaluated within its share of the step's one
    budget and denied with a reason; none is skipped because an earlier one took it all."""
    engine, _ = engine_for(CEL.format(
        name="slow", extra="", deny=RUNAWAY + " && agent.id != ''"))
    # Scarce time (10 agents that would each take up to 0.5 s, in a 2 s step), with
    # reserves (about 2 s / 10 / 4 = 50 ms per agent) far longer than the pauses a busy
    # machine causes: the test is about how the budget is shared, not about the scheduler.
    engine.options = replace(engine.options, step_budget_s=2.0, step_agent_max_s=0.5)
    reqs = [push(ITEMS, agent=f"a{i}") for i in range(10)]
    # A collection of what earlier tests left behind can pause the process too: the
    # collector waits until the step is decided.
    gc.collect()
    gc.disable()
    try:
        decisions = await engine.check_batch(reqs, 0.05)
    finally:
        gc.enable()
    assert len(decisions) == 10
    for d in decisions:
        assert not d.allowed
        [reason] = d.reasons
        assert reason.code in ("DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED"), reason
        assert "before this policy was evaluated" not in reason.message


async def test_a_step_keeps_the_event_loop_turning() -> None:
    engine, _ = engine_for(CEL.format(
        name="slow", extra="", deny=RUNAWAY + " && agent.id != ''"))
    engine.options = replace(engine.options, step_budget_s=0.3)
    _, during = await runs_meanwhile(
        engine.check_batch([push(ITEMS, agent=f"a{i}") for i in range(50)], 0.05))
    # One turn per agent at least (each agent's share is a few ms, the loop gets a turn
    # every 2 ms); without yielding the ticker would not have run at all.
    assert during >= 10, during


async def test_a_long_evaluation_gives_other_calls_turns_and_they_are_decided_meanwhile(
        ) -> None:
    """One call's runaway policy (fresh input: nothing remembered) runs to its deadline in
    slices; another tenant's calls are decided in between, not after it."""
    engine, _ = engine_for(
        CEL.format(name="slow", extra="", deny=RUNAWAY) + "---\n"
        + CEL.format(name="quick", extra="", deny="config.a == 2").replace(
            "tenant: t", "tenant: u"), tenants=frozenset({"t", "u"}))
    decided: list[bool] = []
    slow_done = False

    async def benign() -> None:
        while not slow_done:
            d = await engine.check(push(tenant="u"), 5.0)
            decided.append(d.allowed or [(r.code, r.message) for r in d.reasons])
            await asyncio.sleep(0)  # a cheap decision may finish without giving a turn

    task = asyncio.create_task(benign())
    await asyncio.sleep(0)
    before = len(decided)
    d = await engine.check(push(ITEMS), 0.25)
    during = len(decided) - before
    slow_done = True
    await task
    assert not d.allowed and d.reasons[0].code in ("DEADLINE_EXCEEDED",
                                                   "COST_LIMIT_EXCEEDED")
    assert all(x is True for x in decided), decided
    # Unsliced, the slow call would hold the loop until its end: at most the one benign
    # call already under way would finish meanwhile.
    assert during >= 3, during


async def test_an_explanation_has_no_budget_of_its_own() -> None:
    engine, _ = engine_for(CEL.format(name="slow", extra="", deny=RUNAWAY))
    d = await engine.check(push(ITEMS, explain=True), 0.05)
    assert not d.allowed and d.reasons[0].code in ("DEADLINE_EXCEEDED",
                                                   "COST_LIMIT_EXCEEDED")
    [ex] = d.explanations
    assert ex.policy == "slow"


async def test_deny_messages_are_capped() -> None:
    engine, audit = engine_for(
        "tenant: t\nname: loud\nrule:\n  cel:\n    deny: 'true'\n"
        "    message: 'config.s + config.s'\n")
    d = await engine.check(push("s: " + "x" * 60_000), 1.0)
    [reason] = d.reasons
    assert len(reason.message.encode()) <= 5 * 1024
    assert reason.message.startswith("xxx") and "truncated, 120000 bytes" in reason.message
    assert audit.decisions[-1]["reasons"][0]["message"] == reason.message


def test_cap_message_counts_utf8_bytes_and_keeps_characters_whole() -> None:
    text = "é" * 10_000  # 2 bytes each
    capped = cap_message(text, 1000)
    assert len(capped.encode()) <= 1000 and "truncated, 20000 bytes" in capped
    assert cap_message("short", 1000) == "short"


async def test_a_scope_expression_out_of_budget_denies_with_a_reason() -> None:
    engine, _ = engine_for(
        "tenant: t\nname: scoped\nrule:\n  velocity:\n    max_count: 5\n"
        "    window_minutes: 60\n    scope: {expression: "
        "'string(config.items.filter(x, config.items.exists(y, y == x + 1000000)).size())'}\n")
    d = await engine.check(push(ITEMS), 0.05)
    assert not d.allowed
    [reason] = d.reasons
    assert reason.policy == "scoped"
    assert reason.code in ("DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED")


def _would(audit: Any) -> list[tuple[str, str, str]]:
    return [(e["decision_id"], e["policy"], e["code"]) for e in audit.events
            if e["type"] == "Policy.WouldDeny"]


async def test_a_draft_counter_rule_would_deny_without_consuming_live_counters() -> None:
    """A draft's cap counts in a counter of its own: it would-denies from the push past its
    cap (the pushes it has seen count, as they would were it active), and the live cap of 3
    still has all three slots."""
    engine, audit = engine_for(
        "tenant: t\nname: live-cap\nrule: {daily_cap: {max_count: 3}}\n---\n"
        "tenant: t\nname: draft-cap\nstatus: draft\nrule: {daily_cap: {max_count: 1}}\n")
    decisions = [await engine.check(push(agent=f"a{i}"), 1.0) for i in range(3)]
    assert all(d.allowed for d in decisions)  # the draft's cap of 1 blocks nothing
    fourth = await engine.check(push(agent="a4"), 1.0)
    assert not fourth.allowed  # live cap: its three slots taken by the three pushes
    await _poll(lambda: engine.shadow.evaluated == 4, "the drafts of four decisions")
    # The first push fits the draft's cap; each later one would have been denied.
    assert _would(audit) == [(d.decision_id, "draft-cap", "DAILY_CAP_EXCEEDED")
                             for d in [*decisions[1:], fourth]]
    keys = engine.counters.keys()
    assert [k for k in keys if "draft-cap" in k and "#shadow" not in k] == []
    assert len([k for k in keys if "live-cap" in k]) == 1


async def test_a_new_draft_counter_rule_reports_would_deny_when_it_would_have_denied() -> None:
    """A cooldown draft with a name no live policy has: the second push for the same agent
    within the cooldown would have been denied, so it is reported; another agent's is not.
    The live answers are unchanged and no live counter is written."""
    engine, audit = engine_for(
        "tenant: t\nname: draft-cooldown\nstatus: draft\n"
        "rule: {cooldown: {minutes: 60, scope: agent}}\n")
    a1 = await engine.check(push(agent="a1"), 1.0)
    b1 = await engine.check(push(agent="b1"), 1.0)
    a2 = await engine.check(push(agent="a1"), 1.0)
    assert a1.allowed and b1.allowed and a2.allowed
    await _poll(lambda: engine.shadow.evaluated == 3, "the drafts of three decisions")
    assert _would(audit) == [(a2.decision_id, "draft-cooldown", "COOLDOWN_ACTIVE")]
    stored = [k for k in engine.counters.keys() if "draft-cooldown" in k]  # noqa: SIM118
    assert stored and all("#shadow" in k for k in stored)


async def test_a_draft_counter_counts_only_pushes_that_went_ahead() -> None:
    """A push the live policies denied never happened: the draft is asked about it (and
    says it would deny once over its own cap) but does not count it."""
    engine, audit = engine_for(
        CEL.format(name="gate", extra="", deny="config.items.size() == 0") + "---\n"
        "tenant: t\nname: draft-cap\nstatus: draft\nrule: {daily_cap: {max_count: 1}}\n")
    denied = [await engine.check(push("items: []", agent=f"a{i}"), 1.0) for i in range(3)]
    assert not any(d.allowed for d in denied)
    first = await engine.check(push("items: [1]", agent="b"), 1.0)
    second = await engine.check(push("items: [1]", agent="c"), 1.0)
    assert first.allowed and second.allowed
    await _poll(lambda: engine.shadow.evaluated == 5, "the drafts of five decisions")
    # Three denied pushes took nothing; the first real push fits the cap of 1.
    assert _would(audit) == [(second.decision_id, "draft-cap", "DAILY_CAP_EXCEEDED")]


async def test_each_draft_has_a_budget_of_its_own() -> None:
    """A runaway draft uses up its own budget, not the next draft's: the draft after it
    is still evaluated, and says what it found (here: nothing to deny)."""
    engine, audit = engine_for(
        CEL.format(name="runaway", extra="status: draft\n", deny=RUNAWAY) + "---\n"
        + CEL.format(name="after", extra="status: draft\n", deny="config.items.size() == 0")
        + "---\n"
        + CEL.format(name="later", extra="status: draft\n", deny="config.items.size() > 1"))
    d = await engine.check(push(ITEMS), 0.05)
    assert d.allowed
    await _poll(lambda: engine.shadow.evaluated == 1, "the drafts of the decision")
    would = _would(audit)
    assert [(p, c in ("DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED")) for _, p, c in would] \
        == [("runaway", True), ("later", False)]
    assert would[1][2] == "POLICY_DENIED"


async def test_an_unknown_tenant_is_denied_not_decided_by_builtins_alone() -> None:
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))
    d = await engine.check(push(tenant="aume"), 1.0)
    assert not d.allowed
    [reason] = d.reasons
    assert reason.code == "UNKNOWN_TENANT" and "'aume'" in reason.message
    assert audit.decisions[-1]["reasons"][0]["code"] == "UNKNOWN_TENANT"
    engine.options = replace(engine.options, unknown_tenants="builtins")  # single-tenant
    assert (await engine.check(push(tenant="aume"), 1.0)).allowed


@pytest.mark.parametrize(("config", "what"), [
    (None, "got empty"), ("", "got empty"), ("just a string", "got a str"),
    ("[1, 2]", "got a list"), ("42", "got a int"),
])
async def test_a_push_without_a_mapping_config_is_denied(config: str | None,
                                                         what: str) -> None:
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"))
    d = await engine.check(push(config), 1.0)
    assert not d.allowed
    [reason] = d.reasons
    assert reason.code == "INVALID_CONFIG" and what in reason.message
    assert reason.message.startswith("config.yaml:")


async def test_a_request_that_ran_a_policy_out_of_budget_is_denied_at_once_next_time() -> None:
    """The same request again (a retry loop, an attacker) does not burn the budget again:
    the remembered overrun denies it with the same code, without evaluating."""
    engine, _ = engine_for(CEL.format(name="slow", extra="", deny=RUNAWAY))
    # A small cost limit: the overrun is the cost limit, whatever the machine's speed.
    engine.options = replace(engine.options, cost_limit=20_000)
    first = await engine.check(push(ITEMS), 10.0)
    assert first.reasons[0].code == "COST_LIMIT_EXCEEDED"
    again = await engine.check(push(ITEMS), 10.0)
    assert again.reasons[0].code == "COST_LIMIT_EXCEEDED"
    assert "not evaluated again" in again.reasons[0].message
    assert engine.overruns.short_cuts == 1
    # Another request (another agent) is evaluated: its own overrun, not a remembered one.
    other = await engine.check(push(ITEMS, agent="a2"), 10.0)
    assert "not evaluated again" not in other.reasons[0].message


async def test_a_deadline_overrun_is_tried_again_only_with_more_time() -> None:
    engine, _ = engine_for(CEL.format(name="slow", extra="", deny=RUNAWAY))
    engine.options = replace(engine.options, cost_limit=10**15)  # only the clock stops it
    first = await engine.check(push(ITEMS), 0.05)
    assert first.reasons[0].code == "DEADLINE_EXCEEDED"  # 9 M comparisons: never in 50 ms
    again = await engine.check(push(ITEMS), 0.01)  # less time than it had
    assert again.reasons[0].code == "DEADLINE_EXCEEDED"
    assert "not evaluated again" in again.reasons[0].message
    more = await engine.check(push(ITEMS), 0.5)  # ten times more: evaluated (and overruns)
    assert "not evaluated again" not in more.reasons[0].message


async def test_a_config_refused_before_is_refused_again_without_parsing() -> None:
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"))
    bomb = "a: " + "[" * 100 + "]" * 100 + "\n"
    first = await engine.check(push(bomb), 1.0)
    misses = engine.configs.misses
    again = await engine.check(push(bomb), 1.0)
    assert engine.configs.misses == misses  # not parsed again
    assert first.reasons[0].code == again.reasons[0].code == "INVALID_CONFIG"
    assert first.reasons[0].message == again.reasons[0].message


async def test_a_config_too_slow_to_parse_is_not_parsed_again_with_no_more_time() -> None:
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"))
    big = "items: [" + ",".join(str(i) for i in range(99_000)) + "]"
    # 30 ms is far from enough for 99 000 values (a parse takes about 100 ms or more here):
    # it runs until the deadline. Asked again with less time than that, it is not tried.
    first = await engine.check(push(big), 0.03)
    assert first.reasons[0].code == "DEADLINE_EXCEEDED"
    misses = engine.configs.misses
    again = await engine.check(push(big), 0.005)
    assert again.reasons[0].code == "DEADLINE_EXCEEDED"
    assert "not parsed again" in again.reasons[0].message
    assert engine.configs.misses == misses
    plenty = await engine.check(push(big), 60.0)  # enough time: parsed, and decided
    assert plenty.allowed


async def test_a_config_only_rule_is_worked_out_once_per_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A typed rule that reads only the configs (the TLS built-in) gives the same verdict
    for every request with the same config text: it is worked out once per parsed config."""
    from pdp.policy.builtins import TlsInsecureRemote

    calls = 0
    real = TlsInsecureRemote.evaluate

    def counting(self: TlsInsecureRemote, ctx: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(self, ctx)

    monkeypatch.setattr(TlsInsecureRemote, "evaluate", counting)
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"))
    insecure = "exporters: {otlp: {endpoint: 'x.example.com:4317', tls: {insecure: true}}}\n"
    decisions = [await engine.check(push(insecure, agent=f"a{i}"), 1.0) for i in range(5)]
    assert calls == 1
    assert {d.reasons[0].message for d in decisions} == {decisions[0].reasons[0].message}
    assert all(d.reasons[0].policy == "default-deny-tls-insecure-on-non-localhost"
               for d in decisions)
    await engine.check(push(insecure + "receivers: {}\n"), 1.0)  # another text: worked out
    assert calls == 2


async def test_what_is_derived_from_a_config_goes_with_it() -> None:
    from pdp.engine.context import ConfigCache

    cache = ConfigCache(1, 1 << 20)
    a = await cache.load("a: 1", "config.yaml")
    cache.derived(a)["x"] = 1
    assert cache.derived(a) == {"x": 1}
    await cache.load("b: 2", "config.yaml")  # a is evicted (one entry)
    assert cache.derived(a) == {}  # nothing of it is kept


async def test_a_rule_keyed_by_the_config_and_a_field_is_worked_out_once_per_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter-removal built-in reads the configs and ``agent.active_exporters``: its
    verdict is remembered per (configs, that field's value), and differs where it does."""
    from pdp.policy.builtins import ExporterRemoval

    calls = 0
    real = ExporterRemoval.evaluate

    def counting(self: ExporterRemoval, ctx: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(self, ctx)

    monkeypatch.setattr(ExporterRemoval, "evaluate", counting)
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"))
    prev = ("exporters: {a: {}, b: {}}\nservice: {pipelines: {logs: {receivers: [r],"
            " exporters: [a, b]}}}\n")
    new = "exporters: {a: {}}\nservice: {pipelines: {logs: {receivers: [r], exporters: [a]}}}\n"

    def req(agent: str, active: list[str]) -> Any:
        r = push(new, agent=agent, previous_config_yaml=prev)
        r.agent["active_exporters"] = active
        return r

    same = [await engine.check(req(f"a{i}", ["b"]), 1.0) for i in range(4)]
    assert calls == 1 and all(not d.allowed for d in same)
    other = await engine.check(req("a9", ["a"]), 1.0)  # b carries nothing here: allowed
    assert calls == 2 and other.allowed


async def test_a_runaway_draft_runs_out_of_budget_once_per_request() -> None:
    """A draft that ran a request out of its shadow budget would-denies at once when the
    same request comes again (the live overrun memo), instead of taking its budget of the
    loop on every push; a different request is evaluated."""
    engine, audit = engine_for(CEL.format(name="runaway", extra="status: draft\n",
                                          deny=RUNAWAY))
    engine.options = replace(engine.options, shadow=ShadowOptions(budget_s=0.005, share=1.0))
    engine.shadow.options = engine.options.shadow

    def would() -> list[dict[str, Any]]:
        return [e for e in audit.events if e["type"] == "Policy.WouldDeny"]

    for i in range(3):
        d = await engine.check(push(ITEMS, agent="a1"), 1.0)
        assert d.allowed  # a draft never changes the live answer
        await _poll(lambda i=i: len(would()) == i + 1, "the draft's would-deny")
    first, *again = would()
    assert first["code"] in ("DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED")
    assert "not evaluated again" not in first["message"]
    assert all(e["code"] == first["code"] and "not evaluated again" in e["message"]
               for e in again)
    await engine.check(push(ITEMS, agent="a2"), 1.0)  # another request: evaluated
    await _poll(lambda: len(would()) == 4, "the other request's would-deny")
    assert "not evaluated again" not in would()[-1]["message"]


async def test_two_shadow_versions_of_one_policy_count_apart() -> None:
    """An approved v2 and a draft v3 of one policy, both in shadow: each has its own counter
    (one shared counter would count every push twice and would-deny a push early)."""
    engine, audit = engine_for(
        "tenant: t\nname: cap\nrule: {daily_cap: {max_count: 10}}\n---\n"
        "tenant: t\nname: cap\nversion: 2\nstatus: approved\nauthor: a\napprover: b\n"
        "rule: {daily_cap: {max_count: 2}}\n---\n"
        "tenant: t\nname: cap\nversion: 3\nstatus: draft\nrule: {daily_cap: {max_count: 2}}\n")
    decisions = [await engine.check(push(agent=f"a{i}"), 1.0) for i in range(3)]
    assert all(d.allowed for d in decisions)
    await _poll(lambda: engine.shadow.evaluated == 3, "the drafts of three decisions")
    would = [(e["decision_id"], e["version"]) for e in audit.events
             if e["type"] == "Policy.WouldDeny"]
    assert sorted(would) == sorted([(decisions[2].decision_id, 2), (decisions[2].decision_id, 3)])


async def test_skips_after_the_first_note_are_noted_once_the_interval_is_up() -> None:
    """A burst: the first skip is noted at once, the rest of it once note_every_s has
    passed (with reason "backlog full"), not left for shutdown under another reason."""
    engine, audit = engine_for(
        CEL.format(name="draft", extra="status: draft\n", deny="true"))
    engine.options = replace(engine.options, shadow=ShadowOptions(backlog=1, note_every_s=0.05))
    for i in range(3):  # three steps: each hands over more jobs than the backlog takes
        await engine.check_batch([push(agent=f"s{i}-{j}") for j in range(4)], 1.0)

    def noted() -> int:
        return sum(e["count"] for e in audit.events if e["type"] == "Shadow.Skipped")
    await _poll(lambda: noted() == engine.shadow.skipped, "every skip noted")
    assert {e["reason"] for e in audit.events if e["type"] == "Shadow.Skipped"} == {
        "backlog full"}


# -- explanations: what the decision's Budget cannot see is bounded too ----------------------

def test_render_encodes_a_large_value_only_as_far_as_it_shows() -> None:
    from pdp.cel.explain import MAX_VALUE_CHARS, render

    encoded: list[int] = []

    class Spy:
        def __str__(self) -> str:
            encoded.append(1)
            return "spy"

    value = [*range(100_000), Spy()]
    text = render(value)
    assert len(text) <= MAX_VALUE_CHARS and text.startswith("[0,1,2,")
    assert encoded == [], "the whole list was encoded to show its first characters"
    assert render([Spy()]) == '["spy"]'


async def test_an_explanation_neither_parses_the_rule_again_nor_compiles_large_parts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 900-item literal: its deny is explained by its small parts. Compiling the literal
    again (~20 ms) or parsing the rule again (~10 ms) would not stop at the deadline."""
    from pdp.cel import program
    from pdp.cel.explain import MAX_EXPLAIN_NODES, OMITTED_KEY
    from pdp.cel.parser import count_nodes

    items = ",".join(str(i) for i in range(900))
    engine, _ = engine_for(CEL.format(name="big", extra="",
                                      deny=f"config.a in [{items}] && config.a > 0"))
    parsed: list[str] = []
    compiled: list[int] = []
    parse, compile_ = program.Environment.parse, program.Environment.compile

    def spy_parse(self: Any, source: str) -> Any:
        parsed.append(source)
        return parse(self, source)

    def spy_compile(self: Any, source: str, *a: Any, **kw: Any) -> Any:
        result = compile_(self, source, *a, **kw)
        compiled.append(count_nodes(parse(self, source)))
        return result

    monkeypatch.setattr(program.Environment, "parse", spy_parse)
    monkeypatch.setattr(program.Environment, "compile", spy_compile)
    d = await engine.check(push("a: 5", explain=True), 30.0)
    [ex] = d.explanations
    assert ex.values["config.a"] == "5" and "config.a > 0" in ex.values
    # the literal, and the ``in`` that holds it
    assert "2 sub-expression(s) over" in ex.values[OMITTED_KEY]
    assert compiled and max(compiled) <= MAX_EXPLAIN_NODES
    assert not any(len(s) > 1000 for s in parsed), "the rule was parsed again"


def test_an_explanation_does_not_start_a_compile_the_deadline_cannot_cover(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pdp.cel import Budget, pdp_environment, program
    from pdp.cel.explain import TRUNCATED_KEY, explain_expression
    from pdp.turns import clock

    compiled: list[str] = []
    compile_ = program.Environment.compile

    def spy_compile(self: Any, source: str, *a: Any, **kw: Any) -> Any:
        compiled.append(source)
        return compile_(self, source, *a, **kw)

    monkeypatch.setattr(program.Environment, "compile", spy_compile)
    deny = "[" + ",".join(str(i) for i in range(79)) + "].size() > 1"  # 83 nodes, no parts
    # 83 nodes at 50 µs each would need ~4 ms; 1 ms is left.
    values = explain_expression(pdp_environment(), deny, {},
                                budget=Budget(deadline=clock() + 0.001))
    assert compiled == [] and "truncated" in values[TRUNCATED_KEY]
