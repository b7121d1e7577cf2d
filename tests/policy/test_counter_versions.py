"""A cooldown / velocity policy and its other versions: the live counter keeps pushes for
the longest window of any version of the policy the policy set holds, so activating a
version that lengthens the window sees the pushes made under the previous one (the counter
belongs to the policy's name). Before, a push was kept only for the window of the version
in force when it was made."""

from __future__ import annotations

from pdp.cel import ProgramCache, pdp_environment
from pdp.counters import ManualClock, MemoryCounterStore
from pdp.engine.context import ConfigCache
from pdp.engine.engine import Engine, EngineOptions
from pdp.policy.builtins import builtin_policies
from pdp.policy.compiled import compile_or_broken
from pdp.policy.loader import load_text
from pdp.policy.policyset import PolicySet
from tests.engine.test_engine import Collected, push

T0 = 1_795_428_017.25  # 2026-11-23 10:00 UTC
DAY = 86400.0

COOL = """tenant: t
name: cool
version: {version}
status: {status}
rule:
  cooldown: {{minutes: {minutes}, scope: agent}}
"""
VEL = """tenant: t
name: vel
version: {version}
status: {status}
rule:
  velocity: {{max_count: {n}, window_minutes: {minutes}, scope: tenant}}
"""


def policy_set(text: str) -> PolicySet:
    env, cache = pdp_environment(), ProgramCache(100)
    compiled = [compile_or_broken(p, env, cache) for p in load_text(text)]
    return PolicySet(compiled, [compile_or_broken(p, env, cache) for p in builtin_policies()],
                     known_tenants=frozenset({"t"}))


def engine(text: str, clock: ManualClock) -> Engine:
    # history_seconds=0: only what the policy set says keeps pushes past the live window
    return Engine(policy_set(text), MemoryCounterStore(clock, history_seconds=0), Collected(),
                  ConfigCache(10, 8 << 20), EngineOptions(counter_timeout_s=5.0))


async def test_a_draft_with_a_longer_cooldown_keeps_the_live_pushes() -> None:
    clock = ManualClock(T0)
    e = engine(COOL.format(version=1, status="active", minutes=10) + "---\n"
               + COOL.format(version=2, status="draft", minutes=3 * 24 * 60), clock)
    assert (await e.check(push(), 5.0)).allowed
    clock.advance(2 * DAY)
    e.replace_policies(policy_set(COOL.format(version=1, status="retired", minutes=10)
                                  + "---\n"
                                  + COOL.format(version=2, status="active",
                                                minutes=3 * 24 * 60)))
    d = await e.check(push(), 5.0)
    assert not d.allowed
    [reason] = d.reasons
    assert (reason.policy, reason.code) == ("cool", "COOLDOWN_ACTIVE")
    assert reason.retry_after_s is not None
    assert abs(reason.retry_after_s - DAY) < 2
    assert (await e.check(push(agent="a2"), 5.0)).allowed  # another agent: its own cooldown


async def test_a_retired_version_with_a_longer_velocity_window_counts() -> None:
    clock = ManualClock(T0)
    e = engine(VEL.format(version=1, status="retired", n=3, minutes=600) + "---\n"
               + VEL.format(version=2, status="active", n=3, minutes=10), clock)
    for _ in range(3):
        assert (await e.check(push(), 5.0)).allowed
        clock.advance(60)
    clock.advance(3 * 3600)  # v2's window is empty again
    assert (await e.check(push(), 5.0)).allowed
    e.replace_policies(policy_set(VEL.format(version=1, status="active", n=3, minutes=600)
                                  + "---\n"
                                  + VEL.format(version=2, status="retired", n=3,
                                               minutes=10)))
    d = await e.check(push(), 5.0)  # 4 pushes within v1's 10 hours
    assert not d.allowed and [r.code for r in d.reasons] == ["VELOCITY_EXCEEDED"]


async def test_versions_of_other_policies_or_kinds_do_not_stretch_a_counter() -> None:
    ps = policy_set(COOL.format(version=1, status="active", minutes=10) + "---\n"
                    + COOL.replace("name: cool", "name: other").format(
                        version=1, status="draft", minutes=600) + "---\n"
                    + VEL.replace("name: vel", "name: cool").format(
                        version=3, status="draft", n=1, minutes=900))
    by = {(p.name, p.policy.version): p.counter_history_s for p in ps.policies}
    assert by == {("cool", 1): 0, ("other", 1): 0, ("cool", 3): 0}
