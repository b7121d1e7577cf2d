"""Authentication and tenant isolation through the real server: mTLS and bearer tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from pdp.client import push_request
from pdp.server.auth import new_token
from pdp.v1 import audit_pb2 as apb
from pdp.v1 import audit_pb2_grpc
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.auth.certs import CA
from tests.support.pdpserver import PdpServer

DENY_ALL = "tenant: acme\nname: deny-all\nrule: {cel: {deny: 'true'}}\n"
NAME_OVERRIDE = [("grpc.ssl_target_name_override", "localhost")]


def _policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "p.yaml").write_text(DENY_ALL)
    return d


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[tuple[PdpServer, CA]]:
    ca = CA()
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    cert, key = ca.issue("localhost", dns=("localhost",), server=True).write(tmp_path, "server")
    roles = tmp_path / "roles.yaml"
    roles.write_text(yaml.safe_dump({"identities": {
        "spiffe://pdp/engine": {"acme": ["checker"]},
        "spiffe://pdp/oncall": {"acme": ["admin"]}}}))
    probe = ca.issue(None, uris=("spiffe://pdp/engine",))
    server = PdpServer(tmp_path, policy_dir=_policies(tmp_path), args=[
        "--tls-cert-file", cert, "--tls-key-file", key,
        "--tls-client-ca-file", str(tmp_path / "ca.crt"), "--auth-roles-file", str(roles)],
        credentials=grpc.ssl_channel_credentials(ca.pem, probe.key_pem, probe.cert_pem))
    server.start()
    try:
        yield server, ca
    finally:
        server.stop()


def _stub(server: PdpServer, ca: CA, uri: str | None) -> dgrpc.DecisionServiceStub:
    if uri is None:
        creds = grpc.ssl_channel_credentials(ca.pem)
    else:
        client = ca.issue(None, uris=(uri,))
        creds = grpc.ssl_channel_credentials(ca.pem, client.key_pem, client.cert_pem)
    return dgrpc.DecisionServiceStub(grpc.secure_channel(server.address, creds,
                                                         options=NAME_OVERRIDE))


def test_mtls_identity_roles_and_overrides(mtls: tuple[PdpServer, CA]) -> None:
    server, ca = mtls
    engine = _stub(server, ca, "spiffe://pdp/engine")
    oncall = _stub(server, ca, "spiffe://pdp/oncall")
    req = push_request("acme", "a1", config_yaml="a: 1", override=("", "incident 7"))
    d = engine.CheckPush(req, timeout=5).decision
    assert d.outcome == cpb.OUTCOME_DENY and not d.overridden  # checker: override ignored
    d = oncall.CheckPush(req, timeout=5).decision
    assert d.outcome == cpb.OUTCOME_ALLOW and d.overridden     # admin: honoured
    with pytest.raises(grpc.RpcError) as err:  # the actor is the caller, not a name sent
        oncall.CheckPush(push_request("acme", "a1", config_yaml="a: 1",
                                      override=("bob", "incident 7")), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spiffe://pdp/oncall" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        engine.CheckPush(push_request("beta", "a1", config_yaml="a: 1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://pdp/engine" in err.value.details() and "beta" in err.value.details()


def test_mtls_refuses_clients_without_a_certificate(mtls: tuple[PdpServer, CA]) -> None:
    server, ca = mtls
    with pytest.raises(grpc.RpcError) as err:
        _stub(server, ca, None).CheckPush(push_request("acme", "a1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        _stub(server, CA("another CA"), "spiffe://pdp/engine").CheckPush(
            push_request("acme", "a1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _token_server(tmp_path: Path) -> tuple[PdpServer, str]:
    """A started server whose one token (returned) is ci-bot's, checker on acme."""
    token, digest = new_token()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"sha256": digest, "identity": "ci-bot", "roles": {"acme": ["checker"]}}]}))
    server = PdpServer(tmp_path, policy_dir=_policies(tmp_path),
                       args=["--auth-tokens-file", str(tokens)]).start()
    return server, token


def test_bearer_tokens_and_tenant_isolation(tmp_path: Path) -> None:
    server, token = _token_server(tmp_path)
    auth = (("authorization", f"Bearer {token}"),)
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            d = stub.CheckPush(push_request("acme", "a1", config_yaml="a: 1"), timeout=5,
                               metadata=auth).decision
            assert d.reasons[0].policy == "deny-all"
            for metadata, code in [((), grpc.StatusCode.UNAUTHENTICATED),
                                   ((("authorization", "Bearer wrong"),),
                                    grpc.StatusCode.UNAUTHENTICATED)]:
                with pytest.raises(grpc.RpcError) as err:
                    stub.CheckPush(push_request("acme", "a1"), timeout=5, metadata=metadata)
                assert err.value.code() == code
            with pytest.raises(grpc.RpcError) as err:
                stub.CheckPush(push_request("beta", "a1"), timeout=5, metadata=auth)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            watch = audit_pb2_grpc.AuditServiceStub(ch).Watch(
                apb.WatchRequest(tenant="beta", from_beginning=True), timeout=5, metadata=auth)
            with pytest.raises(grpc.RpcError) as err:
                next(iter(watch))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop()


@pytest.mark.parametrize("size", [4_000, 200_000])  # refused after decoding / on the wire
def test_a_caller_who_is_not_authenticated_learns_nothing_about_the_request(
        tmp_path: Path, size: int) -> None:
    """Authentication comes first: a request over a field's limit is UNAUTHENTICATED for a
    caller without credentials (not INVALID_ARGUMENT naming the field and its limit, which
    tells the limits to anyone and, for a large one, took a turn in the bulk lane); the
    same request from an authenticated caller is INVALID_ARGUMENT."""
    server, token = _token_server(tmp_path)
    req = push_request("acme", "x" * size, config_yaml="a: 1")
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            codes = {}
            for who, metadata in [("anonymous", ()),
                                  ("wrong", (("authorization", "Bearer wrong"),)),
                                  ("ci-bot", (("authorization", f"Bearer {token}"),))]:
                with pytest.raises(grpc.RpcError) as err:
                    stub.CheckPush(req, timeout=10, metadata=metadata)
                codes[who] = err.value.code()
                if who != "ci-bot":
                    assert "agent" not in (err.value.details() or "")
            assert codes == {"anonymous": grpc.StatusCode.UNAUTHENTICATED,
                             "wrong": grpc.StatusCode.UNAUTHENTICATED,
                             "ci-bot": grpc.StatusCode.INVALID_ARGUMENT}
    finally:
        server.stop()
