"""CheckPushBatch and CheckPushStream over gRPC: a rollout step in one call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer

POLICIES = """\
tenant: acme
name: step-cap
rule: {daily_cap: {max_count: 5, scope: rollout}}
---
tenant: acme
name: no-canary-label
rule:
  cel:
    deny: '"canary" in agent.labels'
    message: '"agent " + agent.id + " is a canary"'
---
tenant: acme
name: eu-only-check
match:
  agent_selector:
    match_labels: {region: eu}
rule:
  cel:
    deny: 'false'
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PdpServer]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICIES)
    s = PdpServer(tmp_path, policy_dir=policies, args=["--max-batch-agents", "50"]).start()
    yield s
    s.stop()


def batch(n: int, canary: frozenset[int] = frozenset()) -> dpb.CheckPushBatchRequest:
    return dpb.CheckPushBatchRequest(
        tenant="acme", rollout=cpb.Rollout(id="r-1", step=1, step_percent=10),
        config=cpb.Config(yaml="exporters: {otlp: {endpoint: 'localhost:4317'}}\n"),
        agents=[cpb.Agent(id=f"agent-{i}", labels={"canary": "1"} if i in canary else {})
                for i in range(n)])


def test_batch_decides_each_agent_in_order(server: PdpServer) -> None:
    with grpc.insecure_channel(server.address) as ch:
        resp = dgrpc.DecisionServiceStub(ch).CheckPushBatch(batch(8, frozenset({2})), timeout=10)
    assert [d.agent_id for d in resp.decisions] == [f"agent-{i}" for i in range(8)]
    allowed = [d.decision.outcome == cpb.OUTCOME_ALLOW for d in resp.decisions]
    # agent-2 is denied by CEL (consumes nothing); the cap of 5 takes agents 0,1,3,4,5.
    assert allowed == [True, True, False, True, True, True, False, False]
    assert (resp.allowed_count, resp.denied_count) == (5, 3)
    assert resp.decisions[2].decision.reasons[0].policy == "no-canary-label"
    assert "agent-2" in resp.decisions[2].decision.reasons[0].message
    assert resp.decisions[6].decision.reasons[0].code == cpb.REASON_CODE_DAILY_CAP_EXCEEDED
    assert len({d.decision.decision_id for d in resp.decisions}) == 8
    # The evaluated policy versions are written once for the step and named by index.
    assert len(resp.evaluated_sets) == 1 and {d.evaluated_set for d in resp.decisions} == {0}
    names = {p.name for p in resp.evaluated_sets[0].policies}
    assert {"step-cap", "no-canary-label"} <= names
    assert all(len(p.content_hash) == 71 for p in resp.evaluated_sets[0].policies)
    assert not any(d.decision.evaluated_policies for d in resp.decisions)
    with grpc.insecure_channel(server.address) as ch:
        one = dgrpc.DecisionServiceStub(ch).CheckPush(dpb.CheckPushRequest(
            tenant="acme", rollout=cpb.Rollout(id="r-2"), agent=cpb.Agent(id="solo"),
            config=cpb.Config(yaml="a: 1\n")), timeout=10)
    assert [p.name for p in one.decision.evaluated_policies] == [
        p.name for p in resp.evaluated_sets[0].policies]


def test_agents_with_other_policies_name_another_evaluated_set(server: PdpServer) -> None:
    req = batch(4)
    req.agents[1].labels["region"] = "eu"
    req.agents[3].labels["region"] = "eu"
    with grpc.insecure_channel(server.address) as ch:
        resp = dgrpc.DecisionServiceStub(ch).CheckPushBatch(req, timeout=10)
    assert [d.evaluated_set for d in resp.decisions] == [0, 1, 0, 1]
    names = [{p.name for p in s.policies} for s in resp.evaluated_sets]
    assert "eu-only-check" not in names[0] and "eu-only-check" in names[1]
    assert names[1] - names[0] == {"eu-only-check"}


@pytest.mark.parametrize(("request_", "field"), [
    (batch(51), "agents:"),
    (batch(0), "agents:"),
    (dpb.CheckPushBatchRequest(tenant="acme", agents=[cpb.Agent(id="a"), cpb.Agent()]),
     "agents[1].id:"),
    (dpb.CheckPushBatchRequest(agents=[cpb.Agent(id="a")]), "tenant:"),
])
def test_batch_invalid_arguments(server: PdpServer, request_: dpb.CheckPushBatchRequest,
                                 field: str) -> None:
    with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as err:
        dgrpc.DecisionServiceStub(ch).CheckPushBatch(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()


def test_stream_answers_each_batch_in_order(server: PdpServer) -> None:
    async def main() -> list[dpb.CheckPushStreamResponse]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)

            async def requests() -> AsyncIterator[dpb.CheckPushStreamRequest]:
                for n in (3, 4):
                    yield dpb.CheckPushStreamRequest(batch=batch(n))

            return [r async for r in stub.CheckPushStream(requests(), timeout=10)]

    first, second = asyncio.run(main())
    assert first.batch.allowed_count == 3
    assert (second.batch.allowed_count, second.batch.denied_count) == (2, 2)  # cap of 5


def test_cancelled_streams_leave_no_unretrieved_task_errors(server: PdpServer) -> None:
    """A stream cancelled after its first answer, while the server waits for the next
    request: the waiting step ends with an error nobody asked for. It is taken, so asyncio
    prints no "Task exception was never retrieved" (plain text in a JSON log), and the
    server keeps answering."""
    def one_then_cancel() -> None:
        with grpc.insecure_channel(server.address) as ch:
            call = dgrpc.DecisionServiceStub(ch).CheckPushStream(
                iter([dpb.CheckPushStreamRequest(batch=batch(1))] * 20), timeout=10)
            next(call)
            call.cancel()

    for _ in range(5):
        one_then_cancel()
    with grpc.insecure_channel(server.address) as ch:  # still serving, and a later step
        assert dgrpc.DecisionServiceStub(ch).CheckPushBatch(batch(1), timeout=10).decisions
    assert server.terminate() == 0
    assert "never retrieved" not in server.log(), server.log()[-3000:]


def test_sigterm_right_after_big_steps_loses_no_audit_record(tmp_path: Path) -> None:
    """Async durability writes a step's records after its answer; a SIGTERM straight after
    the answers still finds every decision of every step in the audit file, once, in order,
    and the chain verifies."""
    import json
    import subprocess
    import sys

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICIES)
    s = PdpServer(tmp_path, policy_dir=policies).start()
    try:
        ids: list[str] = []
        with grpc.insecure_channel(s.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            for step in range(3):
                req = batch(1000)
                for a in req.agents:
                    a.id = f"s{step}-{a.id}"
                resp = stub.CheckPushBatch(req, timeout=30)
                ids += [d.decision.decision_id for d in resp.decisions]
        assert s.proc is not None
        s.proc.send_signal(15)  # at once: the last step's records are still to be written
        assert s.proc.wait(timeout=30) == 0
    finally:
        s.stop()
    audit = s.audit_file
    lines = audit.read_text().splitlines()
    recorded = [json.loads(x)["event"]["decision_id"] for x in lines
                if json.loads(x)["event"]["type"] == "Decision"]
    assert recorded == ids
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify", str(audit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
