"""PolicyAdminService: the policy lifecycle over gRPC, on top of a PolicyStore.

The actor of every change is the authenticated caller (never a field the caller fills in), so
four eyes means two different credentials. Each method reads the tenant from its typed request
(PutDraft / ValidatePolicy: from the policy it parses) and authorises the caller on that
tenant before touching the store (:func:`pdp.server.roles.authorize`). Store errors map to
gRPC statuses by their kind; nothing is half-written (the store guarantees that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import yaml

from pdp.api.convert import STATUS_TO_PB, tenant_of
from pdp.engine.request import InvalidRequest
from pdp.policy.model import Policy, PolicyError, Status
from pdp.policy.store import (
    PolicyStore,
    PolicySummary,
    RelaxRequest,
    StoreError,
    TenantInfo,
    VersionRecord,
    grpc_status_name,
)
from pdp.server.ending import end
from pdp.server.limits import FIELD_BYTES, status_text
from pdp.server.roles import Permission, Principal, authorize, authorize_any
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import policy_pb2 as ppb

T = TypeVar("T")
_CHECKPOINTS = {"rollout_precondition": cpb.CHECKPOINT_ROLLOUT_PRECONDITION,
                "push": cpb.CHECKPOINT_PUSH, "auto_apply": cpb.CHECKPOINT_AUTO_APPLY,
                "device": cpb.CHECKPOINT_DEVICE}


def _ts(epoch: float | None) -> Any:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def policy_pb(rec: VersionRecord, store: PolicyStore) -> ppb.Policy:
    p = store.policy_of(rec)
    pb = ppb.Policy(tenant=rec.tenant, name=rec.name, description=p.description,
                    checkpoints=sorted(_CHECKPOINTS[c.value] for c in p.checkpoints),
                    enabled=p.enabled, yaml=rec.yaml)
    if getattr(p.rule, "kind", "") == "cel":
        pb.cel.deny = p.rule.deny
        pb.cel.message = p.rule.message or ""
        pb.cel.violations = p.rule.violations or ""
        pb.cel.variables.extend(ppb.CelVariable(name=n, expression=e)
                                for n, e in p.rule.variables)
    pb.match.subjects.extend(sorted(p.match.subjects))
    pb.match.sources.extend(sorted(p.match.sources))
    pb.match.types.extend(sorted(p.match.types))
    m = pb.meta
    m.version, m.status, m.content_hash = rec.version, STATUS_TO_PB[rec.status.value], \
        rec.content_hash
    m.author, m.approver = rec.author, rec.approver
    updated = max(t for t in (rec.created_at, rec.approved_at, rec.activated_at,
                              rec.retired_at) if t is not None)
    m.updated_at.FromDatetime(_ts(updated))
    return pb


def summary_pb(tenant: str, s: PolicySummary) -> ppb.Policy:
    pb = ppb.Policy(tenant=tenant, name=s.name)
    m = pb.meta
    m.version, m.status, m.builtin = s.version, STATUS_TO_PB[s.status.value], s.builtin
    m.author, m.approver, m.relaxed = s.author, s.approver, s.relaxed
    m.active_version = s.active_version or 0
    m.latest_version = s.latest_version
    if s.latest_status is not None:
        m.latest_status = STATUS_TO_PB[s.latest_status.value]
    return pb


def _yaml_of(request: Any) -> str:
    """The policy text of a PutDraft / ValidatePolicy request: YAML, or a CEL policy message."""
    if request.yaml:
        return str(request.yaml)
    p = request.policy
    if p.WhichOneof("rule") != "cel":
        raise PolicyError("send typed rules as YAML (field yaml); the policy message carries"
                          " only CEL rules", field_path="policy.rule")
    cel: dict[str, Any] = {"violations": p.cel.violations} if p.cel.violations else {
        "deny": p.cel.deny}
    if p.cel.message:
        cel["message"] = p.cel.message
    if p.cel.variables:
        cel["variables"] = [{"name": v.name, "expression": v.expression}
                            for v in p.cel.variables]
    doc: dict[str, Any] = {"tenant": p.tenant, "name": p.name, "description": p.description,
                           "rule": {"cel": cel}}
    names = {v: k for k, v in _CHECKPOINTS.items()}
    if p.checkpoints:
        doc["checkpoints"] = [names[c] for c in p.checkpoints if c in names]
    match = {k: list(getattr(p.match, k)) for k in ("subjects", "sources", "types")
             if getattr(p.match, k)}
    if match:
        doc["match"] = match
    if p.HasField("enabled"):
        doc["enabled"] = p.enabled
    return yaml.safe_dump(doc, sort_keys=False)


#: Documents of one PutDraft / ValidatePolicy text, empty ones (``---`` alone, ``~``)
#: included: the call takes one policy, so reading stops at a second non-empty document, and
#: at this many documents in all (a text of empty documents is read on the event loop too).
MAX_CALL_DOCUMENTS = 16


def _parse_one(text: str) -> Policy:
    """The one policy of a PutDraft / ValidatePolicy text, parsed as the store will parse it
    (so the tenant authorised is the tenant stored). A second policy in the text is refused
    where it starts, before it is read ("one policy per call")."""
    from pdp.policy.loader import load_text

    policies = load_text(text, "<request>", default_status=Status.DRAFT,
                         max_documents=MAX_CALL_DOCUMENTS, one_policy=True)
    if len(policies) != 1:
        raise PolicyError(f"expected exactly one policy, found {len(policies)}")
    return policies[0]


def policy_error_text(exc: PolicyError) -> str:
    """``exc`` as ``where: field.path: problem``, cut to one status text (1 KiB): a refused
    policy may quote its whole expression or value. The place comes first and the field path
    is cut on its own (its keys are the caller's), so neither pushes the other out."""
    where = exc.source
    if exc.line:
        where += f":{exc.line}:{exc.column}" if exc.column else f":{exc.line}"
    parts = [p for p in (where, status_text(exc.field_path, FIELD_BYTES)) if p]
    return status_text(": ".join([*parts, exc.problem]))


def problem_pb(exc: PolicyError) -> apb.PolicyProblem:
    """A ValidatePolicy problem, with its texts cut as status texts are."""
    return apb.PolicyProblem(field=status_text(exc.field_path, FIELD_BYTES), line=exc.line,
                             column=exc.column, message=policy_error_text(exc))


def pending_pb(requests: dict[str, RelaxRequest]) -> list[apb.PendingRelaxation]:
    out = []
    for builtin in sorted(requests):
        r = requests[builtin]
        pb = apb.PendingRelaxation(builtin=builtin, requested_by=r.actor,
                                   justification=r.reason)
        pb.requested_at.FromDatetime(_ts(r.at))
        out.append(pb)
    return out


def tenant_pb(info: TenantInfo) -> apb.Tenant:
    pb = apb.Tenant(name=info.name, created_by=info.created_by)
    if info.created_at is not None:
        pb.created_at.FromDatetime(_ts(info.created_at))
    return pb


class PolicyAdminService:
    def __init__(self, store: PolicyStore, validate: Callable[[Any], object],
                 settle: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.validate = validate
        # awaited before answering: the audit records of a committed change are on disk
        # (policies.AdminAudit), so an acknowledged change is never missing from the audit
        self.settle = settle

    async def _run(self, context: grpc.aio.ServicerContext[Any, Any],
                   call: Callable[[], Awaitable[T]]) -> T:
        """Store and policy errors as gRPC statuses, their texts cut to fit one (a refused
        policy may quote its whole expression). Anything else is INTERNAL, from the edge
        interceptor."""
        try:
            result = await call()
            if self.settle is not None:
                await self.settle()
            return result
        except PolicyError as exc:
            await end(context, grpc.StatusCode.INVALID_ARGUMENT, policy_error_text(exc))
        except StoreError as exc:
            await end(context, getattr(grpc.StatusCode, grpc_status_name(exc)),
                      status_text(str(exc)))
        except ValueError as exc:
            await end(context, grpc.StatusCode.INVALID_ARGUMENT, status_text(str(exc)))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _on(context: grpc.aio.ServicerContext[Any, Any], tenant: str,
                  permission: Permission) -> tuple[str, Principal]:
        """The request's tenant, checked, and the caller authorised on it."""
        tenant = tenant_of(tenant)
        return tenant, await authorize(context, tenant, permission)

    async def PutDraft(self, request: apb.PutDraftRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> apb.PutDraftResponse:
        async def run() -> apb.PutDraftResponse:
            # Refuse callers who may write drafts nowhere before parsing anything they sent.
            await authorize_any(context, Permission.WRITE_DRAFTS)
            text = _yaml_of(request)
            tenant, caller = await self._on(context, _parse_one(text).tenant,
                                            Permission.WRITE_DRAFTS)
            rec = await self.store.put_draft(tenant, text, caller.identity,
                                             request.expected_version)
            return apb.PutDraftResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ValidatePolicy(self, request: apb.ValidatePolicyRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> apb.ValidatePolicyResponse:
        async def run() -> apb.ValidatePolicyResponse:
            await authorize_any(context, Permission.WRITE_DRAFTS)
            text = _yaml_of(request)
            try:
                policy = _parse_one(text)
            except PolicyError as exc:  # no tenant to authorise: only the text's problems
                await authorize_any(context, Permission.WRITE_DRAFTS, final=True)
                return apb.ValidatePolicyResponse(valid=False, problems=[problem_pb(exc)])
            await self._on(context, policy.tenant, Permission.WRITE_DRAFTS)
            try:
                compiled = self.validate(policy)
            except PolicyError as exc:
                return apb.ValidatePolicyResponse(valid=False, problems=[problem_pb(exc)])
            except ValueError as exc:
                return apb.ValidatePolicyResponse(valid=False, problems=[
                    apb.PolicyProblem(message=status_text(str(exc)))])
            deny = getattr(compiled, "deny", None)
            return apb.ValidatePolicyResponse(
                valid=True, cost_estimate=int(getattr(deny, "cost_estimate", 0) or 0))
        return await self._run(context, run)

    async def ApprovePolicy(self, request: apb.ApprovePolicyRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> apb.ApprovePolicyResponse:
        async def run() -> apb.ApprovePolicyResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.APPROVE)
            rec = await self.store.approve(tenant, request.name, request.version,
                                           caller.identity)
            return apb.ApprovePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ActivatePolicy(self, request: apb.ActivatePolicyRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> apb.ActivatePolicyResponse:
        async def run() -> apb.ActivatePolicyResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.ADMINISTER)
            rec = await self.store.activate(tenant, request.name, request.version,
                                            caller.identity)
            return apb.ActivatePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def RetirePolicy(self, request: apb.RetirePolicyRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> apb.RetirePolicyResponse:
        async def run() -> apb.RetirePolicyResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.ADMINISTER)
            rec = await self.store.retire(tenant, request.name, caller.identity)
            return apb.RetirePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ReactivatePolicy(self, request: apb.ReactivatePolicyRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> apb.ReactivatePolicyResponse:
        async def run() -> apb.ReactivatePolicyResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.ADMINISTER)
            rec = await self.store.reactivate(tenant, request.name, caller.identity)
            return apb.ReactivatePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def GetPolicy(self, request: apb.GetPolicyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> apb.GetPolicyResponse:
        async def run() -> apb.GetPolicyResponse:
            tenant, _ = await self._on(context, request.tenant, Permission.READ_POLICIES)
            rec = await self.store.get(tenant, request.name, request.version or None)
            return apb.GetPolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ListPolicies(self, request: apb.ListPoliciesRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> apb.ListPoliciesResponse:
        async def run() -> apb.ListPoliciesResponse:
            tenant, _ = await self._on(context, request.tenant, Permission.READ_POLICIES)
            rows = await self.store.list(tenant)
            relaxed = await self.store.relaxed_builtins(tenant)
            return apb.ListPoliciesResponse(
                policies=[summary_pb(tenant, r) for r in rows
                          if request.include_builtins or not r.builtin],
                relaxed_builtins=sorted(relaxed),
                pending_relaxations=pending_pb(await self.store.pending_relaxations(tenant)))
        return await self._run(context, run)

    async def GetPolicyHistory(self, request: apb.GetPolicyHistoryRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> apb.GetPolicyHistoryResponse:
        async def run() -> apb.GetPolicyHistoryResponse:
            tenant, _ = await self._on(context, request.tenant, Permission.READ_POLICIES)
            h = await self.store.history(tenant, request.name)
            out = apb.GetPolicyHistoryResponse(
                versions=[policy_pb(v, self.store) for v in h.versions])
            for t in h.transitions:
                pt = out.transitions.add(
                    version=t.version, to_status=STATUS_TO_PB[t.to_status.value],
                    actor=t.actor)
                if t.from_status is not None:
                    pt.from_status = STATUS_TO_PB[t.from_status.value]
                pt.time.FromDatetime(_ts(t.at))
            return out
        return await self._run(context, run)

    async def SetBuiltinRelaxed(self, request: apb.SetBuiltinRelaxedRequest,
                                context: grpc.aio.ServicerContext[Any, Any]
                                ) -> apb.SetBuiltinRelaxedResponse:
        """relaxed=true only requests it (four eyes: ApproveBuiltinRelaxation by another
        admin); relaxed=false restores at once: tightening needs no second pair of eyes."""
        async def run() -> apb.SetBuiltinRelaxedResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.ADMINISTER)
            if not request.builtin:
                raise InvalidRequest("builtin", "required")
            if request.relaxed:
                await self.store.request_builtin_relax(tenant, request.builtin, caller.identity,
                                                       reason=request.justification)
            else:
                await self.store.restore_builtin(tenant, request.builtin, caller.identity,
                                                 reason=request.justification)
            return apb.SetBuiltinRelaxedResponse(
                relaxed_builtins=sorted(await self.store.relaxed_builtins(tenant)),
                pending_relaxations=pending_pb(await self.store.pending_relaxations(tenant)))
        return await self._run(context, run)

    async def ApproveBuiltinRelaxation(self, request: apb.ApproveBuiltinRelaxationRequest,
                                       context: grpc.aio.ServicerContext[Any, Any]
                                       ) -> apb.ApproveBuiltinRelaxationResponse:
        async def run() -> apb.ApproveBuiltinRelaxationResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.ADMINISTER)
            await self.store.approve_builtin_relax(tenant, request.builtin, caller.identity)
            return apb.ApproveBuiltinRelaxationResponse(
                relaxed_builtins=sorted(await self.store.relaxed_builtins(tenant)),
                pending_relaxations=pending_pb(await self.store.pending_relaxations(tenant)))
        return await self._run(context, run)

    async def CreateTenant(self, request: apb.CreateTenantRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> apb.CreateTenantResponse:
        async def run() -> apb.CreateTenantResponse:
            tenant, caller = await self._on(context, request.tenant, Permission.ADMINISTER)
            info = await self.store.create_tenant(tenant, caller.identity,
                                                  reason=request.justification)
            return apb.CreateTenantResponse(tenant=tenant_pb(info))
        return await self._run(context, run)

    async def ListTenants(self, request: apb.ListTenantsRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> apb.ListTenantsResponse:
        """Only the tenants the caller may read (all of them for a reader on ``*``)."""
        async def run() -> apb.ListTenantsResponse:
            caller = await authorize_any(context, Permission.READ_POLICIES, final=True)
            return apb.ListTenantsResponse(tenants=[
                tenant_pb(t) for t in await self.store.list_tenants()
                if caller.may(Permission.READ_POLICIES, t.name)])
        return await self._run(context, run)


__all__ = ["PolicyAdminService", "policy_pb"]
