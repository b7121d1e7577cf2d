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
    """A fresh random token and its digest: ``(token, sha256_hex)``."""
    token = secrets.token_urlsafe(32)
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


def certificate_identities(auth_context: Mapping[str, Iterable[bytes | str]]) -> list[str]:
    """The peer certificate's identities, most specific first: SAN URIs, SAN DNS names, then
    the subject CN. Empty when the transport carried no client certificate."""
    if not _CERT_KEYS.intersection(auth_context):  # plaintext or TLS without a client cert
        return []
    pems = _texts(auth_context.get("x509_pem_cert", ()))
    if pems:
        from_pem = list(_parse_pem_identities(pems[0]))
        if from_pem:
            return from_pem
    # No PEM (or unparsable): fall back to the properties gRPC extracted itself.
    names: list[str] = []
    sans = _texts(auth_context.get("x509_subject_alternative_name", ()))
    names += [s for s in sans if "://" in s]
    names += [s for s in sans if "://" not in s]
    names += _texts(auth_context.get("x509_common_name", ()))
    return list(dict.fromkeys(n for n in names if n))


@functools.lru_cache(maxsize=1024)
def _parse_pem_identities(pem: str) -> tuple[str, ...]:
    """Parsed once per distinct certificate (a connection sends the same one every call)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return ()
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names += san.get_values_for_type(x509.UniformResourceIdentifier)
        names += san.get_values_for_type(x509.DNSName)
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attr.value
        names.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return tuple(dict.fromkeys(n for n in names if n))
