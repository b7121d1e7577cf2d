"""Notifications through the real server: an active deny reaches the policy's webhook."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.notify.conftest import HttpReceiver
from tests.support.pdpserver import PdpServer


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
    server = PdpServer(tmp_path, policy_dir=policies).start()
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
