"""Selection: by tenant, checkpoint and match filter; remembered per label set."""

from __future__ import annotations

from pdp.cel import ProgramCache, pdp_environment
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_text
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet

POLICIES = """\
tenant: t
name: everywhere
rule: {cel: {deny: 'false'}}
---
tenant: t
name: eu-only
match: {agent_selector: {match_labels: {region: eu}}}
rule: {cel: {deny: 'false'}}
"""


def _set() -> PolicySet:
    env, cache = pdp_environment(), ProgramCache(10)
    return PolicySet([compile_or_broken(p, env, cache) for p in load_text(POLICIES, "p")], [])


def test_selection_follows_labels_and_is_remembered_per_label_set() -> None:
    ps = _set()
    eu = ps.select("t", Checkpoint.PUSH, {}, {"region": "eu", "env": "prod"}, None)
    us = ps.select("t", Checkpoint.PUSH, {}, {"region": "us"}, None)
    assert [p.name for p in eu] == ["everywhere", "eu-only"]
    assert [p.name for p in us] == ["everywhere"]
    assert ps.select("t", Checkpoint.PUSH, {}, {"region": "eu", "env": "prod"}, None) is eu
    # Same labels in another order: the same answer (maybe another list).
    other = ps.select("t", Checkpoint.PUSH, {}, {"env": "prod", "region": "eu"}, None)
    assert [p.name for p in other] == ["everywhere", "eu-only"]
    assert [p.name for p in ps.select("u", Checkpoint.PUSH, {}, {"region": "eu"}, None)] == []
    # Values that cannot be a key are still selected, just not remembered.
    odd = ps.select("t", Checkpoint.PUSH, {}, {"region": ["eu"]}, None)  # type: ignore[dict-item]
    assert [p.name for p in odd] == ["everywhere"]
