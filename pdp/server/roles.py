"""Who may do what: roles, the permissions they grant, and the one RPC -> permission table.

Authentication (:mod:`pdp.server.auth`) only says who the caller is and which roles they hold
on which tenant. Each servicer method, once it has read the tenant from its own typed request
(for ``PutDraft``: once it has parsed the policy), calls :func:`authorize` with the permission
its RPC needs, so the tenant that is checked is the tenant that is acted on: nothing here
guesses a tenant from a message.

Roles are granted per tenant (``TENANT:ROLE``; the tenant ``*`` means every tenant).
:data:`ROLE_PERMISSIONS` says what each grants; ``admin`` grants everything.
:data:`RPC_PERMISSION` says what each RPC needs; an RPC missing from it is refused.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from pdp.engine.request import Caller
from pdp.server.ending import end
from pdp.server.limits import status_text

CHECKER = "checker"
ROLLOUT_ENGINE = "rollout-engine"
READER = "reader"
AUDITOR = "auditor"
AUTHOR = "author"
APPROVER = "approver"
ADMIN = "admin"
#: Tenant key meaning "every tenant".
ALL_TENANTS = "*"


class Permission(enum.Enum):
    DECIDE = "decide"                  # CheckPush*, CheckDevice, CheckRollout, EvaluateHealth
    RECORD_EVENTS = "record events"    # RecordEvent (feeds rollback_rate, cooldowns, ...)
    READ_POLICIES = "read policies"    # Get/List/History (and the CLI's summary), ListTenants
    READ_AUDIT = "read the audit"      # AuditService.Watch
    WRITE_DRAFTS = "write drafts"      # PutDraft, ValidatePolicy
    APPROVE = "approve policies"       # ApprovePolicy (never one's own draft)
    ADMINISTER = "administer"          # activate, retire, relax / approve / restore, tenants


_ALL = frozenset(Permission)
P = Permission

#: What each role grants on the tenant it is held on. Reading the audit implies reading
#: policies (the audit names them); whoever writes or approves policies may read them.
ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = {
    CHECKER: frozenset({P.DECIDE}),
    ROLLOUT_ENGINE: frozenset({P.DECIDE, P.RECORD_EVENTS}),
    READER: frozenset({P.READ_POLICIES}),
    AUDITOR: frozenset({P.READ_POLICIES, P.READ_AUDIT}),
    AUTHOR: frozenset({P.READ_POLICIES, P.WRITE_DRAFTS}),
    APPROVER: frozenset({P.READ_POLICIES, P.APPROVE}),
    ADMIN: _ALL,
}
ROLES: frozenset[str] = frozenset(ROLE_PERMISSIONS)

_DECISION = "/pdp.v1.DecisionService/"
_ADMIN = "/pdp.v1.PolicyAdminService/"
_AUDIT = "/pdp.v1.AuditService/"

#: Every RPC of proto/pdp/v1/{decision,admin,audit}.proto -> the permission it needs on the
#: tenant it acts on (the README's table is this one).
RPC_PERMISSION: Mapping[str, Permission] = {
    _DECISION + "CheckPush": P.DECIDE,
    _DECISION + "CheckPushBatch": P.DECIDE,
    _DECISION + "CheckPushStream": P.DECIDE,
    _DECISION + "CheckDevice": P.DECIDE,
    _DECISION + "CheckRollout": P.DECIDE,
    _DECISION + "EvaluateHealth": P.DECIDE,
    _DECISION + "RecordEvent": P.RECORD_EVENTS,
    _ADMIN + "GetPolicy": P.READ_POLICIES,
    _ADMIN + "ListPolicies": P.READ_POLICIES,
    _ADMIN + "GetPolicyHistory": P.READ_POLICIES,
    _ADMIN + "ListTenants": P.READ_POLICIES,
    _ADMIN + "PutDraft": P.WRITE_DRAFTS,
    _ADMIN + "ValidatePolicy": P.WRITE_DRAFTS,
    _ADMIN + "ApprovePolicy": P.APPROVE,
    _ADMIN + "ActivatePolicy": P.ADMINISTER,
    _ADMIN + "RetirePolicy": P.ADMINISTER,
    _ADMIN + "ReactivatePolicy": P.ADMINISTER,
    _ADMIN + "SetBuiltinRelaxed": P.ADMINISTER,
    _ADMIN + "ApproveBuiltinRelaxation": P.ADMINISTER,
    _ADMIN + "CreateTenant": P.ADMINISTER,
    _AUDIT + "Watch": P.READ_AUDIT,
}

#: Services that need no credentials at all (probes, tooling).
PUBLIC_SERVICES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_SERVICES)


class AuthError(Exception):
    """Base of the two refusals; ``str()`` is the message for the caller."""


class Unauthenticated(AuthError):
    """Missing, malformed or unknown credentials -> UNAUTHENTICATED."""


class PermissionDenied(AuthError):
    """Known caller without the permission on that tenant -> PERMISSION_DENIED."""


def auth_status(exc: AuthError) -> grpc.StatusCode:
    """The status a refusal ends its call with."""
    return (grpc.StatusCode.UNAUTHENTICATED if isinstance(exc, Unauthenticated)
            else grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: identity and role grants per tenant (``"*"`` = every tenant)."""

    identity: str
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: How the caller was authenticated: token, mtls, unix, anonymous.
    method: str = "anonymous"

    def roles_on(self, tenant: str) -> frozenset[str]:
        """Roles held on ``tenant`` (its own plus ``"*"``); ``admin`` stands for every role.
        The empty tenant (a request about all tenants) only gets the ``"*"`` roles."""
        held = self.roles.get(ALL_TENANTS, frozenset())
        if tenant and tenant != ALL_TENANTS:
            held = held | self.roles.get(tenant, frozenset())
        return ROLES if ADMIN in held else held & ROLES

    def permissions_on(self, tenant: str) -> frozenset[Permission]:
        out: frozenset[Permission] = frozenset()
        for role in self.roles_on(tenant):
            out |= ROLE_PERMISSIONS[role]
        return out

    def may(self, permission: Permission, tenant: str) -> bool:
        return permission in self.permissions_on(tenant)

    def caller(self, tenant: str) -> Caller:
        """The engine's view of this principal for one request's tenant."""
        return Caller(identity=self.identity, roles=self.roles_on(tenant))

    def describe_roles(self) -> str:
        parts = [f"{', '.join(sorted(rs))} on {'all tenants' if t == ALL_TENANTS else repr(t)}"
                 for t, rs in sorted(self.roles.items()) if rs]
        return "; ".join(parts) if parts else "no roles"


def granting(permission: Permission) -> list[str]:
    """The roles that grant ``permission``, for error texts and the docs."""
    return sorted(r for r, ps in ROLE_PERMISSIONS.items() if permission in ps)


def require(principal: Principal, permission: Permission, tenant: str, rpc: str = "") -> None:
    """Raise :class:`PermissionDenied` unless ``principal`` holds ``permission`` on ``tenant``."""
    if principal.may(permission, tenant):
        return
    where = (f"tenant {tenant!r}" if tenant and tenant != ALL_TENANTS
             else "every tenant (the request names no tenant)")
    roles = " or ".join(repr(r) for r in granting(permission))
    # a tenant that does not exist yet has no admins of its own: those of "*" create it
    hint = (f"; a new tenant is created by an admin of {ALL_TENANTS!r} (every tenant)"
            if rpc == "CreateTenant" else "")
    raise PermissionDenied(
        f"{principal.identity!r} needs role {roles} on {where} to {permission.value}"
        f"{f' ({rpc})' if rpc else ''}; has {principal.describe_roles()}{hint}")


# --- the caller of the RPC being served -----------------------------------------------------

@dataclass
class CallAuth:
    """Set by the interceptor for each call; ``checked`` records that the servicer asked
    :func:`authorize`, so the interceptor can refuse to send an answer nobody authorised.

    ``granted`` (what :func:`authorize` allowed on this call) and ``renew`` (set by the
    interceptor) let a long call be checked again when the credentials are reloaded: a
    stream (``Watch``, ``CheckPushStream``) outlives the SIGHUP that revokes its token,
    and must not go on answering (:func:`revalidate`)."""

    principal: Principal
    method: str = ""
    checked: bool = False
    granted: set[tuple[str, Permission]] = field(default_factory=set)
    #: The caller as the credentials in force now say (raises :class:`Unauthenticated`
    #: once its token or certificate identity is gone), or None while they are unchanged.
    renew: Callable[[], Principal | None] | None = None


_current: contextvars.ContextVar[CallAuth | None] = contextvars.ContextVar(
    "pdp_call_auth", default=None)


def begin_call(principal: Principal, method: str = "") -> CallAuth:
    state = CallAuth(principal, method)
    _current.set(state)
    return state


def renewing(generation: Callable[[], int],
             authenticate: Callable[[], Principal]) -> Callable[[], Principal | None]:
    """For :attr:`CallAuth.renew`: the call's caller authenticated again from its own
    credentials (``authenticate``) once the credential files were reloaded since
    (``generation`` changed; a revoked token then raises :class:`Unauthenticated`), None
    while nothing was reloaded. Revocation "at once" must reach the calls that are open
    too: an ``AuditService.Watch`` streams for hours."""
    seen = generation()

    def renew() -> Principal | None:
        nonlocal seen
        now = generation()
        if now == seen:
            return None
        seen = now
        try:
            return authenticate()
        except Unauthenticated as exc:
            raise Unauthenticated(f"{exc} (the credentials were reloaded while this call"
                                  " was open)") from None
    return renew


def revalidate(state: CallAuth) -> None:
    """Raise :class:`AuthError` when credentials reloaded since the call began no longer
    authenticate its caller, or no longer grant what :func:`authorize` granted it; the call
    goes on as the caller is now (``state.principal`` updated). Cheap while nothing was
    reloaded (``renew`` compares a counter)."""
    if state.renew is None:
        return
    fresh = state.renew()
    if fresh is None:
        return
    state.principal = fresh
    rpc = state.method.rsplit("/", 1)[-1]
    for tenant, permission in sorted(state.granted, key=lambda g: (g[0], g[1].value)):
        try:
            require(fresh, permission, tenant, rpc)
        except PermissionDenied as exc:
            raise PermissionDenied(f"{exc} (the credentials were reloaded while this call"
                                   " was open)") from None


async def recheck(context: grpc.aio.ServicerContext[Any, Any], state: CallAuth) -> None:
    """Before a stream's next answer: end the call (UNAUTHENTICATED, PERMISSION_DENIED) if
    its credentials were reloaded since and no longer allow what it was allowed
    (:func:`revalidate`)."""
    try:
        revalidate(state)
    except AuthError as exc:
        await end(context, auth_status(exc), status_text(str(exc)))


def current_principal() -> Principal | None:
    state = _current.get()
    return None if state is None else state.principal


def current_caller(tenant: str) -> Caller:
    """The engine's :class:`Caller` for this RPC and tenant. Without an interceptor in front
    (tests, embedding), the anonymous default: checker, never admin."""
    principal = current_principal()
    return Caller() if principal is None else principal.caller(tenant)


async def authorize(context: grpc.aio.ServicerContext[Any, Any], tenant: str,
                    permission: Permission) -> Principal:
    """The servicer's one authorisation call, after it has read the tenant it acts on:
    aborts PERMISSION_DENIED (naming caller, role and tenant) unless the caller may."""
    state = _current.get()
    if state is None:
        await end(context, grpc.StatusCode.PERMISSION_DENIED,
                  "no authenticated caller: the auth interceptor is not installed")
        raise AssertionError("unreachable")  # pragma: no cover
    try:
        revalidate(state)  # a stream's later message, after a reload: as the caller is now
        require(state.principal, permission, tenant, state.method.rsplit("/", 1)[-1])
    except AuthError as exc:
        await end(context, auth_status(exc), status_text(str(exc)))
    state.checked = True
    state.granted.add((tenant, permission))
    return state.principal


async def authorize_any(context: grpc.aio.ServicerContext[Any, Any],
                        permission: Permission, *, final: bool = False) -> Principal:
    """For RPCs that act on no single tenant (ListTenants) or must refuse before costly work
    (parsing a policy whose tenant is not known yet): the caller must hold ``permission`` on
    some tenant. ``final=False``: a pre-check, the servicer must still :func:`authorize` the
    tenant it parsed; ``final=True``: the servicer filters what it answers by tenant."""
    state = _current.get()
    principal = None if state is None else state.principal
    if principal is None or not any(permission in principal.permissions_on(t)
                                     for t in principal.roles):
        who = "no authenticated caller" if principal is None else repr(principal.identity)
        roles = " or ".join(repr(r) for r in granting(permission))
        held = "" if principal is None else f"; has {principal.describe_roles()}"
        await end(context, grpc.StatusCode.PERMISSION_DENIED, status_text(
            f"{who} needs role {roles} on some tenant to {permission.value}{held}"))
        raise AssertionError("unreachable")  # pragma: no cover
    assert state is not None
    state.checked = state.checked or final
    return principal
