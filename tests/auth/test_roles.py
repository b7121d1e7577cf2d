"""The role -> permission and RPC -> permission tables, and how grants per tenant combine."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from pdp.server import roles
from pdp.server.roles import (
    ADMIN,
    AUDITOR,
    CHECKER,
    ROLE_PERMISSIONS,
    ROLES,
    RPC_PERMISSION,
    Permission,
    PermissionDenied,
    Principal,
    require,
)
from pdp.settings import AUTH_ROLES
from pdp.v1 import admin_pb2, audit_pb2, decision_pb2

SERVICES = [
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"],
    admin_pb2.DESCRIPTOR.services_by_name["PolicyAdminService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
]
ALL_METHODS = sorted(f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods)
P = Permission

# Written out here, not derived from the server's tables (the README documents the same).
EXPECTED_ROLES = {
    "checker": {P.DECIDE},
    "rollout-engine": {P.DECIDE, P.RECORD_EVENTS},
    "reader": {P.READ_POLICIES},
    "auditor": {P.READ_POLICIES, P.READ_AUDIT},
    "author": {P.READ_POLICIES, P.WRITE_DRAFTS},
    "approver": {P.READ_POLICIES, P.APPROVE},
    "admin": set(Permission),
}
EXPECTED_RPCS = {
    "CheckPush": P.DECIDE, "CheckPushBatch": P.DECIDE, "CheckPushStream": P.DECIDE,
    "CheckDevice": P.DECIDE, "CheckRollout": P.DECIDE, "EvaluateHealth": P.DECIDE,
    "RecordEvent": P.RECORD_EVENTS,
    "GetPolicy": P.READ_POLICIES, "ListPolicies": P.READ_POLICIES,
    "GetPolicyHistory": P.READ_POLICIES, "ListTenants": P.READ_POLICIES,
    "Watch": P.READ_AUDIT,
    "PutDraft": P.WRITE_DRAFTS, "ValidatePolicy": P.WRITE_DRAFTS,
    "ApprovePolicy": P.APPROVE,
    "ActivatePolicy": P.ADMINISTER, "RetirePolicy": P.ADMINISTER,
    "ReactivatePolicy": P.ADMINISTER, "SetBuiltinRelaxed": P.ADMINISTER,
    "ApproveBuiltinRelaxation": P.ADMINISTER, "CreateTenant": P.ADMINISTER,
}


def test_tables_cover_exactly_the_proto_rpcs_and_the_documented_roles() -> None:
    assert sorted(RPC_PERMISSION) == ALL_METHODS
    assert {m.rsplit("/", 1)[1]: p for m, p in RPC_PERMISSION.items()} == EXPECTED_RPCS
    assert {r: set(ps) for r, ps in ROLE_PERMISSIONS.items()} == EXPECTED_ROLES
    assert set(AUTH_ROLES) == ROLES  # the settings accept exactly these names


def test_the_readme_documents_every_role_and_rpc() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in [*ROLES, *EXPECTED_RPCS]:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize(("permission", "role"),
                         list(itertools.product(list(Permission), sorted(ROLES))))
def test_grants_are_tenant_bound(permission: Permission, role: str) -> None:
    p = Principal("svc", {"acme": frozenset({role})})
    if permission in EXPECTED_ROLES[role]:
        require(p, permission, "acme")
    else:
        with pytest.raises(PermissionDenied) as exc:
            require(p, permission, "acme")
        assert "'svc'" in str(exc.value) and "'acme'" in str(exc.value)
    for other in ("beta", "", "*", "acme2", "ACME"):
        with pytest.raises(PermissionDenied) as exc:
            require(p, permission, other)
        assert "'svc'" in str(exc.value)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_grants_on_every_tenant(role: str) -> None:
    p = Principal("ops", {"*": frozenset({role})})
    for permission, tenant in itertools.product(Permission, ("acme", "beta", "")):
        assert p.may(permission, tenant) == (permission in EXPECTED_ROLES[role])


def test_roles_on_several_tenants_do_not_leak() -> None:
    p = Principal("mixed", {"acme": frozenset({ADMIN}), "beta": frozenset({CHECKER})})
    require(p, P.ADMINISTER, "acme")
    require(p, P.DECIDE, "beta")
    with pytest.raises(PermissionDenied, match="'admin' on tenant 'beta' to administer"):
        require(p, P.ADMINISTER, "beta")
    with pytest.raises(PermissionDenied, match="'admin' or 'auditor'"):
        require(p, P.READ_AUDIT, "beta")


def test_watch_of_every_tenant_needs_the_grant_on_star() -> None:
    acme = Principal("a", {"acme": frozenset({AUDITOR})})
    with pytest.raises(PermissionDenied, match="names no tenant"):
        require(acme, P.READ_AUDIT, "")
    require(Principal("b", {"*": frozenset({AUDITOR})}), P.READ_AUDIT, "")


def test_admin_implies_every_role_and_caller_view() -> None:
    p = Principal("root", {"acme": frozenset({ADMIN}), "*": frozenset({CHECKER})})
    assert p.roles_on("acme") == ROLES
    assert p.roles_on("beta") == frozenset({CHECKER})
    assert p.caller("acme").is_admin and p.caller("acme").identity == "root"
    assert not p.caller("beta").is_admin


def test_no_roles_denied_everywhere() -> None:
    p = Principal("nobody", {})
    for permission in Permission:
        with pytest.raises(PermissionDenied, match="has no roles"):
            require(p, permission, "acme")


def test_current_caller_defaults_to_anonymous_checker() -> None:
    caller = roles.current_caller("acme")
    assert caller.identity == "anonymous" and not caller.is_admin


def test_authentication_never_reads_requests_or_policy_yaml() -> None:
    """Issue 19: the interceptor authenticates; services authorise on the tenant they
    parsed. auth.py and roles.py import no YAML parser and never look inside a request."""
    server = Path(roles.__file__).parent
    for name in ("auth.py", "roles.py"):
        tree = ast.parse((server / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any("yaml" in m for m in imported), name
        text = (server / name).read_text()
        assert "getattr(request" not in text and "tenant_of" not in text, name
    assert len((server / "auth.py").read_text().splitlines()) < 300
