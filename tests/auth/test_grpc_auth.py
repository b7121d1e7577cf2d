"""AuthInterceptor on a real grpc.aio server: it authenticates every call and nothing else
(the services authorise); a service that forgets to authorise sends no answer; health without
credentials; unix-socket callers; anonymous access switched off."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pdp.server.auth import Authenticator, AuthInterceptor, hash_token
from pdp.server.roles import ROLES, RPC_PERMISSION
from tests.auth import grpcfake

ROLE_NAMES = sorted(ROLES)
ALL_RPCS = sorted(grpcfake.METHODS)


@contextlib.asynccontextmanager
async def serving(authenticator: Authenticator, address: str = "127.0.0.1:0", *,
                  forgetful: bool = False) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(authenticator)])
    server.add_generic_rpc_handlers(grpcfake.generic_handlers(forgetful))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    await server.start()
    try:
        yield address if address.startswith("unix:") else f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    entries = [{"sha256": hash_token(f"tok-{r}"), "identity": f"{r}-bot",
                "roles": {"acme": [r]}} for r in ROLE_NAMES]
    entries.append({"sha256": hash_token("tok-all"), "identity": "ops",
                    "roles": {"*": ["admin"]}})
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return str(path)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_every_rpc_has_a_permission() -> None:
    assert sorted(RPC_PERMISSION) == ALL_RPCS


async def test_unauthenticated_callers_are_refused_on_every_rpc(tokens_file: str) -> None:
    async with serving(Authenticator(tokens_file=tokens_file)) as target, \
            grpc.aio.insecure_channel(target) as channel:
        for method in ALL_RPCS:
            for meta in ((), md("tok-nope"), (("authorization", "Basic x"),)):
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await grpcfake.call(channel, method, ["acme"], meta)
                assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            n, seen = await grpcfake.call(channel, method, ["acme"], md("tok-all"))
            assert n >= 1 and seen == "ops"


async def test_a_service_that_does_not_authorise_answers_nothing(tokens_file: str) -> None:
    """The backstop: authentication alone never lets an answer out."""
    async with serving(Authenticator(tokens_file=tokens_file), forgetful=True) as target, \
            grpc.aio.insecure_channel(target) as channel:
        for method in ALL_RPCS:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpcfake.call(channel, method, ["acme"], md("tok-all"))
            assert exc.value.code() == grpc.StatusCode.INTERNAL, method
            assert "did not authorise" in (exc.value.details() or "")


async def test_stream_cannot_switch_tenant(tokens_file: str) -> None:
    method = "/pdp.v1.DecisionService/CheckPushStream"
    async with serving(Authenticator(tokens_file=tokens_file)) as target, \
            grpc.aio.insecure_channel(target) as channel:
        n, _ = await grpcfake.call(channel, method, ["acme", "acme", "acme"], md("tok-checker"))
        assert n == 3
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, method, ["acme", "beta"], md("tok-checker"))
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'beta'" in (exc.value.details() or "")
        n, seen = await grpcfake.call(channel, method, ["acme", "beta"], md("tok-all"))
        assert n == 2 and seen == "ops"


async def test_health_needs_no_credentials(tokens_file: str) -> None:
    async with serving(Authenticator(tokens_file=tokens_file)) as target, \
            grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_anonymous_default_decides_and_nothing_else() -> None:
    async with serving(Authenticator()) as target, grpc.aio.insecure_channel(target) as channel:
        _, seen = await grpcfake.call(channel, "/pdp.v1.DecisionService/CheckPush", ["any"])
        assert seen == "anonymous"
        for method in ("/pdp.v1.PolicyAdminService/ActivatePolicy",
                       "/pdp.v1.PolicyAdminService/ListPolicies",
                       "/pdp.v1.AuditService/Watch", "/pdp.v1.DecisionService/RecordEvent"):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpcfake.call(channel, method, ["any"])
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED, method


async def test_anonymous_switched_off() -> None:
    async with serving(Authenticator(anonymous_roles={})) as target, \
            grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, "/pdp.v1.DecisionService/CheckPush", ["any"])
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unix_socket_caller(tmp_path: Path, tokens_file: str) -> None:
    sock = f"unix:{tmp_path / 'pdp.sock'}"
    a = Authenticator(tokens_file=tokens_file, unix_socket_roles={"acme": ["approver"]})
    async with serving(a, sock) as target, grpc.aio.insecure_channel(target) as channel:
        _, seen = await grpcfake.call(
            channel, "/pdp.v1.PolicyAdminService/ApprovePolicy", ["acme"])
        assert seen == "unix-socket"
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, "/pdp.v1.PolicyAdminService/ApprovePolicy", ["beta"])
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _, seen = await grpcfake.call(channel, "/pdp.v1.PolicyAdminService/PutDraft", ["acme"],
                                      md("tok-author"))
        assert seen == "author-bot"
    # The same authenticator over TCP: no unix grant.
    async with serving(a) as target, grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(channel, "/pdp.v1.PolicyAdminService/ApprovePolicy", ["acme"])
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
