"""Protobuf <-> engine values. The only place that knows both shapes.

Validation of required fields happens here, so every INVALID_ARGUMENT names the field the
caller must fix (``tenant``, ``agent.id``, ``config.yaml``, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf import duration_pb2, timestamp_pb2

from pdp.engine.decision import Decision, Explanation, PolicyRef, Reason
from pdp.engine.request import Caller, CheckRequest, InvalidRequest, Override
from pdp.policy.model import NAME_RE, Checkpoint
from pdp.reasons import ReasonCode
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb

log = structlog.get_logger("pdp.server")

CHECKPOINT_FROM_PB = {
    cpb.CHECKPOINT_ROLLOUT_PRECONDITION: Checkpoint.ROLLOUT_PRECONDITION,
    cpb.CHECKPOINT_PUSH: Checkpoint.PUSH,
    cpb.CHECKPOINT_AUTO_APPLY: Checkpoint.AUTO_APPLY,
    cpb.CHECKPOINT_DEVICE: Checkpoint.DEVICE,
}
CHECKPOINT_TO_PB = {v.value: k for k, v in CHECKPOINT_FROM_PB.items()}
STATUS_TO_PB = {"draft": cpb.POLICY_STATUS_DRAFT, "approved": cpb.POLICY_STATUS_APPROVED,
                "active": cpb.POLICY_STATUS_ACTIVE, "retired": cpb.POLICY_STATUS_RETIRED}


#: pdp.reasons.ReasonCode -> the protobuf enum (every member has a value: a test checks it).
REASON_CODE_TO_PB: dict[str, cpb.ReasonCode.ValueType] = {
    c.value: cpb.ReasonCode.Value("REASON_CODE_" + c.value) for c in ReasonCode}


def reason_code(code: str) -> cpb.ReasonCode.ValueType:
    """The API value of a reason code. A code outside ReasonCode is a bug (tests scan the
    code base for them): it is logged and sent as UNSPECIFIED, never as another reason."""
    found = REASON_CODE_TO_PB.get(code)
    if found is None:
        log.error("unknown_reason_code", code=code[:100])
        return cpb.REASON_CODE_UNSPECIFIED
    return found


def tenant_of(tenant: str) -> str:
    if not tenant:
        raise InvalidRequest("tenant", "required")
    if len(tenant) > 250 or not NAME_RE.match(tenant):
        raise InvalidRequest("tenant", "may contain only letters, digits, '_' and '-'"
                                       " (at most 250 characters)")
    return tenant


#: The seconds of a valid google.protobuf.Timestamp: 0001-01-01T00:00:00Z to
#: 9999-12-31T23:59:59Z (as timestamp.proto defines it, and ToJsonString accepts).
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
NANOS_MAX = 999_999_999


def timestamp_problem(ts: timestamp_pb2.Timestamp) -> str | None:
    """Why ``ts`` is not a valid Timestamp (the INVALID_ARGUMENT text), or None. The
    protobuf runtime decodes any seconds and nanos; using an invalid one raises later."""
    seconds, nanos = ts.seconds, ts.nanos
    if not TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS:
        return (f"not a valid timestamp (seconds {seconds} is outside 0001-01-01 to"
                f" 9999-12-31: {TIMESTAMP_MIN_SECONDS} to {TIMESTAMP_MAX_SECONDS})")
    if not 0 <= nanos <= NANOS_MAX:
        return f"not a valid timestamp (nanos {nanos} is outside 0 to {NANOS_MAX})"
    return None


def check_timestamp(ts: timestamp_pb2.Timestamp, field: str) -> None:
    """Refuse an invalid Timestamp of a request, naming its ``field``."""
    problem = timestamp_problem(ts)
    if problem is not None:
        raise InvalidRequest(field, problem)


def _timestamp(ts: timestamp_pb2.Timestamp, field: str) -> str | None:
    """The request's ``field`` as RFC 3339 text, None when unset (zero), refused when it is
    not a valid Timestamp."""
    if not (ts.seconds or ts.nanos):
        return None
    check_timestamp(ts, field)
    return ts.ToJsonString()


SHOWN_KEY_CHARS = 64  # of a caller's map key or id quoted in an error text


def shown_key(key: str, most: int = SHOWN_KEY_CHARS) -> str:
    """A caller's map key as it appears in a field path (``metrics[…]``): escaped as repr
    escapes it (no NUL or newline reaches a status text or a log line raw), without the
    quotes, and cut to ``most`` characters followed by "…"."""
    shown = repr(key[:most])[1:-1]
    return shown + "…" if len(key) > most else shown


def quoted(value: str, most: int = SHOWN_KEY_CHARS) -> str:
    """A caller's value quoted in an error text: repr, cut to ``most`` characters + "…"."""
    return repr(value[:most]) + ("…" if len(value) > most else "")


def agent_dict(agent: cpb.Agent, field: str = "agent") -> dict[str, Any]:
    agent_id = agent.id
    if not agent_id:
        raise InvalidRequest(f"{field}.id", "required")
    labels = agent.labels
    return {"id": agent_id, "labels": {k: labels[k] for k in labels}, "group": agent.group,
            "version": agent.version, "hostname": agent.hostname,
            "active_exporters": list(agent.active_exporters)}


def device_dict(device: cpb.Device) -> dict[str, Any]:
    if not device.id:
        raise InvalidRequest("device.id", "required")
    return {"id": device.id, "platform": device.platform, "os_version": device.os_version,
            "memory_bytes": device.memory_bytes, "groups": list(device.groups),
            "labels": dict(device.labels), "model": device.model}


def rollout_dict(rollout: cpb.Rollout) -> dict[str, Any]:
    """The request's ``rollout``, checked: percentages in range (NaN refused), every
    Timestamp valid (its field named, ``rollout.approvals[i].time``)."""
    if not 0 <= rollout.step_percent <= 100:  # written so that NaN fails too
        raise InvalidRequest("rollout.step_percent", "must be between 0 and 100")
    if not 0 <= rollout.previous_step_percent <= 100:
        raise InvalidRequest("rollout.previous_step_percent", "must be between 0 and 100")
    return {
        "id": rollout.id, "step": rollout.step, "total_steps": rollout.total_steps,
        "step_percent": rollout.step_percent,
        "previous_step_percent": rollout.previous_step_percent, "created_by": rollout.created_by,
        "created_at": _timestamp(rollout.created_at, "rollout.created_at"),
        "approvals": [{"actor": a.actor, "step": a.step,
                       "time": _timestamp(a.time, f"rollout.approvals[{i}].time")}
                      for i, a in enumerate(rollout.approvals)],
    }


def change_dict(change: cpb.Change) -> dict[str, str]:
    return {"subject": change.subject, "source": change.source, "type": change.type}


def override_of(msg: Any, caller: Caller) -> Override | None:
    """The request's override, whose actor is always the authenticated caller: an empty
    ``override.actor`` means the caller, any other name is refused (an override audited in
    someone else's name would let one admin act as another)."""
    if not msg.HasField("override"):
        return None
    o = msg.override
    if o.actor and o.actor != caller.identity:
        raise InvalidRequest("override.actor", f"must be the caller {caller.identity!r}"
                                               f" (or empty), got {o.actor!r}")
    if not o.justification.strip():
        raise InvalidRequest("override.justification", "required when an override is sent")
    return Override(caller.identity, o.justification)


def push_checkpoint(cp: int) -> Checkpoint:
    if cp == cpb.CHECKPOINT_UNSPECIFIED:
        return Checkpoint.PUSH
    if cp == cpb.CHECKPOINT_PUSH:
        return Checkpoint.PUSH
    if cp == cpb.CHECKPOINT_AUTO_APPLY:
        return Checkpoint.AUTO_APPLY
    raise InvalidRequest("checkpoint", "CheckPush takes CHECKPOINT_PUSH or CHECKPOINT_AUTO_APPLY")


def check_push_request(msg: dpb.CheckPushRequest, caller: Caller) -> CheckRequest:
    tenant = tenant_of(msg.tenant)
    checkpoint = push_checkpoint(msg.checkpoint)
    if not msg.HasField("agent"):
        raise InvalidRequest("agent.id", "required")
    return CheckRequest(
        tenant=tenant, checkpoint=checkpoint, change=change_dict(msg.change),
        agent=agent_dict(msg.agent), rollout=rollout_dict(msg.rollout),
        config_yaml=msg.config.yaml or None,
        previous_config_yaml=msg.previous_config.yaml or None,
        override=override_of(msg, caller), caller=caller, explain=msg.explain,
        request_id=msg.request_id)


def _in_batch(i: int, exc: InvalidRequest) -> InvalidRequest:
    return InvalidRequest(f"agents[{i}].{exc.field.removeprefix('agent.')}", exc.problem)


def check_push_batch_requests(msg: dpb.CheckPushBatchRequest,
                              caller: Caller) -> list[CheckRequest]:
    """One CheckRequest per agent, as ``check_push_request`` would build it for a single
    push carrying that agent (same validation, an agent's errors named ``agents[i].…``),
    with what the agents have in common converted once and shared (never mutated). Two
    agents with the same id are refused (``agents[i].id``): one decision per agent."""
    return list(iter_push_batch_requests(msg, caller))


def iter_push_batch_requests(msg: dpb.CheckPushBatchRequest,
                             caller: Caller) -> Iterator[CheckRequest]:
    """``check_push_batch_requests`` one agent at a time, so the server can give the event
    loop turns while it converts a large step."""
    tenant = tenant_of(msg.tenant)
    agents = msg.agents
    checkpoint = push_checkpoint(msg.checkpoint)
    try:
        first = agent_dict(agents[0]) if agents else None  # its id is checked first
    except InvalidRequest as exc:
        raise _in_batch(0, exc) from None
    # The step's own fields are named as sent (``rollout.created_at``), not as an agent's.
    change = change_dict(msg.change)
    rollout = rollout_dict(msg.rollout)
    override = override_of(msg, caller)
    config = msg.config.yaml or None
    previous = msg.previous_config.yaml or None
    explain, request_id = msg.explain, msg.request_id
    # One decision per agent: a second entry with the same id would get a decision of its
    # own the caller cannot tell from the first (the answer is keyed by agent_id).
    seen: dict[str, int] = {}
    for i, agent in enumerate(agents):
        try:
            a = first if i == 0 else agent_dict(agent)
        except InvalidRequest as exc:
            raise _in_batch(i, exc) from None
        agent_id = agent.id  # checked by agent_dict
        j = seen.setdefault(agent_id, i)
        if j != i:
            raise InvalidRequest(f"agents[{i}].id", f"duplicate of agents[{j}].id"
                                 f" {quoted(agent_id)} (one decision per agent)")
        yield CheckRequest(
            tenant=tenant, checkpoint=checkpoint, change=change, agent=a, rollout=rollout,
            config_yaml=config, previous_config_yaml=previous, override=override,
            caller=caller, explain=explain, request_id=request_id)


def check_device_request(msg: dpb.CheckDeviceRequest, caller: Caller) -> CheckRequest:
    tenant = tenant_of(msg.tenant)
    if not msg.HasField("device"):
        raise InvalidRequest("device.id", "required")
    return CheckRequest(
        tenant=tenant, checkpoint=Checkpoint.DEVICE, change=change_dict(msg.change),
        device=device_dict(msg.device), rollout=rollout_dict(msg.rollout),
        config_yaml=msg.config.yaml or None, override=override_of(msg, caller), caller=caller,
        explain=msg.explain, request_id=msg.request_id)


def metrics_dict(metrics: Mapping[str, float]) -> dict[str, float]:
    """Gate metrics are compared against thresholds: a NaN or infinite value would compare
    false either way, so it is refused rather than silently passing or failing a gate."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise InvalidRequest(f"metrics[{shown_key(name)}]", "must be a finite number")
    return dict(metrics)


def check_rollout_request(msg: dpb.CheckRolloutRequest, caller: Caller) -> CheckRequest:
    tenant = tenant_of(msg.tenant)
    if not msg.rollout.id:
        raise InvalidRequest("rollout.id", "required")
    return CheckRequest(
        tenant=tenant, checkpoint=Checkpoint.ROLLOUT_PRECONDITION,
        change=change_dict(msg.change), rollout=rollout_dict(msg.rollout),
        config_yaml=msg.config.yaml or None,
        previous_config_yaml=msg.previous_config.yaml or None,
        metrics=metrics_dict(msg.metrics), override=override_of(msg, caller), caller=caller,
        explain=msg.explain, request_id=msg.request_id)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def reason_pb(r: Reason, reader: bool = True) -> cpb.Reason:
    """``reader``: see ``shown_message``."""
    pb = cpb.Reason(policy=r.policy, policy_version=r.version, rule=r.rule,
                    code=reason_code(r.code),
                    message=r.message if reader else shown_message(r), builtin=r.builtin)
    if r.retry_after_s is not None:
        pb.retry_after.CopyFrom(_duration(r.retry_after_s))
    return pb


@functools.lru_cache(maxsize=65_536)
def policy_ref_pb(p: PolicyRef) -> cpb.PolicyRef:
    """Cached per policy version: the same refs go into every decision (messages copy them)."""
    return cpb.PolicyRef(name=p.name, version=p.version, content_hash=p.content_hash,
                         status=STATUS_TO_PB.get(p.status, cpb.POLICY_STATUS_UNSPECIFIED),
                         builtin=p.builtin)


#: Statuses of the policy versions that run in shadow (never block). A decision names them
#: only to callers who may read the tenant's policies (``reader``): a checker may not read
#: them through the admin API either. The audit record names them whoever asked.
SHADOW_STATUSES = frozenset({"draft", "approved"})


def shown_refs(refs: Sequence[PolicyRef], reader: bool) -> Sequence[PolicyRef]:
    """The evaluated policies a caller is shown: all of them to a ``reader`` (READ_POLICIES
    on the tenant), the enforced ones to anyone else."""
    if reader:
        return refs
    return [p for p in refs if p.status not in SHADOW_STATUSES]


def shown_message(r: Reason) -> str:
    """A reason's message as a caller without READ_POLICIES is shown it: as it is, except
    for a policy that does not compile, whose compiler error quotes the policy's source
    (the expression, a caret under the problem). Readers and the audit record get it."""
    if r.code != "POLICY_INVALID" or not r.message.startswith("policy does not compile"):
        return r.message
    return (f"policy {r.policy or '?'} does not compile (the error, which quotes the policy's"
            " source, is shown to callers who may read the tenant's policies and is in the"
            " audit log)")


def shown_explanations(d: Decision) -> list[Explanation]:
    """The explanations a caller without READ_POLICIES is shown: those of typed rules and
    built-ins (request values and the rule's parameters, as their reasons' messages say),
    never a CEL rule's (keyed by the policy's source text) or a policy that does not
    compile (its error quotes the source). Reasons' codes and messages are for every
    caller; an explanation no reason of the decision names is left out."""
    typed = {r.policy for r in d.reasons
             if r.policy and r.rule not in ("cel", "system") and r.code != "POLICY_INVALID"}
    return [x for x in d.explanations if x.policy in typed]


_EVALUATED: dict[tuple[int, ...], tuple[tuple[PolicyRef, ...], cpb.Decision]] = {}


def _evaluated_template(refs: list[PolicyRef], reader: bool = True) -> cpb.Decision:
    """A Decision holding only the evaluated policies of one selection (as a ``reader``
    or another caller is shown them), built once and merged into every decision that
    evaluated them (the refs keep the ids valid)."""
    key = (int(reader), *map(id, refs))
    hit = _EVALUATED.get(key)
    if hit is None:
        if len(_EVALUATED) >= 4096:
            _EVALUATED.pop(next(iter(_EVALUATED)))
        hit = _EVALUATED[key] = (tuple(refs), cpb.Decision(
            evaluated_policies=[policy_ref_pb(p) for p in shown_refs(refs, reader)]))
    return hit[1]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fill_decision_pb(pb: cpb.Decision, d: Decision, *, with_evaluated: bool = True,
                     reader: bool = True) -> None:
    """Write ``d`` into the empty ``pb`` (e.g. a field of a batch response, so the decision
    is not built apart and copied in). A batch names the evaluated policies by set
    (``with_evaluated=False``, see ``fill_batch_response``).

    ``reader``: whether the caller may read the tenant's policies (READ_POLICIES, asked
    once per call by the server; the offline tools are readers). Anyone else is not shown
    drafts or approved versions (``evaluated_policies``, ``shadow_denies``) nor
    explanations or compiler errors quoting policy source text (``shown_explanations``,
    ``shown_message``)."""
    if d.evaluated and with_evaluated:
        pb.MergeFrom(_evaluated_template(d.evaluated, reader))
    pb.decision_id = d.decision_id
    pb.outcome = cpb.OUTCOME_ALLOW if d.allowed else cpb.OUTCOME_DENY
    if d.reasons:
        pb.reasons.extend([reason_pb(r, reader) for r in d.reasons])
    if d.shadow_denies and reader:
        pb.shadow_denies.extend([reason_pb(r) for r in d.shadow_denies])
    pb.overridden = d.overridden
    pb.checkpoint = CHECKPOINT_TO_PB.get(d.checkpoint, cpb.CHECKPOINT_UNSPECIFIED)
    _set_elapsed(pb, d.elapsed_s)
    at = d.decided_at
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # what Timestamp.FromDatetime assumes for naive times
    delta = at - _EPOCH
    ts = pb.decided_at
    ts.SetInParent()
    ts.seconds = delta.days * 86_400 + delta.seconds
    ts.nanos = delta.microseconds * 1000
    if d.explanations:
        shown = d.explanations if reader else shown_explanations(d)
        pb.explanations.extend([cpb.Explanation(policy=x.policy, values=x.values)
                                for x in shown])


def _set_elapsed(pb: cpb.Decision, elapsed_s: float) -> None:
    nanos = int(elapsed_s * 1e9)
    seconds = int(nanos / 1_000_000_000)  # toward zero, as Duration.FromNanoseconds
    elapsed = pb.elapsed
    elapsed.SetInParent()
    elapsed.seconds = seconds
    elapsed.nanos = nanos - seconds * 1_000_000_000


def fill_batch_response(out: dpb.CheckPushBatchResponse, agent_ids: Iterable[str],
                        decisions: Sequence[Decision], *, reader: bool = True) -> None:
    """The decisions of a step, each distinct list of evaluated policies written once in
    ``evaluated_sets`` and named by index (keyed by the refs' identities: a policy version's
    ref is one object, and the decisions hold them alive meanwhile). ``reader``: as for
    ``fill_decision_pb``."""
    for _ in filling_batch_response(out, agent_ids, decisions, reader=reader):
        pass


def filling_batch_response(out: dpb.CheckPushBatchResponse, agent_ids: Iterable[str],
                           decisions: Sequence[Decision], *,
                           reader: bool = True) -> Iterator[int]:
    """``fill_batch_response`` yielding each decision's index once it is in ``out`` (the
    server gives the event loop turns meanwhile); ``out`` is complete when it ends."""
    sets: dict[tuple[int, ...], int] = {}  # the refs are shared per policy version
    add = out.decisions.add
    # Decisions with no reasons (most of a step) differ only in id and elapsed time: the
    # rest is copied from one message built per (outcome, checkpoint, instant).
    common: tuple[Any, ...] | None = None
    template = cpb.Decision()
    for i, (agent_id, d) in enumerate(zip(agent_ids, decisions, strict=True)):
        yield i
        key = tuple(map(id, d.evaluated))
        index = sets.get(key)
        if index is None:
            index = sets[key] = len(out.evaluated_sets)
            out.evaluated_sets.add().policies.extend(
                [policy_ref_pb(p) for p in shown_refs(d.evaluated, reader)])
        item = add(agent_id=agent_id, evaluated_set=index)
        if d.reasons or d.shadow_denies or d.explanations:
            fill_decision_pb(item.decision, d, with_evaluated=False, reader=reader)
            continue
        shared = (d.allowed, d.overridden, d.checkpoint, d.decided_at)
        if shared != common:
            template = cpb.Decision()
            fill_decision_pb(template, d, with_evaluated=False, reader=reader)
            template.ClearField("decision_id")
            template.ClearField("elapsed")
            common = shared
        pb = item.decision
        pb.CopyFrom(template)
        pb.decision_id = d.decision_id
        _set_elapsed(pb, d.elapsed_s)
    out.allowed_count = sum(d.allowed for d in decisions)
    out.denied_count = len(decisions) - out.allowed_count


def decision_pb(d: Decision, *, reader: bool = True) -> cpb.Decision:
    pb = cpb.Decision()
    fill_decision_pb(pb, d, reader=reader)
    return pb
