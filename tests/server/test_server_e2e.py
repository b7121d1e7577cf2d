"""End to end: the real `pdp serve` process, the real client, the real `pdp` command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pdp.client import AsyncPdpClient, PdpClient, push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.auditlog import wait_for_events
from tests.support.pdpserver import ROOT, PdpServer

EXAMPLES = ROOT / "examples" / "requests"
SAFE_CONFIG = (ROOT / "examples" / "configs" / "collector.yaml").read_text()


def audit_records(path: Path) -> list[dict[str, object]]:
    records = []
    for f in sorted(path.parent.glob("audit*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return records


def decision_events(path: Path) -> list[dict[str, object]]:
    out = []
    for r in audit_records(path):
        event = r["event"]
        assert isinstance(event, dict)
        if event.get("type") == "Decision":
            out.append(event)
    return out


def test_health_reports_serving(pdp_server: PdpServer) -> None:
    with PdpClient(pdp_server.address) as client:
        assert client.health() == "SERVING"
        assert client.health("pdp.v1.DecisionService") == "SERVING"
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "health", "--address",
                          pdp_server.address], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "SERVING"


def test_reflection_lists_the_services(pdp_server: PdpServer) -> None:
    with grpc.insecure_channel(pdp_server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"pdp.v1.DecisionService", "pdp.v1.PolicyAdminService", "pdp.v1.AuditService",
            "grpc.health.v1.Health"} <= names


def test_allow_and_deny_with_reasons_and_audit(pdp_server: PdpServer) -> None:
    with PdpClient(pdp_server.address) as client:
        allowed = client.check_push("acme", "agent-1", config_yaml=SAFE_CONFIG,
                                    agent_labels={"env": "prod"},
                                    change={"subject": "otel-collector"})
        denied = client.check_push(
            "acme", "agent-2", agent_labels={"env": "prod"}, change={"subject": "otel-collector"},
            config_yaml="exporters:\n  debug: {}\n")
    assert allowed.allowed and not allowed.reasons and allowed.decision_id
    assert not denied.allowed
    assert [r.policy for r in denied.reasons] == ["no-debug-exporter-in-prod"]
    assert denied.reasons[0].code == "POLICY_DENIED"
    assert "agent-2" in denied.reasons[0].message
    assert denied.decision_id != allowed.decision_id
    # the draft reports a would-deny for the allowed config? it has a batch processor: no.
    assert not allowed.shadow_denies
    pdp_server.terminate()
    events = {e["decision_id"]: e for e in decision_events(pdp_server.audit_file)}
    assert events[allowed.decision_id]["allowed"] is True
    assert events[denied.decision_id]["allowed"] is False


def test_draft_policy_reports_would_deny_without_blocking(pdp_server: PdpServer) -> None:
    config = ("exporters:\n  otlp: {endpoint: localhost:4317}\nservice:\n  pipelines:\n"
              "    traces: {receivers: [otlp], processors: [], exporters: [otlp]}\n")
    with PdpClient(pdp_server.address) as client:
        d = client.check_push("acme", "agent-3", config_yaml=config)
    assert d.allowed
    assert d.shadow_denies == []  # drafts are evaluated after the answer, into the audit
    [would] = wait_for_events(pdp_server.audit_file,
                              lambda e: e.get("type") == "Policy.WouldDeny"
                              and e.get("decision_id") == d.decision_id)
    assert would["policy"] == "require-batch-processor"


@pytest.mark.parametrize(("name", "expected_exit", "policy"), [
    ("push-allow.yaml", 0, None),
    ("push-deny-tls-insecure.yaml", 1, "default-deny-tls-insecure-on-non-localhost"),
    ("push-deny-debug-exporter-in-prod.yaml", 1, "no-debug-exporter-in-prod"),
    ("push-deny-step-too-large.yaml", 1, "small-steps"),
])
def test_pdp_check_on_the_examples(pdp_server: PdpServer, name: str, expected_exit: int,
                                   policy: str | None) -> None:
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "check", "--address",
                          pdp_server.address, str(EXAMPLES / name)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == expected_exit, out.stdout + out.stderr
    assert out.stdout.startswith("ALLOW" if expected_exit == 0 else "DENY")
    if policy:
        assert policy in out.stdout


def test_pdp_check_exit_2_when_no_server() -> None:
    from tests.support.procs import free_port

    out = subprocess.run([sys.executable, "-m", "pdp.cli", "check", "--address",
                          f"127.0.0.1:{free_port()}", "--timeout", "1",
                          str(EXAMPLES / "push-allow.yaml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "UNAVAILABLE" in out.stderr


@pytest.mark.parametrize(("request_", "field"), [
    (push_request("", "agent-1", config_yaml="a: 1"), "tenant"),
    (push_request("acme", "", config_yaml="a: 1"), "agent.id"),
    (dpb.CheckPushRequest(tenant="acme"), "agent.id"),
    (push_request("acme", "agent-1", config_yaml="exporters: [unclosed"), "config.yaml"),
    (push_request("acme", "agent-1", config_yaml="a: 1",
                  previous_config_yaml="a: b: c"), "previous_config.yaml"),
    (push_request("bad tenant!", "agent-1"), "tenant"),
    (push_request("acme", "agent-1", override=("bob", "why")), "override.actor"),
])
def test_invalid_argument_names_the_field(pdp_server: PdpServer, request_: dpb.CheckPushRequest,
                                          field: str) -> None:
    with grpc.insecure_channel(pdp_server.address) as ch, pytest.raises(grpc.RpcError) as err:
        dgrpc.DecisionServiceStub(ch).CheckPush(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def _nan_step() -> dpb.CheckPushRequest:
    req = push_request("acme", "agent-1", config_yaml="a: 1")
    req.rollout.step_percent = float("nan")
    return req


def test_non_finite_numbers_are_refused(pdp_server: PdpServer) -> None:
    """NaN compares false against every bound, so it must be refused explicitly rather than
    slip past a range check (or a gate threshold) and reach the policies and the audit log."""
    with grpc.insecure_channel(pdp_server.address) as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.CheckPush(_nan_step(), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("rollout.step_percent:")
        for bad in (float("nan"), float("inf")):
            with pytest.raises(grpc.RpcError) as err:
                stub.CheckRollout(dpb.CheckRolloutRequest(
                    tenant="acme", rollout=cpb.Rollout(id="r-1"),
                    metrics={"accuracy": bad}), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("metrics[accuracy]:"), err.value.details()


def test_async_client(pdp_server: PdpServer) -> None:
    async def main() -> list[bool]:
        async with AsyncPdpClient(pdp_server.address) as client:
            results = await asyncio.gather(*[
                client.check_push("acme", f"agent-{i}", config_yaml=SAFE_CONFIG)
                for i in range(20)])
            return [r.allowed for r in results]

    assert asyncio.run(main()) == [True] * 20


def test_unix_socket_listener(tmp_path: Path) -> None:
    sock = tmp_path / "pdp.sock"
    server = PdpServer(tmp_path, args=["--unix-socket", str(sock)]).start()
    try:
        with PdpClient(f"unix:{sock}") as client:
            assert client.health() == "SERVING"
            assert client.check_push("acme", "agent-1", config_yaml=SAFE_CONFIG).allowed
    finally:
        server.stop()


@pytest.mark.parametrize(("config", "what"), [
    ("", "got empty"), ("just a string", "got a str"), ("[1, 2]", "got a list")])
def test_a_push_without_a_mapping_config_is_denied_with_a_reason(
        pdp_server: PdpServer, config: str, what: str) -> None:
    """Over the wire: an empty or scalar config is never an allow."""
    with PdpClient(pdp_server.address) as client:
        d = client.check_push("acme", "agent-9", config_yaml=config)
    assert not d.allowed
    assert [(r.code, what in r.message) for r in d.reasons] == [("INVALID_CONFIG", True)]


def test_a_typo_in_the_tenant_is_denied_not_decided_by_the_builtins(
        pdp_server: PdpServer) -> None:
    with PdpClient(pdp_server.address) as client:
        d = client.check_push("aume", "agent-1", config_yaml="exporters: {}\n")
    assert not d.allowed and d.reasons[0].code == "UNKNOWN_TENANT"
    assert "'aume'" in d.reasons[0].message
