"""Through a real server: out-of-range Timestamps, duplicate agents of a step, non-finite
numbers in RecordEvent and an empty built-in name are INVALID_ARGUMENT naming the field
(never INTERNAL, never OK); error texts about map keys say what is wrong, escaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer

CONFIG = cpb.Config(yaml="receivers: {}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdpServer]:
    # anonymous callers may decide, record events and administer: every method is reachable
    srv = PdpServer(tmp_path_factory.mktemp("validation"), args=[
        "--auth-anonymous-roles", "*:rollout-engine,*:admin"]).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def stub(server: PdpServer) -> Iterator[dgrpc.DecisionServiceStub]:
    with server.channel() as ch:
        yield dgrpc.DecisionServiceStub(ch)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return err


def bad_request_field(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return str(bad.field_violations[0].field)


def _created_nanos(r: cpb.Rollout) -> str:
    r.created_at.nanos = -1
    return "rollout.created_at"


def _created_seconds(r: cpb.Rollout) -> str:
    r.created_at.seconds = 2**63 - 1
    return "rollout.created_at"


def _approval_time(r: cpb.Rollout) -> str:
    r.approvals.add(actor="bob").time.seconds = -(2**63)
    return "rollout.approvals[0].time"


BREAKS = [_created_nanos, _created_seconds, _approval_time]


def rollout_requests(rollout: cpb.Rollout) -> dict[str, tuple[str, object]]:
    """Every decision RPC's request carrying ``rollout``, by method name."""
    agent = cpb.Agent(id="a")
    return {
        "CheckPush": ("CheckPush", dpb.CheckPushRequest(
            tenant="acme", agent=agent, config=CONFIG, rollout=rollout)),
        "CheckPushBatch": ("CheckPushBatch", dpb.CheckPushBatchRequest(
            tenant="acme", agents=[agent], config=CONFIG, rollout=rollout)),
        "CheckDevice": ("CheckDevice", dpb.CheckDeviceRequest(
            tenant="acme", device=cpb.Device(id="d"), rollout=rollout)),
        "CheckRollout": ("CheckRollout", dpb.CheckRolloutRequest(
            tenant="acme", rollout=rollout, config=CONFIG)),
        "EvaluateHealth": ("EvaluateHealth", dpb.EvaluateHealthRequest(
            tenant="acme", rollout=rollout, metrics={"error_rate": 0.0})),
        "RecordEvent": ("RecordEvent", dpb.RecordEventRequest(
            tenant="acme", kind=dpb.EVENT_KIND_DEPLOY, rollout=rollout)),
    }


@pytest.mark.parametrize("method", ["CheckPush", "CheckPushBatch", "CheckDevice",
                                    "CheckRollout", "EvaluateHealth", "RecordEvent"])
@pytest.mark.parametrize("break_", BREAKS, ids=lambda f: f.__name__.strip("_"))
def test_an_invalid_timestamp_is_invalid_argument_naming_it(
        stub: dgrpc.DecisionServiceStub, method: str,
        break_: Callable[[cpb.Rollout], str]) -> None:
    rollout = cpb.Rollout(id="r-1")
    field = break_(rollout)
    name, request = rollout_requests(rollout)[method]
    err = refused(lambda: getattr(stub, name)(request, timeout=10))
    assert err.details().startswith(f"{field}: not a valid timestamp ("), err.details()
    assert bad_request_field(err) == field


def test_a_stream_ends_with_invalid_argument_on_an_invalid_timestamp(
        stub: dgrpc.DecisionServiceStub) -> None:
    good = dpb.CheckPushBatchRequest(tenant="acme", agents=[cpb.Agent(id="a")], config=CONFIG)
    bad = dpb.CheckPushBatchRequest()
    bad.CopyFrom(good)
    bad.rollout.created_at.nanos = 1_000_000_000
    answers = stub.CheckPushStream(iter([dpb.CheckPushStreamRequest(batch=good),
                                         dpb.CheckPushStreamRequest(batch=bad)]), timeout=10)
    first = next(answers)
    assert len(first.batch.decisions) == 1
    err = refused(lambda: next(answers))
    assert err.details() == ("rollout.created_at: not a valid timestamp (nanos 1000000000 is"
                             " outside 0 to 999999999)")


def test_valid_timestamps_still_decide(stub: dgrpc.DecisionServiceStub) -> None:
    rollout = cpb.Rollout(id="r-1")
    rollout.created_at.seconds = 253_402_300_799  # 9999-12-31T23:59:59Z
    rollout.created_at.nanos = 999_999_999
    rollout.approvals.add(actor="bob").time.seconds = -62_135_596_800  # 0001-01-01
    for name, request in rollout_requests(rollout).values():
        assert getattr(stub, name)(request, timeout=10) is not None


def test_record_event_refuses_an_invalid_time_and_accepts_any_valid_one(
        stub: dgrpc.DecisionServiceStub) -> None:
    event = dpb.RecordEventRequest(tenant="acme", kind=dpb.EVENT_KIND_DEPLOY,
                                   rollout=cpb.Rollout(id="r-ev"))
    event.time.nanos = -1
    err = refused(lambda: stub.RecordEvent(event, timeout=10))
    assert err.details() == "time: not a valid timestamp (nanos -1 is outside 0 to 999999999)"
    assert bad_request_field(err) == "time"
    event.time.seconds, event.time.nanos = 2**62, 0
    assert refused(lambda: stub.RecordEvent(event, timeout=10)).details().startswith(
        "time: not a valid timestamp (seconds 4611686018427387904 is outside")
    # informational (README): a valid time, however old, is accepted; the event counts now
    event.time.seconds = 978_307_200  # 2001-01-01
    assert stub.RecordEvent(event, timeout=10).event_id


@pytest.mark.parametrize("field", ["step_percent", "previous_step_percent"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 101.0])
def test_record_event_refuses_non_finite_percentages(
        stub: dgrpc.DecisionServiceStub, field: str, value: float) -> None:
    rollout = cpb.Rollout(id="r-ev")
    setattr(rollout, field, value)
    err = refused(lambda: stub.RecordEvent(dpb.RecordEventRequest(
        tenant="acme", kind=dpb.EVENT_KIND_DEPLOY, rollout=rollout), timeout=10))
    assert err.details() == f"rollout.{field}: must be between 0 and 100"


def test_duplicate_agents_of_a_step_are_refused(stub: dgrpc.DecisionServiceStub) -> None:
    step = dpb.CheckPushBatchRequest(tenant="acme", config=CONFIG, agents=[
        cpb.Agent(id="x"), cpb.Agent(id="x", labels={"env": "prod"})])
    err = refused(lambda: stub.CheckPushBatch(step, timeout=10))
    assert err.details() == "agents[1].id: duplicate of agents[0].id 'x' (one decision per agent)"
    assert bad_request_field(err) == "agents[1].id"
    answers = stub.CheckPushStream(iter([dpb.CheckPushStreamRequest(batch=step)]), timeout=10)
    assert refused(lambda: next(answers)).details().startswith("agents[1].id: duplicate")
    step.agents[1].id = "y"
    resp = stub.CheckPushBatch(step, timeout=10)
    assert [d.agent_id for d in resp.decisions] == ["x", "y"]


@pytest.mark.parametrize("method", ["CheckRollout", "EvaluateHealth"])
def test_a_huge_metric_key_says_its_length_and_the_limit(
        stub: dgrpc.DecisionServiceStub, method: str) -> None:
    rollout = cpb.Rollout(id="r-1")
    request = rollout_requests(rollout)[method][1]
    request.metrics["k" * 100_000] = 1.0  # type: ignore[attr-defined]
    err = refused(lambda: getattr(stub, method)(request, timeout=10))
    assert err.details() == (
        "metrics: an entry of 100013 bytes is longer than the limits allow: its key of"
        " 100000 bytes is longer than the limit of 256 characters (at most 1024 bytes);"
        " not decoded")


@pytest.mark.parametrize("method", ["CheckRollout", "EvaluateHealth"])
def test_a_metric_key_is_shown_escaped_and_cut(stub: dgrpc.DecisionServiceStub,
                                               method: str) -> None:
    for key, shown in [("a\x00b\nc", "a\\x00b\\nc"), ("m" * 200, "m" * 64 + "…")]:
        request = rollout_requests(cpb.Rollout(id="r-1"))[method][1]
        request.metrics[key] = float("nan")  # type: ignore[attr-defined]
        err = refused(lambda r=request: getattr(stub, method)(r, timeout=10))
        assert err.details() == f"metrics[{shown}]: must be a finite number"


def test_set_builtin_relaxed_needs_a_builtin(server: PdpServer) -> None:
    with server.channel() as ch:
        admin = admin_pb2_grpc.PolicyAdminServiceStub(ch)
        for relaxed in (True, False):
            err = refused(lambda r=relaxed: admin.SetBuiltinRelaxed(apb.SetBuiltinRelaxedRequest(
                tenant="acme", relaxed=r, justification="why"), timeout=10))
            assert err.details() == "builtin: required"
        with pytest.raises(grpc.RpcError) as info:  # an unknown name is still not found
            admin.SetBuiltinRelaxed(apb.SetBuiltinRelaxedRequest(
                tenant="acme", builtin="no-such-builtin", relaxed=True,
                justification="why"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_server_still_answers(server: PdpServer) -> None:
    with server.channel() as ch:
        resp = dgrpc.DecisionServiceStub(ch).CheckPush(dpb.CheckPushRequest(
            tenant="acme", agent=cpb.Agent(id="after"), config=CONFIG), timeout=10)
    assert resp.decision.decision_id
    assert b"Timestamp is not valid" not in server.log_file.read_bytes()
