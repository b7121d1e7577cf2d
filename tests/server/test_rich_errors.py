"""What a client can act on: BadRequest details with INVALID_ARGUMENT, reflection v1 and v1alpha.

Through a real server, with the same client libraries a caller would use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from pdp.client import push_request
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer

SERVICES = {"pdp.v1.DecisionService", "pdp.v1.PolicyAdminService", "pdp.v1.AuditService",
            "grpc.health.v1.Health"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdpServer]:
    srv = PdpServer(tmp_path_factory.mktemp("rich")).start()
    try:
        yield srv
    finally:
        srv.stop()


def _bad_request(err: grpc.RpcError) -> list[tuple[str, str]]:
    assert isinstance(err, grpc.Call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status.code == code_pb2.INVALID_ARGUMENT and status.message == err.details()
    [detail] = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


def test_a_field_over_its_limit_names_the_field_in_a_bad_request(server: PdpServer) -> None:
    with server.channel() as ch, pytest.raises(grpc.RpcError) as err:
        dgrpc.DecisionServiceStub(ch).CheckPush(
            push_request("acme", "a" * 5000, config_yaml="a: 1"), timeout=30)
    [(field, description)] = _bad_request(err.value)
    assert field == "agent.id" and "longer than the limit of 256" in description
    assert err.value.details().startswith("agent.id: ")  # the text is as before


def test_an_engine_invalid_request_names_the_field_in_a_bad_request(server: PdpServer) -> None:
    req = push_request("acme", "a1", config_yaml="a: 1",
                       rollout={"id": "r1", "step": 1, "stepPercent": 150})
    with server.channel() as ch, pytest.raises(grpc.RpcError) as err:
        dgrpc.DecisionServiceStub(ch).CheckPush(req, timeout=30)
    [(field, description)] = _bad_request(err.value)
    assert field == "rollout.step_percent" and "between 0 and 100" in description


def test_an_undecodable_request_is_a_bad_request_about_the_whole_message(
        server: PdpServer) -> None:
    with server.channel() as ch:
        call = ch.unary_unary("/pdp.v1.DecisionService/CheckPush",
                              request_serializer=lambda b: b, response_deserializer=bytes)
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=30)  # tenant: invalid UTF-8
    [(field, description)] = _bad_request(err.value)
    assert field == "tenant" and "invalid UTF-8" in description


def _list_services(ch: grpc.Channel, version: str) -> set[str]:
    info = ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    responses = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                     timeout=30)
    return {s.name for r in responses for s in r.list_services_response.service}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_the_services(server: PdpServer, version: str) -> None:
    """v1 and v1alpha messages are the same on the wire: one client serves for both."""
    with server.channel() as ch:
        names = _list_services(ch, version)
    assert names >= SERVICES
    assert {"grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_reflection_v1_describes_services_including_itself(server: PdpServer) -> None:
    with server.channel() as ch:
        info = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        symbols = ["pdp.v1.DecisionService", "grpc.reflection.v1.ServerReflection"]
        responses = list(info(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=s) for s in symbols]), timeout=30))
    assert len(responses) == 2
    for r in responses:
        assert not r.HasField("error_response"), r.error_response
        assert r.file_descriptor_response.file_descriptor_proto


def test_the_v1alpha_stub_still_works(server: PdpServer) -> None:
    with server.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
        assert {s.name for r in responses for s in r.list_services_response.service} >= SERVICES


def test_no_reflection_when_switched_off(tmp_path: Path) -> None:
    srv = PdpServer(tmp_path, args=["--reflection", "false"]).start()
    try:
        with srv.channel() as ch, pytest.raises(grpc.RpcError) as err:
            _list_services(ch, "v1")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    finally:
        srv.stop()
