"""PolicyAdminService: the policy lifecycle over gRPC, on top of a PolicyStore.

The actor of every change is the authenticated caller (never a field the caller fills in), so
four eyes means two different credentials. Store errors map to gRPC statuses by their kind;
nothing is half-written (the store guarantees that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import yaml

from pdp.api.convert import STATUS_TO_PB, tenant_of
from pdp.policy.model import PolicyError
from pdp.policy.store import (
    PolicyStore,
    PolicySummary,
    StoreError,
    VersionRecord,
    grpc_status_name,
)
from pdp.server.auth import PermissionDenied, Principal, authorize, current_principal
from pdp.server.limits import status_text
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
    doc: dict[str, Any] = {"tenant": p.tenant, "name": p.name, "description": p.description,
                           "rule": {"cel": {"deny": p.cel.deny}}}
    if p.cel.message:
        doc["rule"]["cel"]["message"] = p.cel.message
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


def _tenant_in_yaml(text: str) -> str:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return ""
    return str(data.get("tenant", "")) if isinstance(data, dict) else ""


class PolicyAdminService:
    def __init__(self, store: PolicyStore, validate: Callable[[Any], object]) -> None:
        self.store = store
        self.validate = validate

    async def _run(self, context: grpc.aio.ServicerContext[Any, Any],
                   call: Callable[[], Awaitable[T]]) -> T:
        """Store and policy errors as gRPC statuses, their texts cut to fit one (a refused
        policy may quote its whole expression). Anything else is INTERNAL, from the edge
        interceptor."""
        try:
            return await call()
        except PolicyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, status_text(str(exc)))
        except StoreError as exc:
            await context.abort(getattr(grpc.StatusCode, grpc_status_name(exc)),
                                status_text(str(exc)))
        except PermissionDenied as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, status_text(str(exc)))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, status_text(str(exc)))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _principal() -> Principal:
        principal = current_principal()
        if principal is None:  # the interceptor always sets one; refuse rather than guess
            raise PermissionDenied("no authenticated caller for a policy change")
        return principal

    def _actor(self) -> str:
        return self._principal().identity

    async def PutDraft(self, request: apb.PutDraftRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> apb.PutDraftResponse:
        async def run() -> apb.PutDraftResponse:
            text = _yaml_of(request)
            tenant = tenant_of(_tenant_in_yaml(text) or request.policy.tenant)
            # The interceptor authorized the tenant it could see; check the parsed one too.
            authorize(self._principal(), "/pdp.v1.PolicyAdminService/PutDraft", tenant)
            rec = await self.store.put_draft(tenant, text, self._actor(),
                                             request.expected_version)
            return apb.PutDraftResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ValidatePolicy(self, request: apb.ValidatePolicyRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> apb.ValidatePolicyResponse:
        from pdp.policy.loader import load_text

        async def run() -> apb.ValidatePolicyResponse:
            text = _yaml_of(request)
            try:
                [policy] = load_text(text, "<request>")
                compiled = self.validate(policy)
            except PolicyError as exc:
                return apb.ValidatePolicyResponse(valid=False, problems=[apb.PolicyProblem(
                    field=exc.field_path, line=exc.line, column=exc.column,
                    message=str(exc))])
            except ValueError as exc:
                return apb.ValidatePolicyResponse(valid=False, problems=[
                    apb.PolicyProblem(message=str(exc))])
            deny = getattr(compiled, "deny", None)
            return apb.ValidatePolicyResponse(
                valid=True, cost_estimate=int(getattr(deny, "cost_estimate", 0) or 0))
        return await self._run(context, run)

    async def ApprovePolicy(self, request: apb.ApprovePolicyRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> apb.ApprovePolicyResponse:
        async def run() -> apb.ApprovePolicyResponse:
            rec = await self.store.approve(tenant_of(request.tenant), request.name,
                                           request.version, self._actor())
            return apb.ApprovePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ActivatePolicy(self, request: apb.ActivatePolicyRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> apb.ActivatePolicyResponse:
        async def run() -> apb.ActivatePolicyResponse:
            rec = await self.store.activate(tenant_of(request.tenant), request.name,
                                            request.version, self._actor())
            return apb.ActivatePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def RetirePolicy(self, request: apb.RetirePolicyRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> apb.RetirePolicyResponse:
        async def run() -> apb.RetirePolicyResponse:
            rec = await self.store.retire(tenant_of(request.tenant), request.name, self._actor())
            return apb.RetirePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ReactivatePolicy(self, request: apb.ReactivatePolicyRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> apb.ReactivatePolicyResponse:
        async def run() -> apb.ReactivatePolicyResponse:
            rec = await self.store.reactivate(tenant_of(request.tenant), request.name,
                                              self._actor())
            return apb.ReactivatePolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def GetPolicy(self, request: apb.GetPolicyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> apb.GetPolicyResponse:
        async def run() -> apb.GetPolicyResponse:
            rec = await self.store.get(tenant_of(request.tenant), request.name,
                                       request.version or None)
            return apb.GetPolicyResponse(policy=policy_pb(rec, self.store))
        return await self._run(context, run)

    async def ListPolicies(self, request: apb.ListPoliciesRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> apb.ListPoliciesResponse:
        async def run() -> apb.ListPoliciesResponse:
            tenant = tenant_of(request.tenant)
            rows = await self.store.list(tenant)
            relaxed = await self.store.relaxed_builtins(tenant)
            return apb.ListPoliciesResponse(
                policies=[summary_pb(tenant, r) for r in rows
                          if request.include_builtins or not r.builtin],
                relaxed_builtins=sorted(relaxed))
        return await self._run(context, run)

    async def GetPolicyHistory(self, request: apb.GetPolicyHistoryRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> apb.GetPolicyHistoryResponse:
        async def run() -> apb.GetPolicyHistoryResponse:
            h = await self.store.history(tenant_of(request.tenant), request.name)
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
        async def run() -> apb.SetBuiltinRelaxedResponse:
            tenant = tenant_of(request.tenant)
            if request.relaxed and not request.justification.strip():
                raise ValueError("justification: required to relax a built-in")
            await self.store.set_builtin_relaxed(tenant, request.builtin, request.relaxed,
                                                 self._actor(), reason=request.justification)
            return apb.SetBuiltinRelaxedResponse(
                relaxed_builtins=sorted(await self.store.relaxed_builtins(tenant)))
        return await self._run(context, run)


__all__ = ["PolicyAdminService", "policy_pb"]
