"""Notifications through the real server: an active deny reaches the policy's webhook."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.notify.conftest import HttpReceiver, SmtpSink
from tests.support.pdpserver import PdpServer
from tests.support.procs import redis_server

# A generous decision deadline: on a busy machine a decision past 50 ms is a deny without
# the policy's reason, which notifies nobody (these tests are about delivery, not time).
ROOMY = ["--deadline-ms", "10000"]


def test_active_deny_is_posted_signed_and_drafts_are_not(tmp_path: Path,
                                                         http_receiver: HttpReceiver) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    hook = http_receiver.url("/hook")
    (policies / "p.yaml").write_text(f"""\
tenant: acme
name: no-debug
notify:
  - webhook: {{url: "{hook}", secret: s3cret}}
rule: {{cel: {{deny: '"debug" in config.exporters'}}}}
---
tenant: acme
name: draft-says-no
status: draft
notify:
  - webhook: {{url: "{hook}", secret: s3cret}}
rule: {{cel: {{deny: 'true'}}}}
""")
    server = PdpServer(tmp_path, policy_dir=policies, args=ROOMY).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            ok = stub.CheckPush(push_request("acme", "a1", config_yaml="exporters: {}"),
                                timeout=5).decision
            denied = stub.CheckPush(push_request("acme", "a2",
                                                 config_yaml="exporters: {debug: {}}"),
                                    timeout=5).decision
        assert ok.outcome == cpb.OUTCOME_ALLOW and denied.outcome == cpb.OUTCOME_DENY
        [got] = http_receiver.wait_for(1, "/hook")
        sig = hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
        assert got.headers["x-pdp-signature"] == f"sha256={sig}"
        body = got.json()
        assert denied.decision_id in got.body.decode()
        assert "no-debug" in str(body)
        assert server.terminate() == 0
    finally:
        server.stop()
    assert len(http_receiver.on("/hook")) == 1  # the draft's would-deny sent nothing


def test_one_email_per_day_per_policy_across_two_servers(tmp_path: Path,
                                                         smtp_sink: SmtpSink) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text("""\
tenant: acme
name: no-debug
notify:
  - email: {to: [oncall@example.com]}
rule: {cel: {deny: '"debug" in config.exporters'}}
""")
    with redis_server() as redis:
        args = ["--redis-url", redis.url, "--notify-smtp-port", str(smtp_sink.port), *ROOMY]
        servers = []
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            servers.append(PdpServer(tmp_path / name, policy_dir=policies, args=args).start())
        try:
            for server in servers:
                with grpc.insecure_channel(server.address) as ch:
                    stub = dgrpc.DecisionServiceStub(ch)
                    for i in range(5):
                        d = stub.CheckPush(push_request(
                            "acme", f"a{i}", config_yaml="exporters: {debug: {}}"),
                            timeout=5).decision
                        assert d.outcome == cpb.OUTCOME_DENY
            for server in servers:  # a clean stop drains the notification queue
                assert server.terminate() == 0
        finally:
            for server in servers:
                server.stop()
    assert len(smtp_sink.messages) == 1
    assert "no-debug" in smtp_sink.messages[0]["Subject"]
    assert smtp_sink.envelopes[0][1] == ["oncall@example.com"]


def test_notification_log_lines_carry_the_callers_trace_id(tmp_path: Path,
                                                           http_receiver: HttpReceiver) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(f"""\
tenant: acme
name: no-debug
notify:
  - webhook: {{url: "{http_receiver.url('/hook')}", secret: s3cret}}
rule: {{cel: {{deny: '"debug" in config.exporters'}}}}
""")
    server = PdpServer(tmp_path, policy_dir=policies,
                       args=["--telemetry-enabled", "true", *ROOMY]).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            d = dgrpc.DecisionServiceStub(ch).CheckPush(
                push_request("acme", "a1", config_yaml="exporters: {debug: {}}"), timeout=5,
                metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)).decision
        http_receiver.wait_for(1, "/hook")
        assert server.terminate() == 0
    finally:
        server.stop()
    [sent] = [ln for ln in server.log().splitlines() if '"notification sent"' in ln]
    assert trace_id in sent and d.decision_id in sent
