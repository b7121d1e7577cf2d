"""Telemetry through the real server: the caller's trace reaches OTLP; Prometheus scrapes."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.procs import free_port
from tests.telemetry.conftest import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_spans_metrics_and_trace_context(tmp_path: Path, otlp_receiver: OtlpReceiver) -> None:
    prom = free_port()
    server = PdpServer(tmp_path, args=["--telemetry-enabled", "true", "--otlp-endpoint",
                                       otlp_receiver.endpoint, "--prometheus-port", str(prom)])
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            d = stub.CheckPush(push_request("acme", "a1", config_yaml="a: 1"), timeout=5,
                               metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT}-01"),)
                               ).decision
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=5).read()
        text = scrape.decode()
        for name in ("pdp_decisions_total", "pdp_decision_duration_seconds",
                     "pdp_cel_cache_hit_ratio", "pdp_audit_queue_depth"):
            assert name in text, name
        assert server.terminate() == 0  # shutdown flushes the exporters
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not otlp_receiver.spans():
        time.sleep(0.1)
    spans = otlp_receiver.spans()
    decision = [s for s in spans if s.trace_id.hex() == TRACE_ID and
                s.parent_span_id.hex() == PARENT]
    assert decision, [s.name for s in spans]
    children = [s for s in spans if s.parent_span_id == decision[0].span_id]
    assert children  # one per evaluated policy (the built-ins at least)
    attrs = {a.key: a.value.string_value for a in decision[0].attributes}
    assert attrs.get("pdp.decision_id") == d.decision_id
    # the decision's log line carries the caller's trace id next to the decision id
    assert any(TRACE_ID in line and d.decision_id in line
               for line in server.log().splitlines())


STREAM_PARENT = "b7ad6b7169203331"
CANARY_POLICY = """\
tenant: acme
name: no-canary-label
rule: {cel: {deny: '"canary" in agent.labels'}}
"""


def step(n: int, canary: set[int]) -> dpb.CheckPushBatchRequest:
    return dpb.CheckPushBatchRequest(
        tenant="acme", config=cpb.Config(yaml="a: 1"),
        agents=[cpb.Agent(id=f"agent-{i}", labels={"canary": "1"} if i in canary else {})
                for i in range(n)])


def test_steps_export_spans_in_the_callers_trace(tmp_path: Path,
                                                 otlp_receiver: OtlpReceiver) -> None:
    """CheckPushBatch: one span for the step; CheckPushStream: one per message. Each has
    the step's size and counts; the step's log lines carry the caller's trace id."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(CANARY_POLICY)
    server = PdpServer(tmp_path, policy_dir=policies, args=[
        "--telemetry-enabled", "true", "--otlp-endpoint", otlp_receiver.endpoint])
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            resp = stub.CheckPushBatch(step(4, {1}), timeout=5, metadata=(
                ("traceparent", f"00-{TRACE_ID}-{PARENT}-01"),))
            assert (resp.allowed_count, resp.denied_count) == (3, 1)
            answers = list(stub.CheckPushStream(
                iter([dpb.CheckPushStreamRequest(batch=step(2, set())),
                      dpb.CheckPushStreamRequest(batch=step(3, {0, 2}))]),
                timeout=5, metadata=(("traceparent", f"00-{TRACE_ID}-{STREAM_PARENT}-01"),)))
            assert len(answers) == 2
        assert server.terminate() == 0  # shutdown flushes the exporters
    finally:
        server.stop()
    deadline = time.monotonic() + 10

    def steps() -> list[Any]:
        return [s for s in otlp_receiver.spans()
                if s.name == "pdp.push_step" and s.trace_id.hex() == TRACE_ID]

    while time.monotonic() < deadline and len(steps()) < 3:
        time.sleep(0.1)

    def counts(span: Any) -> tuple[int, int, int]:
        a = {x.key: x.value.int_value for x in span.attributes}
        return a["pdp.step.size"], a["pdp.step.allowed"], a["pdp.step.denied"]

    [batch] = [s for s in steps() if s.parent_span_id.hex() == PARENT]
    assert counts(batch) == (4, 3, 1)
    streamed = [s for s in steps() if s.parent_span_id.hex() == STREAM_PARENT]
    assert sorted(counts(s) for s in streamed) == [(2, 2, 0), (3, 1, 2)]
    lines = server.log().splitlines()
    denied = [ln for ln in lines if '"decision_denied"' in ln]
    assert len(denied) == 3 and all(TRACE_ID in ln for ln in denied)
    step_lines = [ln for ln in lines if '"event": "step"' in ln]
    assert len(step_lines) == 3 and all(TRACE_ID in ln for ln in step_lines)
