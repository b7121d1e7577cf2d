"""Request conversion refuses what the engine cannot use, naming the field: Timestamps out
of their range, duplicate agents in a step, map keys shown escaped in error texts."""

from __future__ import annotations

import pytest

from pdp.api import convert
from pdp.engine.request import Caller, InvalidRequest
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb

CALLER = Caller()


def push(**rollout: object) -> dpb.CheckPushRequest:
    return dpb.CheckPushRequest(tenant="acme", agent=cpb.Agent(id="a"),
                                config=cpb.Config(yaml="receivers: {}"),
                                rollout=cpb.Rollout(id="r", **rollout))  # type: ignore[arg-type]


def refusal(call: object, *args: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call(*args)  # type: ignore[operator]
    return info.value


BAD = [(0, -1, "nanos -1"), (5, 1_000_000_000, "nanos 1000000000"),
       (2**63 - 1, 0, f"seconds {2**63 - 1}"), (-(2**63), 0, f"seconds {-(2**63)}"),
       (253_402_300_800, 0, "seconds 253402300800"),  # 10000-01-01
       (-62_135_596_801, 0, "seconds -62135596801")]  # just before 0001-01-01


@pytest.mark.parametrize(("seconds", "nanos", "says"), BAD)
def test_an_invalid_created_at_is_refused_naming_it(seconds: int, nanos: int,
                                                    says: str) -> None:
    req = push()
    req.rollout.created_at.seconds = seconds
    req.rollout.created_at.nanos = nanos
    exc = refusal(convert.check_push_request, req, CALLER)
    assert exc.field == "rollout.created_at"
    assert exc.problem.startswith("not a valid timestamp (") and says in exc.problem


@pytest.mark.parametrize(("seconds", "nanos", "says"), BAD)
def test_an_invalid_approval_time_is_refused_naming_it(seconds: int, nanos: int,
                                                       says: str) -> None:
    req = push()
    req.rollout.approvals.add(actor="ok").time.seconds = 1
    bad = req.rollout.approvals.add(actor="x").time
    bad.seconds, bad.nanos = seconds, nanos
    exc = refusal(convert.check_push_request, req, CALLER)
    assert exc.field == "rollout.approvals[1].time" and says in exc.problem


def test_the_range_ends_are_valid_and_unset_stays_unset() -> None:
    req = push()
    req.rollout.created_at.seconds = convert.TIMESTAMP_MIN_SECONDS
    req.rollout.approvals.add().time.seconds = convert.TIMESTAMP_MAX_SECONDS
    req.rollout.approvals[0].time.nanos = convert.NANOS_MAX
    req.rollout.approvals.add(actor="no time")
    r = convert.check_push_request(req, CALLER).rollout
    assert r is not None
    assert r["created_at"] == "0001-01-01T00:00:00Z"
    assert [a["time"] for a in r["approvals"]] == ["9999-12-31T23:59:59.999999999Z", None]


def test_every_decision_request_checks_its_rollout_timestamps() -> None:
    bad = cpb.Rollout(id="r")
    bad.created_at.nanos = -1
    calls = [
        lambda: convert.check_push_request(push(created_at=bad.created_at), CALLER),
        lambda: convert.check_device_request(dpb.CheckDeviceRequest(
            tenant="acme", device=cpb.Device(id="d"), rollout=bad), CALLER),
        lambda: convert.check_rollout_request(dpb.CheckRolloutRequest(
            tenant="acme", rollout=bad), CALLER),
        lambda: convert.check_push_batch_requests(dpb.CheckPushBatchRequest(
            tenant="acme", agents=[cpb.Agent(id="a")], rollout=bad), CALLER),
        lambda: convert.rollout_dict(bad),  # EvaluateHealth, RecordEvent
    ]
    for call in calls:
        exc = refusal(call)
        assert exc.field == "rollout.created_at", exc  # a step's own field, not agents[0]'s


def test_every_timestamp_of_a_decision_request_is_known() -> None:
    """The Timestamp and Duration fields a decision request can carry are the ones checked
    above: a new one must be checked too (this fails until it is listed)."""
    from pdp.v1 import decision_pb2

    def walk(desc: object, path: str, seen: frozenset[str], out: set[str]) -> None:
        for f in desc.fields:  # type: ignore[attr-defined]
            mt = f.message_type
            if mt is None:
                continue
            p = path + f.name
            if mt.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
                out.add(p)
            elif mt.full_name not in seen:
                walk(mt, p + ".", seen | {mt.full_name}, out)

    found: set[str] = set()
    for method in decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].methods:
        walk(method.input_type, "", frozenset({method.input_type.full_name}), found)
    assert found == {"rollout.created_at", "rollout.approvals.time",
                     "batch.rollout.created_at", "batch.rollout.approvals.time", "time"}


def test_duplicate_agents_in_a_step_are_refused() -> None:
    req = dpb.CheckPushBatchRequest(tenant="acme", agents=[
        cpb.Agent(id="x"), cpb.Agent(id="y"), cpb.Agent(id="x", labels={"env": "prod"})])
    exc = refusal(convert.check_push_batch_requests, req, CALLER)
    assert str(exc) == "agents[2].id: duplicate of agents[0].id 'x' (one decision per agent)"
    req = dpb.CheckPushBatchRequest(tenant="acme", agents=[
        cpb.Agent(id="a"), cpb.Agent(id="b\n" + "b" * 300), cpb.Agent(id="b\n" + "b" * 300)])
    exc = refusal(convert.check_push_batch_requests, req, CALLER)
    assert exc.field == "agents[2].id"
    assert exc.problem == ("duplicate of agents[1].id 'b\\n" + "b" * 62
                           + "'… (one decision per agent)")
    ok = dpb.CheckPushBatchRequest(tenant="acme", agents=[
        cpb.Agent(id=f"a{i}") for i in range(100)])
    assert [r.agent["id"] for r in convert.check_push_batch_requests(ok, CALLER)
            if r.agent is not None] == [f"a{i}" for i in range(100)]


def test_metric_keys_are_shown_escaped_and_cut() -> None:
    exc = refusal(convert.metrics_dict, {"a\x00b\nc": float("nan")})
    assert exc.field == "metrics[a\\x00b\\nc]"
    exc = refusal(convert.metrics_dict, {"k" * 200: float("inf")})
    assert exc.field == "metrics[" + "k" * 64 + "…]"
    exc = refusal(convert.metrics_dict, {"accuracy": float("nan")})
    assert exc.field == "metrics[accuracy]"
    assert convert.shown_key("é ok") == "é ok"
