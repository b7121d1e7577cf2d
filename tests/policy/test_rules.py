"""Typed stateless rules and the built-ins, each with its edge cases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pdp.policy.builtins import ExporterRemoval, TlsInsecureRemote
from pdp.policy.evalctx import EvalContext
from pdp.policy.loader import load_text
from pdp.policy.model import Checkpoint
from pdp.policy.rules import Deny


def rule(yaml_rule: str) -> Any:
    [p] = load_text(f"tenant: t\nname: r\nrule:\n{yaml_rule}")
    return p.rule


def ctx(now: datetime | None = None, checkpoint: Checkpoint = Checkpoint.PUSH,
        **activation: Any) -> EvalContext:
    return EvalContext("t", checkpoint, now or datetime(2026, 11, 23, 12, tzinfo=UTC),
                       activation)


def gate(metrics: dict[str, float]) -> EvalContext:
    """Quality gates apply at the rollout precondition (where metrics are)."""
    return ctx(checkpoint=Checkpoint.ROLLOUT_PRECONDITION, metrics=metrics)


def code(d: Deny | None) -> str | None:
    return None if d is None else d.code


def test_blocked_days_uses_the_local_day() -> None:
    r = rule("  blocked_days: {days: [saturday, sunday], timezone: Pacific/Auckland}\n")
    # Friday 20:00 UTC is already Saturday in Auckland (UTC+13 in November).
    assert code(r.evaluate(ctx(datetime(2026, 11, 27, 20, tzinfo=UTC)))) == "BLOCKED_DAY"
    assert r.evaluate(ctx(datetime(2026, 11, 27, 8, tzinfo=UTC))) is None


def test_allowed_hours_plain_and_wrapping_midnight() -> None:
    day = rule("  allowed_hours: {start_hour: 9, end_hour: 17, timezone: Europe/Berlin}\n")
    assert day.evaluate(ctx(datetime(2026, 11, 23, 8, tzinfo=UTC))) is None  # 09:00 Berlin
    assert code(day.evaluate(ctx(datetime(2026, 11, 23, 16, tzinfo=UTC)))) == \
        "OUTSIDE_ALLOWED_HOURS"  # 17:00 Berlin: end is exclusive
    night = rule("  allowed_hours: {start_hour: 22, end_hour: 6, timezone: UTC}\n")
    assert night.evaluate(ctx(datetime(2026, 11, 23, 23, tzinfo=UTC))) is None
    assert night.evaluate(ctx(datetime(2026, 11, 23, 3, tzinfo=UTC))) is None
    assert code(night.evaluate(ctx(datetime(2026, 11, 23, 12, tzinfo=UTC)))) == \
        "OUTSIDE_ALLOWED_HOURS"


def test_allowed_hours_across_dst_transitions() -> None:
    r = rule("  allowed_hours: {start_hour: 9, end_hour: 17, timezone: America/New_York}\n")
    # 13:30 UTC is 09:30 EDT in summer but 08:30 EST in winter.
    assert r.evaluate(ctx(datetime(2026, 7, 1, 13, 30, tzinfo=UTC))) is None
    assert code(r.evaluate(ctx(datetime(2026, 12, 1, 13, 30, tzinfo=UTC)))) == \
        "OUTSIDE_ALLOWED_HOURS"
    # The day clocks go back (2026-11-01): 13:30 UTC is 08:30 EST, 12:30 UTC is 07:30 EST.
    assert code(r.evaluate(ctx(datetime(2026, 11, 1, 13, 30, tzinfo=UTC)))) == \
        "OUTSIDE_ALLOWED_HOURS"
    assert r.evaluate(ctx(datetime(2026, 11, 1, 14, 0, tzinfo=UTC))) is None


def test_freeze_window_with_retry_after() -> None:
    r = rule("  freeze_windows:\n    windows:\n      - {start: '2026-12-20T00:00:00Z',"
             " end: '2027-01-04T00:00:00Z', reason: holidays}\n")
    d = r.evaluate(ctx(datetime(2027, 1, 3, tzinfo=UTC)))
    assert code(d) == "CHANGE_FREEZE" and d is not None and "holidays" in d.message
    assert d.retry_after_s == 86400
    assert r.evaluate(ctx(datetime(2027, 1, 4, tzinfo=UTC))) is None  # end is exclusive
    assert r.evaluate(ctx(datetime(2026, 12, 19, 23, 59, tzinfo=UTC))) is None


@pytest.mark.parametrize(("max_yaml", "rollout", "denied"), [
    ("{max_percent: 25}", {"step_percent": 25.0}, False),
    ("{max_percent: 25}", {"step_percent": 25.5}, True),
    ("{max_percent: 25}", {"step_percent": 50.0, "previous_step_percent": 25.0}, False),
    ("{max_percent: 25}", {"step_percent": 60.0, "previous_step_percent": 30.0}, True),
    ("{max_percent: 25}", {"step_percent": 10.0, "previous_step_percent": 40.0}, False),
    ("{max_percent: 25}", {}, False),
    ("{}", {"step_percent": 100.0}, False),  # default max 100%
    ("{max_percent: 0}", {"step_percent": 1.0}, True),
])
def test_max_step_percent_is_the_increase_per_advance(max_yaml: str, rollout: dict[str, Any],
                                                       denied: bool) -> None:
    r = rule(f"  max_step_percent: {max_yaml}\n")
    d = r.evaluate(ctx(rollout=rollout))
    assert code(d) == ("STEP_TOO_LARGE" if denied else None)
    if d is not None:
        assert f"{rollout['step_percent']:g}%" in d.message
        assert f"{r.max_percent:g}%" in d.message


def test_require_approval_four_eyes_and_per_step() -> None:
    r = rule("  require_approval: {per_step: true, min_approvals: 1}\n")
    base = {"step": 2, "created_by": "alice"}
    assert code(r.evaluate(ctx(rollout={**base, "approvals": []}))) == "APPROVAL_REQUIRED"
    self_approved = {**base, "approvals": [{"actor": "alice", "step": 2}]}
    assert code(r.evaluate(ctx(rollout=self_approved))) == "APPROVAL_REQUIRED"
    other_step = {**base, "approvals": [{"actor": "bob", "step": 1}]}
    assert code(r.evaluate(ctx(rollout=other_step))) == "APPROVAL_REQUIRED"
    assert r.evaluate(ctx(rollout={**base, "approvals": [{"actor": "bob", "step": 2}]})) is None


def test_device_constraints() -> None:
    r = rule("  device_constraints:\n    min_os_version: {ios: '16.4'}\n    min_memory: 4GB\n"
             "    allowed_groups: [beta]\n")
    good = {"platform": "ios", "os_version": "16.4.1", "memory_bytes": 4_000_000_000,
            "groups": ["beta"]}
    assert r.evaluate(ctx(device=good)) is None
    assert code(r.evaluate(ctx(device={**good, "os_version": "16.3.9"}))) == "DEVICE_CONSTRAINT"
    assert code(r.evaluate(ctx(device={**good, "memory_bytes": 3_999_999_999}))) == \
        "DEVICE_CONSTRAINT"
    assert code(r.evaluate(ctx(device={**good, "groups": ["ga"]}))) == "DEVICE_CONSTRAINT"
    assert r.evaluate(ctx(device={**good, "platform": "android", "os_version": "1"})) is None


def test_quality_gate_scopes() -> None:
    latest = rule("  quality_gate:\n    min_accuracy: 0.9\n    conditions:\n"
                  "      - {metric: latency_ms, op: '<=', threshold: 200}\n")
    assert latest.evaluate(gate({"accuracy": 0.95, "latency_ms": 150})) is None
    assert code(latest.evaluate(gate({"accuracy": 0.85, "latency_ms": 150}))) == \
        "QUALITY_GATE_FAILED"
    assert code(latest.evaluate(gate({"latency_ms": 150}))) == "QUALITY_GATE_FAILED"
    fine = rule("  quality_gate:\n    scope: fine_grained\n    min_accuracy: 0.9\n")
    ok = {"accuracy/eu": 0.95, "accuracy/us": 0.91}
    assert fine.evaluate(gate(ok)) is None
    assert code(fine.evaluate(gate({**ok, "accuracy/apac": 0.8}))) == \
        "QUALITY_GATE_FAILED"


GATE = "  quality_gate:\n    scope: {scope}\n    conditions:\n      - {cond}\n"


@pytest.mark.parametrize(("scope", "cond", "metrics", "denied_metric"), [
    ("all_latest", "{metric: f1, op: '>', threshold: 0.5}", {"f1": 0.6}, None),
    ("all_latest", "{metric: f1, op: '>', threshold: 0.5}", {"f1": 0.5}, "f1"),
    ("all_latest", "{metric: f1, op: '>=', threshold: 0.5}", {"f1": 0.5}, None),
    ("all_latest", "{metric: f1, op: '=', threshold: 1}", {"f1": 1.0}, None),
    ("all_latest", "{metric: f1, op: '=', threshold: 1}", {"f1": 0.99}, "f1"),
    ("all_latest", "{metric: loss, op: '<', threshold: 0.2}", {"loss": 0.2}, "loss"),
    ("all_latest", "{metric: loss, op: '<=', threshold: 0.2}", {"loss": 0.2}, None),
    ("all_latest", "{metric: toxicity, op: exists}", {"toxicity": 0.0}, None),
    ("all_latest", "{metric: toxicity, op: exists}", {"f1": 1.0}, "toxicity"),
    # every value in scope must pass: one failing evaluation fails the gate
    ("all_latest", "{metric: f1, op: '>=', threshold: 0.5}",
     {"f1/eval-1": 0.9, "f1/eval-2": 0.4}, "f1/eval-2"),
    # at least one must exist
    ("all_latest", "{metric: f1, op: '>=', threshold: 0.5}", {}, "f1"),
    # fine-grained keys: only the listed evaluation / task keys count
    ("fine_grained", "{metric: f1, op: '>=', threshold: 0.5, keys: [eval-1]}",
     {"f1/eval-1/qa": 0.9, "f1/eval-2/qa": 0.1}, None),
    ("fine_grained", "{metric: f1, op: '>=', threshold: 0.5, keys: [eval-1/qa]}",
     {"f1/eval-1/qa": 0.4, "f1/eval-1/chat": 0.9}, "f1/eval-1/qa"),
    ("fine_grained", "{metric: f1, op: '>=', threshold: 0.5, keys: [eval-3]}",
     {"f1/eval-1": 0.9}, "f1"),
])
def test_quality_gate_operators_and_scopes(scope: str, cond: str, metrics: dict[str, float],
                                           denied_metric: str | None) -> None:
    d = rule(GATE.format(scope=scope, cond=cond)).evaluate(gate(metrics))
    if denied_metric is None:
        assert d is None
    else:
        assert d is not None and d.code == "QUALITY_GATE_FAILED"
        assert repr(denied_metric) in d.message


@pytest.mark.parametrize(("params", "metrics", "denied"), [
    ("max_quality_drop: 0.02", {"accuracy": 0.90, "baseline/accuracy": 0.91}, None),
    ("max_quality_drop: 0.02", {"accuracy": 0.85, "baseline/accuracy": 0.91}, "accuracy"),
    ("max_quality_drop: 0.02", {"accuracy": 0.95, "baseline/accuracy": 0.91}, None),
    ("max_quality_drop: 0.02", {"accuracy": 0.95}, "baseline/accuracy"),
    ("max_quality_drop: {metric: f1, max: 0.1}", {"f1": 0.7, "baseline/f1": 0.9}, "f1"),
    ("min_accuracy: 0.9", {"accuracy": 0.89, "baseline/accuracy": 0.1}, "accuracy"),
])
def test_quality_gate_shorthands(params: str, metrics: dict[str, float],
                                 denied: str | None) -> None:
    d = rule(f"  quality_gate:\n    {params}\n").evaluate(gate(metrics))
    assert (d is None) == (denied is None)
    if d is not None:
        assert repr(denied) in d.message


@pytest.mark.parametrize("bad", [
    "  quality_gate: {conditions: [{metric: a, op: '!=', threshold: 1}]}\n",
    "  quality_gate: {conditions: [{metric: a, op: '>', threshold: 1, keys: [x]}]}\n",
    "  quality_gate: {}\n",
    "  auto_rollback: {max_error_rate: 5}\n",  # rates are fractions
])
def test_invalid_typed_parameters_are_rejected(bad: str) -> None:
    from pdp.policy.model import PolicyError
    with pytest.raises(PolicyError):
        rule(bad)


@pytest.mark.parametrize(("params", "metrics", "breached"), [
    ("{}", {"error_rate": 0.05, "crash_rate": 0.01}, []),
    ("{}", {"error_rate": 0.051}, ["error_rate"]),
    ("{}", {"crash_rate": 0.02, "error_rate": 0.2}, ["error_rate", "crash_rate"]),
    ("{}", {"p95_latency_ms": 10_000}, []),  # no latency max by default
    ("{max_p95_latency_ms: 300}", {"p95_latency_ms": 301}, ["p95_latency_ms"]),
    ("{max_error_rate: 0.1, max_crash_rate: 0.001}", {"error_rate": 0.07, "crash_rate": 0.002},
     ["crash_rate"]),
])
def test_auto_rollback_defaults_and_breaches(params: str, metrics: dict[str, float],
                                             breached: list[str]) -> None:
    r = rule(f"  auto_rollback: {params}\n")
    found = r.breaches(ctx(metrics=metrics))
    assert [m for m in breached] == [d.message.split("'")[1] for d in found]
    assert all(d.code == "HEALTH_THRESHOLD_EXCEEDED" for d in found)
    assert code(r.evaluate(gate(metrics))) == ("HEALTH_THRESHOLD_EXCEEDED" if breached
                                                      else None)


def test_builtin_tls_insecure_only_towards_localhost() -> None:
    r = TlsInsecureRemote()
    local = {"exporters": {"otlp": {"endpoint": "localhost:4317", "tls": {"insecure": True}},
                           "v6": {"endpoint": "[::1]:4317", "tls": {"insecure": True}},
                           "secure": {"endpoint": "a.example:4317", "tls": {"insecure": False}}}}
    assert r.evaluate(ctx(config=local)) is None
    remote = {"exporters": {"otlp/x": {"endpoint": "https://a.example:4317",
                                       "tls": {"insecure": True}}}}
    d = r.evaluate(ctx(config=remote))
    assert d is not None and "otlp/x" in d.message and "a.example" in d.message
    assert r.evaluate(ctx(config="not a mapping")) is None


def test_builtin_exporter_removal() -> None:
    r = ExporterRemoval()
    prev = {"exporters": {"a": {}, "b": {}},
            "service": {"pipelines": {"traces": {"exporters": ["a", "b"]}}}}
    assert r.evaluate(ctx(config=prev, previous_config=prev)) is None
    removed = {"exporters": {"a": {}}, "service": {"pipelines": {"traces": {"exporters": ["a"]}}}}
    d = r.evaluate(ctx(config=removed, previous_config=prev))
    assert d is not None and "'b'" in d.message and "traces" in d.message
    unused_prev = {"exporters": {"a": {}, "b": {}},
                   "service": {"pipelines": {"traces": {"exporters": ["a"]}}}}
    assert r.evaluate(ctx(config=removed, previous_config=unused_prev)) is None
    assert r.evaluate(ctx(config=removed, previous_config=None)) is None


PREV = {"exporters": {"a": {}, "b": {}},
        "service": {"pipelines": {"traces": {"exporters": ["a"]}, "logs": {"exporters": ["b"]}}}}
ONLY_A = {"exporters": {"a": {}}, "service": {"pipelines": {"traces": {"exporters": ["a"]}}}}


@pytest.mark.parametrize(("active", "config", "previous", "denied"), [
    # the request says which exporters carry traffic: it wins over the previous config
    (["a"], ONLY_A, PREV, None),
    (["a", "b"], ONLY_A, PREV, ("'b'", "'logs'")),
    (["b"], ONLY_A, None, ("'b'", "pipeline")),
    (["c"], ONLY_A, PREV, ("'c'",)),
    # not said: fall back to the previous config's pipelines
    ([], ONLY_A, PREV, ("'b'", "'logs'")),
    (None, ONLY_A, PREV, ("'b'", "'logs'")),
    (None, PREV, PREV, None),
    (None, ONLY_A, None, None),
])
def test_builtin_exporter_removal_with_active_exporters(
        active: list[str] | None, config: Any, previous: Any,
        denied: tuple[str, ...] | None) -> None:
    agent = {} if active is None else {"id": "a1", "active_exporters": active}
    d = ExporterRemoval().evaluate(ctx(config=config, previous_config=previous, agent=agent))
    if denied is None:
        assert d is None
    else:
        assert d is not None and all(part in d.message for part in denied), d


@pytest.mark.parametrize(("text", "expected"), [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20),
                                                ("1.5 KB", 1500), (1024, 1024)])
def test_byte_quantities(text: Any, expected: int) -> None:
    r = rule(f"  device_constraints: {{min_memory: {text!r}}}\n" if isinstance(text, str)
             else f"  device_constraints: {{min_memory: {text}}}\n")
    assert r.min_memory_bytes == expected


def test_quality_gate_require_eval_blocks_until_an_evaluation_passes() -> None:
    blocking = rule("  quality_gate: {min_accuracy: 0.9}\n")
    d = blocking.evaluate(gate({}))
    assert code(d) == "QUALITY_GATE_FAILED" and d is not None
    assert "blocked until an evaluation passes" in d.message
    assert blocking.evaluate(gate({"accuracy": 0.95})) is None
    lenient = rule("  quality_gate: {min_accuracy: 0.9, max_quality_drop: 0.02,"
                   " require_eval: false}\n")
    assert lenient.evaluate(gate({})) is None            # nothing measured yet
    assert code(lenient.evaluate(gate({"accuracy": 0.5}))) == "QUALITY_GATE_FAILED"
