"""Credentials end to end on a real `pdp serve`: `pdp check` / `pdp health` and the Python
clients with a bearer token (``--token``, ``PDP_TOKEN``, ``token=``) or TLS, and
``authorization-bin`` metadata refused whether or not authentication is configured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from pdp.cli import main as cli_main
from pdp.client import AsyncPdpClient, PdpClient, push_request
from pdp.server.auth import new_token
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.auth.certs import CA
from tests.support.pdpserver import PdpServer

ROOT = Path(__file__).resolve().parents[2]
ALLOW = ROOT / "examples" / "requests" / "push-allow.yaml"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PdpServer, str]]:
    tmp = tmp_path_factory.mktemp("tokens")
    token, digest = new_token()
    tokens = tmp / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"sha256": digest, "identity": "ci-bot", "roles": {"*": ["checker"]}}]}))
    # a generous deadline: these tests are about credentials, and a busy machine stalls
    server = PdpServer(tmp, args=["--auth-tokens-file", str(tokens),
                                  "--deadline-ms", "5000"]).start()
    try:
        yield server, token
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_pdp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PDP_"):
            monkeypatch.delenv(name)


# -- pdp check / pdp health -----------------------------------------------------------------

def test_check_with_token_flag_is_allowed(token_server: tuple[PdpServer, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server, token = token_server
    code = cli_main(["check", "--address", server.address, "--token", token, str(ALLOW)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith("ALLOW decision ")


def test_check_reads_pdp_token_from_the_environment(
        token_server: tuple[PdpServer, str]) -> None:
    server, token = token_server
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "check", "--address",
                          server.address, str(ALLOW)], capture_output=True, text=True,
                         timeout=120, env=_env(PDP_TOKEN=token))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ALLOW decision ")


def test_check_without_a_token_is_unauthenticated_exit_2(
        token_server: tuple[PdpServer, str], capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = token_server
    code = cli_main(["check", "--address", server.address, str(ALLOW)])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    [line] = out.err.strip().splitlines()
    assert line.startswith("pdp check: UNAUTHENTICATED: authentication required"), line
    code = cli_main(["check", "--address", server.address, "--token", "wrong", str(ALLOW)])
    out = capsys.readouterr()
    assert code == 2 and "UNAUTHENTICATED: invalid bearer token" in out.err


def test_health_takes_the_same_credential_flags(
        token_server: tuple[PdpServer, str], capsys: pytest.CaptureFixture[str]) -> None:
    server, token = token_server
    assert cli_main(["health", "--address", server.address, "--token", token]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_check_refuses_a_client_certificate_without_a_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No silent plaintext: a certificate given without --ca-file is an error (exit 2)."""
    code = cli_main(["check", "--address", "127.0.0.1:1", "--cert-file", "c.crt",
                     "--key-file", "c.key", str(ALLOW)])
    err = capsys.readouterr().err
    assert code == 2 and "--ca-file" in err and "Traceback" not in err


# -- Python clients -------------------------------------------------------------------------

def test_pdp_client_sends_its_token_on_every_call(token_server: tuple[PdpServer, str]) -> None:
    server, token = token_server
    with PdpClient(server.address, timeout=10, token=token) as client:
        assert client.check_push("acme", "a1", config_yaml="a: 1").decision_id
        # Calls on the stub itself carry the token too.
        assert client.stub.CheckPush(push_request("acme", "a1"), timeout=10).decision
        assert client.health() == "SERVING"
    with PdpClient(server.address, timeout=10) as client, \
            pytest.raises(grpc.RpcError) as err:
        client.check_push("acme", "a1")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_async_pdp_client_sends_its_token(token_server: tuple[PdpServer, str]) -> None:
    server, token = token_server
    async with AsyncPdpClient(server.address, timeout=10, token=token) as client:
        assert (await client.check_push("acme", "a1", config_yaml="a: 1")).decision_id
        assert (await client.stub.CheckPush(push_request("acme", "a1"), timeout=10)).decision
    async with AsyncPdpClient(server.address, timeout=10) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.check_push("acme", "a1")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- TLS: pdp check and PdpClient with certificates -------------------------------------------

@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[PdpServer, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("mtls")
    ca = CA()
    (tmp / "ca.crt").write_bytes(ca.pem)
    cert, key = ca.issue("localhost", dns=("localhost",), server=True).write(tmp, "server")
    roles = tmp / "roles.yaml"
    roles.write_text(yaml.safe_dump({"identities": {"spiffe://pdp/cli": {"*": ["checker"]}}}))
    client_cert, client_key = ca.issue(None, uris=("spiffe://pdp/cli",)).write(tmp, "client")
    probe = ca.issue(None, uris=("spiffe://pdp/probe",))
    server = PdpServer(tmp, args=[
        "--tls-cert-file", cert, "--tls-key-file", key,
        "--tls-client-ca-file", str(tmp / "ca.crt"), "--auth-roles-file", str(roles),
        "--deadline-ms", "5000"],  # about credentials: a busy machine must not deny
        credentials=grpc.ssl_channel_credentials(ca.pem, probe.key_pem, probe.cert_pem))
    server.start()
    try:
        yield server, {"ca": str(tmp / "ca.crt"), "cert": client_cert, "key": client_key}
    finally:
        server.stop()


def test_check_over_mtls(mtls_server: tuple[PdpServer, dict[str, str]],
                         capsys: pytest.CaptureFixture[str]) -> None:
    server, files = mtls_server
    address = f"localhost:{server.port}"  # the name in the server certificate
    code = cli_main(["check", "--address", address, "--ca-file", files["ca"],
                     "--cert-file", files["cert"], "--key-file", files["key"], str(ALLOW)])
    out = capsys.readouterr()
    assert code == 0, out.err
    # Plaintext to a TLS port: an error, exit 2.
    assert cli_main(["check", "--address", address, "--timeout", "5", str(ALLOW)]) == 2


def test_pdp_client_over_mtls(mtls_server: tuple[PdpServer, dict[str, str]]) -> None:
    server, files = mtls_server
    creds = grpc.ssl_channel_credentials(Path(files["ca"]).read_bytes(),
                                         Path(files["key"]).read_bytes(),
                                         Path(files["cert"]).read_bytes())
    with PdpClient(server.address, timeout=10, credentials=creds,
                   options=[("grpc.ssl_target_name_override", "localhost")]) as client:
        assert client.check_push("acme", "a1", config_yaml="a: 1").decision_id


async def test_async_pdp_client_over_mtls(
        mtls_server: tuple[PdpServer, dict[str, str]]) -> None:
    server, files = mtls_server
    creds = grpc.ssl_channel_credentials(Path(files["ca"]).read_bytes(),
                                         Path(files["key"]).read_bytes(),
                                         Path(files["cert"]).read_bytes())
    async with AsyncPdpClient(server.address, timeout=10, credentials=creds,
                              options=[("grpc.ssl_target_name_override", "localhost")]
                              ) as client:
        assert (await client.check_push("acme", "a1", config_yaml="a: 1")).decision_id


# -- authorization-bin ------------------------------------------------------------------------

BIN = (("authorization-bin", b"Bearer not-a-token"),)


def _refused_bin(server: PdpServer) -> None:
    with server.channel() as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.CheckPush(push_request("acme", "a1"), timeout=10, metadata=BIN)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = err.value.details() or ""
    assert "authorization-bin" in details and "authorization: Bearer" in details, details


def test_authorization_bin_is_refused_without_auth_configured(tmp_path: Path) -> None:
    server = PdpServer(tmp_path).start()  # anonymous callers are let in ...
    try:
        with server.channel() as ch:
            dgrpc.DecisionServiceStub(ch).CheckPush(push_request("acme", "a1"), timeout=10)
        _refused_bin(server)  # ... but a credential sent is checked, never ignored
    finally:
        server.stop()


def test_authorization_bin_is_refused_with_tokens(token_server: tuple[PdpServer, str]) -> None:
    server, token = token_server
    _refused_bin(server)
    with server.channel() as ch, pytest.raises(grpc.RpcError) as err:
        # Even beside a valid text token.
        dgrpc.DecisionServiceStub(ch).CheckPush(
            push_request("acme", "a1"), timeout=10,
            metadata=(("authorization", f"Bearer {token}"), *BIN))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
