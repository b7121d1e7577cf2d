"""Who is calling, and may they do this: authentication and per-tenant authorization.

Credentials, tried in this order by :meth:`Authenticator.authenticate`:

1. **Bearer token** -- ``authorization: Bearer <token>`` metadata. Tokens are stored as
   sha256 hex digests in a YAML file (``tokens_file``)::

       tokens:
         - sha256: 9f86d081884c7d65...   # sha256 of the token, hex
           identity: ci-bot
           roles: {acme: [checker, author]}

   A presented token is hashed and compared with *every* stored digest in constant time
   (``hmac.compare_digest``; no early exit). A token that is presented but not valid is always
   refused (``Unauthenticated``), even when authentication is optional: a client that sends a
   credential expects it to be checked, never silently downgraded.
2. **Client certificate (mTLS)** -- the verified peer certificate's identities, taken from
   ``context.auth_context()``: SAN URIs (e.g. SPIFFE ids), then SAN DNS names, then the
   subject CN. The first one named in the roles file (``roles_file``) gives the roles::

       identities:
         spiffe://example.org/ci: {acme: [admin]}
         deployer.example.org: {"*": [checker]}

   A verified certificate whose identities are all unknown authenticates (we know who it is)
   but carries no roles -- every RPC is then PERMISSION_DENIED naming that identity -- unless
   authentication is optional, in which case it gets the anonymous roles.
3. **Unix socket** -- a caller whose peer starts with ``unix:`` gets ``unix_socket_roles``
   when those are configured (the sidecar case: only processes that can open the socket file
   reach it).
4. **Anonymous** -- when authentication is not required (the embedded default), everyone
   else gets ``anonymous_roles`` (default: ``checker`` on every tenant, so ``pdp serve`` with
   no settings answers CheckPush; never admin unless configured so).

Roles are per tenant; the tenant ``"*"`` means every tenant. ``admin`` implies every other
role on its tenant. Read RPCs (Get/List/History/Watch) need *any* role on the tenant.
:data:`REQUIRED_ROLE` is the one table mapping each RPC to the role it needs.

Request tenants: ``tenant_of(request)``. An empty tenant (e.g. ``Watch`` of all tenants) is
only allowed to principals holding the role on ``"*"``.

Wiring: :class:`AuthInterceptor` authenticates every call, authorizes it against the tenant
of each request message (every message of a client stream), aborts with UNAUTHENTICATED /
PERMISSION_DENIED, and makes the principal available to the servicer through
:func:`current_principal` / :func:`current_caller`.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from pdp.engine.request import Caller
from pdp.server.limits import status_text

# --- roles and the RPC table --------------------------------------------------------------

CHECKER = "checker"
AUTHOR = "author"
APPROVER = "approver"
ADMIN = "admin"
ROLES: frozenset[str] = frozenset({CHECKER, AUTHOR, APPROVER, ADMIN})
#: Pseudo-role in :data:`REQUIRED_ROLE`: any real role on the tenant will do.
READ = "read"
#: Tenant key meaning "every tenant".
ALL_TENANTS = "*"

_DECISION = "/pdp.v1.DecisionService/"
_ADMIN = "/pdp.v1.PolicyAdminService/"
_AUDIT = "/pdp.v1.AuditService/"

#: Full gRPC method name -> role needed on the request's tenant. Every RPC of
#: proto/pdp/v1/{decision,admin,audit}.proto is here; a method missing from this table is
#: refused (fail-closed), except the :data:`PUBLIC_SERVICES` prefixes.
REQUIRED_ROLE: dict[str, str] = {
    _DECISION + "CheckPush": CHECKER,
    _DECISION + "CheckPushBatch": CHECKER,
    _DECISION + "CheckPushStream": CHECKER,
    _DECISION + "CheckDevice": CHECKER,
    _DECISION + "CheckRollout": CHECKER,
    _DECISION + "RecordEvent": CHECKER,
    _DECISION + "EvaluateHealth": CHECKER,
    _ADMIN + "PutDraft": AUTHOR,
    _ADMIN + "ValidatePolicy": AUTHOR,
    _ADMIN + "ApprovePolicy": APPROVER,
    _ADMIN + "ActivatePolicy": ADMIN,
    _ADMIN + "RetirePolicy": ADMIN,
    _ADMIN + "ReactivatePolicy": ADMIN,
    _ADMIN + "SetBuiltinRelaxed": ADMIN,
    _ADMIN + "GetPolicy": READ,
    _ADMIN + "ListPolicies": READ,
    _ADMIN + "GetPolicyHistory": READ,
    _AUDIT + "Watch": READ,
}

#: Services that need no credentials at all (probes, tooling).
PUBLIC_SERVICES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_SERVICES)


def short_method(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


# --- errors -------------------------------------------------------------------------------


class AuthError(Exception):
    """Base of the errors below; ``str()`` is the message for the caller."""


class Unauthenticated(AuthError):
    """Missing, malformed or unknown credentials -> UNAUTHENTICATED."""


class PermissionDenied(AuthError):
    """Known caller without the role the RPC needs on that tenant -> PERMISSION_DENIED."""


class AuthConfigError(ValueError):
    """A tokens or roles file is unreadable or invalid; the message names file and entry."""


# --- principal ----------------------------------------------------------------------------


def _freeze_roles(roles: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    return {tenant: frozenset(rs) for tenant, rs in roles.items()}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: identity and roles per tenant (``"*"`` = every tenant)."""

    identity: str
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: How the caller was authenticated: token, mtls, unix, anonymous.
    method: str = "anonymous"

    def roles_on(self, tenant: str) -> frozenset[str]:
        """Roles held on ``tenant`` (its own plus ``"*"``); ``admin`` expands to all roles.

        The empty tenant (a request for all tenants) only gets the ``"*"`` roles.
        """
        held = self.roles.get(ALL_TENANTS, frozenset())
        if tenant and tenant != ALL_TENANTS:
            held = held | self.roles.get(tenant, frozenset())
        if ADMIN in held:
            return ROLES
        return held & ROLES

    def has_role(self, tenant: str, role: str) -> bool:
        held = self.roles_on(tenant)
        if role == READ:
            return bool(held)
        return role in held

    def caller(self, tenant: str) -> Caller:
        """The engine's view of this principal for one request's tenant."""
        return Caller(identity=self.identity, roles=self.roles_on(tenant))

    def describe_roles(self) -> str:
        parts = [f"{', '.join(sorted(rs))} on {'all tenants' if t == ALL_TENANTS else repr(t)}"
                 for t, rs in sorted(self.roles.items()) if rs]
        return "; ".join(parts) if parts else "no roles"


DEFAULT_ANONYMOUS_ROLES: Mapping[str, frozenset[str]] = {ALL_TENANTS: frozenset({CHECKER})}


def authorize(principal: Principal, method: str, tenant: str) -> None:
    """Raise :class:`PermissionDenied` unless ``principal`` may call ``method`` on ``tenant``.

    Unknown methods are refused (fail-closed); public services (health, reflection) pass.
    """
    if is_public(method):
        return
    role = REQUIRED_ROLE.get(method)
    if role is None:
        raise PermissionDenied(f"{method}: no access rule for this method; refused")
    if principal.has_role(tenant, role):
        return
    need = "any role" if role == READ else f"role {role!r}"
    where = (f"tenant {tenant!r}" if tenant
             else "every tenant (the request names no tenant)")
    raise PermissionDenied(
        f"{principal.identity!r} needs {need} on {where} for {short_method(method)};"
        f" has {principal.describe_roles()}")


# --- tokens -------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in the tokens file for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and its digest: ``(token, sha256_hex)``."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


@dataclass(frozen=True)
class _TokenEntry:
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


def _parse_roles(value: Any, where: str) -> dict[str, frozenset[str]]:
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


def load_tokens(path: str) -> list[_TokenEntry]:
    data = _read_yaml(path, "tokens_file")
    if not isinstance(data, Mapping) or not isinstance(data.get("tokens"), list):
        raise AuthConfigError(f"tokens_file {path}: expected a top-level 'tokens:' list")
    entries: list[_TokenEntry] = []
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
        roles = _parse_roles(item.get("roles", {}), f"{where} ({identity})")
        entries.append(_TokenEntry(raw, Principal(identity, roles, "token")))
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
        out[identity] = _parse_roles(roles, f"roles_file {path}: {identity}")
    return out


# --- peer certificate identities ----------------------------------------------------------


def _texts(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]


def certificate_identities(auth_context: Mapping[str, Iterable[bytes | str]]) -> list[str]:
    """The peer certificate's identities, most specific first: SAN URIs, SAN DNS names, then
    the subject CN. Empty when the transport carried no client certificate."""
    pems = _texts(auth_context.get("x509_pem_cert", ()))
    if pems:
        from_pem = _identities_from_pem(pems[0])
        if from_pem:
            return from_pem
    # No PEM (or unparsable): fall back to the properties gRPC extracted itself.
    names: list[str] = []
    sans = _texts(auth_context.get("x509_subject_alternative_name", ()))
    names += [s for s in sans if "://" in s]
    names += [s for s in sans if "://" not in s]
    names += _texts(auth_context.get("x509_common_name", ()))
    return list(dict.fromkeys(n for n in names if n))


def _identities_from_pem(pem: str) -> list[str]:
    return list(_parse_pem_identities(pem))


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


# --- the authenticator --------------------------------------------------------------------


def _metadata_value(metadata: Iterable[Any] | None, key: str) -> list[str]:
    values: list[str] = []
    for item in metadata or ():
        k, v = (item.key, item.value) if hasattr(item, "key") else (item[0], item[1])
        if isinstance(k, str) and k.lower() == key:
            values.append(v.decode("latin-1") if isinstance(v, bytes) else str(v))
    return values


class Authenticator:
    """Turns a call's credentials into a :class:`Principal`; see the module doc for the rules.

    ``require_auth=None`` means: required as soon as a tokens file or a roles file is
    configured, anonymous access otherwise. Files are read once here; :meth:`reload`
    re-reads them (atomically: a bad file leaves the previous state in force).
    """

    def __init__(self, tokens_file: str | None = None, roles_file: str | None = None,
                 unix_socket_roles: Mapping[str, Iterable[str]] | None = None,
                 anonymous_roles: Mapping[str, Iterable[str]] | None = None,
                 require_auth: bool | None = None, *,
                 anonymous_identity: str = "anonymous",
                 unix_socket_identity: str = "unix-socket") -> None:
        self.tokens_file = tokens_file
        self.roles_file = roles_file
        self.require_auth = (bool(tokens_file or roles_file) if require_auth is None
                             else require_auth)
        self.unix_principal = (
            None if unix_socket_roles is None else Principal(
                unix_socket_identity,
                _parse_roles(unix_socket_roles, "unix_socket_roles"), "unix"))
        self.anonymous = Principal(
            anonymous_identity,
            _freeze_roles(DEFAULT_ANONYMOUS_ROLES) if anonymous_roles is None
            else _parse_roles(anonymous_roles, "anonymous_roles"), "anonymous")
        self._lock = threading.Lock()
        self._tokens: list[_TokenEntry] = []
        self._identities: dict[str, dict[str, frozenset[str]]] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the tokens and roles files. Raises :class:`AuthConfigError` (and keeps the
        previous configuration) when one of them is invalid."""
        tokens = load_tokens(self.tokens_file) if self.tokens_file else []
        identities = load_identities(self.roles_file) if self.roles_file else {}
        with self._lock:
            self._tokens, self._identities = tokens, identities

    # -- credentials

    def principal_for_token(self, token: str) -> Principal:
        """The token's principal; :class:`Unauthenticated` when no stored digest matches.

        Every stored digest is compared (constant time each, no early exit), so the time
        taken does not depend on which entry matched or how much of a digest did.
        """
        if not self.tokens_file:
            raise Unauthenticated("bearer token presented, but this server has no tokens_file"
                                  " configured")
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for entry in self._tokens:
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        if found is None:
            raise Unauthenticated("invalid bearer token")
        return found

    def principal_for_certificate(self, identities: list[str]) -> Principal:
        """Roles of the first identity named in the roles file; an unknown certificate gets no
        roles (or the anonymous roles when authentication is optional)."""
        known = self._identities
        for name in identities:
            roles = known.get(name)
            if roles is not None:
                return Principal(name, roles, "mtls")
        roles = {} if self.require_auth else dict(self.anonymous.roles)
        return Principal(identities[0], roles, "mtls")

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller of this RPC, or :class:`Unauthenticated`."""
        return self.authenticate_parts(
            context.invocation_metadata(), _auth_context(context), context.peer())

    def authenticate_parts(self, metadata: Iterable[Any] | None,
                           auth_context: Mapping[str, Iterable[bytes | str]],
                           peer: str) -> Principal:
        """:meth:`authenticate` on already extracted call data (also used by tests)."""
        headers = _metadata_value(metadata, "authorization")
        if headers:
            if len(headers) > 1:
                raise Unauthenticated("more than one authorization header")
            scheme, _, token = headers[0].strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return self.principal_for_token(token)
        identities = certificate_identities(auth_context)
        if identities:
            return self.principal_for_certificate(identities)
        if self.unix_principal is not None and peer.startswith("unix:"):
            return self.unix_principal
        if self.require_auth:
            raise Unauthenticated(
                "authentication required: send 'authorization: Bearer <token>' metadata or"
                " connect with a client certificate")
        return self.anonymous

    authorize = staticmethod(authorize)


def _auth_context(context: grpc.aio.ServicerContext[Any, Any]) -> Mapping[str, Any]:
    try:
        value = context.auth_context()
    except Exception:  # no auth context on this transport
        return {}
    return value if isinstance(value, Mapping) else {}


# --- request tenant -----------------------------------------------------------------------

_TENANT_LINE = re.compile(r"^tenant[ \t]*:[ \t]*['\"]?([^'\"#\s]*)", re.MULTILINE)


def _yaml_tenants(text: str) -> set[str]:
    """Every top-level ``tenant:`` value of every document, duplicates and ``<<`` merges
    included (a parser that kept another duplicate than ours must not pick an unchecked
    tenant). Unparsable YAML: the ``tenant:`` lines, best effort -- the request is refused
    later for its syntax anyway; this only decides who may see that error."""
    found: set[str] = set()

    def visit(node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "tenant":
                found.add(str(value.value) if isinstance(value, yaml.ScalarNode) else "")
            elif isinstance(key, yaml.ScalarNode) and key.value == "<<":
                for merged in (value.value if isinstance(value, yaml.SequenceNode)
                               else [value]):
                    visit(merged)

    try:
        for doc in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if doc is not None:
                visit(doc)
    except yaml.YAMLError:
        found = {m.group(1) for m in _TENANT_LINE.finditer(text)}
    return found


def tenants_of(request: Any) -> frozenset[str]:
    """The tenants a request message is about. Usually one: its ``tenant`` field;
    ``CheckPushStreamRequest``: its batch's; ``PutDraft`` / ``ValidatePolicy``: the policy's
    tenant and every ``tenant:`` of its YAML. ``{""}`` when none is named."""
    tenants: set[str] = set()
    text = getattr(request, "yaml", None)
    if isinstance(text, str) and text:
        tenants |= _yaml_tenants(text)
    policy = getattr(request, "policy", None)
    if policy is not None:
        tenant = getattr(policy, "tenant", None)
        if isinstance(tenant, str) and (tenant or not tenants):
            tenants.add(tenant)
    elif isinstance(tenant := getattr(request, "tenant", None), str):
        tenants.add(tenant)
    elif (batch := getattr(request, "batch", None)) is not None:
        inner = getattr(batch, "tenant", None)
        if isinstance(inner, str):
            tenants.add(inner)
    return frozenset(tenants or {""})


def tenant_of(request: Any) -> str:
    """The single tenant of a request ("" if none, or if it names several)."""
    tenants = tenants_of(request)
    return next(iter(tenants)) if len(tenants) == 1 else ""


def authorize_request(principal: Principal, method: str, request: Any) -> None:
    """:func:`authorize` on every tenant the request names."""
    for tenant in sorted(tenants_of(request)):
        authorize(principal, method, tenant)


# --- server wiring ------------------------------------------------------------------------

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "pdp_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the RPC being served (set by :class:`AuthInterceptor`)."""
    return _current.get()


def current_caller(tenant: str) -> Caller:
    """The engine's :class:`Caller` for this RPC and tenant. Without an interceptor in front
    (tests, embedding), the anonymous default: checker, never admin."""
    principal = _current.get()
    return Caller() if principal is None else principal.caller(tenant)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: AuthError) -> None:
    code = (grpc.StatusCode.UNAUTHENTICATED if isinstance(exc, Unauthenticated)
            else grpc.StatusCode.PERMISSION_DENIED)
    await context.abort(code, status_text(str(exc)))


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticate every call and authorize it on the tenant of every request message.

    Health and reflection pass untouched. For client streams each message is checked as it
    arrives, so a stream cannot start on tenant X and switch to tenant Y.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        # The registered handlers are the same objects on every call: wrap each one once.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method, self.authenticator)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str,
          auth: Authenticator) -> grpc.RpcMethodHandler:
    async def begin(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        try:
            principal = auth.authenticate(context)
        except AuthError as exc:
            await _abort(context, exc)
            raise
        _current.set(principal)
        return principal

    async def check(principal: Principal, request: Any,
                    context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            authorize_request(principal, method, request)
        except AuthError as exc:
            await _abort(context, exc)
            raise

    async def checked_stream(principal: Principal, requests: AsyncIterator[Any],
                             context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for request in requests:
            await check(principal, request, context)
            yield request

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(await begin(context), request, context)
            return await inner_uu(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any,
                               context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await check(await begin(context), request, context)
            result = inner_us(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a coroutine writing with context.write()
                await result
        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await begin(context)
            return await inner_su(checked_stream(principal, requests, context), context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: AsyncIterator[Any],
                            context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        principal = await begin(context)
        result = inner_ss(checked_stream(principal, requests, context), context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:
            await result
    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
