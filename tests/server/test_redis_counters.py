"""Counters in Redis, through real `pdp serve` processes sharing one real redis-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pdp.client import push_request
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.auditlog import wait_for_events
from tests.support.pdpserver import PdpServer
from tests.support.procs import RedisServer, redis_exe

POLICY = "tenant: acme\nname: rollout-cap\nrule: {daily_cap: {max_count: 10, scope: rollout}}\n"


def start_servers(tmp_path: Path, redis: RedisServer, n: int,
                  *extra: str) -> list[PdpServer]:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "cap.yaml").write_text(POLICY)
    servers = []
    for i in range(n):
        work = tmp_path / f"s{i}"
        work.mkdir()
        servers.append(PdpServer(work, policy_dir=policies,
                                 args=["--redis-url", redis.url, *extra]).start(wait=False))
    for s in servers:
        s.wait_serving()
    return servers


def test_four_servers_64_callers_race_for_a_cap_of_10(tmp_path: Path,
                                                      redis: RedisServer) -> None:
    # Generous budgets: this test is about atomicity on a loaded 2-core machine, not latency.
    servers = start_servers(tmp_path, redis, 4, "--deadline-ms", "2000",
                            "--redis-timeout-ms", "1000")
    try:
        async def round_(rollout: str) -> int:
            channels = [grpc.aio.insecure_channel(s.address) for s in servers]
            stubs = [dgrpc.DecisionServiceStub(ch) for ch in channels]
            try:
                reqs = [push_request("acme", f"agent-{i}", config_yaml="a: 1",
                                     rollout={"id": rollout}) for i in range(64)]
                resps = await asyncio.gather(*[stubs[i % 4].CheckPush(r, timeout=10)
                                               for i, r in enumerate(reqs)])
            finally:
                for ch in channels:
                    await ch.close()
            denied = [r.decision for r in resps if r.decision.outcome != cpb.OUTCOME_ALLOW]
            codes = {cpb.ReasonCode.Name(d.reasons[0].code) for d in denied}
            assert codes == {"REASON_CODE_DAILY_CAP_EXCEEDED"}, codes
            return 64 - len(denied)

        for n in range(20):
            assert asyncio.run(round_(f"rollout-{n}")) == 10
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A Redis that keeps its data across a restart (append-only file, fsync always)."""
    server = RedisServer(None, "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        yield server
    finally:
        server.close()


def _asker(stub: dgrpc.DecisionServiceStub) -> Callable[[], cpb.Decision]:
    counter = iter(range(10**6))

    def ask() -> cpb.Decision:
        r = stub.CheckPush(push_request("acme", "a", config_yaml="a: 1",
                                        rollout={"id": f"r{next(counter)}"}), timeout=10)
        return r.decision
    return ask


def _poll(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_redis_outage_denies_within_the_deadline_and_recovers(
        tmp_path: Path, durable_redis: RedisServer) -> None:
    [server] = start_servers(tmp_path, durable_redis, 1)
    try:
        with grpc.insecure_channel(server.address) as ch:
            ask = _asker(dgrpc.DecisionServiceStub(ch))
            assert ask().outcome == cpb.OUTCOME_ALLOW
            durable_redis.kill()
            for decision in [ask() for _ in range(30)]:
                assert decision.outcome == cpb.OUTCOME_DENY
                assert decision.reasons[0].code == cpb.REASON_CODE_COUNTER_STORE_UNAVAILABLE
            durable_redis.start()  # with its data: the counters are where they were
            _poll(lambda: ask().outcome == cpb.OUTCOME_ALLOW, "allows to resume")
        assert server.proc is not None and server.proc.poll() is None  # stayed up
    finally:
        server.stop()


def test_redis_restart_without_its_data_denies_counter_state_lost_until_ack(
        tmp_path: Path, redis: RedisServer) -> None:
    """Caps and cooldowns must not silently start over: an emptied Redis is noticed (its
    epoch marker is gone), counter rules deny COUNTER_STATE_LOST, the loss is audited, and
    `pdp counters ack` resumes them."""
    [server] = start_servers(tmp_path, redis, 1)
    try:
        with grpc.insecure_channel(server.address) as ch:
            ask = _asker(dgrpc.DecisionServiceStub(ch))
            assert ask().outcome == cpb.OUTCOME_ALLOW
            redis.kill()
            redis.start()  # no persistence: every counter (and the marker) is gone
            _poll(lambda: ask().reasons[:1] != [] and ask().reasons[0].code
                  == cpb.REASON_CODE_COUNTER_STATE_LOST, "COUNTER_STATE_LOST denies")
            d = ask()
            assert d.outcome == cpb.OUTCOME_DENY and "pdp counters ack" in d.reasons[0].message
            ack = subprocess.run([sys.executable, "-m", "pdp.cli", "counters", "ack",
                                  "--redis-url", redis.url], capture_output=True, text=True,
                                 timeout=60, check=False)
            assert ack.returncode == 0, ack.stderr
            _poll(lambda: ask().outcome == cpb.OUTCOME_ALLOW, "allows after the ack")
        lost = wait_for_events(server.audit_file,
                               lambda e: e.get("type") == "Counters.StateLost")
        assert lost[0]["tenant"] == "acme"
    finally:
        server.stop()


ROLLBACK_POLICIES = """\
tenant: acme
name: rollback-rate
rule: {rollback_rate: {threshold_percent: 40, window_hours: 1, min_deployments: 4}}
---
tenant: acme
name: health
rule: {auto_rollback: {max_error_rate: 0.05}}
"""


def test_a_rollback_counts_once_whoever_reports_it_and_however_often(
        tmp_path: Path, redis: RedisServer) -> None:
    """Four deploys; EvaluateHealth calls for a rollback three times and the rollout engine
    reports it too (with an event id of its own): one rollback (25 % < 40 %), so the next
    push is allowed. A second,
    distinct rollback (another step) makes it 50 %: denied."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "rb.yaml").write_text(ROLLBACK_POLICIES)
    # RecordEvent needs the rollout engine's role: give it to callers without credentials.
    server = PdpServer(tmp_path, policy_dir=policies,
                       args=["--redis-url", redis.url, "--auth-anonymous-roles",
                             "*:rollout-engine"]).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            rollout = cpb.Rollout(id="r1", step=2)
            for _ in range(4):
                stub.RecordEvent(dpb.RecordEventRequest(
                    tenant="acme", kind=dpb.EVENT_KIND_DEPLOY, rollout=rollout), timeout=10)
            for _ in range(3):
                verdict = stub.EvaluateHealth(dpb.EvaluateHealthRequest(
                    tenant="acme", rollout=rollout, metrics={"error_rate": 0.2}), timeout=10)
                assert verdict.rollback
            stub.RecordEvent(dpb.RecordEventRequest(  # the engine's own id: the same step
                tenant="acme", kind=dpb.EVENT_KIND_ROLLBACK, rollout=rollout,
                event_id="engine-report-r1-2"), timeout=10)

            def push() -> cpb.Decision:
                return stub.CheckPush(push_request("acme", "a1", config_yaml="a: 1"),
                                      timeout=10).decision

            assert push().outcome == cpb.OUTCOME_ALLOW  # 1 rollback / 4 deployments
            stub.RecordEvent(dpb.RecordEventRequest(
                tenant="acme", kind=dpb.EVENT_KIND_ROLLBACK, rollout=cpb.Rollout(id="r1", step=3),
                event_id="engine-rollback-7"), timeout=10)
            stub.RecordEvent(dpb.RecordEventRequest(  # a retry of the same report
                tenant="acme", kind=dpb.EVENT_KIND_ROLLBACK, rollout=cpb.Rollout(id="r1", step=3),
                event_id="engine-rollback-7"), timeout=10)
            denied = push()
            assert denied.outcome == cpb.OUTCOME_DENY
            assert denied.reasons[0].code == cpb.REASON_CODE_ROLLBACK_RATE_EXCEEDED
            assert "2 rollbacks / 4 deployments" in denied.reasons[0].message
    finally:
        server.stop()


STEP_POLICIES = """\
tenant: acme
name: step-cap
rule: {daily_cap: {max_count: 700, scope: rollout}}
---
tenant: acme
name: agent-cooldown
rule: {cooldown: {minutes: 60, scope: agent}}
"""


def test_a_large_step_on_redis_reserves_every_agent_in_order(tmp_path: Path,
                                                              redis: RedisServer) -> None:
    """A 1 000-agent step on Redis (one script call, its cooldown keys read up front): the
    cap goes to the first 700 agents of the request, each allowed agent's cooldown is
    taken, and a second step with the same agents is denied by the cooldowns alone (the
    300 the cap turned away consumed nothing)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(STEP_POLICIES)
    server = PdpServer(tmp_path, policy_dir=policies,
                       args=["--redis-url", redis.url, "--redis-timeout-ms", "5000"]).start()
    try:
        def step(rollout: str) -> list[cpb.Decision]:
            req = dpb.CheckPushBatchRequest(
                tenant="acme", rollout=cpb.Rollout(id=rollout, step=1, step_percent=10),
                config=cpb.Config(yaml="a: 1\n"),
                agents=[cpb.Agent(id=f"agent-{i}") for i in range(1000)])
            with grpc.insecure_channel(server.address) as ch:
                resp = dgrpc.DecisionServiceStub(ch).CheckPushBatch(req, timeout=60)
            assert [d.agent_id for d in resp.decisions] == [f"agent-{i}" for i in range(1000)]
            return [d.decision for d in resp.decisions]

        def codes(ds: list[cpb.Decision]) -> set[str]:
            return {cpb.ReasonCode.Name(r.code) for d in ds for r in d.reasons}

        first = step("r-1")
        assert [d.outcome == cpb.OUTCOME_ALLOW for d in first] == [i < 700 for i in range(1000)]
        assert codes(first[700:]) == {"REASON_CODE_DAILY_CAP_EXCEEDED"}
        again = step("r-2")  # another rollout: its own cap, the same agents' cooldowns
        assert [d.outcome == cpb.OUTCOME_ALLOW for d in again] == [i >= 700 for i in range(1000)]
        assert codes(again[:700]) == {"REASON_CODE_COOLDOWN_ACTIVE"}
    finally:
        server.stop()


def test_a_redis_that_may_evict_counter_keys_stops_the_start(tmp_path: Path) -> None:
    """With a ``maxmemory`` and an evicting ``maxmemory-policy`` (``volatile-lru`` is a
    managed-Redis default) Redis drops counter keys under memory pressure while the epoch
    marker (no TTL) stays: a used-up daily cap of 3 allowed 3 more pushes after one
    eviction, with nothing said. pdp cannot notice that, so it does not start on such a
    Redis unless told to accept it (``--redis-allow-eviction``: it starts, and says so as an
    error); a ``noeviction`` Redis, or one without ``maxmemory`` (it never evicts), starts
    quietly."""
    evicting = RedisServer(None, "--maxmemory", "64mb", "--maxmemory-policy",
                           "volatile-lru").start()
    unbounded = RedisServer(None, "--maxmemory-policy", "volatile-lru").start()
    try:
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "cap.yaml").write_text(POLICY)
        work = tmp_path / "refused"
        work.mkdir()
        server = PdpServer(work, policy_dir=tmp_path / "policies",
                           args=["--redis-url", evicting.url])
        server.start(wait=False)
        try:
            assert server.proc is not None
            assert server.proc.wait(timeout=60) == 2
        finally:
            server.stop()
        said = server.log()
        assert "cannot start: counter store: Redis may evict counter keys" in said, said[-2000:]
        assert "volatile-lru" in said and "noeviction" in said and "--redis-allow-eviction" in said

        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        [warned] = start_servers(tmp_path / "a", evicting, 1, "--redis-allow-eviction", "true")
        [quiet] = start_servers(tmp_path / "b", unbounded, 1)
        try:
            line = next(ln for ln in warned.log().splitlines() if "counter_store_evicts" in ln)
            assert "volatile-lru" in line and '"error"' in line
            assert "counter_store_evicts" not in quiet.log()
        finally:
            warned.stop()
            quiet.stop()
    finally:
        evicting.close()
        unbounded.close()


def test_readiness_fails_while_redis_refuses_writes_and_recovers(
        tmp_path: Path, redis: RedisServer) -> None:
    """A Redis out of memory (or a read-only replica) answers PING, so /readyz said ready
    while every counter rule denied COUNTER_STORE_UNAVAILABLE. It now names the refusal,
    and turns ready again once a write goes through (no decision needed for that: a
    server taken out of rotation gets none)."""
    [server] = start_servers(tmp_path, redis, 1)
    cli = [redis_exe("redis-cli"), "-p", str(redis.port)]
    try:
        with grpc.insecure_channel(server.address) as ch:
            ask = _asker(dgrpc.DecisionServiceStub(ch))
            assert ask().outcome == cpb.OUTCOME_ALLOW
            subprocess.run([*cli, "CONFIG", "SET", "maxmemory", "1"], check=True,
                           capture_output=True, timeout=30)
            d = ask()
            assert d.reasons[0].code == cpb.REASON_CODE_COUNTER_STORE_UNAVAILABLE
            code, body = server.readyz()
            assert code == 503 and "fail counter_store: refusing writes: OOM" in body, body
            subprocess.run([*cli, "CONFIG", "SET", "maxmemory", "0"], check=True,
                           capture_output=True, timeout=30)
            _poll(lambda: server.readyz()[0] == 200, "ready again")
            assert ask().outcome == cpb.OUTCOME_ALLOW
    finally:
        server.stop()
