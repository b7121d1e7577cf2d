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


def test_only_what_some_policy_filters_on_keys_the_selection() -> None:
    """Where no policy of a tenant filters on labels or the change, selection is the tenant's
    list itself, whatever the request carries; where one does, only that part matters."""
    env, cache = pdp_environment(), ProgramCache(10)
    text = POLICIES + """\
---
tenant: plain
name: a
rule: {cel: {deny: 'false'}}
---
tenant: plain
name: b
rule: {cel: {deny: 'false'}}
"""
    ps = PolicySet([compile_or_broken(p, env, cache) for p in load_text(text, "p")], [])
    everything = ps.for_tenant("plain", Checkpoint.PUSH)
    for change, agent in [({}, None), ({"subject": "x"}, {"region": "eu"}),
                          ({}, {"region": ["unhashable"]}), ({}, "not a mapping")]:
        assert ps.select("plain", Checkpoint.PUSH, change, agent, None) is everything  # type: ignore[arg-type]
    # "t" filters on agent labels only: the change and the device do not split its key.
    a = ps.select("t", Checkpoint.PUSH, {"subject": "x"}, {"region": "eu"}, {"os": "1"})
    b = ps.select("t", Checkpoint.PUSH, {"subject": "y"}, {"region": "eu"}, None)
    assert a is b and [p.name for p in a] == ["everywhere", "eu-only"]
    # Labels that are not a mapping still select every selector policy (fail closed).
    odd = ps.select("t", Checkpoint.PUSH, {}, "not a mapping", None)  # type: ignore[arg-type]
    assert [p.name for p in odd] == ["everywhere", "eu-only"]
