"""The server's edges, end to end: field limits, undecodable requests, error texts that fit
a gRPC status, unexpected errors as INTERNAL with a reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pdp.server import limits
from pdp.server.auth import new_token
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc
from pdp.v1 import audit_pb2 as aupb
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from pdp.v1 import policy_pb2 as ppb
from tests.support.pdpserver import PdpServer

REQUESTS = (dpb.CheckPushRequest, dpb.CheckPushBatchRequest, dpb.CheckPushStreamRequest,
            dpb.CheckDeviceRequest, dpb.CheckRolloutRequest, dpb.RecordEventRequest,
            dpb.EvaluateHealthRequest, aupb.WatchRequest,
            *(getattr(apb, m.input_type.name) for m in
              apb.DESCRIPTOR.services_by_name["PolicyAdminService"].methods))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[PdpServer, str]]:
    token, digest = new_token()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"sha256": digest, "identity": "alice", "roles": {"acme": ["author", "checker"]}}]}))
    s = PdpServer(tmp_path, args=["--auth-tokens-file", str(tokens),
                                  "--auth-required", "false"]).start()
    try:
        yield s, token
    finally:
        s.stop()


def push(**agent: object) -> dpb.CheckPushRequest:
    return dpb.CheckPushRequest(tenant="acme", agent=cpb.Agent(**agent),  # type: ignore[arg-type]
                                rollout=cpb.Rollout(id="r-1", step=1, step_percent=10),
                                config=cpb.Config(yaml="exporters: {}\n"))


def error_of(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


# --- the table -------------------------------------------------------------------------------

@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: m.DESCRIPTOR.name)
def test_every_string_list_and_map_field_has_a_limit(message: Any) -> None:
    missing = [f.full_name for f in limits.limited_fields(message.DESCRIPTOR)
               if f.full_name not in limits.FIELD_LIMITS]
    assert missing == []


def test_limits_name_the_field_and_the_limit() -> None:
    with pytest.raises(ValueError, match=r"^agents\[1\]\.labels\[env\]: 2000 characters is"
                                         r" longer than the limit of 1024$"):
        limits.check_limits(dpb.CheckPushBatchRequest(
            tenant="acme",
            agents=[cpb.Agent(id="a"), cpb.Agent(id="b", labels={"env": "x" * 2000})]))
    with pytest.raises(ValueError, match=r"^agent\.labels: 300 entries is more than the limit"):
        limits.check_limits(push(id="a", labels={f"k{i}": "v" for i in range(300)}))
    with pytest.raises(ValueError, match=r"^agent\.active_exporters\[1\]: 257 characters"):
        limits.check_limits(push(id="a", active_exporters=["otlp", "x" * 257]))
    with pytest.raises(ValueError, match=r"^agent\.labels: a key of 300 characters"):
        limits.check_limits(push(id="a", labels={"k" * 300: "v"}))
    limits.check_limits(push(id="a" * 256, labels={"k" * 256: "v" * 1024}))  # at the limits


def test_status_text_fits_and_says_how_long_the_whole_was() -> None:
    assert limits.status_text("short") == "short"
    cut = limits.status_text("é" * 5000)
    assert len(cut.encode()) <= limits.STATUS_TEXT_BYTES
    assert cut.endswith("… (5000 characters)")


# --- end to end ------------------------------------------------------------------------------

def test_a_megabyte_agent_id_is_refused_and_not_audited(server: tuple[PdpServer, str]) -> None:
    s, _ = server
    with s.channel() as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        err = error_of(stub.CheckPush, push(id="a" * 1024 * 1024), timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        # refused from the wire, before the megabyte is decoded into a string
        assert err.details() == ("agent.id: 1048576 bytes is longer than the limit of 256"
                                 " characters (at most 1024 bytes); not decoded")
        batch = dpb.CheckPushBatchRequest(tenant="acme", agents=[
            cpb.Agent(id="ok"), cpb.Agent(id="ok", hostname="h" * 300)])
        err = error_of(stub.CheckPushBatch, batch, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("agents[1].hostname: 300 characters")
        event = dpb.RecordEventRequest(tenant="acme", kind=dpb.EVENT_KIND_DEPLOY,
                                       request_id="r" * 5000)
        err = error_of(stub.RecordEvent, event, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("request_id: 5000 characters")
        assert stub.CheckPush(push(id="fine"), timeout=10).decision.decision_id
    audit = s.audit_file.read_text() if s.audit_file.exists() else ""
    assert "a" * 300 not in audit


def test_invalid_utf8_is_invalid_argument_naming_the_field(server: tuple[PdpServer, str]) -> None:
    s, _ = server
    good = push(id="PLACEHOLDER").SerializeToString()
    bad = good.replace(b"PLACEHOLDER", b"\xff\xfeAHOLDER\xc3\x28")
    assert len(bad) == len(good)
    with s.channel() as ch:
        raw = ch.unary_unary("/pdp.v1.DecisionService/CheckPush",
                             request_serializer=lambda b: b,
                             response_deserializer=dpb.CheckPushResponse.FromString)
        err = error_of(raw, bad, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == ("request could not be decoded: invalid UTF-8 in a string"
                                 " field (agent.id)")
        err = error_of(raw, b"\x0a\xff\xff\xff", timeout=10)  # a length past the end
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("request could not be decoded")
        # client streams: each message is decoded the same way
        stream = ch.stream_stream("/pdp.v1.DecisionService/CheckPushStream",
                                  request_serializer=lambda b: b,
                                  response_deserializer=dpb.CheckPushStreamResponse.FromString)
        inner = dpb.CheckPushBatchRequest(tenant="acme", agents=[cpb.Agent(id="PLACEHOLDER")])
        data = dpb.CheckPushStreamRequest(batch=inner).SerializeToString()
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([data.replace(b"PLACEHOLDER", b"\xffPLACEHOLDE")]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch.agents.id" in info.value.details()
        # the server is still fine
        assert dgrpc.DecisionServiceStub(ch).CheckPush(push(id="ok"), timeout=10).decision


def test_a_refused_huge_expression_comes_back_short(server: tuple[PdpServer, str]) -> None:
    s, token = server
    md = (("authorization", f"Bearer {token}"),)
    expression = "agent.id == (" * 20 + "x" * 100_000  # does not compile
    policy = yaml.safe_dump({"tenant": "acme", "name": "huge",
                             "rule": {"cel": {"deny": expression}}})
    with s.channel() as ch:
        stub = admin_pb2_grpc.PolicyAdminServiceStub(ch)
        err = error_of(stub.PutDraft, apb.PutDraftRequest(yaml=policy), metadata=md, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(err.details().encode()) <= limits.STATUS_TEXT_BYTES
        # over the field's own limit: refused before anything parses it
        too_big = apb.PutDraftRequest(policy=ppb.Policy(
            tenant="acme", name="huge", cel=ppb.CelRule(deny="x" * 100_001)))
        err = error_of(stub.PutDraft, too_big, metadata=md, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == ("policy.cel.deny: 100001 characters is longer than the"
                                 " limit of 100000")


def test_an_unexpected_error_is_internal_with_a_short_reason() -> None:
    """Whatever a handler lets escape is INTERNAL naming the exception, never UNKNOWN with
    its whole text."""
    import asyncio

    from pdp.server.edges import EdgeInterceptor

    async def boom(request: dpb.CheckPushRequest, context: object) -> dpb.CheckPushResponse:
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion" * 100)

    async def main() -> grpc.aio.AioRpcError:
        server = grpc.aio.server(interceptors=[EdgeInterceptor()])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "pdp.v1.DecisionService", {"CheckPush": grpc.unary_unary_rpc_method_handler(
                boom, request_deserializer=dpb.CheckPushRequest.FromString,
                response_serializer=dpb.CheckPushResponse.SerializeToString)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await dgrpc.DecisionServiceStub(ch).CheckPush(push(id="a"), timeout=10)
                return info.value
        finally:
            await server.stop(None)

    err = asyncio.run(main())
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details().startswith("internal error: ValueError: Exceeds the limit (4300")
    assert len(err.details().encode()) <= 200
