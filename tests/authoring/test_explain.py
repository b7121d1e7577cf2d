"""Explanations: CEL explain mode, every built-in and typed rule, the engine flag, protobuf."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.api.convert import decision_pb
from pdp.authoring.harness import Sandbox, load_policies, request_from_mapping
from pdp.cel import Budget, pdp_environment
from pdp.cel.explain import DEFAULT_EXPLAIN_COST, explain_expression
from pdp.cel.unparse import unparse
from pdp.engine.decision import Decision
from pdp.engine.request import CheckRequest
from pdp.policy import explain as X
from pdp.policy.loader import load_text
from pdp.policy.model import Checkpoint

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


#: The decision's budget, which explanations share: generous, so that a loaded machine
#: cannot cut an explanation short (what a short budget does is tested on its own).
BUDGET_S = 30.0


def roomy() -> Budget:
    """An explanation budget no load can exhaust: the default's cost limit, 30 s of time."""
    return Budget(deadline=time.monotonic() + BUDGET_S, cost_limit=DEFAULT_EXPLAIN_COST)


def decide(policies_yaml: str, req: CheckRequest, now: datetime | None = None,
           builtins: bool = True, repeat: int = 1) -> Decision:
    sandbox = Sandbox.of(load_text(policies_yaml) if policies_yaml else [], builtins=builtins,
                         tenants=[req.tenant])
    if now is not None:
        sandbox.set_time(now)
    d = None
    for _ in range(repeat):
        d = asyncio.run(sandbox.engine.check(req, BUDGET_S))
    assert d is not None
    return d


def values(d: Decision, policy: str) -> dict[str, str]:
    [x] = [x for x in d.explanations if x.policy == policy]
    return x.values


def push(config: Any = None, explain: bool = True, **kw: Any) -> CheckRequest:
    """A push (with an empty collector config unless given: a push always carries one)."""
    if config is None:
        config = {"receivers": {}}
    text = yaml.safe_dump(config) if isinstance(config, dict) else config
    return CheckRequest(tenant="t", checkpoint=kw.pop("checkpoint", Checkpoint.PUSH),
                        agent=kw.pop("agent", {"id": "a1", "labels": {}}), config_yaml=text,
                        explain=explain, **kw)


@pytest.mark.parametrize("source", [
    'a.b[1] + -c * (d - e) > 3u ? "x\\n\\"" : b"\\x00y"',
    "!(a || b) && c.all(x, y, x > 1) && m.exists(k, v, v == k)",
    "has(a.b) && cel.bind(z, 1, z + 1) == 2 && [1, 2].map(y, y > 1, y * 2) == [4]",
    "(1 + 2) * 3 - (4 - 5) == {1: 'a'}[1].size() && .x in [1.5, null, true]",
])
def test_unparse_round_trips(source: str) -> None:
    env = pdp_environment()
    text = unparse(env.parse(source))
    assert unparse(env.parse(text)) == text


def test_explain_mode_finds_the_element_and_its_values() -> None:
    env = pdp_environment()
    src = ('config.exporters.exists(e, config.exporters[e].tls.insecure == true'
           ' && !config.exporters[e].endpoint.isLocalhost())')
    cfg = {"exporters": {"a": {"endpoint": "localhost:1", "tls": {"insecure": True}},
                         "otlp/x": {"endpoint": "x.example.com:4317",
                                    "tls": {"insecure": True}}}}
    v = explain_expression(env, src, {"config": cfg}, budget=roomy())
    assert v["e"] == "otlp/x"
    assert v["config.exporters[e].tls.insecure"] == "true"
    assert v["config.exporters[e].endpoint"] == "x.example.com:4317"
    assert v["config.exporters[e].endpoint.isLocalhost()"] == "false"
    # all() false: the element that broke it; || true: only the true operand
    v = explain_expression(env, "!config.xs.all(x, x < 10) || config.y == 1",
                           {"config": {"xs": [1, 12], "y": 0}}, budget=roomy())
    assert v["x"] == "12" and v["x < 10"] == "false" and "config.y == 1" not in v
    # budget / size limits stop explaining, never raise
    v = explain_expression(env, "config.exists(x, x == 99)", {"config": list(range(100))},
                           max_values=1, budget=roomy())
    assert "(explanation)" in v


def test_explanations_are_off_by_default_and_cost_nothing(monkeypatch: Any) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("explain called")

    monkeypatch.setattr(X, "explain_policy", boom)
    cfg = {"exporters": {"x": {"endpoint": "x.example.com:1", "tls": {"insecure": True}}}}
    d = decide("", push(cfg, explain=False))
    assert not d.allowed and d.explanations == []
    assert "explanations" not in d.to_dict()  # never in the audit record


def test_builtin_tls_insecure() -> None:
    cfg = {"exporters": {"otlp/x": {"endpoint": "https://x.example.com:4317",
                                    "tls": {"insecure": True}}}}
    d = decide("", push(cfg))
    assert values(d, "default-deny-tls-insecure-on-non-localhost") == {
        "exporter": "otlp/x", "endpoint": "https://x.example.com:4317",
        "host": "x.example.com", "tls.insecure": "true", "localhost": "false"}
    pb = decision_pb(d)
    assert pb.explanations[0].policy == "default-deny-tls-insecure-on-non-localhost"
    assert pb.explanations[0].values["exporter"] == "otlp/x"


def test_builtin_exporter_removal() -> None:
    prev = {"exporters": {"old": {}},
            "service": {"pipelines": {"traces": {"exporters": ["old"]}}}}
    d = decide("", push({"exporters": {"new": {}}}, previous_config_yaml=yaml.safe_dump(prev)))
    v = values(d, "default-deny-exporter-removal")
    assert v["exporter"] == "old" and v["pipeline"] == "traces"
    d = decide("", push({"exporters": {"new": {}}},
                        agent={"id": "a", "labels": {}, "active_exporters": ["gone"]}))
    v = values(d, "default-deny-exporter-removal")
    assert v["exporter"] == "gone" and v["source"] == "agent.active_exporters"


TYPED = "tenant: t\nname: r\nrule:\n  {rule}\n"


@pytest.mark.parametrize(("rule", "req", "now", "expected"), [
    ("blocked_days: {days: [saturday], timezone: UTC}", {}, datetime(2025, 3, 8, 12, tzinfo=UTC),
     {"weekday": "saturday", "blocked_days": "saturday"}),
    ("allowed_hours: {start_hour: 9, end_hour: 17, timezone: UTC}", {},
     datetime(2025, 3, 4, 20, tzinfo=UTC), {"allowed_hours": "09:00-17:00",
                                            "local_time": "2025-03-04 20:00"}),
    ("freeze_windows: {windows: [{start: '2025-03-01T00:00:00Z', end: '2025-03-31T00:00:00Z',"
     " reason: audit}]}", {}, datetime(2025, 3, 4, tzinfo=UTC), {"window.reason": "audit"}),
    ("max_step_percent: {max_percent: 10}",
     {"rollout": {"id": "r", "step_percent": 40.0, "previous_step_percent": 10.0}}, None,
     {"increase": "30", "max_percent": "10"}),
    ("require_approval: {per_step: true, min_approvals: 2}",
     {"rollout": {"id": "r", "step": 2, "created_by": "bob", "approvals": []}}, None,
     {"min_approvals": "2", "rollout.step": "2"}),
    ("device_constraints: {min_os_version: {android: '12'}, min_memory: 2GB}",
     {"device": {"id": "d", "platform": "android", "os_version": "11.2", "memory_bytes": 1},
      "checkpoint": Checkpoint.DEVICE, "agent": None}, None,
     {"device.os_version": "11.2", "min_os_version": "12"}),
    ("quality_gate: {min_accuracy: 0.9}", {"metrics": {"accuracy": 0.8},
                                           "checkpoint": Checkpoint.ROLLOUT_PRECONDITION},
     None, {"metric": "accuracy", "value": "0.8", "threshold": "0.9"}),
    ("auto_rollback: {max_error_rate: 0.1}", {"metrics": {"error_rate": 0.5}}, None,
     {"metrics.error_rate": "0.5", "max_error_rate": "0.1"}),
])
def test_typed_rules(rule: str, req: dict[str, Any], now: datetime | None,
                     expected: dict[str, str]) -> None:
    d = decide(TYPED.format(rule=rule), push(None, **req), now, builtins=False)
    assert not d.allowed, d.reasons
    got = values(d, "r")
    assert expected.items() <= got.items(), got


def test_counter_rule() -> None:
    d = decide(TYPED.format(rule="daily_cap: {max_count: 2, timezone: UTC, scope: tenant}"),
               push(None), builtins=False, repeat=3)
    assert [r.code for r in d.reasons] == ["DAILY_CAP_EXCEEDED"]
    v = values(d, "r")
    assert v["counter"] == "daily_cap" and v["max_count"] == "2" and "retry_after_s" in v


EXPECTED_EXAMPLES = {
    "push-deny-debug-exporter-in-prod.yaml":
        ("no-debug-exporter-in-prod", {"n": "debug", "collector.exporters[n].type": "debug"}),
    # violations rules: the list, and the element that made the first one (its condition)
    "push-deny-debug-exporter-production-group.yaml":
        ("no-debug-exporter-in-production-group", {"n": "debug", "e.type": "debug"}),
    "push-deny-hostmetrics-interval.yaml":
        ("hostmetrics-interval-at-least-60s",
         {"n": "hostmetrics", 'r.settings.?collection_interval.orValue("60s")': "30s",
          "violations": '["receiver hostmetrics has collection_interval below 60s: 30s"]'}),
    "push-deny-no-tail-sampling.yaml":
        ("traces-through-tail-sampling",
         {"n": "traces", "p.processor_types": '["batch"]',
          '"tail_sampling" in p.processor_types': "false"}),
    "push-deny-non-eu-endpoint.yaml":
        ("eu-endpoints-only", {"n": "otlp/us", "e.host": "ingest.us.example.com",
                               "e.local": "false"}),
    "push-deny-step-too-large.yaml": ("small-steps", {"increase": "50"}),
    "push-deny-tls-insecure.yaml":
        ("default-deny-tls-insecure-on-non-localhost",
         {"exporter": "otlp/backend", "tls.insecure": "true"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_EXAMPLES))
def test_each_example_deny_is_explained(name: str) -> None:
    path = EXAMPLES / "requests" / name
    req = request_from_mapping(yaml.safe_load(path.read_text()), path.parent)
    req.explain = True
    sandbox = Sandbox.of(load_policies(EXAMPLES / "policies"))
    d = asyncio.run(sandbox.engine.check(req, BUDGET_S))
    policy, expected = EXPECTED_EXAMPLES[name]
    assert [r.policy for r in d.reasons] == [policy]
    got = values(d, policy)
    assert expected.items() <= got.items(), got


def test_offline_drafts_get_the_generous_budget_not_a_servers_shadow_slice() -> None:
    """pdp test / pdp eval decide drafts inline; their verdicts and explanations must not
    depend on how busy the machine is (a server gives drafts 10 ms; that failed under load)."""
    from pdp.authoring.harness import DEFAULT_BUDGET_S, Sandbox
    from pdp.engine.shadow import ShadowOptions

    sandbox = Sandbox.of([], builtins=False)
    assert sandbox.engine.options.shadow.budget_s == DEFAULT_BUDGET_S
    assert sandbox.engine.options.shadow.budget_s > ShadowOptions().budget_s * 10
    assert sandbox.engine.shadow.options.budget_s == DEFAULT_BUDGET_S


def test_cel_explanations_are_not_computed_for_a_caller_who_may_not_see_them() -> None:
    """A CEL explanation quotes source text, so a caller who may not read the tenant's
    policies is not shown it: it is not computed either (it re-evaluates the rule's parts
    in the decision's budget). Typed rules' explanations are still given."""
    policies = ("tenant: t\nname: c\nrule: {cel: {deny: 'config.receivers.size() == 0'}}\n"
                "---\ntenant: t\nname: s\nrule: {max_step_percent: {max_percent: 5}}\n")
    rollout = {"id": "r", "step": 1, "step_percent": 50.0}
    seen = decide(policies, push(rollout=rollout))
    assert {x.policy for x in seen.explanations} == {"c", "s"}
    hidden = decide(policies, push(rollout=rollout, explain_cel=False))
    assert {x.policy for x in hidden.explanations} == {"s"}
    assert [r.policy for r in hidden.reasons] == [r.policy for r in seen.reasons]
