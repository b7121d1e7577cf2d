from __future__ import annotations

import io
import json
from typing import Any

import structlog
from opentelemetry.trace import INVALID_SPAN

from pdp.telemetry import (
    NO_TELEMETRY,
    DecisionTelemetry,
    NoTelemetry,
    Telemetry,
    TelemetrySettings,
    add_trace_ids,
    create_telemetry,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_factory() -> None:
    off = create_telemetry(TelemetrySettings())
    assert off is NO_TELEMETRY and isinstance(off, NoTelemetry) and not off.enabled
    on = create_telemetry(TelemetrySettings(enabled=True))
    assert isinstance(on, Telemetry) and on.enabled
    on.shutdown()
    assert isinstance(off, DecisionTelemetry) and isinstance(on, DecisionTelemetry)


def test_noop_is_shared_and_inert() -> None:
    t = NoTelemetry()
    cm = t.decision_span("d", {"traceparent": TRACEPARENT}, {"a": 1})
    assert cm is t.policy_span("p") is t.counter_span()  # one shared object, no allocation
    with cm as span, t.policy_span("p") as inner:  # nesting the same manager is fine
        assert span is INVALID_SPAN and inner is INVALID_SPAN
        span.set_attribute("pdp.outcome", "deny")  # callers may set attributes regardless
        assert add_trace_ids(None, "info", {}) == {}  # no ids: nothing is recording
    t.record_decision("allow", "t", "push", 0.1)
    t.record_deadline_exceeded("t", "push")
    t.record_counter_error("t")
    t.observe_cache(lambda: (1, 1))
    t.observe_audit(lambda: 1, lambda: 1)
    t.observe_notifications(dict)
    t.start()
    t.shutdown()


def test_log_lines_carry_trace_and_decision_ids() -> None:
    out = io.StringIO()
    structlog.reset_defaults()  # another test may have left a level filter configured
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, add_trace_ids,
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        tel = Telemetry(TelemetrySettings(enabled=True))
        log = structlog.get_logger("t")
        with structlog.contextvars.bound_contextvars(decision_id="d-42"), \
                tel.decision_span("pdp.CheckPush", {"traceparent": TRACEPARENT}) as span:
            log.info("evaluating")
            with tel.policy_span("p") as child:
                log.info("policy denied")
        log.info("outside")
        tel.shutdown()
    finally:
        structlog.reset_defaults()
    lines: list[dict[str, Any]] = [json.loads(x) for x in out.getvalue().splitlines()]
    first, second, outside = lines
    assert first["decision_id"] == "d-42"
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["span_id"] == format(span.get_span_context().span_id, "016x")
    assert second["trace_id"] == first["trace_id"]
    assert second["span_id"] == format(child.get_span_context().span_id, "016x")
    assert "trace_id" not in outside and "span_id" not in outside


def test_existing_ids_are_kept() -> None:
    tel = Telemetry(TelemetrySettings(enabled=True))
    with tel.decision_span("d", {"traceparent": TRACEPARENT}):
        ev = add_trace_ids(None, "info", {"trace_id": "given"})
    assert ev["trace_id"] == "given" and len(ev["span_id"]) == 16
    tel.shutdown()


def test_policy_spans_can_be_turned_off() -> None:
    tel = Telemetry(TelemetrySettings(enabled=True, policy_spans=False))
    with tel.decision_span("d", {"traceparent": TRACEPARENT}) as span:
        assert span.is_recording()
        with tel.policy_span("p") as p:
            assert p is INVALID_SPAN
        with tel.counter_span() as c:
            assert c.is_recording()
    tel.shutdown()


def test_sampling_honours_caller_and_ratio() -> None:
    tel = Telemetry(TelemetrySettings(enabled=True, sample_ratio=0.0))
    with tel.decision_span("d", {}) as span:
        assert not span.is_recording()  # new trace, ratio 0
    with tel.decision_span("d", {"traceparent": TRACEPARENT}) as span:
        assert span.is_recording()  # the caller sampled it
    unsampled = TRACEPARENT[:-2] + "00"
    full = Telemetry(TelemetrySettings(enabled=True))
    with full.decision_span("d", {"traceparent": unsampled}) as span:
        assert not span.is_recording()  # the caller did not
        # ...but logs still carry the caller's trace id
        assert add_trace_ids(None, "info", {})["trace_id"] == TRACEPARENT[3:35]
    tel.shutdown()
    full.shutdown()


def test_bench_runs() -> None:
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    telemetry_bench: Any = importlib.import_module("telemetry_bench")

    r = telemetry_bench.run(n=250, policies=2, block=50)
    assert set(r) == set(telemetry_bench.LABELS) and all(v > 0 for v in r.values())
