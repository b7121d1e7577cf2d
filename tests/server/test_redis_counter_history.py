"""``--counter-history-s`` reaches the Redis store of a real ``pdp serve``: a cooldown's stamp
is kept that long (not only the rule's minute), so a new version of the policy with a longer
cooldown sees the push (tests/counters/test_versions.py), and it still expires."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_py

from pdp.client import PdpClient
from tests.support.pdpserver import PdpServer
from tests.support.procs import RedisServer

POLICY = "tenant: acme\nname: cool\nrule: {cooldown: {minutes: 1, scope: agent}}\n"


@pytest.mark.parametrize("history", [None, "7200", "0"])
def test_cooldown_stamps_are_kept_for_the_history_setting(
        tmp_path: Path, redis: RedisServer, history: str | None) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "cool.yaml").write_text(POLICY)
    (tmp_path / "srv").mkdir()
    args = ["--redis-url", redis.url]
    if history is not None:
        args += ["--counter-history-s", history]
    server = PdpServer(tmp_path / "srv", policy_dir=policies, args=args).start()
    try:
        client = PdpClient(server.address, timeout=30)
        assert client.check_push("acme", "a1", config_yaml="a: 1").allowed
        d = client.check_push("acme", "a1", config_yaml="a: 1")
        assert not d.allowed and d.reasons[0].code == "COOLDOWN_ACTIVE"
    finally:
        server.stop()
    r = redis_py.Redis.from_url(redis.url)
    try:
        ttls = [r.pttl(k) / 1000 for k in r.keys("pdp:{acme}:cool:*")]
    finally:
        r.close()
    if history == "0":  # only the rule's own minute (it may be over already)
        assert all(t <= 60 for t in ttls), ttls
        return
    want = 7 * 86400 if history is None else int(history)
    assert len(ttls) == 1 and want / 2 < ttls[0] <= want, ttls
