"""Certificate identities never cross fields: a URI-shaped identity (``://``) matches only a
SAN URI, any other a SAN DNS name, or the subject CN of a certificate with no SAN at all (and
never a CN that looks like a URI). Checked on the Authenticator and on a real `pdp serve`
(whose roles file SIGHUP reloads)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pdp.client import push_request
from pdp.server.auth import Authenticator, Unauthenticated, certificate_names
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.auth.certs import CA, Issued
from tests.support.pdpserver import PdpServer
from tests.support.wait import wait_until

ALICE = "spiffe://example.org/alice"
ADMIN = {"acme": frozenset({"admin"})}
ROLES = {ALICE: {"acme": ["admin"]}, "bob": {"acme": ["admin"]},
         "deployer.example.org": {"acme": ["admin"]}}
PEER = "ipv4:127.0.0.1:1"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def authn(tmp_path_factory: pytest.TempPathFactory) -> Authenticator:
    path = tmp_path_factory.mktemp("roles") / "roles.yaml"
    path.write_text(yaml.safe_dump({"identities": ROLES}))
    return Authenticator(roles_file=str(path))


def pem(issued: Issued) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [issued.cert_pem]}


def roles_of(a: Authenticator, context: dict[str, Any]) -> dict[str, frozenset[str]]:
    return a.authenticate_parts([], context, PEER).roles


def test_a_uri_shaped_cn_never_matches_a_uri_identity(ca: CA, authn: Authenticator) -> None:
    p = authn.authenticate_parts([], pem(ca.issue(ALICE)), PEER)
    assert p.roles == {} and p.identity == ALICE  # named by it, granted nothing


def test_the_cn_is_not_used_when_the_certificate_has_a_san(
        ca: CA, authn: Authenticator) -> None:
    assert roles_of(authn, pem(ca.issue("bob", uris=("spiffe://example.org/mallory",)))) == {}
    assert roles_of(authn, pem(ca.issue("bob", dns=("unlisted.example.org",)))) == {}


def test_each_field_matches_its_own_kind_of_identity(ca: CA, authn: Authenticator) -> None:
    assert roles_of(authn, pem(ca.issue(None, uris=(ALICE,)))) == ADMIN
    assert roles_of(authn, pem(ca.issue("anything", uris=(ALICE,)))) == ADMIN
    assert roles_of(authn, pem(ca.issue(None, dns=("deployer.example.org",)))) == ADMIN
    assert roles_of(authn, pem(ca.issue("bob"))) == ADMIN  # no SAN at all: the CN counts
    # A SAN DNS name is never matched against a URI-shaped identity, nor a SAN URI against
    # a DNS-looking one.
    assert roles_of(authn, pem(ca.issue(None, uris=("bob",)))) == {}


def test_grpc_properties_without_a_pem_follow_the_same_rules(authn: Authenticator) -> None:
    cn_uri = {"x509_common_name": [ALICE.encode()]}
    assert roles_of(authn, cn_uri) == {}
    with_san = {"x509_common_name": [b"bob"],
                "x509_subject_alternative_name": [b"spiffe://example.org/mallory"],
                "peer_uri": [b"spiffe://example.org/mallory"]}
    assert roles_of(authn, with_san) == {}
    typed = {"x509_common_name": [b"x"], "x509_subject_alternative_name": [ALICE.encode()],
             "peer_uri": [ALICE.encode()]}
    assert roles_of(authn, typed) == ADMIN
    names = certificate_names(with_san)
    assert names.candidates() == ["spiffe://example.org/mallory"]
    assert names.all() == ["spiffe://example.org/mallory", "bob"]


def test_authorization_bin_is_refused_with_or_without_auth(ca: CA,
                                                          authn: Authenticator) -> None:
    for a in (Authenticator(), authn):
        for value in (b"Bearer x", b"\x00\x01"):
            with pytest.raises(Unauthenticated, match="not authorization-bin"):
                a.authenticate_parts([("authorization-bin", value)], pem(ca.issue("bob")), PEER)


# -- on a real server --------------------------------------------------------------------------

@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[tuple[PdpServer, CA, Path]]:
    ca = CA()
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    cert, key = ca.issue("localhost", dns=("localhost",), server=True).write(tmp_path, "server")
    roles = tmp_path / "roles.yaml"
    roles.write_text(yaml.safe_dump({"identities": ROLES}))
    probe = ca.issue(None, uris=("spiffe://example.org/probe",))
    server = PdpServer(tmp_path, args=[
        "--tls-cert-file", cert, "--tls-key-file", key,
        "--tls-client-ca-file", str(tmp_path / "ca.crt"), "--auth-roles-file", str(roles)],
        credentials=grpc.ssl_channel_credentials(ca.pem, probe.key_pem, probe.cert_pem))
    server.start()
    try:
        yield server, ca, roles
    finally:
        server.stop()


def _code(server: PdpServer, ca: CA, client: Issued) -> grpc.StatusCode:
    creds = grpc.ssl_channel_credentials(ca.pem, client.key_pem, client.cert_pem)
    with grpc.secure_channel(server.address, creds, options=[
            ("grpc.ssl_target_name_override", "localhost")]) as ch:
        try:
            dgrpc.DecisionServiceStub(ch).CheckPush(
                push_request("acme", "a1", config_yaml="a: 1"), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_fields_do_not_share_a_namespace_on_a_real_server(
        mtls: tuple[PdpServer, CA, Path]) -> None:
    server, ca, _ = mtls
    assert _code(server, ca, ca.issue(None, uris=(ALICE,))) == grpc.StatusCode.OK
    assert _code(server, ca, ca.issue("bob")) == grpc.StatusCode.OK
    denied = grpc.StatusCode.PERMISSION_DENIED  # a verified certificate nobody named
    assert _code(server, ca, ca.issue(ALICE)) == denied
    assert _code(server, ca, ca.issue("bob", uris=("spiffe://example.org/mallory",))) == denied


def test_sighup_reloads_the_roles_file(mtls: tuple[PdpServer, CA, Path]) -> None:
    server, ca, roles = mtls
    alice = ca.issue(None, uris=(ALICE,))
    assert _code(server, ca, alice) == grpc.StatusCode.OK
    roles.write_text(yaml.safe_dump({"identities": {"bob": {"acme": ["admin"]}}}))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _code(server, ca, alice) == grpc.StatusCode.PERMISSION_DENIED,
               "the removed identity refused after SIGHUP")
    assert _code(server, ca, ca.issue("bob")) == grpc.StatusCode.OK
    roles.write_text("identities: [\n")  # broken: the current roles stay
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "auth_reload_failed" in server.log(), "the failed reload logged")
    assert _code(server, ca, ca.issue("bob")) == grpc.StatusCode.OK
    assert _code(server, ca, alice) == grpc.StatusCode.PERMISSION_DENIED
