"""mTLS on a real grpc.aio server, certificates generated at test time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pdp.server import auth, tls
from pdp.server.auth import Authenticator, AuthInterceptor, hash_token
from tests.auth import grpcfake
from tests.auth.certs import CA

ACTIVATE = "/pdp.v1.PolicyAdminService/ActivatePolicy"
CHECK = "/pdp.v1.DecisionService/CheckPush"
WATCH = "/pdp.v1.AuditService/Watch"
PROBE = "/test.Probe/Who"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue = CA(), CA("rogue CA")
    (d / "ca.crt").write_bytes(ca.pem)
    files: dict[str, Any] = {"dir": d, "ca": str(d / "ca.crt")}
    files["server"] = ca.issue("pdp-server", dns=("localhost",), server=True).write(d, "server")
    files["uri"] = ca.issue("ci-client", dns=("ci.example.org",),
                            uris=("spiffe://x/ci",)).write(d, "uri")
    files["dns"] = ca.issue(None, dns=("deployer.example.org",)).write(d, "dns")
    files["cn"] = ca.issue("reader").write(d, "cn")
    files["stranger"] = ca.issue("stranger").write(d, "stranger")
    files["rogue"] = rogue.issue("ci-client", uris=("spiffe://x/ci",)).write(d, "rogue")
    roles = d / "roles.yaml"
    roles.write_text(yaml.safe_dump({"identities": {
        "spiffe://x/ci": {"acme": ["admin"]},
        "deployer.example.org": {"*": ["checker"]},
        "reader": {"beta": ["approver"]},
    }}))
    files["roles"] = str(roles)
    tokens = d / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"sha256": hash_token("tok"), "identity": "ci-bot", "roles": {"acme": ["checker"]}}]}))
    files["tokens"] = str(tokens)
    return files


def probe_handler(authenticator: Authenticator) -> grpc.GenericRpcHandler:
    """A tiny servicer that calls authenticate() itself and answers with what it found."""
    async def who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            p = authenticator.authenticate(context)
        except auth.Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        props = context.auth_context()
        without_pem = {k: v for k, v in props.items() if k != "x509_pem_cert"}
        return yaml.safe_dump({"identity": p.identity, "method": p.method,
                               "roles": {t: sorted(r) for t, r in p.roles.items()},
                               "props": sorted(props),
                               "from_pem": auth.certificate_identities(props),
                               "from_props": auth.certificate_identities(without_pem)}).encode()
    return grpc.method_handlers_generic_handler(
        "test.Probe", {"Who": grpc.unary_unary_rpc_method_handler(who)})


class ProbePassingInterceptor(AuthInterceptor):
    """The probe authenticates by itself; everything else goes through AuthInterceptor."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method == PROBE:
            return await continuation(details)
        return await super().intercept_service(continuation, details)


@contextlib.asynccontextmanager
async def tls_server(pki: dict[str, Any], authenticator: Authenticator,
                     client_auth: tls.ClientAuth = "require") -> AsyncIterator[int]:
    server = grpc.aio.server(interceptors=[ProbePassingInterceptor(authenticator)])
    server.add_generic_rpc_handlers([*grpcfake.generic_handlers(), probe_handler(authenticator)])
    cert, key = pki["server"]
    creds = tls.server_credentials(cert, key, pki["ca"] if client_auth == "require" else None,
                                   client_auth)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


def channel(pki: dict[str, Any], port: int, client: str | None) -> grpc.aio.Channel:
    cert, key = pki[client] if client else (None, None)
    creds = tls.channel_credentials(pki["ca"], cert, key)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


async def who(ch: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
              ) -> dict[str, Any]:
    reply = await ch.unary_unary(PROBE)(b"", metadata=metadata, timeout=5)
    result: dict[str, Any] = yaml.safe_load(reply)
    return result


async def test_mtls_identity_extracted(pki: dict[str, Any]) -> None:
    a = Authenticator(roles_file=pki["roles"], tokens_file=pki["tokens"])
    async with tls_server(pki, a) as port:
        async with channel(pki, port, "uri") as ch:
            got = await who(ch)
            assert got["identity"] == "spiffe://x/ci" and got["method"] == "mtls"
            assert got["roles"] == {"acme": ["admin"]}
            assert "x509_pem_cert" in got["props"]
            assert got["from_pem"] == ["spiffe://x/ci", "ci.example.org", "ci-client"]
            # gRPC's own properties (no PEM) give the same identities.
            assert got["from_props"] == got["from_pem"]
            _, seen = await grpcfake.call(ch, ACTIVATE, ["acme"])
            assert seen == "spiffe://x/ci"
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpcfake.call(ch, WATCH, ["beta"])
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'spiffe://x/ci'" in (exc.value.details() or "")
            # A bearer token on top of the certificate: the token's principal.
            assert (await who(ch, (("authorization", "Bearer tok"),)))["identity"] == "ci-bot"
        async with channel(pki, port, "dns") as ch:
            assert (await who(ch))["identity"] == "deployer.example.org"
            _, seen = await grpcfake.call(ch, CHECK, ["anyone"])
            assert seen == "deployer.example.org"
        async with channel(pki, port, "cn") as ch:
            got = await who(ch)
            assert got["identity"] == "reader" and got["roles"] == {"beta": ["approver"]}
        async with channel(pki, port, "stranger") as ch:
            assert (await who(ch))["roles"] == {}
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await grpcfake.call(ch, CHECK, ["acme"])
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'stranger'" in (exc.value.details() or "")


@pytest.mark.parametrize("client", [None, "rogue"])
async def test_client_without_valid_cert_refused(pki: dict[str, Any], client: str | None) -> None:
    a = Authenticator(roles_file=pki["roles"])
    async with tls_server(pki, a) as port, channel(pki, port, client) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(ch, CHECK, ["acme"])
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # handshake refused


async def test_server_tls_only_with_tokens(pki: dict[str, Any]) -> None:
    a = Authenticator(tokens_file=pki["tokens"])
    async with tls_server(pki, a, "none") as port, channel(pki, port, None) as ch:
        got = await who(ch, (("authorization", "Bearer tok"),))
        assert got["identity"] == "ci-bot" and got["method"] == "token"
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await grpcfake.call(ch, CHECK, ["acme"])
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_config_errors(pki: dict[str, Any], tmp_path: Path) -> None:
    cert, key = pki["server"]
    with pytest.raises(tls.TLSConfigError, match="needs client_ca_file"):
        tls.server_credentials(cert, key, None, "require")
    with pytest.raises(tls.TLSConfigError, match="cannot read"):
        tls.server_credentials(str(tmp_path / "nope.crt"), key, pki["ca"])
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(tls.TLSConfigError, match="not a PEM"):
        tls.server_credentials(cert, str(junk), pki["ca"])
    with pytest.raises(tls.TLSConfigError, match="must be 'require' or 'none'"):
        tls.server_credentials(cert, key, pki["ca"], "optional")  # type: ignore[arg-type]
    with pytest.raises(tls.TLSConfigError, match="both cert_file and key_file"):
        tls.channel_credentials(pki["ca"], cert, None)
    assert tls.credentials_from(tls.TLSFiles(cert, key, pki["ca"])) is not None
    assert tls.server_credentials(cert, key, pki["ca"], True) is not None
