"""Through a real server and Redis: once a draft of a cooldown policy asks for a longer
window, the live version's pushes are kept that long (the policy set tells the live rule the
longest window of its versions), so activating the draft sees them. With
``--counter-history-s 0`` only that mechanism keeps anything past the live window."""

from __future__ import annotations

from itertools import count
from pathlib import Path

import grpc
import pytest
import redis as redis_py

from pdp.client import push_request
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.server.test_admin_e2e import People, admin, start
from tests.support.procs import RedisServer
from tests.support.wait import wait_until

COOL = "tenant: acme\nname: cool\nrule: {{cooldown: {{minutes: {minutes}, scope: agent}}}}\n"


@pytest.fixture
def people(tmp_path: Path) -> People:
    return People(tmp_path)


def test_a_draft_with_a_longer_cooldown_keeps_the_live_pushes(
        tmp_path: Path, people: People, redis: RedisServer) -> None:
    server = start(tmp_path, people, "--redis-url", redis.url, "--counter-history-s", "0")
    r = redis_py.Redis.from_url(redis.url, decode_responses=True)
    decide = dgrpc.DecisionServiceStub(grpc.insecure_channel(server.address))
    agents = count()

    def push() -> tuple[cpb.Decision, float]:
        """A push of a new agent, and how long its cooldown stamp is kept (s)."""
        agent = f"agent-{next(agents)}"
        d = decide.CheckPush(push_request("acme", agent, config_yaml="a: 1"), timeout=5,
                             metadata=people.md("engine")).decision
        keys = r.keys(f"pdp:{{acme}}:cool:cool:agent%3A{agent}")
        return d, (r.pttl(keys[0]) / 1000 if keys else 0.0)

    try:
        stub = admin(server)

        def put(minutes: int, expected: int) -> int:
            return int(stub.PutDraft(apb.PutDraftRequest(yaml=COOL.format(minutes=minutes),
                                                         expected_version=expected),
                                     timeout=5, metadata=people.md("alice")).policy.meta.version)

        v1 = put(1, 0)
        stub.ApprovePolicy(apb.ApprovePolicyRequest(tenant="acme", name="cool", version=v1),
                           timeout=5, metadata=people.md("bob"))
        stub.ActivatePolicy(apb.ActivatePolicyRequest(tenant="acme", name="cool", version=v1),
                            timeout=5, metadata=people.md("carol"))
        wait_until(lambda: 0 < push()[1] <= 60, "the active 1-minute cooldown is not counted")
        put(600, v1)  # a draft: 600 minutes

        def kept_long() -> bool:
            d, ttl = push()
            assert d.outcome == cpb.OUTCOME_ALLOW  # the draft only shadows
            return ttl > 3600

        wait_until(kept_long, "the live cooldown's pushes are not kept for the draft's window")
        d, ttl = push()
        assert d.outcome == cpb.OUTCOME_ALLOW and 3600 < ttl <= 600 * 60
    finally:
        r.close()
        server.stop()
