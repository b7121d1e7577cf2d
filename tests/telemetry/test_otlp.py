"""Spans and metrics reach a real OTLP/gRPC receiver, parented on the caller's trace."""

from __future__ import annotations

import asyncio

import pytest

from pdp.telemetry import Telemetry, TelemetrySettings
from tests.telemetry.conftest import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def telemetry(otlp_receiver: OtlpReceiver) -> Telemetry:
    return Telemetry(TelemetrySettings(
        enabled=True, otlp_endpoint=otlp_receiver.endpoint, span_export_delay_s=0.05,
        metric_export_interval_s=60, service_name="pdp-test"))


async def test_spans_carry_callers_trace(telemetry: Telemetry, otlp_receiver: OtlpReceiver) -> None:
    telemetry.start()
    try:
        # gRPC metadata as the server sees it: lower-case keys, plus unrelated entries
        metadata = {"traceparent": TRACEPARENT, "tracestate": "vendor=x",
                    "authorization": "Bearer t", "user-agent": "grpc-python"}

        async def decide() -> None:
            with telemetry.decision_span("pdp.CheckPush", metadata,
                                         {"pdp.tenant": "acme", "pdp.checkpoint": "push"}) as span:
                with telemetry.policy_span("no-insecure-tls"):
                    await asyncio.sleep(0)
                with telemetry.policy_span("max-daily"):
                    pass
                with telemetry.counter_span():
                    await asyncio.sleep(0)
                span.set_attribute("pdp.outcome", "deny")

        await decide()
        # a decision without trace context starts a trace of its own
        with telemetry.decision_span("pdp.CheckDevice", {}):
            pass
        assert telemetry.force_flush(10)
    finally:
        telemetry.shutdown()

    spans = otlp_receiver.spans()
    by_name: dict[str, list[object]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (decision,) = [s for s in spans if s.name == "pdp.CheckPush"]
    assert decision.trace_id.hex() == TRACE_ID
    assert decision.parent_span_id.hex() == PARENT_ID
    assert decision.kind == decision.SPAN_KIND_SERVER
    attrs = {a.key: a.value.string_value for a in decision.attributes}
    assert attrs == {"pdp.tenant": "acme", "pdp.checkpoint": "push", "pdp.outcome": "deny"}
    assert decision.trace_state == "vendor=x"

    children = [s for s in spans if s.name in ("pdp.policy", "pdp.counters.reserve")]
    assert len(children) == 3
    for c in children:
        assert c.trace_id.hex() == TRACE_ID
        assert c.parent_span_id == decision.span_id
    policies = sorted(a.value.string_value for c in children for a in c.attributes
                      if a.key == "pdp.policy")
    assert policies == ["max-daily", "no-insecure-tls"]

    (other,) = [s for s in spans if s.name == "pdp.CheckDevice"]
    assert other.trace_id.hex() != TRACE_ID and not other.parent_span_id

    # resource names the service
    req = otlp_receiver.trace_requests[0]
    res = {a.key: a.value.string_value for a in req.resource_spans[0].resource.attributes}
    assert res["service.name"] == "pdp-test"


async def test_exception_marks_span_error(
    telemetry: Telemetry, otlp_receiver: OtlpReceiver
) -> None:
    telemetry.start()
    try:
        with pytest.raises(RuntimeError), \
                telemetry.decision_span("pdp.CheckPush", {"traceparent": TRACEPARENT}):
            raise RuntimeError("engine bug")
        telemetry.force_flush(10)
    finally:
        telemetry.shutdown()
    (span,) = otlp_receiver.spans()
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert any(e.name == "exception" for e in span.events)


def test_malformed_traceparent_starts_new_trace(
    telemetry: Telemetry, otlp_receiver: OtlpReceiver
) -> None:
    telemetry.start()
    try:
        with telemetry.decision_span("d", {"traceparent": "garbage"}) as span:
            assert span.get_span_context().is_valid
        telemetry.force_flush(10)
    finally:
        telemetry.shutdown()
    (s,) = otlp_receiver.spans()
    assert not s.parent_span_id


def test_metrics_exported_over_otlp(
    telemetry: Telemetry, otlp_receiver: OtlpReceiver
) -> None:
    telemetry.observe_cache(lambda: (9, 1))
    telemetry.observe_audit(lambda: 2, lambda: 0)
    telemetry.start()
    try:
        telemetry.record_decision("allow", "acme", "push", 0.0004)
        telemetry.record_deadline_exceeded("acme", "push")
        telemetry.record_counter_error("acme")
        assert telemetry.force_flush(10)
    finally:
        telemetry.shutdown()
    names = otlp_receiver.metric_names()
    assert {"pdp.decisions", "pdp.decision.duration", "pdp.deadline_exceeded",
            "pdp.counter_store.errors", "pdp.cel.cache.hit_ratio",
            "pdp.audit.queue_depth", "pdp.audit.spooled_events"} <= names
