"""End to end: one call's runaway policy does not hold the server (engine.py, turns.py).

The evaluation runs in slices: health checks and another tenant's decisions are answered
while it runs, not after it. No timing is asserted: the runaway call has a long deadline
(1.5 s), and the test counts the answers that came back while it was still out.
"""

from __future__ import annotations

import threading
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.client import PdpClient
from tests.support.pdpserver import PdpServer
from tests.support.wait import wait_until

RUNAWAY = "config.items.all(x, !config.items.exists(y, y == x + 1000000))"
ITEMS = "items: [" + ",".join(str(i) for i in range(3000)) + "]\n"
POLICIES = f"""\
tenant: slow
name: runaway
rule:
  cel:
    deny: '{RUNAWAY}'
---
tenant: quick
name: small
rule:
  cel:
    deny: 'config.?items.orValue([]).size() > 5'
"""


def test_health_checks_and_other_tenants_are_answered_while_a_runaway_policy_runs(
        tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICIES)
    (tmp_path / "srv").mkdir()
    server = PdpServer(tmp_path / "srv", policy_dir=policies, args=[
        "--deadline-ms", "1500", "--cel-cost-limit", "1000000000000",
        "--cel-max-cost-estimate", "1000000000000000"]).start()
    try:
        slow_client = PdpClient(server.address, timeout=30)
        client = PdpClient(server.address, timeout=30)
        health = health_pb2_grpc.HealthStub(server.channel())
        result: list[object] = []
        done = threading.Event()

        def runaway() -> None:
            try:
                result.append(slow_client.check_push("slow", "a1", config_yaml=ITEMS))
            finally:
                done.set()

        # One warm-up call each, so the counted calls need no first-call set-up.
        assert client.check_push("quick", "a0", config_yaml="items: [1]\n").allowed
        health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        t = threading.Thread(target=runaway)
        t.start()
        answered = 0
        while not done.is_set():
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            d = client.check_push("quick", "a2", config_yaml="items: [1, 2]\n")
            assert d.allowed, d
            if not done.is_set():
                answered += 1
        t.join()
        [slow] = result
        assert not slow.allowed  # type: ignore[attr-defined]
        assert slow.reasons[0].code in (  # type: ignore[attr-defined]
            "DEADLINE_EXCEEDED", "COST_LIMIT_EXCEEDED")
        # Unsliced, the loop would be held for the runaway call's 1.5 s: at most the pair
        # of calls already under way when it started would come back before it.
        assert answered >= 3, answered
        wait_until(lambda: server.proc is not None and server.proc.poll() is None, "alive")
    finally:
        server.stop()
