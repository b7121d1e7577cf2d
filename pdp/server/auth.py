"""Who is calling: authentication, and the interceptor that runs it on every call.

The interceptor only establishes the caller (a :class:`~pdp.server.roles.Principal`: identity
and role grants per tenant) and refuses callers it cannot authenticate. It does not know which
tenant a request is about: each servicer reads that from its own typed request and asks
:func:`pdp.server.roles.authorize`. As a backstop, no answer leaves a call whose servicer
never asked (INTERNAL, logged): a forgotten check is an error, not a leak.

Credentials, tried in this order by :meth:`Authenticator.authenticate`:

1. **Bearer token** -- ``authorization: Bearer <token>``, checked against the sha256 digests
   of the tokens file (:mod:`pdp.server.credentials`), every digest in constant time. A token
   presented but not valid is always refused, even when authentication is optional: a client
   that sends a credential expects it to be checked, never silently downgraded. So is any
   ``authorization-bin`` (binary) metadata: it is never read as a token.
2. **Client certificate (mTLS)** -- SAN URIs, SAN DNS names, then the subject CN; the first
   one named in the roles file gives the roles. Names never cross fields: a URI-shaped
   identity (``://``) matches only a SAN URI, any other a SAN DNS name, or the subject CN of
   a certificate with no subjectAltName at all (never a CN that looks like a URI). A verified
   certificate nobody named authenticates with no roles (every RPC is PERMISSION_DENIED
   naming it), or with the anonymous roles when authentication is optional.
3. **Unix socket** -- a ``unix:`` peer gets ``unix_socket_roles`` when configured (sidecars).
4. **Anonymous** -- when authentication is not required, everyone else gets
   ``anonymous_roles`` (default ``*:checker``: decisions only). With no anonymous roles at
   all, a caller without credentials is UNAUTHENTICATED, as when authentication is required.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import structlog

from pdp.server.credentials import (
    AuthConfigError,
    CertificateNames,
    TokenEntry,
    certificate_identities,
    certificate_names,
    hash_token,
    load_identities,
    load_tokens,
    new_token,
    parse_roles,
)
from pdp.server.ending import end
from pdp.server.limits import status_text
from pdp.server.roles import (
    ALL_TENANTS,
    CHECKER,
    AuthError,
    CallAuth,
    PermissionDenied,
    Principal,
    Unauthenticated,
    auth_status,
    begin_call,
    current_caller,
    current_principal,
    is_public,
    recheck,
    renewing,
)
from pdp.server.wrapping import WrappingInterceptor

log = structlog.get_logger("pdp.server")

DEFAULT_ANONYMOUS_ROLES: Mapping[str, frozenset[str]] = {ALL_TENANTS: frozenset({CHECKER})}


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
    re-reads them (atomically: a bad file leaves the previous state in force; the server
    calls it on SIGHUP).
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
                parse_roles(unix_socket_roles, "unix_socket_roles"), "unix"))
        roles = (dict(DEFAULT_ANONYMOUS_ROLES) if anonymous_roles is None
                 else parse_roles(anonymous_roles, "anonymous_roles"))
        self.anonymous = Principal(anonymous_identity, roles, "anonymous")
        self._lock = threading.Lock()
        self._tokens: list[TokenEntry] = []
        self._identities: dict[str, dict[str, frozenset[str]]] = {}
        self.generation = 0  # reloads that took effect: open streams recheck (renewing)
        self.reload()

    @property
    def anonymous_allowed(self) -> bool:
        """Whether a caller without credentials gets anything at all."""
        return not self.require_auth and any(self.anonymous.roles.values())

    def reload(self) -> tuple[int, int]:
        """Re-read the tokens and roles files; the number of tokens and of identities now in
        force. Raises :class:`AuthConfigError` (and keeps the previous configuration, both
        files) when one of them is unreadable or invalid."""
        tokens = load_tokens(self.tokens_file) if self.tokens_file else []
        identities = load_identities(self.roles_file) if self.roles_file else {}
        with self._lock:
            self._tokens, self._identities = tokens, identities
            self.generation += 1
        return len(tokens), len(identities)

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

    def principal_for_certificate(self, names: CertificateNames) -> Principal:
        """Roles of the first of :meth:`CertificateNames.candidates` named in the roles file;
        an unknown certificate gets no roles (or the anonymous roles when authentication is
        optional)."""
        known = self._identities
        for name in names.candidates():
            roles = known.get(name)
            if roles is not None:
                return Principal(name, roles, "mtls")
        roles = {} if self.require_auth else dict(self.anonymous.roles)
        return Principal(names.all()[0], roles, "mtls")

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller of this RPC, or :class:`Unauthenticated`."""
        return self.authenticate_parts(
            context.invocation_metadata(), _auth_context(context), context.peer())

    def authenticate_parts(self, metadata: Iterable[Any] | None,
                           auth_context: Mapping[str, Iterable[bytes | str]],
                           peer: str) -> Principal:
        """:meth:`authenticate` on already extracted call data (also used by tests)."""
        if _metadata_value(metadata, "authorization-bin"):  # even empty: never ignored
            raise Unauthenticated(
                "authorization-bin metadata is not accepted: send the token as"
                " 'authorization: Bearer <token>', not authorization-bin")
        headers = _metadata_value(metadata, "authorization")
        if headers:
            if len(headers) > 1:
                raise Unauthenticated("more than one authorization header")
            scheme, _, token = headers[0].strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return self.principal_for_token(token)
        names = certificate_names(auth_context)
        if names:
            return self.principal_for_certificate(names)
        if self.unix_principal is not None and peer.startswith("unix:"):
            return self.unix_principal
        if not self.anonymous_allowed:
            raise Unauthenticated(
                "authentication required: send 'authorization: Bearer <token>' metadata or"
                " connect with a client certificate")
        return self.anonymous


def _auth_context(context: grpc.aio.ServicerContext[Any, Any]) -> Mapping[str, Any]:
    try:
        value = context.auth_context()
    except Exception:  # no auth context on this transport
        return {}
    return value if isinstance(value, Mapping) else {}


async def abort_auth_error(context: grpc.aio.ServicerContext[Any, Any],
                           exc: AuthError) -> None:
    await end(context, auth_status(exc), status_text(str(exc)))


class AuthInterceptor(WrappingInterceptor):
    """Authenticate every call (health and reflection pass untouched); the servicer
    authorises. An answer whose servicer never called ``authorize`` is not sent."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        super().__init__()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return handler if is_public(method) else wrap_handler(handler, method,
                                                              self.authenticator)


def wrap_handler(handler: grpc.RpcMethodHandler, method: str,
          auth: Authenticator) -> grpc.RpcMethodHandler:
    async def begin(context: grpc.aio.ServicerContext[Any, Any], stream: bool) -> CallAuth:
        try:
            principal = auth.authenticate(context)
        except AuthError as exc:
            await abort_auth_error(context, exc)
            raise
        state = begin_call(principal, method)
        if stream:  # outlives a reload that may revoke it (a unary call is one answer)
            state.renew = renewing(lambda: auth.generation, lambda: auth.authenticate(context))
        return state

    async def ensure_checked(state: CallAuth,
                             context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not state.checked:
            log.error("rpc_without_authorization", method=method)
            await end(context, grpc.StatusCode.INTERNAL,
                      f"{method}: the service did not authorise this call; refused")
        await recheck(context, state)  # a stream revoked since it opened sends no more

    async def unary(inner: Any, request: Any,
                    context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        state = await begin(context, False)
        response = await inner(request, context)
        await ensure_checked(state, context)
        return response

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                        ) -> AsyncIterator[Any]:
        state = await begin(context, True)
        result = inner_stream(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                await ensure_checked(state, context)  # and still allowed: see revalidate
                yield response
        else:  # a coroutine writing with context.write()
            await result
            await ensure_checked(state, context)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await unary(inner_uu, request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await unary(inner_su, requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_stream = handler.unary_stream or handler.stream_stream
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)


__all__ = [
    "AuthConfigError",
    "AuthInterceptor",
    "Authenticator",
    "CertificateNames",
    "PermissionDenied",
    "Principal",
    "Unauthenticated",
    "certificate_identities",
    "certificate_names",
    "current_caller",
    "current_principal",
    "hash_token",
    "is_public",
    "new_token",
]
