"""The decision path in-process: combining, fail-closed reasons, counters, overrides, audit."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import replace
from typing import Any

import pytest

from pdp.audit.record import DecisionRecord
from pdp.cel import ProgramCache, pdp_environment
from pdp.counters import CounterSettings, MemoryCounterStore
from pdp.counters import open_counter_store as open_store
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine, EngineOptions
from pdp.engine.request import Caller, CheckRequest, InvalidRequest, Override
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_text
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from tests.support.procs import free_port


class Collected:
    """An audit sink that keeps what it is given, so tests can read it back."""

    def __init__(self) -> None:
        self.decisions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.order: list[dict[str, Any]] = []  # both, in the order they were handed over

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.order.append(event)

    async def log_decision(self, decision: DecisionRecord) -> None:
        event = decision.to_event()
        self.decisions.append(event)
        self.order.append(event)

    refusing: str | None = None  # tests set it to see the engine refuse


def engine_for(policies_yaml: str, counters: Any = None, relaxed: dict[str, frozenset[str]]
               | None = None, tenants: frozenset[str] = frozenset({"t"})
               ) -> tuple[Engine, Collected]:
    """An engine deciding ``policies_yaml`` (+ built-ins) for ``tenants`` and the tenants of
    the policies (others are unknown: UNKNOWN_TENANT)."""
    env, cache = pdp_environment(), ProgramCache(100)
    compiled = [compile_or_broken(p, env, cache) for p in load_text(policies_yaml)]
    builtins = [compile_or_broken(p, env, cache) for p in builtin_policies()]
    audit = Collected()
    engine = Engine(PolicySet(compiled, builtins, relaxed or {}, known_tenants=tenants),
                    counters or MemoryCounterStore(), audit, ConfigCache(10, 8 << 20),
                    # Generous step budgets: these tests are about behaviour, not timing,
                    # and a busy machine stalls (tests about budgets set their own).
                    EngineOptions(counter_timeout_s=0.2, step_budget_s=60.0,
                                  step_agent_max_s=10.0))
    return engine, audit


def push(config: str | None = "a: 1", tenant: str = "t", agent: str = "a1", **kw: Any
         ) -> CheckRequest:
    return CheckRequest(tenant=tenant, checkpoint=Checkpoint.PUSH, agent={"id": agent,
                        "labels": kw.pop("labels", {})}, config_yaml=config, **kw)


CEL = "tenant: t\nname: {name}\n{extra}rule:\n  cel:\n    deny: {deny!r}\n"


async def test_any_active_deny_denies_and_drafts_only_shadow() -> None:
    engine, audit = engine_for(
        CEL.format(name="active", extra="", deny="config.a == 1") + "---\n"
        + CEL.format(name="draft", extra="status: draft\n", deny="true") + "---\n"
        + CEL.format(name="quiet", extra="", deny="false"))
    d = await engine.check(push(), 1.0)
    assert not d.allowed
    assert [(r.policy, r.code) for r in d.reasons] == [("active", "POLICY_DENIED")]
    assert d.shadow_denies == []  # drafts are evaluated after the answer
    assert {p.name for p in d.evaluated} >= {"active", "draft", "quiet"}
    ok = await engine.check(push("a: 2"), 1.0)
    assert ok.allowed and ok.shadow_denies == []
    assert [x["decision_id"] for x in audit.decisions] == [d.decision_id, ok.decision_id]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        would = [(e["decision_id"], e["policy"]) for e in audit.events
                 if e["type"] == "Policy.WouldDeny"]
        if len(would) == 2:
            break
        await asyncio.sleep(0.01)
    assert would == [(d.decision_id, "draft"), (ok.decision_id, "draft")]


@pytest.mark.parametrize(("deny", "code"), [
    ("config.missing == 1", "POLICY_ERROR"),      # no such key: fail-closed
    ("1 / 0 == 1", "POLICY_ERROR"),
    ("'not a bool'", "POLICY_INVALID"),           # refused at admission: a string, not a bool
    ("config.a", "POLICY_ERROR"),                 # dyn: an int at evaluation, not a bool
    ("config.a +", "POLICY_INVALID"),             # does not compile: denies until fixed
])
async def test_errors_deny_with_a_reason(deny: str, code: str) -> None:
    engine, _ = engine_for(CEL.format(name="p", extra="", deny=deny))
    d = await engine.check(push(), 1.0)
    assert not d.allowed and d.reasons[0].code == code and d.reasons[0].policy == "p"


async def test_invalid_config_is_invalid_request() -> None:
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"))
    with pytest.raises(InvalidRequest) as err:
        await engine.check(push("a: [1, 2"), 1.0)
    assert err.value.field == "config.yaml"


async def test_runaway_expression_is_denied_at_the_deadline() -> None:
    big = "items: [" + ",".join(str(i) for i in range(50_000)) + "]"
    engine, _ = engine_for(CEL.format(
        name="slow", extra="",
        deny="config.items.all(x, !config.items.exists(y, y == x + 1000000))"))
    # Quadratic over 50k items would run for many minutes: it stopped itself (the test's
    # own timeout is the bound; no duration is asserted).
    d = await engine.check(push(big), 0.05)
    assert not d.allowed and d.reasons[0].code in ("DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED")


async def test_match_filters_select_policies() -> None:
    engine, _ = engine_for(
        "tenant: t\nname: prod-only\nmatch:\n  subjects: [otel]\n  agent_selector:\n"
        "    match_labels: {env: prod}\nrule: {cel: {deny: 'true'}}\n")
    assert (await engine.check(push(labels={"env": "dev"}, change={"subject": "otel"}),
                               1.0)).allowed
    assert (await engine.check(push(labels={"env": "prod"}, change={"subject": "x"}),
                               1.0)).allowed
    assert not (await engine.check(push(labels={"env": "prod"}, change={"subject": "otel"}),
                                   1.0)).allowed


async def test_builtins_apply_to_every_tenant_unless_relaxed() -> None:
    insecure = "exporters:\n  o: {endpoint: 'collector.example:4317', tls: {insecure: true}}\n"
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="false"),
                           relaxed={"relaxed-tenant": frozenset(
                               {"default-deny-tls-insecure-on-non-localhost"})},
                           tenants=frozenset({"t", "other"}))
    d = await engine.check(push(insecure, tenant="other"), 1.0)
    assert not d.allowed and d.reasons[0].builtin
    assert d.reasons[0].policy == "default-deny-tls-insecure-on-non-localhost"
    assert (await engine.check(push(insecure, tenant="relaxed-tenant"), 1.0)).allowed


async def test_override_only_for_admins_and_audited() -> None:
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="true"))
    o = Override("alice", "incident 42")
    checker = await engine.check(push(override=o), 1.0)
    assert not checker.allowed and not checker.overridden
    admin = await engine.check(push(override=o, caller=Caller("alice", frozenset({"admin"}))),
                               1.0)
    assert admin.allowed and admin.overridden and admin.reasons  # the overridden denies stay
    assert audit.decisions[0]["override"]["honoured"] is False
    assert audit.decisions[1]["override"] == {"actor": "alice", "justification": "incident 42",
                                              "honoured": True, "caller_is_admin": True}


async def test_counters_consumed_only_when_the_whole_decision_allows() -> None:
    engine, _ = engine_for(
        "tenant: t\nname: cap\nrule: {daily_cap: {max_count: 2, scope: agent}}\n---\n"
        + CEL.format(name="p", extra="", deny="config.a == 0"))
    assert not (await engine.check(push("a: 0"), 1.0)).allowed  # denied: consumes nothing
    assert (await engine.check(push(), 1.0)).allowed
    assert (await engine.check(push(), 1.0)).allowed
    third = await engine.check(push(), 1.0)
    assert not third.allowed
    assert (third.reasons[0].policy, third.reasons[0].code) == ("cap", "DAILY_CAP_EXCEEDED")
    assert (await engine.check(push(agent="a2"), 1.0)).allowed  # per-agent scope


async def test_counter_scope_missing_in_request_denies() -> None:
    engine, _ = engine_for("tenant: t\nname: per-rollout\nrule:\n"
                           "  velocity: {max_count: 5, window_minutes: 60, scope: rollout}\n")
    d = await engine.check(push(), 1.0)
    assert not d.allowed and d.reasons[0].code == "INVALID_INPUT"


async def test_counter_store_unreachable_denies_within_the_deadline() -> None:
    store = open_store(CounterSettings(url=f"redis://127.0.0.1:{free_port()}/0",
                                       connect_timeout=0.05, op_timeout=0.05))
    engine, _ = engine_for("tenant: t\nname: cap\nrule: {daily_cap: {max_count: 5}}\n", store)
    d = await engine.check(push(), 0.05)
    assert not d.allowed and d.reasons[0].code == "COUNTER_STORE_UNAVAILABLE"
    await store.close()


def _laughs(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("config", "problem"), [
    (_laughs(9), "alias expansion"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", "nesting deeper"),
])
async def test_yaml_bomb_is_denied_invalid_config_and_audited(config: str, problem: str) -> None:
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))
    d = await engine.check(push(config), 1.0)
    assert not d.allowed and d.reasons[0].code == "INVALID_CONFIG"
    assert problem in d.reasons[0].message and "config.yaml" in d.reasons[0].message
    assert audit.decisions[-1]["decision_id"] == d.decision_id


async def test_anchors_within_limits_are_fine() -> None:
    engine, _ = engine_for(CEL.format(name="p", extra="", deny="config.c.b == 2"))
    assert (await engine.check(push("a: &x {b: 1}\nc: *x\n"), 1.0)).allowed


class CountingStore(MemoryCounterStore):
    """The real in-process store, counting how often the engine calls it."""

    calls = 0

    async def reserve(self, *a: Any, **kw: Any) -> Any:
        self.calls += 1
        return await super().reserve(*a, **kw)

    async def reserve_batch(self, *a: Any, **kw: Any) -> Any:
        self.calls += 1
        return await super().reserve_batch(*a, **kw)


async def test_batch_reserves_the_whole_step_in_one_store_call() -> None:
    store = CountingStore()
    engine, audit = engine_for(
        "tenant: t\nname: cap\nrule: {daily_cap: {max_count: 3}}\n---\n"
        + CEL.format(name="odd", extra="", deny="agent.id.endsWith('-odd')"), store)
    reqs = [push(agent=f"a{i}" + ("-odd" if i == 1 else "")) for i in range(6)]
    decisions = await engine.check_batch(reqs, 1.0)
    assert store.calls == 1
    assert [d.allowed for d in decisions] == [True, False, True, True, False, False]
    assert decisions[1].reasons[0].policy == "odd"            # denied: consumed nothing
    assert decisions[4].reasons[0].code == "DAILY_CAP_EXCEEDED"
    assert [x["decision_id"] for x in audit.decisions] == [d.decision_id for d in decisions]


async def test_a_long_step_has_the_step_budget_not_one_decisions() -> None:
    """A step has one budget (``step_budget_s``) for all its agents, not the single-decision
    budget: 2 000 agents evaluated one by one are all decided even when the per-decision
    budget (50 ms) is far less than the whole step takes."""
    # The deny reads agent.id, so it is evaluated per agent (not shared across the step).
    engine, _ = engine_for("tenant: t\nname: cap\nrule: {daily_cap: {max_count: 5000}}\n---\n"
                           + CEL.format(name="p", extra="", deny="agent.id == 'none'"))
    engine.options = replace(engine.options, step_budget_s=60.0)  # a busy CI machine
    reqs = [push(agent=f"a{i}") for i in range(2000)]
    # A collector pause (after other tests filled the heap) could rightly put one agent over
    # its own share: that is not what this test is about.
    gc.disable()
    try:
        decisions = await engine.check_batch(reqs, 0.05)
    finally:
        gc.enable()
    assert all(d.allowed for d in decisions), {
        (r.code, r.message) for d in decisions for r in d.reasons}


async def test_a_record_that_could_not_be_kept_means_no_decision() -> None:
    """When the audit sink says it could not keep a record (a full disk: see
    AuditLog.refusing), the engine decides nothing: AuditWriteError (UNAVAILABLE at the
    API), no record, no counter consumed; once it can, decisions go on."""
    from pdp.audit import AuditWriteError

    engine, audit = engine_for("tenant: t\nname: cap\nrule: {daily_cap: {max_count: 1}}\n")
    audit.refusing = "the audit file cannot be written: [Errno 28] No space left on device"
    with pytest.raises(AuditWriteError, match="No space left"):
        await engine.check(push(), 0.05)
    with pytest.raises(AuditWriteError):
        await engine.check_batch([push(agent="a"), push(agent="b")], 1.0)
    assert audit.decisions == [] and audit.events == []
    audit.refusing = None
    first = await engine.check(push(), 0.05)
    assert first.allowed  # the cap of 1 was not consumed by the refused calls
    assert not (await engine.check(push(), 0.05)).allowed


async def test_a_record_that_was_not_durable_fails_the_call_and_is_marked_undelivered(
        ) -> None:
    """Sync durability: the record did not become durable (a full disk, a failed fsync).
    The call fails (AuditWriteError: UNAVAILABLE at the API), and a Decision.Undelivered
    naming the decision follows the record, for whoever reads the log later."""
    from pdp.audit import AuditWriteError

    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))

    async def not_durable(decision: DecisionRecord) -> None:
        audit.decisions.append(decision.to_event())
        raise AuditWriteError("audit record 7 not durable: [Errno 5] Input/output error")

    audit.log_decision = not_durable  # type: ignore[method-assign]
    with pytest.raises(AuditWriteError, match="not durable"):
        await engine.check(push(), 0.05)
    [record] = audit.decisions
    [marker] = [e for e in audit.events if e["type"] == "Decision.Undelivered"]
    assert marker["decision_id"] == record["decision_id"]
    assert "Input/output error" in marker["reason"]


async def test_records_wait_while_an_answer_is_in_progress(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's answer path gives the loop turns (for other calls); the records of its own
    decisions wait for it to end (turns.foreground), and are made right after, in order.
    The wait is bounded (DEFER_MAX_S): a server answering back to back still records."""
    from pdp import turns

    monkeypatch.setattr(turns, "EVERY_S", 0.0)
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))
    engine.options = replace(engine.options, audit_after_answer=True)
    with turns.foreground():
        decisions = await engine.check_batch([push(agent=f"a{i}") for i in range(50)], 1.0)
        for _ in range(20):  # the answer path taking turns: nothing recorded meanwhile
            await asyncio.sleep(0)
        assert [e for e in audit.events if e["type"] == "Decision"] == []
    for _ in range(1000):
        if not engine.recorder.backlog:
            break
        await asyncio.sleep(0)
    assert [e["decision_id"] for e in audit.events if e["type"] == "Decision"] == [
        d.decision_id for d in decisions]
    # Never starved: with an answer in progress for longer than DEFER_MAX_S, it records.
    monkeypatch.setattr(turns, "DEFER_MAX_S", 0.0)
    with turns.foreground():
        more = await engine.check_batch([push(agent=f"b{i}") for i in range(50)], 1.0)
        for _ in range(1000):
            if not engine.recorder.backlog:
                break
            await asyncio.sleep(0)
        assert [e["decision_id"] for e in audit.events if e["type"] == "Decision"][-50:] == [
            d.decision_id for d in more]


async def test_audit_after_answer_records_on_the_next_loop_turns_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``audit_after_answer`` (async durability) the answer does not wait for its audit
    records: they are queued on the loop's next turns, a slice at a time, in decision order,
    each after the Seen events it names, with the derived events; none is skipped."""
    from pdp import turns
    from pdp.engine.recorder import RECORD_MIN

    monkeypatch.setattr(turns, "EVERY_S", 0.0)  # every slice as short as it may be
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="agent.id == 'a3'"))
    engine.options = replace(engine.options, audit_after_answer=True)
    decisions = await engine.check_batch([push(agent=f"a{i}") for i in range(150)], 1.0)
    assert audit.events == []  # answered first
    await asyncio.sleep(0)
    assert len([e for e in audit.events if e["type"] == "Decision"]) == RECORD_MIN  # a slice
    single = await engine.check(push(agent="solo"), 1.0)  # queued behind the step's records
    for _ in range(1000):  # one FIFO, a slice per turn, until it is empty
        if not engine.recorder.backlog:
            break
        await asyncio.sleep(0)
    recorded = [e for e in audit.events if e["type"] == "Decision"]
    assert [e["decision_id"] for e in recorded] == [
        d.decision_id for d in [*decisions, single]]
    assert [e["subject"]["agent_id"] for e in recorded] == [
        *(f"a{i}" for i in range(150)), "solo"]
    denied = [e for e in audit.events if e["type"] == "Rollout.PushDenied"]
    assert [e["decision_id"] for e in denied] == [decisions[3].decision_id]
    types = [e["type"] for e in audit.events]
    assert types.index("Config.Seen") < types.index("Decision")
    assert types.index("Policies.Seen") < types.index("Decision")
    assert audit.decisions == []  # not through log_decision, which waits in sync mode
    # Shutdown: record_pending queues what is still to come at once (no loop turn).
    more = await engine.check_batch([push(agent=f"b{i}") for i in range(100)], 1.0)
    engine.record_pending()
    assert [e["decision_id"] for e in audit.events if e["type"] == "Decision"][-100:] == [
        d.decision_id for d in more]


async def test_audit_after_answer_says_which_decision_has_no_record(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A defect while building one record must not take the others with it, and must be
    loud: the decision id is logged at critical level."""
    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))
    engine.options = replace(engine.options, audit_after_answer=True)
    real = engine.recorder.event

    def broken(req: CheckRequest, decision: Any) -> dict[str, Any]:
        if req.agent and req.agent["id"] == "a1":
            raise RuntimeError("boom")
        return real(req, decision)

    engine.recorder.event = broken  # type: ignore[method-assign]
    decisions = await engine.check_batch([push(agent=f"a{i}") for i in range(3)], 1.0)
    await asyncio.sleep(0)
    recorded = [e["decision_id"] for e in audit.events if e["type"] == "Decision"]
    assert recorded == [decisions[0].decision_id, decisions[2].decision_id]
    out = capsys.readouterr()
    assert "audit_record_failed" in out.out + out.err
    assert decisions[1].decision_id in out.out + out.err


async def test_engine_decision_events_are_in_the_documented_form() -> None:
    """The engine's typed records encode to Decision events in the documented form: the
    same event the audit module makes of it when given as a plain mapping (allowed,
    denied, shadow-denied, overridden and explained ones alike)."""
    from pdp.audit.events import decision_event

    engine, audit = engine_for(
        CEL.format(name="p", extra="", deny="agent.id == 'a1'")
        + "---\n" + CEL.format(name="d", extra="status: draft\n", deny="true"))
    engine.options = replace(engine.options, audit_after_answer=True)
    admin = Caller("ops", frozenset({"admin"}))
    reqs = [push(agent="a0"), push(agent="a1"), push(agent="a1", explain=True),
            push(agent="a1", caller=admin, override=Override("ops", "incident 7")),
            push(config=None, agent="a2")]
    await engine.check_batch(reqs, 1.0)
    engine.record_pending()
    recorded = [e for e in audit.events if e["type"] == "Decision"]
    assert len(recorded) == len(reqs)
    for ev in recorded:
        assert decision_event(dict(ev)) == ev


async def test_audit_after_answer_backlog_stays_bounded_and_in_order() -> None:
    """Steps arriving faster than the loop turns (here: no turn at all between them) do not
    pile up answered-but-unrecorded decisions without bound: past the backlog limit the
    next step records them first. Every record is still there, once, in decision order."""
    from pdp.engine.recorder import RECORD_BACKLOG

    engine, audit = engine_for(CEL.format(name="p", extra="", deny="false"))
    engine.options = replace(engine.options, audit_after_answer=True)
    ids: list[str] = []
    for step in range(30):  # memory counters never suspend: no loop turn in between
        decisions = await engine.check_batch(
            [push(agent=f"s{step}-a{i}") for i in range(1000)], 1.0)
        ids += [d.decision_id for d in decisions]
        assert engine.recorder.backlog <= RECORD_BACKLOG + 1000
    for _ in range(20):
        await asyncio.sleep(0)
    assert engine.recorder.backlog == 0
    assert [e["decision_id"] for e in audit.events if e["type"] == "Decision"] == ids


async def test_a_cel_verdict_that_reads_only_the_config_is_worked_out_once_per_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CEL rule whose verdict and message read nothing but the configs (or nothing) is
    evaluated once per parsed config, its deny reused with its message; one that reads the
    agent is evaluated per request."""
    from pdp.policy.compiled import CompiledPolicy

    engine, _ = engine_for(
        CEL.format(name="by-config", extra="", deny="config.a == 1") + "---\n"
        + CEL.format(name="constant", extra="", deny="'ab'.size() == 3") + "---\n"
        + CEL.format(name="by-agent", extra="", deny="agent.id == 'a2' && config.a == 1"))
    keyed = {p.name: p.config_keyed for p in engine.policies.all()}
    assert keyed["by-config"] == () and keyed["constant"] == () and keyed["by-agent"] is None
    calls: list[str] = []
    real = CompiledPolicy.evaluate

    def counted(self: CompiledPolicy, ctx: Any, budget: Any) -> Any:
        calls.append(self.name)
        return real(self, ctx, budget)

    monkeypatch.setattr(CompiledPolicy, "evaluate", counted)
    text = "a: 1\nb: [1, 2]\n"
    first = await engine.check(push(text, agent="a1"), 1.0)
    second = await engine.check(push(text, agent="a2"), 1.0)
    other = await engine.check(push("a: 2\n", agent="a1"), 1.0)
    assert calls.count("by-config") == 2 and calls.count("constant") == 2  # two configs
    assert calls.count("by-agent") == 3
    deny = {r.policy: r.message for r in first.reasons}
    assert {r.policy: r.message for r in second.reasons if r.policy != "by-agent"} == deny
    assert [r.policy for r in first.reasons if r.policy in ("by-config", "by-agent")] == [
        "by-config"]
    assert [r.policy for r in other.reasons if r.policy in ("by-config", "by-agent")] == []
