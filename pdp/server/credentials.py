"""The credential files and certificates that say who a caller is.

Bearer tokens are stored as sha256 hex digests (``tokens_file``), so the file never holds a
usable secret::

    tokens:
      - sha256: 9f86d081884c7d65...   # sha256 of the token, hex
        identity: ci-bot
        roles: {acme: [checker, author]}

Certificate identities map to roles in ``roles_file``::

    identities:
      spiffe://example.org/ci: {acme: [admin]}
      deployer.example.org: {"*": [rollout-engine]}

An identity with ``://`` matches only a certificate's SAN URI; any other identity matches a
SAN DNS name, or the subject CN of a certificate without any subjectAltName
(:class:`CertificateNames`).

A bad file is refused whole, naming the file and the entry (:class:`AuthConfigError`).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdp.server.roles import ROLES, Principal


class AuthConfigError(ValueError):
    """A tokens or roles file is unreadable or invalid; the message names file and entry."""


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in the tokens file for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and its digest: ``(token, sha256_hex)``.

    The ``pdp_`` prefix: a token never starts with ``-`` (``--token -Xy…`` would be read as
    an option), and a leaked one is easy to recognise (secret scanners, logs)."""
    token = "pdp_" + secrets.token_urlsafe(32)
    return token, hash_token(token)


@dataclass(frozen=True)
class TokenEntry:
    digest: bytes
    principal: Principal


def _read_yaml(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AuthConfigError(f"{what} {path}: invalid YAML: {exc}") from None


def parse_roles(value: Any, where: str) -> dict[str, frozenset[str]]:
    """``{tenant: [role, ...]}`` checked against the known role names."""
    if not isinstance(value, Mapping):
        raise AuthConfigError(f"{where}: roles must be a map of tenant -> list of roles")
    out: dict[str, frozenset[str]] = {}
    for tenant, roles in value.items():
        if not isinstance(tenant, str) or not tenant:
            raise AuthConfigError(f"{where}: tenant {tenant!r} must be a non-empty string")
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthConfigError(f"{where}: roles of tenant {tenant!r} must be a list of names")
        unknown = sorted(set(roles) - ROLES)
        if unknown:
            raise AuthConfigError(f"{where}: unknown role(s) {', '.join(unknown)} for tenant"
                                  f" {tenant!r}; roles are {', '.join(sorted(ROLES))}")
        out[tenant] = frozenset(roles)
    return out


def load_tokens(path: str) -> list[TokenEntry]:
    data = _read_yaml(path, "tokens_file")
    if not isinstance(data, Mapping) or not isinstance(data.get("tokens"), list):
        raise AuthConfigError(f"tokens_file {path}: expected a top-level 'tokens:' list")
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(data["tokens"]):
        where = f"tokens_file {path}: tokens[{i}]"
        if not isinstance(item, Mapping):
            raise AuthConfigError(f"{where}: expected a map with sha256, identity, roles")
        digest = item.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64:
            raise AuthConfigError(f"{where}: sha256 must be 64 hex characters (the token's"
                                  " sha256, never the token itself)")
        digest = digest.lower()
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raise AuthConfigError(f"{where}: sha256 is not hexadecimal") from None
        if digest in seen:
            raise AuthConfigError(f"{where}: duplicate sha256")
        seen.add(digest)
        identity = item.get("identity")
        if not isinstance(identity, str) or not identity:
            raise AuthConfigError(f"{where}: identity must be a non-empty string")
        roles = parse_roles(item.get("roles", {}), f"{where} ({identity})")
        entries.append(TokenEntry(raw, Principal(identity, roles, "token")))
    return entries


def load_identities(path: str) -> dict[str, dict[str, frozenset[str]]]:
    data = _read_yaml(path, "roles_file")
    if not isinstance(data, Mapping) or not isinstance(data.get("identities"), Mapping):
        raise AuthConfigError(f"roles_file {path}: expected a top-level 'identities:' map")
    out: dict[str, dict[str, frozenset[str]]] = {}
    for identity, roles in data["identities"].items():
        if not isinstance(identity, str) or not identity:
            raise AuthConfigError(f"roles_file {path}: identity {identity!r} must be a"
                                  " non-empty string")
        out[identity] = parse_roles(roles, f"roles_file {path}: {identity}")
    return out


def _texts(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]


_CERT_KEYS = frozenset({"x509_pem_cert", "x509_subject_alternative_name", "x509_common_name"})


def is_uri_identity(name: str) -> bool:
    """A URI-shaped identity (``spiffe://...``): only a certificate's SAN URI can have it."""
    return "://" in name


@dataclass(frozen=True)
class CertificateNames:
    """A client certificate's names, each kept with the field it came from.

    Which names may be looked up in the roles file (:meth:`candidates`), so that names from
    different fields never meet: a SAN URI only as a URI-shaped identity (with ``://``), a
    SAN DNS name only as any other identity, and the subject CN only when the certificate
    has no subjectAltName at all (as TLS hostname verification, RFC 6125) and never when
    the CN looks like a URI.
    """

    uris: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()
    has_san: bool = False

    def __bool__(self) -> bool:
        return bool(self.all())

    def candidates(self) -> list[str]:
        """The names that may match a roles file entry, most specific first."""
        names = [u for u in self.uris if is_uri_identity(u)]
        names += [d for d in self.dns_names if not is_uri_identity(d)]
        if not self.has_san:
            names += [c for c in self.common_names if not is_uri_identity(c)]
        return list(dict.fromkeys(n for n in names if n))

    def all(self) -> list[str]:
        """Every name, most specific first: SAN URIs, SAN DNS names, then the subject CN
        (what the certificate is called in messages, not what it may be matched as)."""
        return list(dict.fromkeys(
            n for n in (*self.uris, *self.dns_names, *self.common_names) if n))


def certificate_names(auth_context: Mapping[str, Iterable[bytes | str]]) -> CertificateNames:
    """The peer certificate's names by field; empty (false) when the transport carried no
    client certificate."""
    if not _CERT_KEYS.intersection(auth_context):  # plaintext or TLS without a client cert
        return CertificateNames()
    pems = _texts(auth_context.get("x509_pem_cert", ()))
    if pems:
        from_pem = _parse_pem_names(pems[0])
        if from_pem is not None:
            return from_pem
    # No PEM (or unparsable): the properties gRPC extracted itself. peer_uri / peer_dns keep
    # the SAN's type; the untyped x509_subject_alternative_name is split by shape.
    sans = _texts(auth_context.get("x509_subject_alternative_name", ()))
    if "peer_uri" in auth_context or "peer_dns" in auth_context:
        uris = _texts(auth_context.get("peer_uri", ()))
        dns = _texts(auth_context.get("peer_dns", ()))
    else:
        uris = [s for s in sans if is_uri_identity(s)]
        dns = [s for s in sans if not is_uri_identity(s)]
    return CertificateNames(tuple(uris), tuple(dns),
                            tuple(_texts(auth_context.get("x509_common_name", ()))),
                            has_san=bool(sans or uris or dns))


def certificate_identities(auth_context: Mapping[str, Iterable[bytes | str]]) -> list[str]:
    """The peer certificate's identities, most specific first: SAN URIs, SAN DNS names, then
    the subject CN. Empty when the transport carried no client certificate. (Which of them
    may match the roles file: :meth:`CertificateNames.candidates`.)"""
    return certificate_names(auth_context).all()


@functools.lru_cache(maxsize=1024)
def _parse_pem_names(pem: str) -> CertificateNames | None:
    """Parsed once per distinct certificate (a connection sends the same one every call);
    None when the PEM is not a certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return None
    uris: list[str] = []
    dns: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        has_san = False
    else:
        has_san = len(san) > 0
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    cns: list[str] = []
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attr.value
        cns.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return CertificateNames(tuple(uris), tuple(dns), tuple(cns), has_san=has_san)
