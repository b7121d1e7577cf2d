"""One end-to-end gRPC test per checkpoint on the embedded default (`pdp serve` with a policy
directory written by the test): a deny names the policy, the rule and the offending element."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.client import PdpClient
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from tests.support.pdpserver import PdpServer

ROOT = Path(__file__).resolve().parents[2]

POLICIES = """\
tenant: t1
name: small-steps
checkpoints: [rollout_precondition]
rule:
  max_step_percent: {max_percent: 20}
---
tenant: t1
name: accuracy-gate
checkpoints: [rollout_precondition]
rule:
  quality_gate:
    min_accuracy: 0.9
    max_quality_drop: 0.05
---
tenant: t1
name: no-debug
checkpoints: [push, auto_apply]
rule:
  cel:
    deny: type(config) == map && "exporters" in config && "debug" in config.exporters
    message: '"exporter debug is not allowed on agent " + agent.id'
---
tenant: t1
name: min-device
checkpoints: [device]
rule:
  device_constraints:
    min_os_version: {android: "10"}
    min_memory: 4GB
---
tenant: t1
name: health
rule:
  auto_rollback: {max_p95_latency_ms: 500}
"""

DEBUG = ("exporters:\n  debug: {}\nservice:\n  pipelines:\n"
         "    logs: {receivers: [otlp], exporters: [debug]}\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdpServer]:
    root = tmp_path_factory.mktemp("checkpoints")
    policy_dir = root / "policies"
    policy_dir.mkdir()
    (policy_dir / "t1.yaml").write_text(POLICIES)
    # Run this checkout's pdp (the environment's editable install may point elsewhere).
    # anonymous callers here may record events too: EvaluateHealth then records a breach
    srv = PdpServer(root, policy_dir=policy_dir, env={"PYTHONPATH": str(ROOT)},
                    args=["--auth-anonymous-roles", "*:rollout-engine"]).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server: PdpServer) -> Iterator[PdpClient]:
    with PdpClient(server.address, timeout=5) as c:
        yield c


def _deny(d: cpb.Decision, policy: str, rule: str, *elements: str) -> None:
    assert d.outcome == cpb.OUTCOME_DENY, d
    [r] = [r for r in d.reasons if r.policy == policy]
    assert r.rule == rule
    for e in elements:
        assert e in r.message, r.message


def test_check_rollout(client: PdpClient) -> None:
    rollout = cpb.Rollout(id="r1", step=2, step_percent=50, previous_step_percent=10)
    d = client.stub.CheckRollout(dpb.CheckRolloutRequest(
        tenant="t1", rollout=rollout, metrics={"accuracy": 0.95, "baseline/accuracy": 0.96}),
        timeout=5).decision
    _deny(d, "small-steps", "max_step_percent", "10%", "50%", "20%")
    assert [r.policy for r in d.reasons] == ["small-steps"]
    ok = cpb.Rollout(id="r1", step=2, step_percent=30, previous_step_percent=10)
    d = client.stub.CheckRollout(dpb.CheckRolloutRequest(
        tenant="t1", rollout=ok, metrics={"accuracy": 0.95, "baseline/accuracy": 0.96}),
        timeout=5).decision
    assert d.outcome == cpb.OUTCOME_ALLOW, d
    d = client.stub.CheckRollout(dpb.CheckRolloutRequest(
        tenant="t1", rollout=ok, metrics={"accuracy": 0.85, "baseline/accuracy": 0.96}),
        timeout=5).decision
    _deny(d, "accuracy-gate", "quality_gate", "'accuracy'")


@pytest.mark.parametrize("checkpoint", [cpb.CHECKPOINT_PUSH, cpb.CHECKPOINT_AUTO_APPLY])
def test_check_push_and_auto_apply(client: PdpClient, checkpoint: int) -> None:
    req = dpb.CheckPushRequest(tenant="t1", checkpoint=checkpoint, agent=cpb.Agent(id="ag-1"),
                               config=cpb.Config(yaml=DEBUG))
    d = client.stub.CheckPush(req, timeout=5).decision
    _deny(d, "no-debug", "cel", "debug", "ag-1")
    assert d.checkpoint == checkpoint


def test_check_push_exporter_removal_uses_active_exporters(client: PdpClient) -> None:
    new = "exporters:\n  otlp: {endpoint: localhost:4317}\n"
    req = dpb.CheckPushRequest(
        tenant="t1", agent=cpb.Agent(id="ag-1", active_exporters=["otlp", "otlp/eu"]),
        config=cpb.Config(yaml=new), previous_config=cpb.Config(yaml=(
            "exporters:\n  otlp: {}\n  otlp/eu: {}\nservice:\n  pipelines:\n"
            "    metrics: {receivers: [x], exporters: [otlp/eu]}\n")))
    d = client.stub.CheckPush(req, timeout=5).decision
    _deny(d, "default-deny-exporter-removal", "builtin_exporter_removal", "'otlp/eu'",
          "'metrics'")


def test_check_device(client: PdpClient) -> None:
    device = cpb.Device(id="dev-1", platform="android", os_version="9.0",
                        memory_bytes=8_000_000_000)
    d = client.stub.CheckDevice(dpb.CheckDeviceRequest(tenant="t1", device=device),
                                timeout=5).decision
    _deny(d, "min-device", "device_constraints", "android", "9.0", "10")


def test_evaluate_health_rollback_feeds_rollback_rate(client: PdpClient,
                                                      server: PdpServer) -> None:
    ok = client.stub.EvaluateHealth(dpb.EvaluateHealthRequest(
        tenant="t1", rollout=cpb.Rollout(id="r9"),
        metrics={"error_rate": 0.04, "crash_rate": 0.0, "p95_latency_ms": 120}), timeout=5)
    assert not ok.rollback and not ok.reasons
    bad = client.stub.EvaluateHealth(dpb.EvaluateHealthRequest(
        tenant="t1", rollout=cpb.Rollout(id="r9"),
        metrics={"error_rate": 0.06, "crash_rate": 0.02, "p95_latency_ms": 900}), timeout=5)
    assert bad.rollback
    assert {r.policy for r in bad.reasons} == {"health"}
    assert {r.rule for r in bad.reasons} == {"auto_rollback"}
    messages = " | ".join(r.message for r in bad.reasons)
    for metric in ("'error_rate'", "'crash_rate'", "'p95_latency_ms'"):
        assert metric in messages
    # the ROLLBACK verdict is recorded as a rollback event (tenant and rollout scope)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = _audit_events(server.audit_file)
        found = [e for e in events if e.get("type") == "Rollout.Event"
                 and e.get("kind") == "ROLLBACK" and e.get("tenant") == "t1"]
        if found:
            assert found[0]["scope_keys"] == ["tenant", "rollout:r9"]
            return
        time.sleep(0.1)
    pytest.fail("no Rollout.Event ROLLBACK in the audit log")


def test_a_checkers_evaluate_health_records_no_rollback(tmp_path: Path) -> None:
    """Recording a rollback feeds rollback_rate (it can stop rollouts): like RecordEvent, it
    needs the permission to record events; a checker gets the verdict only."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "t1.yaml").write_text(POLICIES)
    srv = PdpServer(tmp_path, policy_dir=tmp_path / "policies",
                    env={"PYTHONPATH": str(ROOT)}).start()  # anonymous: *:checker
    try:
        with PdpClient(srv.address) as c:
            bad = c.stub.EvaluateHealth(dpb.EvaluateHealthRequest(
                tenant="t1", rollout=cpb.Rollout(id="r9"),
                metrics={"error_rate": 0.06, "crash_rate": 0.02, "p95_latency_ms": 900}),
                timeout=5)
        assert bad.rollback
        assert srv.terminate() == 0  # the audit flushed
    finally:
        srv.stop()
    events = _audit_events(srv.audit_file)
    health = [e for e in events if e.get("type") == "Rollout.HealthEvaluated"]
    assert health and health[0]["rollback"] is True and health[0]["rollback_recorded"] is False
    assert not [e for e in events if e.get("type") == "Rollout.Event"]


def _audit_events(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        out.append(event.get("event", event) if isinstance(event, dict) else {})
    return out
