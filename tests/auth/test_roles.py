"""The RPC -> role table and the authorization matrix (every RPC x role x tenant)."""

from __future__ import annotations

import itertools

import pytest

from pdp.server import auth
from pdp.server.auth import (
    ADMIN,
    APPROVER,
    AUTHOR,
    CHECKER,
    READ,
    REQUIRED_ROLE,
    ROLES,
    PermissionDenied,
    Principal,
    authorize,
)
from pdp.v1 import admin_pb2, audit_pb2, decision_pb2, policy_pb2

SERVICES = [
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"],
    admin_pb2.DESCRIPTOR.services_by_name["PolicyAdminService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
]
ALL_METHODS = sorted(f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods)

EXPECTED = {
    "CheckPush": CHECKER, "CheckPushBatch": CHECKER, "CheckPushStream": CHECKER,
    "CheckDevice": CHECKER, "CheckRollout": CHECKER, "RecordEvent": CHECKER,
    "EvaluateHealth": CHECKER,
    "PutDraft": AUTHOR, "ValidatePolicy": AUTHOR,
    "ApprovePolicy": APPROVER,
    "ActivatePolicy": ADMIN, "RetirePolicy": ADMIN, "ReactivatePolicy": ADMIN,
    "SetBuiltinRelaxed": ADMIN,
    "GetPolicy": READ, "ListPolicies": READ, "GetPolicyHistory": READ, "Watch": READ,
}


def test_table_covers_exactly_the_proto_rpcs() -> None:
    assert sorted(REQUIRED_ROLE) == ALL_METHODS
    assert {m.rsplit("/", 1)[1]: r for m, r in REQUIRED_ROLE.items()} == EXPECTED
    assert set(REQUIRED_ROLE.values()) <= ROLES | {READ}


def allowed(required: str, held: str) -> bool:
    return held == ADMIN or required in (READ, held)


@pytest.mark.parametrize(("method", "role"), list(itertools.product(ALL_METHODS, sorted(ROLES))))
def test_matrix_tenant_bound(method: str, role: str) -> None:
    """A caller with one role on tenant acme: allowed on acme only with the right role; on
    every other tenant (and the empty, all-tenants one) denied, whatever the RPC."""
    p = Principal("svc", {"acme": frozenset({role})})
    required = REQUIRED_ROLE[method]
    if allowed(required, role):
        authorize(p, method, "acme")
    else:
        with pytest.raises(PermissionDenied) as exc:
            authorize(p, method, "acme")
        msg = str(exc.value)
        assert "'svc'" in msg and f"'{required}'" in msg and "'acme'" in msg
    for other in ("beta", "", "*", "acme2", "ACME"):
        with pytest.raises(PermissionDenied) as exc:
            authorize(p, method, other)
        assert "'svc'" in str(exc.value)
        if other:
            assert f"'{other}'" in str(exc.value)


@pytest.mark.parametrize(("method", "role"), list(itertools.product(ALL_METHODS, sorted(ROLES))))
def test_matrix_all_tenants(method: str, role: str) -> None:
    p = Principal("ops", {"*": frozenset({role})})
    ok = allowed(REQUIRED_ROLE[method], role)
    for tenant in ("acme", "beta", ""):
        if ok:
            authorize(p, method, tenant)
        else:
            with pytest.raises(PermissionDenied):
                authorize(p, method, tenant)


def test_roles_on_several_tenants_do_not_leak() -> None:
    p = Principal("mixed", {"acme": frozenset({ADMIN}), "beta": frozenset({CHECKER})})
    authorize(p, "/pdp.v1.PolicyAdminService/ActivatePolicy", "acme")
    authorize(p, "/pdp.v1.DecisionService/CheckPush", "beta")
    authorize(p, "/pdp.v1.AuditService/Watch", "beta")
    with pytest.raises(PermissionDenied, match="'admin' on tenant 'beta' for ActivatePolicy"):
        authorize(p, "/pdp.v1.PolicyAdminService/ActivatePolicy", "beta")
    with pytest.raises(PermissionDenied):
        authorize(p, "/pdp.v1.PolicyAdminService/PutDraft", "beta")
    with pytest.raises(PermissionDenied):
        authorize(p, "/pdp.v1.AuditService/Watch", "gamma")


def test_admin_implies_every_role_and_caller_view() -> None:
    p = Principal("root", {"acme": frozenset({ADMIN}), "*": frozenset({CHECKER})})
    assert p.roles_on("acme") == ROLES
    assert p.roles_on("beta") == frozenset({CHECKER})
    assert p.roles_on("") == frozenset({CHECKER})
    assert p.caller("acme").is_admin and p.caller("acme").identity == "root"
    assert not p.caller("beta").is_admin


def test_no_roles_denied_everywhere() -> None:
    p = Principal("nobody", {})
    for method in ALL_METHODS:
        with pytest.raises(PermissionDenied, match="has no roles"):
            authorize(p, method, "acme")


def test_unknown_method_refused_public_allowed() -> None:
    root = Principal("root", {"*": frozenset({ADMIN})})
    with pytest.raises(PermissionDenied, match="no access rule"):
        authorize(root, "/pdp.v1.PolicyAdminService/DeleteEverything", "acme")
    nobody = Principal("nobody", {})
    authorize(nobody, "/grpc.health.v1.Health/Check", "")
    authorize(nobody, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "")


def test_current_caller_defaults_to_anonymous_checker() -> None:
    caller = auth.current_caller("acme")
    assert caller.identity == "anonymous" and not caller.is_admin


def test_tenant_of_messages() -> None:
    assert auth.tenant_of(decision_pb2.CheckPushRequest(tenant="a")) == "a"
    stream = decision_pb2.CheckPushStreamRequest(
        batch=decision_pb2.CheckPushBatchRequest(tenant="b"))
    assert auth.tenant_of(stream) == "b"
    assert auth.tenant_of(audit_pb2.WatchRequest(tenant="c")) == "c"
    assert auth.tenant_of(object()) == ""


def test_tenants_of_policy_requests() -> None:
    put = admin_pb2.PutDraftRequest
    assert auth.tenants_of(put(yaml="tenant: acme\nname: p\n")) == {"acme"}
    assert auth.tenants_of(put(policy=policy_pb2.Policy(tenant="acme", name="p"))) == {"acme"}
    assert auth.tenants_of(put()) == {""}
    # Every document, every duplicate key, merges, and the policy message too.
    two_docs = "tenant: acme\nname: a\n---\ntenant: beta\nname: b\n"
    assert auth.tenants_of(put(yaml=two_docs)) == {"acme", "beta"}
    assert auth.tenants_of(put(yaml="tenant: acme\ntenant: beta\n")) == {"acme", "beta"}
    merged = "base: &b {tenant: beta}\n<<: *b\nname: x\n"
    assert auth.tenants_of(put(yaml=merged)) == {"beta"}
    both = put(yaml="tenant: acme\n", policy=policy_pb2.Policy(tenant="beta"))
    assert auth.tenants_of(both) == {"acme", "beta"}
    # Unparsable YAML: the tenant lines, so a tenant-bound author still sees the syntax error.
    assert auth.tenants_of(admin_pb2.ValidatePolicyRequest(yaml="tenant: acme\nrule: [\n")) == {
        "acme"}
    assert auth.tenants_of(admin_pb2.ValidatePolicyRequest(yaml="name: x\n")) == {""}
    assert auth.tenant_of(put(yaml=two_docs)) == ""


def test_policy_yaml_for_another_tenant_denied() -> None:
    author = Principal("alice", {"acme": frozenset({AUTHOR})})
    method = "/pdp.v1.PolicyAdminService/PutDraft"
    auth.authorize_request(author, method, admin_pb2.PutDraftRequest(yaml="tenant: acme\n"))
    for yaml_text in ("tenant: beta\n", "tenant: acme\n---\ntenant: beta\n",
                      "tenant: acme\ntenant: beta\n", "name: no-tenant\n"):
        with pytest.raises(PermissionDenied):
            auth.authorize_request(author, method, admin_pb2.PutDraftRequest(yaml=yaml_text))
    with pytest.raises(PermissionDenied, match="names no tenant"):
        auth.authorize_request(author, method, admin_pb2.ValidatePolicyRequest())
