"""Bearer tokens, roles file, certificate identities, unix sockets, anonymous access."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.server import auth
from pdp.server.auth import (
    AuthConfigError,
    Authenticator,
    Principal,
    Unauthenticated,
    hash_token,
)
from pdp.server.roles import Permission, PermissionDenied, require
from tests.auth.certs import CA


def write_tokens(tmp_path: Path, entries: list[dict[str, Any]]) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return str(path)


def write_roles(tmp_path: Path, identities: dict[str, Any]) -> str:
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump({"identities": identities}))
    return str(path)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    return write_tokens(tmp_path, [
        {"sha256": hash_token("s3cret-ci"), "identity": "ci-bot",
         "roles": {"acme": ["checker", "author"]}},
        {"sha256": hash_token("s3cret-ops").upper(), "identity": "ops",
         "roles": {"*": ["admin"]}},
    ])


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    token, digest = auth.new_token()
    assert len(token) >= 40 and digest == hash_token(token)


def test_valid_tokens(tokens_file: str) -> None:
    a = Authenticator(tokens_file=tokens_file)
    assert a.require_auth  # configured credentials -> required by default
    p = a.authenticate_parts(bearer("s3cret-ci"), {}, "ipv4:127.0.0.1:5")
    assert p == Principal("ci-bot", {"acme": frozenset({"checker", "author"})}, "token")
    ops = a.authenticate_parts([("Authorization", "bearer  s3cret-ops ")], {}, "ipv6:[::1]:1")
    assert ops.identity == "ops" and ops.caller("anything").is_admin


@pytest.mark.parametrize("metadata", [
    bearer("wrong"),
    bearer("s3cret-ci "[:-2]),
    bearer(hash_token("s3cret-ci")),  # the digest is not the token
    [("authorization", "Basic czNjcmV0LWNp")],
    [("authorization", "Bearer")],
    [("authorization", "s3cret-ci")],
    bearer("s3cret-ci") + bearer("s3cret-ci"),
])
def test_bad_token_unauthenticated(tokens_file: str, metadata: list[tuple[str, str]]) -> None:
    a = Authenticator(tokens_file=tokens_file)
    with pytest.raises(Unauthenticated):
        a.authenticate_parts(metadata, {}, "ipv4:127.0.0.1:5")


def test_bad_token_refused_even_when_auth_optional(tokens_file: str) -> None:
    a = Authenticator(tokens_file=tokens_file, require_auth=False)
    with pytest.raises(Unauthenticated, match="invalid bearer token"):
        a.authenticate_parts(bearer("nope"), {}, "ipv4:1.2.3.4:5")
    assert a.authenticate_parts([], {}, "ipv4:1.2.3.4:5").identity == "anonymous"
    plain = Authenticator()
    with pytest.raises(Unauthenticated, match="no tokens_file"):
        plain.authenticate_parts(bearer("x"), {}, "ipv4:1.2.3.4:5")


def test_missing_credentials_when_required(tokens_file: str) -> None:
    a = Authenticator(tokens_file=tokens_file)
    with pytest.raises(Unauthenticated, match="authentication required"):
        a.authenticate_parts([], {}, "ipv4:127.0.0.1:5")
    with pytest.raises(Unauthenticated):
        a.authenticate_parts([("x-other", "1")], {}, "unix:/tmp/pdp.sock")


def test_every_digest_compared_in_constant_time(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first, the last and no entry take the same number of
    hmac.compare_digest calls, all on 32-byte digests."""
    entries = [{"sha256": hash_token(f"t{i}"), "identity": f"id{i}", "roles": {}}
               for i in range(20)]
    a = Authenticator(tokens_file=write_tokens(tmp_path, entries))
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(x: bytes, y: bytes) -> bool:
        calls.append((len(x), len(y)))
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for token, ident in (("t0", "id0"), ("t19", "id19"), ("bad", None)):
        calls.clear()
        if ident is None:
            with pytest.raises(Unauthenticated):
                a.principal_for_token(token)
        else:
            assert a.principal_for_token(token).identity == ident
        assert calls == [(32, 32)] * 20


@pytest.mark.parametrize(("entries", "match"), [
    ([{"sha256": "abc", "identity": "x", "roles": {}}], "64 hex"),
    ([{"sha256": "z" * 64, "identity": "x", "roles": {}}], "not hexadecimal"),
    ([{"sha256": hash_token("a"), "roles": {}}], "identity"),
    ([{"sha256": hash_token("a"), "identity": "x", "roles": {"acme": ["root"]}}],
     "unknown role"),
    ([{"sha256": hash_token("a"), "identity": "x", "roles": ["checker"]}], "map of tenant"),
    ([{"sha256": hash_token("a"), "identity": "x", "roles": {}},
      {"sha256": hash_token("a"), "identity": "y", "roles": {}}], "duplicate"),
])
def test_invalid_tokens_file(tmp_path: Path, entries: list[dict[str, Any]], match: str) -> None:
    path = write_tokens(tmp_path, entries)
    with pytest.raises(AuthConfigError, match=match) as exc:
        Authenticator(tokens_file=path)
    assert path in str(exc.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        Authenticator(tokens_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens: [\n")
    with pytest.raises(AuthConfigError, match="invalid YAML"):
        Authenticator(tokens_file=str(bad))
    with pytest.raises(AuthConfigError, match="'identities:'"):
        Authenticator(roles_file=write_tokens(tmp_path, []))  # a tokens file, not roles


def test_reload_picks_up_changes_and_keeps_old_on_error(tmp_path: Path) -> None:
    path = write_tokens(tmp_path, [{"sha256": hash_token("old"), "identity": "a", "roles": {}}])
    a = Authenticator(tokens_file=path)
    write_tokens(tmp_path, [{"sha256": hash_token("new"), "identity": "b", "roles": {}}])
    assert a.principal_for_token("old").identity == "a"  # read once at start
    a.reload()
    assert a.principal_for_token("new").identity == "b"
    with pytest.raises(Unauthenticated):
        a.principal_for_token("old")
    Path(path).write_text("tokens: 3\n")
    with pytest.raises(AuthConfigError):
        a.reload()
    assert a.principal_for_token("new").identity == "b"


# --- certificates -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


def pem_context(pem: bytes) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem]}


def test_certificate_identity_order(ca: CA) -> None:
    both = ca.issue("ci-client", dns=("ci.example.org",), uris=("spiffe://x/ci",))
    assert auth.certificate_identities(pem_context(both.cert_pem)) == [
        "spiffe://x/ci", "ci.example.org", "ci-client"]
    cn_only = ca.issue("just-cn")
    assert auth.certificate_identities(pem_context(cn_only.cert_pem)) == ["just-cn"]
    # Without a PEM: the properties gRPC extracted.
    props = {"x509_common_name": [b"cn"],
             "x509_subject_alternative_name": [b"dns.example", b"spiffe://x/y"]}
    assert auth.certificate_identities(props) == ["spiffe://x/y", "dns.example", "cn"]
    assert auth.certificate_identities({"transport_security_type": [b"insecure"]}) == []


def test_roles_file_maps_certificate(tmp_path: Path, ca: CA) -> None:
    roles = write_roles(tmp_path, {"spiffe://x/ci": {"acme": ["admin"]},
                                   "deployer": {"*": ["checker"]}})
    a = Authenticator(roles_file=roles)
    assert a.require_auth
    both = ca.issue("deployer", uris=("spiffe://x/ci",))
    p = a.authenticate_parts([], pem_context(both.cert_pem), "ipv4:127.0.0.1:1")
    assert p == Principal("spiffe://x/ci", {"acme": frozenset({"admin"})}, "mtls")
    cn = a.authenticate_parts([], pem_context(ca.issue("deployer").cert_pem), "ipv4:1.1.1.1:1")
    assert cn.identity == "deployer" and cn.roles_on("zzz") == {"checker"}
    stranger = a.authenticate_parts([], pem_context(ca.issue("who").cert_pem), "ipv4:1.1.1.1:1")
    assert stranger.identity == "who" and stranger.roles == {}
    with pytest.raises(PermissionDenied, match="'who' needs role 'admin' or 'checker'"):
        require(stranger, Permission.DECIDE, "acme")
    # A token wins over the certificate when both are presented.
    with pytest.raises(Unauthenticated):
        a.authenticate_parts(bearer("x"), pem_context(both.cert_pem), "ipv4:1.1.1.1:1")


def test_unknown_certificate_gets_anonymous_roles_when_optional(tmp_path: Path, ca: CA) -> None:
    a = Authenticator(roles_file=write_roles(tmp_path, {}), require_auth=False)
    p = a.authenticate_parts([], pem_context(ca.issue("who").cert_pem), "ipv4:1.1.1.1:1")
    assert p.identity == "who" and p.roles_on("acme") == {"checker"}


# --- unix socket and anonymous ------------------------------------------------------------

def test_unix_socket_principal(tokens_file: str) -> None:
    a = Authenticator(tokens_file=tokens_file, unix_socket_roles={"acme": ["checker"]})
    p = a.authenticate_parts([], {}, "unix:/run/pdp.sock")
    assert p.identity == "unix-socket" and p.method == "unix"
    assert p.roles_on("acme") == {"checker"} and p.roles_on("beta") == frozenset()
    with pytest.raises(Unauthenticated):
        a.authenticate_parts([], {}, "ipv4:127.0.0.1:9")
    # An explicit token over the socket is still the token's principal.
    assert a.authenticate_parts(bearer("s3cret-ci"), {}, "unix:").identity == "ci-bot"
    with pytest.raises(AuthConfigError, match="unknown role"):
        Authenticator(unix_socket_roles={"acme": ["superuser"]})


def test_anonymous_default_is_checker_never_admin() -> None:
    a = Authenticator()
    assert not a.require_auth
    p = a.authenticate_parts(None, {}, "ipv4:127.0.0.1:1")
    assert p.identity == "anonymous" and p.method == "anonymous"
    require(p, Permission.DECIDE, "acme")
    require(p, Permission.DECIDE, "other")
    assert not p.caller("acme").is_admin
    for permission in set(Permission) - {Permission.DECIDE}:  # decisions, nothing else
        with pytest.raises(PermissionDenied, match="'anonymous'"):
            require(p, permission, "acme")


def test_configurable_anonymous_and_forced_auth() -> None:
    a = Authenticator(anonymous_roles={"acme": ["checker", "author"]})
    p = a.authenticate_parts([], {}, "ipv4:127.0.0.1:1")
    assert p.roles_on("acme") == {"checker", "author"} and p.roles_on("beta") == frozenset()
    # No anonymous roles at all: callers without credentials are not let in, decisions
    # included (the setting auth_anonymous_roles: "").
    none = Authenticator(anonymous_roles={})
    assert not none.anonymous_allowed
    with pytest.raises(Unauthenticated, match="authentication required"):
        none.authenticate_parts([], {}, "ipv4:1.1.1.1:1")
    with pytest.raises(Unauthenticated):
        Authenticator(require_auth=True).authenticate_parts([], {}, "ipv4:127.0.0.1:1")
