"""Telemetry through the real server: the caller's trace reaches OTLP; Prometheus scrapes."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc

from pdp.client import push_request
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
