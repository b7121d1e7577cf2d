"""Issue 17's matrix, over the wire: every RPC x {anonymous, checker, rollout-engine, reader,
auditor, author, approver, admin} x {own tenant, other tenant} against a real `pdp serve`,
each cell with its expected status; 0 leaks. The expectation is written out here from the
README's role table, not taken from the server's tables."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pdp.client import push_request
from pdp.server.auth import new_token
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc, audit_pb2, audit_pb2_grpc
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer

OWN, OTHER = "acme", "beta"
EXPORTER = "default-deny-exporter-removal"
ROLES = ["checker", "rollout-engine", "reader", "auditor", "author", "approver", "admin"]
CALLERS = ["anonymous", *ROLES]

DECISIONS = {"CheckPush", "CheckPushBatch", "CheckPushStream", "CheckDevice", "CheckRollout",
             "EvaluateHealth"}
READS = {"GetPolicy", "ListPolicies", "GetPolicyHistory", "ListTenants"}
ADMIN_ONLY = {"ActivatePolicy", "RetirePolicy", "ReactivatePolicy", "SetBuiltinRelaxed",
              "ApproveBuiltinRelaxation", "CreateTenant"}
RPCS = sorted(DECISIONS | READS | ADMIN_ONLY | {
    "RecordEvent", "PutDraft", "ValidatePolicy", "ApprovePolicy", "Watch"})
#: What each caller may do on the tenant its role is granted on (anonymous: on every tenant).
ALLOWED: dict[str, set[str]] = {
    "anonymous": DECISIONS,
    "checker": DECISIONS,
    "rollout-engine": DECISIONS | {"RecordEvent"},
    "reader": READS,
    "auditor": READS | {"Watch"},
    "author": READS | {"PutDraft", "ValidatePolicy"},
    "approver": READS | {"ApprovePolicy"},
    "admin": set(RPCS),
}
#: What an allowed call answers when it is not OK: acme exists, so creating it again is
#: refused by the store (after authorisation).
ALLOWED_STATUS = {"CreateTenant": grpc.StatusCode.ALREADY_EXISTS}


def policy(tenant: str, name: str) -> str:
    return f"tenant: {tenant}\nname: {name}\nrule: {{cel: {{deny: 'false'}}}}\n"


class World:
    """The server, its tokens (one identity per role, granted on acme only; two setup
    admins on every tenant) and the stubs."""

    def __init__(self, tmp_path: Path) -> None:
        entries, self.tokens = [], {}
        grants = {r: {OWN: [r]} for r in ROLES}
        grants |= {"root": {"*": ["admin"]}, "root2": {"*": ["admin"]}}
        for who, roles in grants.items():
            token, digest = new_token()
            self.tokens[who] = token
            entries.append({"sha256": digest, "identity": who, "roles": roles})
        (tmp_path / "tokens.yaml").write_text(yaml.safe_dump({"tokens": entries}))
        policies = tmp_path / "policies"
        policies.mkdir()
        for tenant in (OWN, OTHER):
            (policies / f"{tenant}.yaml").write_text(policy(tenant, "p"))
        self.server = PdpServer(tmp_path, policy_dir=policies, args=[
            "--auth-tokens-file", str(tmp_path / "tokens.yaml"), "--auth-required", "false"])
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.decide = dgrpc.DecisionServiceStub(self.channel)
        self.admin = admin_pb2_grpc.PolicyAdminServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.n = 0

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        token = self.tokens.get(who)
        return () if token is None else (("authorization", f"Bearer {token}"),)

    def unique(self) -> str:
        self.n += 1
        return f"m{self.n}"

    # -- set-up by the two setup admins (never the caller under test)

    def draft(self, tenant: str) -> str:
        name = self.unique()
        self.admin.PutDraft(apb.PutDraftRequest(yaml=policy(tenant, name)), timeout=5,
                            metadata=self.md("root"))
        return name

    def approved(self, tenant: str) -> str:
        name = self.draft(tenant)
        self.admin.ApprovePolicy(apb.ApprovePolicyRequest(tenant=tenant, name=name, version=1),
                                 timeout=5, metadata=self.md("root2"))
        return name

    def active(self, tenant: str) -> str:
        name = self.approved(tenant)
        self.admin.ActivatePolicy(apb.ActivatePolicyRequest(tenant=tenant, name=name,
                                                            version=1),
                                  timeout=5, metadata=self.md("root"))
        return name

    def retired(self, tenant: str) -> str:
        name = self.active(tenant)
        self.admin.RetirePolicy(apb.RetirePolicyRequest(tenant=tenant, name=name), timeout=5,
                                metadata=self.md("root"))
        return name

    def builtin_restored(self, tenant: str) -> None:
        self.admin.SetBuiltinRelaxed(apb.SetBuiltinRelaxedRequest(
            tenant=tenant, builtin=EXPORTER, relaxed=False), timeout=5, metadata=self.md("root"))

    def relax_requested(self, tenant: str) -> None:
        self.builtin_restored(tenant)
        self.admin.SetBuiltinRelaxed(apb.SetBuiltinRelaxedRequest(
            tenant=tenant, builtin=EXPORTER, relaxed=True, justification="matrix"),
            timeout=5, metadata=self.md("root"))

    # -- the call of one cell; returns what came back, for the leak checks

    def call(self, rpc: str, tenant: str, who: str) -> Any:
        kw: dict[str, Any] = {"timeout": 10, "metadata": self.md(who)}
        batch = dpb.CheckPushBatchRequest(tenant=tenant, agents=[cpb.Agent(id="a1")],
                                          config=cpb.Config(yaml="a: 1"))
        calls: dict[str, Callable[[], Any]] = {
            "CheckPush": lambda: self.decide.CheckPush(
                push_request(tenant, "a1", config_yaml="a: 1"), **kw),
            "CheckPushBatch": lambda: self.decide.CheckPushBatch(batch, **kw),
            "CheckPushStream": lambda: list(self.decide.CheckPushStream(
                iter([dpb.CheckPushStreamRequest(batch=batch)]), **kw)),
            "CheckDevice": lambda: self.decide.CheckDevice(dpb.CheckDeviceRequest(
                tenant=tenant, device=cpb.Device(id="d1")), **kw),
            "CheckRollout": lambda: self.decide.CheckRollout(dpb.CheckRolloutRequest(
                tenant=tenant, rollout=cpb.Rollout(id="r1")), **kw),
            "EvaluateHealth": lambda: self.decide.EvaluateHealth(dpb.EvaluateHealthRequest(
                tenant=tenant, metrics={"error_rate": 0.0}), **kw),
            "RecordEvent": lambda: self.decide.RecordEvent(dpb.RecordEventRequest(
                tenant=tenant, kind=dpb.EVENT_KIND_DEPLOY, agent_id="a1"), **kw),
            "GetPolicy": lambda: self.admin.GetPolicy(
                apb.GetPolicyRequest(tenant=tenant, name="p"), **kw),
            "ListPolicies": lambda: self.admin.ListPolicies(
                apb.ListPoliciesRequest(tenant=tenant, include_builtins=True), **kw),
            "GetPolicyHistory": lambda: self.admin.GetPolicyHistory(
                apb.GetPolicyHistoryRequest(tenant=tenant, name="p"), **kw),
            "ListTenants": lambda: self.admin.ListTenants(apb.ListTenantsRequest(), **kw),
            "PutDraft": lambda: self.admin.PutDraft(
                apb.PutDraftRequest(yaml=policy(tenant, self.unique())), **kw),
            "ValidatePolicy": lambda: self.admin.ValidatePolicy(
                apb.ValidatePolicyRequest(yaml=policy(tenant, "v")), **kw),
            "ApprovePolicy": lambda: self.admin.ApprovePolicy(apb.ApprovePolicyRequest(
                tenant=tenant, name=self.draft(tenant), version=1), **kw),
            "ActivatePolicy": lambda: self.admin.ActivatePolicy(apb.ActivatePolicyRequest(
                tenant=tenant, name=self.approved(tenant), version=1), **kw),
            "RetirePolicy": lambda: self.admin.RetirePolicy(apb.RetirePolicyRequest(
                tenant=tenant, name=self.active(tenant)), **kw),
            "ReactivatePolicy": lambda: self.admin.ReactivatePolicy(
                apb.ReactivatePolicyRequest(tenant=tenant, name=self.retired(tenant)), **kw),
            "SetBuiltinRelaxed": lambda: (self.builtin_restored(tenant),
                                          self.admin.SetBuiltinRelaxed(
                apb.SetBuiltinRelaxedRequest(tenant=tenant, builtin=EXPORTER, relaxed=True,
                                             justification="matrix"), **kw))[1],
            "ApproveBuiltinRelaxation": lambda: (self.relax_requested(tenant),
                                                 self.admin.ApproveBuiltinRelaxation(
                apb.ApproveBuiltinRelaxationRequest(tenant=tenant, builtin=EXPORTER),
                **kw))[1],
            "CreateTenant": lambda: self.admin.CreateTenant(
                apb.CreateTenantRequest(tenant=tenant), **kw),
            "Watch": lambda: next(iter(self.audit.Watch(audit_pb2.WatchRequest(
                tenant=tenant, from_beginning=True), **kw))),
        }
        return calls[rpc]()

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("matrix"))
    try:
        yield w
    finally:
        w.close()


def expected(rpc: str, who: str, tenant: str) -> grpc.StatusCode:
    # ListTenants names no tenant: allowed to readers anywhere, answering only their tenants.
    granted_here = who == "anonymous" or tenant == OWN or rpc == "ListTenants"
    if rpc in ALLOWED[who] and granted_here:
        return ALLOWED_STATUS.get(rpc, grpc.StatusCode.OK)
    return grpc.StatusCode.PERMISSION_DENIED


def test_every_rpc_every_role_own_and_other_tenant(world: World) -> None:
    from pdp.v1 import admin_pb2, decision_pb2
    from pdp.v1 import audit_pb2 as audit_desc

    served = {m.name for pb, svc in ((decision_pb2, "DecisionService"),
                                     (admin_pb2, "PolicyAdminService"),
                                     (audit_desc, "AuditService"))
              for m in pb.DESCRIPTOR.services_by_name[svc].methods}
    assert served == set(RPCS), "a new RPC needs its row in this matrix"
    wrong, leaks = [], []
    for rpc, who, tenant in itertools.product(RPCS, CALLERS, (OWN, OTHER)):
        want = expected(rpc, who, tenant)
        try:
            answer = world.call(rpc, tenant, who)
            got = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            answer, got = None, exc.code()
        if got != want:
            (leaks if got == grpc.StatusCode.OK else wrong).append((rpc, who, tenant, got.name,
                                                                    want.name))
        if (rpc == "ListTenants" and answer is not None  # only tenants the caller may read
                and {t.name for t in answer.tenants} != {OWN}):
            leaks.append((rpc, who, tenant, "lists", [t.name for t in answer.tenants]))
        if rpc == "Watch" and answer is not None and answer.record.tenant != tenant:
            leaks.append((rpc, who, tenant, "record of", answer.record.tenant))
    assert (leaks, wrong) == ([], [])


def test_bad_credentials_are_unauthenticated_on_every_rpc(world: World) -> None:
    world.tokens["impostor"] = "not-a-token"
    for rpc in RPCS:
        with pytest.raises(grpc.RpcError) as err:
            world.call(rpc, OWN, "impostor")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, rpc


def test_a_stream_cannot_switch_tenant(world: World) -> None:
    def batch(tenant: str) -> dpb.CheckPushStreamRequest:
        return dpb.CheckPushStreamRequest(batch=dpb.CheckPushBatchRequest(
            tenant=tenant, agents=[cpb.Agent(id="a1")], config=cpb.Config(yaml="a: 1")))

    answers = []
    with pytest.raises(grpc.RpcError) as err:
        for answer in world.decide.CheckPushStream(iter([batch(OWN), batch(OTHER)]),
                                                   timeout=10, metadata=world.md("checker")):
            answers.append(answer)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'beta'" in (err.value.details() or "")
    assert len(answers) == 1  # the acme batch only


def test_watch_of_every_tenant_needs_auditor_on_star(world: World) -> None:
    for who in ("auditor", "admin"):  # granted on acme only
        with pytest.raises(grpc.RpcError) as err:
            next(iter(world.audit.Watch(audit_pb2.WatchRequest(from_beginning=True),
                                        timeout=10, metadata=world.md(who))))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    record = next(iter(world.audit.Watch(audit_pb2.WatchRequest(from_beginning=True),
                                         timeout=10, metadata=world.md("root")))).record
    assert record.sequence >= 1
