"""Counter rules that read reported events load only when the store can answer them: an
expression scope (events are recorded per tenant, rollout, agent, device and group) and
windows longer than the store keeps events are refused at load, at the field."""

from __future__ import annotations

import pytest

from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError
from pdp.policy.rules import EVENT_RETENTION_S


def policy(rule: str) -> str:
    return f"tenant: t\nname: p\nrule:\n  {rule}\n"


@pytest.mark.parametrize(("rule", "field", "why"), [
    ("rollback_rate: {threshold_percent: 10, window_hours: 24,"
     " scope: {expression: 'agent.labels.region'}}", "scope", "would never see one"),
    (f"rollback_rate: {{threshold_percent: 10, window_hours: {EVENT_RETENTION_S // 3600 + 1}}}",
     "window_hours", "keeps reported events 7 days"),
    (f"min_step_duration: {{minutes: {EVENT_RETENTION_S // 60 + 1}}}", "minutes",
     "keeps reported events 7 days"),
])
def test_refused_at_load_naming_the_field(rule: str, field: str, why: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_text(policy(rule))
    assert f".{field}: " in str(info.value) and why in str(info.value)
    assert ":4:" in str(info.value)  # file:line of the rule


@pytest.mark.parametrize("rule", [
    f"rollback_rate: {{threshold_percent: 10, window_hours: {EVENT_RETENTION_S // 3600}}}",
    "rollback_rate: {threshold_percent: 10, window_hours: 24, scope: agent}",
    f"min_step_duration: {{minutes: {EVENT_RETENTION_S // 60}}}",
])
def test_up_to_the_retention_loads(rule: str) -> None:
    assert load_text(policy(rule))
