"""decision_pb builds the same message the straightforward construction does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import duration_pb2

from pdp.engine.decision import Decision, Explanation, PolicyRef, Reason
from pdp.server import convert
from pdp.v1 import common_pb2 as cpb


def reference(d: Decision) -> cpb.Decision:
    """The construction decision_pb had before it reused per-selection templates."""
    elapsed = duration_pb2.Duration()
    elapsed.FromNanoseconds(int(d.elapsed_s * 1e9))
    pb = cpb.Decision(
        decision_id=d.decision_id,
        outcome=cpb.OUTCOME_ALLOW if d.allowed else cpb.OUTCOME_DENY,
        reasons=[convert.reason_pb(r) for r in d.reasons],
        shadow_denies=[convert.reason_pb(r) for r in d.shadow_denies],
        evaluated_policies=[convert.policy_ref_pb(p) for p in d.evaluated],
        overridden=d.overridden,
        checkpoint=convert.CHECKPOINT_TO_PB.get(d.checkpoint, cpb.CHECKPOINT_UNSPECIFIED),
        elapsed=elapsed,
        explanations=[cpb.Explanation(policy=x.policy, values=x.values)
                      for x in d.explanations],
    )
    pb.decided_at.FromDatetime(d.decided_at)
    return pb


REFS = [PolicyRef(f"p{i}", i, f"sha256:{i}", "active", i == 0) for i in range(4)]


@pytest.mark.parametrize("d", [
    Decision("d1", True, "push", datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
             evaluated=REFS, elapsed_s=0.012345678),
    Decision("d2", False, "device", datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
             reasons=[Reason("p", 1, "cel", "POLICY_DENIED", "no", 1.5)],
             shadow_denies=[Reason("q", 2, "cel", "NOPE", "would", None, True)],
             evaluated=REFS[:2], elapsed_s=2.9999999999, overridden=True,
             explanations=[Explanation("p", {"a": "1"})]),
    Decision("d3", True, "rollout", datetime(2025, 6, 1, 12, tzinfo=timezone(timedelta(hours=2))),
             elapsed_s=0.0),
    Decision("d4", True, "push", datetime(2025, 6, 1, 12), evaluated=REFS[1:]),
])
def test_decision_pb_matches_the_plain_construction(d: Decision) -> None:
    got = convert.decision_pb(d)
    assert got == reference(d)
    assert got.SerializeToString(deterministic=True) == \
        reference(d).SerializeToString(deterministic=True)
    assert got.HasField("elapsed") and got.HasField("decided_at")
