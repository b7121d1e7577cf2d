"""gRPC servicers: map protobuf to the engine and back; nothing else.

Each method reads the tenant from its typed request and authorises the caller on it
(:func:`pdp.server.roles.authorize`) before anything is decided or recorded.

Every request gets one deadline: the configured budget, or less if the caller's own gRPC
deadline is shorter. Requests that cannot be decided get INVALID_ARGUMENT naming the field;
anything unexpected is an error status, never an allow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from pdp.api import convert
from pdp.audit import AuditClosedError, AuditWriteError
from pdp.counters import CounterEventKind, CounterStoreUnavailable, scope_key
from pdp.engine.deadline import Deadline
from pdp.engine.engine import Engine
from pdp.engine.outcomes import event_key
from pdp.engine.request import Caller, CheckRequest, InvalidRequest
from pdp.server.arrival import arrived_at
from pdp.server.ending import end
from pdp.server.limits import abort_invalid, internal_text, status_text
from pdp.server.roles import Permission, Principal, authorize, current_caller
from pdp.telemetry import debug_enabled, log_decision, log_step
from pdp.turns import Turns, foreground
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc

log = structlog.get_logger("pdp.server")
T = TypeVar("T")
R = TypeVar("R", dpb.CheckPushResponse, dpb.CheckDeviceResponse, dpb.CheckRolloutResponse)

EVENT_KINDS = {
    dpb.EVENT_KIND_DEPLOY: CounterEventKind.DEPLOY,
    dpb.EVENT_KIND_ROLLBACK: CounterEventKind.ROLLBACK,
    dpb.EVENT_KIND_STEP_ADVANCE: CounterEventKind.STEP_ADVANCE,
}


def deadline_for(context: grpc.aio.ServicerContext[Any, Any], budget_s: float) -> Deadline:
    remaining = context.time_remaining()
    if remaining is not None and remaining < budget_s:
        budget_s = max(0.0, remaining)
    return Deadline.after(budget_s)


def carrier(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """Incoming metadata as a plain mapping (W3C traceparent lives here)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def caller_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> Deadline | None:
    """The caller's own gRPC deadline, less a little time to send the answer back."""
    remaining = context.time_remaining()
    return None if remaining is None else Deadline.after(max(0.0, remaining - 0.002))


async def guarded(context: grpc.aio.ServicerContext[Any, Any],
                  call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``; bad input -> INVALID_ARGUMENT, counter store down or (sync durability)
    audit record not durable -> UNAVAILABLE, bugs -> INTERNAL.

    Texts are cut to fit a gRPC status (an input echoed whole could make it too big to
    deliver); a bug's text says its type and how it starts, the log has the rest."""
    try:
        return await call()
    except InvalidRequest as exc:  # the text, and a BadRequest naming the field
        await abort_invalid(context, exc.field, exc.problem)
    except CounterStoreUnavailable as exc:
        await end(context, grpc.StatusCode.UNAVAILABLE,
                  status_text(f"counter store unavailable: {exc}"))
    except (AuditWriteError, AuditClosedError) as exc:  # sync durability: no record, no answer
        await end(context, grpc.StatusCode.UNAVAILABLE,
                  status_text(f"audit log unavailable: {exc}"))
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        log.exception("request_failed", error=repr(exc)[:1000])
        await end(context, grpc.StatusCode.INTERNAL, internal_text(exc))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def reads_policies(principal: Principal, tenant: str) -> bool:
    """Whether a decision's answer may show ``tenant``'s policy texts and drafts to this
    caller: as much as the admin API would (READ_POLICIES). Asked once per call (per batch
    of a stream), never per policy."""
    return principal.may(Permission.READ_POLICIES, tenant)


class DecisionService(dgrpc.DecisionServiceServicer):
    def __init__(self, engine: Engine, deadline_s: float, max_batch: int) -> None:
        self.engine = engine
        self.deadline_s = deadline_s
        self.max_batch = max_batch
        # Whether allowed decisions are logged (debug): read once, as logging is configured
        # before the services are built, not asked of the logger per decision.
        self.debug = debug_enabled(log)

    async def _check(self, context: grpc.aio.ServicerContext[Any, Any], tenant: str,
                     build: Callable[[Caller], CheckRequest], response: R) -> R:
        """Authorise, decide one request and write the decision into ``response.decision``
        (in place: no copy of the message), as the caller may see it (``reads_policies``)."""
        received_at = arrived_at()  # the budget covers waiting and conversion too
        reader = reads_policies(await authorize(context, tenant, Permission.DECIDE), tenant)

        async def run() -> R:
            req = build(current_caller(tenant))
            req.explain_cel = reader  # not shown to others: not computed (request.py)
            tel = self.engine.telemetry
            if not tel.enabled:
                decision = await self.engine.check(req, self.deadline_s,
                                                   caller_deadline(context),
                                                   received_at=received_at)
                log_decision(log, req.tenant, req.checkpoint.value, decision, self.debug)
                convert.fill_decision_pb(response.decision, decision, reader=reader)
                return response
            with tel.decision_span(f"pdp.{req.checkpoint.value}", carrier(context),
                                   {"pdp.tenant": req.tenant,
                                    "pdp.checkpoint": req.checkpoint.value}) as span:
                decision = await self.engine.check(req, self.deadline_s,
                                                   caller_deadline(context),
                                                   received_at=received_at)
                span.set_attribute("pdp.outcome", "allow" if decision.allowed else "deny")
                span.set_attribute("pdp.decision_id", decision.decision_id)
                log_decision(log, req.tenant, req.checkpoint.value, decision, self.debug)
            convert.fill_decision_pb(response.decision, decision, reader=reader)
            return response
        return await guarded(context, run)

    async def CheckPush(self, request: dpb.CheckPushRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> dpb.CheckPushResponse:
        return await self._check(context, request.tenant,
                                 lambda c: convert.check_push_request(request, c),
                                 dpb.CheckPushResponse())

    async def CheckDevice(self, request: dpb.CheckDeviceRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> dpb.CheckDeviceResponse:
        return await self._check(context, request.tenant,
                                 lambda c: convert.check_device_request(request, c),
                                 dpb.CheckDeviceResponse())

    async def CheckRollout(self, request: dpb.CheckRolloutRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> dpb.CheckRolloutResponse:
        return await self._check(context, request.tenant,
                                 lambda c: convert.check_rollout_request(request, c),
                                 dpb.CheckRolloutResponse())

    async def _batch(self, request: dpb.CheckPushBatchRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> dpb.CheckPushBatchResponse:
        received_at = arrived_at()  # the step's budget covers waiting and conversion too
        principal = await authorize(context, request.tenant, Permission.DECIDE)  # every batch
        reader = reads_policies(principal, request.tenant)

        async def run() -> dpb.CheckPushBatchResponse:
            with foreground():  # the step's own records wait for its answer (turns.py)
                return await answer()

        async def answer() -> dpb.CheckPushBatchResponse:
            convert.tenant_of(request.tenant)
            if len(request.agents) > self.max_batch:
                raise InvalidRequest("agents", f"{len(request.agents)} agents is more than the"
                                               f" limit of {self.max_batch} per batch")
            if not request.agents:
                raise InvalidRequest("agents", "required: at least one agent")
            # A large step is converted, logged and answered with turns for the event loop
            # in between, as it is decided: other calls are not held meanwhile.
            turns = Turns()
            reqs: list[CheckRequest] = []
            for i, one in enumerate(convert.iter_push_batch_requests(
                    request, current_caller(request.tenant))):
                if turns.due(i):
                    await turns.take()
                one.explain_cel = reader  # not shown to others: not computed (request.py)
                reqs.append(one)
            # One span per step, in the caller's trace; its log lines are written inside it.
            with self.engine.telemetry.decision_span(
                    "pdp.push_step", carrier(context),
                    {"pdp.tenant": request.tenant, "pdp.checkpoint": "push",
                     "pdp.step.size": len(reqs)}) as span:
                decisions = await self.engine.check_batch(reqs, self.deadline_s,
                                                          caller_deadline(context),
                                                          received_at=received_at)
                allowed, denied = await log_step(log, request.tenant, "push", decisions)
                span.set_attribute("pdp.step.allowed", allowed)
                span.set_attribute("pdp.step.denied", denied)
            out = dpb.CheckPushBatchResponse()
            for i in convert.filling_batch_response(out, (a.id for a in request.agents),
                                                    decisions, reader=reader):
                if turns.due(i):
                    await turns.take()
            return out
        return await guarded(context, run)

    async def CheckPushBatch(self, request: dpb.CheckPushBatchRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> dpb.CheckPushBatchResponse:
        return await self._batch(request, context)

    async def CheckPushStream(self, request_iterator: AsyncIterator[dpb.CheckPushStreamRequest],
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> AsyncIterator[dpb.CheckPushStreamResponse]:
        async for item in request_iterator:
            yield dpb.CheckPushStreamResponse(batch=await self._batch(item.batch, context))

    async def RecordEvent(self, request: dpb.RecordEventRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> dpb.RecordEventResponse:
        await authorize(context, request.tenant, Permission.RECORD_EVENTS)

        async def run() -> dpb.RecordEventResponse:
            tenant = convert.tenant_of(request.tenant)
            kind = EVENT_KINDS.get(request.kind)
            if kind is None:
                raise InvalidRequest("kind", "required: DEPLOY, ROLLBACK or STEP_ADVANCE")
            if kind is CounterEventKind.STEP_ADVANCE and not request.rollout.id:
                raise InvalidRequest("rollout.id", "required for STEP_ADVANCE")
            # Checked as a decision checks them (percentages, timestamps), though only the
            # rollout's id and step are used. ``time`` is informational: an event counts
            # when it arrives (README, roles); an invalid one is refused all the same.
            convert.rollout_dict(request.rollout)
            if request.HasField("time"):
                convert.check_timestamp(request.time, "time")
            keys = [k for k in (scope_key("tenant"), scope_key("rollout", request.rollout.id),
                                scope_key("agent", request.agent_id),
                                scope_key("device", request.device_id),
                                scope_key("group", request.group)) if k is not None]
            rollout = {"id": request.rollout.id, "step": request.rollout.step}
            event_id, _ = await self.engine.outcomes.record_event(
                tenant, kind, keys, deadline_for(context, self.deadline_s),
                key=event_key(kind, rollout, request.event_id))
            return dpb.RecordEventResponse(event_id=event_id)
        return await guarded(context, run)

    async def EvaluateHealth(self, request: dpb.EvaluateHealthRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> dpb.EvaluateHealthResponse:
        principal = await authorize(context, request.tenant, Permission.DECIDE)
        reader = reads_policies(principal, request.tenant)
        # a breach counts as the step's rollback only for a caller who may record events
        records = principal.may(Permission.RECORD_EVENTS, request.tenant)

        async def run() -> dpb.EvaluateHealthResponse:
            tenant = convert.tenant_of(request.tenant)
            if not request.metrics:
                raise InvalidRequest("metrics", "required: at least one metric")
            verdict = await self.engine.outcomes.evaluate_health(
                tenant, {"rollout": convert.rollout_dict(request.rollout),
                         "metrics": convert.metrics_dict(request.metrics)},
                convert.change_dict(request.change),
                deadline_for(context, self.deadline_s), record=records)
            return dpb.EvaluateHealthResponse(
                rollback=verdict.rollback, decision_id=verdict.decision_id,
                reasons=[convert.reason_pb(r, reader) for r in verdict.reasons],
                evaluated_policies=[convert.policy_ref_pb(p)
                                    for p in convert.shown_refs(verdict.evaluated, reader)])
        return await guarded(context, run)
