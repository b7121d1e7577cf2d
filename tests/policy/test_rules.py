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


def ctx(now: datetime | None = None, **activation: Any) -> EvalContext:
    return EvalContext("t", Checkpoint.PUSH, now or datetime(2026, 11, 23, 12, tzinfo=UTC),
                       activation)


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


def test_max_step_percent() -> None:
    r = rule("  max_step_percent: {max_percent: 25}\n")
    assert r.evaluate(ctx(rollout={"step_percent": 25.0})) is None
    assert code(r.evaluate(ctx(rollout={"step_percent": 25.5}))) == "STEP_TOO_LARGE"
    assert r.evaluate(ctx(rollout={})) is None


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
    assert latest.evaluate(ctx(metrics={"accuracy": 0.95, "latency_ms": 150})) is None
    assert code(latest.evaluate(ctx(metrics={"accuracy": 0.85, "latency_ms": 150}))) == \
        "QUALITY_GATE_FAILED"
    assert code(latest.evaluate(ctx(metrics={"latency_ms": 150}))) == "QUALITY_GATE_FAILED"
    fine = rule("  quality_gate:\n    scope: fine_grained\n    min_accuracy: 0.9\n")
    ok = {"accuracy/eu": 0.95, "accuracy/us": 0.91}
    assert fine.evaluate(ctx(metrics=ok)) is None
    assert code(fine.evaluate(ctx(metrics={**ok, "accuracy/apac": 0.8}))) == \
        "QUALITY_GATE_FAILED"


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


@pytest.mark.parametrize(("text", "expected"), [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20),
                                                ("1.5 KB", 1500), (1024, 1024)])
def test_byte_quantities(text: Any, expected: int) -> None:
    r = rule(f"  device_constraints: {{min_memory: {text!r}}}\n" if isinstance(text, str)
             else f"  device_constraints: {{min_memory: {text}}}\n")
    assert r.min_memory_bytes == expected
