"""decision_pb builds the same message the straightforward construction does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import duration_pb2

from pdp.api import convert
from pdp.engine.decision import Decision, Explanation, PolicyRef, Reason
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


def test_batch_response_decisions_match_the_plain_construction() -> None:
    """A step's response copies the common part of reason-less decisions from a template:
    each entry must still equal the plain construction of its own decision (without the
    evaluated policies, which a batch names by set), whatever differs between them."""
    at = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    later = at + timedelta(seconds=1)
    ds = [
        Decision("a0", True, "push", at, evaluated=REFS, elapsed_s=0.001),
        Decision("a1", True, "push", at, evaluated=REFS, elapsed_s=0.0),
        Decision("a2", False, "push", at, evaluated=REFS, elapsed_s=0.002,
                 reasons=[Reason("p", 1, "cel", "POLICY_DENIED", "no", 1.5)]),
        Decision("a3", True, "push", at, evaluated=REFS, elapsed_s=1.25),  # after a deny
        Decision("a4", True, "push", later, evaluated=REFS[:2], elapsed_s=0.003),
        Decision("a5", False, "push", later, evaluated=REFS[:2], elapsed_s=0.004),  # no reason
        Decision("a6", True, "push", later, evaluated=REFS[:2], elapsed_s=0.005,
                 overridden=True),
        Decision("a7", True, "auto_apply", later, elapsed_s=0.006),
        Decision("a8", True, "push", later, elapsed_s=0.007,
                 shadow_denies=[Reason("q", 2, "cel", "NOPE", "would", None, True)]),
        Decision("a9", True, "push", later, elapsed_s=0.008,
                 explanations=[Explanation("p", {"a": "1"})]),
        Decision("a10", True, "push", at, evaluated=REFS, elapsed_s=0.009),  # back to the first
    ]
    from pdp.v1 import decision_pb2 as dpb

    out = dpb.CheckPushBatchResponse()
    convert.fill_batch_response(out, [f"agent-{i}" for i in range(len(ds))], ds)
    assert [item.agent_id for item in out.decisions] == [f"agent-{i}" for i in range(len(ds))]
    for item, d in zip(out.decisions, ds, strict=True):
        want = reference(d)
        want.ClearField("evaluated_policies")
        assert item.decision == want, d.decision_id
        assert item.decision.HasField("elapsed") and item.decision.HasField("decided_at")
        assert list(out.evaluated_sets[item.evaluated_set].policies) == [
            convert.policy_ref_pb(p) for p in d.evaluated]
    assert (out.allowed_count, out.denied_count) == (9, 2)


def test_a_compiler_error_quoting_the_source_is_shown_to_readers_only() -> None:
    """A policy that does not compile denies with its compiler error, which quotes the CEL
    source (expression, caret): callers who may not read the tenant's policies get its
    name and that it does not compile; readers get the error (the audit keeps it too)."""
    error = ("policy does not compile: acme/eu@v1:16:51: no such overload\n"
             " | collector.exporters.all(e, e.host.endsWith('.eu-secret.example'))\n"
             " | ..................................................^")
    d = Decision("d1", False, "push", datetime(2025, 1, 2, tzinfo=UTC), reasons=[
        Reason("eu", 1, "cel", "POLICY_INVALID", error),
        Reason("cap", 2, "daily_cap", "DAILY_CAP_EXCEEDED", "daily cap 3 reached")])
    checker = convert.decision_pb(d, reader=False)
    assert [r.message for r in checker.reasons] == [
        convert.shown_message(d.reasons[0]), "daily cap 3 reached"]
    assert "eu-secret" not in str(checker) and "does not compile" in checker.reasons[0].message
    assert checker.reasons[0].policy == "eu"
    assert convert.decision_pb(d, reader=True).reasons[0].message == error
    assert convert.reason_pb(d.reasons[0], False).message == checker.reasons[0].message
