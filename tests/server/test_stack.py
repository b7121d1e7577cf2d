"""ServerStack (the three interceptors as one) on a real grpc.aio server: a unary call gets
what RpcMetricsInterceptor, EdgeInterceptor and AuthInterceptor in a row give it (counted by
status, refused while draining, undecodable requests INVALID_ARGUMENT, escaped exceptions
INTERNAL, callers authenticated, unauthorised answers withheld); streams and health too."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from pdp.server.auth import Authenticator, AuthInterceptor, hash_token
from pdp.server.edges import EdgeInterceptor
from pdp.server.probes import RpcMetricsInterceptor
from pdp.server.stack import ServerStack
from pdp.telemetry import RpcMetrics
from tests.auth import grpcfake
from tests.support.wait import eventually

PUSH = "/pdp.v1.DecisionService/CheckPush"


@contextlib.asynccontextmanager
async def serving(authenticator: Authenticator, *, forgetful: bool = False,
                  extra: list[Any] | None = None
                  ) -> AsyncIterator[tuple[str, ServerStack, CollectorRegistry]]:
    registry = CollectorRegistry()
    stack = ServerStack(RpcMetricsInterceptor(RpcMetrics(registry)), EdgeInterceptor(),
                        AuthInterceptor(authenticator))
    server = grpc.aio.server(interceptors=[stack])
    server.add_generic_rpc_handlers([*(extra or []), *grpcfake.generic_handlers(forgetful)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", stack, registry
    finally:
        await server.stop(None)


async def counted(registry: CollectorRegistry, code: str, n: int) -> None:
    """The server counts a call in its ``finally``, which may run after the client has its
    answer: wait for the count, then check it is exactly ``n``."""
    await eventually(lambda: handled(registry, PUSH, code) >= n, f"{n} calls counted {code}")
    assert handled(registry, PUSH, code) == n


def handled(registry: CollectorRegistry, method: str, code: str) -> float:
    value = registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": method.split("/")[1],
        "grpc_method": method.split("/")[2], "grpc_code": code})
    return value or 0.0


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [
        {"sha256": hash_token("tok-ops"), "identity": "ops", "roles": {"*": ["admin"]}},
        {"sha256": hash_token("tok-checker"), "identity": "bot",
         "roles": {"acme": ["checker"]}}]}))
    return str(path)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_callers_are_authenticated_and_counted(tokens_file: str) -> None:
    async with serving(Authenticator(tokens_file=tokens_file)) as (target, _, registry), \
            grpc.aio.insecure_channel(target) as channel:
        n, seen = await grpcfake.call(channel, PUSH, ["acme"], md("tok-checker"))
        assert (n, seen) == (1, "bot")
        for meta in ((), md("tok-nope")):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpcfake.call(channel, PUSH, ["acme"], meta)
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, PUSH, ["beta"], md("tok-checker"))
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await counted(registry, "OK", 1)
        await counted(registry, "UNAUTHENTICATED", 2)
        await counted(registry, "PERMISSION_DENIED", 1)


async def test_every_rpc_as_through_the_three(tokens_file: str) -> None:
    """Unary and streaming RPCs alike: refused without credentials, answered with them."""
    async with serving(Authenticator(tokens_file=tokens_file)) as (target, _, _r), \
            grpc.aio.insecure_channel(target) as channel:
        for method in sorted(grpcfake.METHODS):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpcfake.call(channel, method, ["acme"])
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            n, seen = await grpcfake.call(channel, method, ["acme"], md("tok-ops"))
            assert n >= 1 and seen == "ops", method


async def test_an_unauthorised_answer_is_not_sent(tokens_file: str) -> None:
    async with serving(Authenticator(tokens_file=tokens_file), forgetful=True) as (
            target, _, registry), grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, PUSH, ["acme"], md("tok-ops"))
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert "did not authorise" in (exc.value.details() or "")
        await counted(registry, "INTERNAL", 1)


async def test_draining_refuses_new_calls_but_not_health() -> None:
    async with serving(Authenticator()) as (target, stack, registry), \
            grpc.aio.insecure_channel(target) as channel:
        stack.edges.drain()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, PUSH, ["acme"])
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        await counted(registry, "UNAVAILABLE", 1)
        assert stack.edges.in_flight == 0
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_undecodable_request_and_escaped_exception() -> None:
    from pdp.v1 import decision_pb2 as dpb

    async def boom(request: Any, context: Any) -> Any:
        raise ValueError("x" * 1000)

    extra = [grpc.method_handlers_generic_handler("test.Boom", {
        "Go": grpc.unary_unary_rpc_method_handler(
            boom, request_deserializer=dpb.CheckPushRequest.FromString,
            response_serializer=dpb.CheckPushResponse.SerializeToString)})]
    async with serving(Authenticator(), extra=extra) as (target, stack, registry), \
            grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await channel.unary_unary(PUSH)(b"\x0a\x02\xff\xfe", timeout=10)  # bad UTF-8
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await counted(registry, "INVALID_ARGUMENT", 1)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await channel.unary_unary("/test.Boom/Go")(b"", timeout=10)
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert (exc.value.details() or "").startswith("internal error: ValueError: xxx")
        assert stack.edges.in_flight == 0
