"""How big each field of a request may be, and how long an error text may be.

Every string in a request ends up in audit records, log lines, counter keys and CEL inputs,
so an unbounded one (a 1 MB agent id) costs memory and disk many times over. The limits are
checked once, as a request is decoded (see :mod:`pdp.server.edges`), before authentication,
the engine or the audit log ever see it. A field over its limit is INVALID_ARGUMENT naming
the field and the limit, e.g. ``agent.id: 1048576 characters is longer than the limit of 256``.

All limits live in :data:`FIELD_LIMITS`, one row per string, list or map field of every
request message (``tests/server/test_input_limits.py`` checks that no field is missing; a
field without a row gets :data:`DEFAULT`). Lengths count characters (code points), not bytes.
Config documents (``Config.yaml``) are bounded by the ``max_config_bytes`` setting instead,
and the whole message by ``grpc.max_receive_message_length``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from pdp.api.convert import shown_key
from pdp.engine.request import InvalidRequest
from pdp.server.ending import end

# --- the limits ------------------------------------------------------------------------------

ID = 256  # ids, names, hostnames, versions, actors, timezones, group names
LABEL_KEY = 256  # label keys, metric names, map keys in general
LABEL_VALUE = 1024  # label values
TEXT = 4096  # free text: justifications, descriptions, messages, reasons
EXPRESSION = 100_000  # a CEL expression (the CEL parser's own limit, pdp.cel.parser)
POLICY_TEXT = 256 * 1024  # a whole policy document (YAML) sent to PolicyAdminService
ITEMS = 256  # entries of a list or map (labels, groups, exporters, metrics, approvals)

STATUS_TEXT_BYTES = 1024  # an error text sent back in a gRPC status (grpc-message header)


@dataclass(frozen=True)
class Limit:
    """``chars``: longest string (each element, each map value); ``None``: bounded elsewhere.
    ``items``: most entries of a repeated or map field. ``key_chars``: longest map key."""

    chars: int | None = None
    items: int | None = None
    key_chars: int | None = None


def text(chars: int) -> Limit:
    return Limit(chars=chars)


def strings(chars: int, items: int = ITEMS) -> Limit:
    return Limit(chars=chars, items=items)


def mapping(key: int, value: int | None, items: int = ITEMS) -> Limit:
    return Limit(chars=value, items=items, key_chars=key)


def entries(items: int | None = ITEMS) -> Limit:
    """A repeated message field: its messages have limits of their own."""
    return Limit(items=items)


DEFAULT = text(TEXT)  # a string field added to the protos without a row here

FIELD_LIMITS: dict[str, Limit] = {
    # common.proto
    "pdp.v1.Agent.id": text(ID),
    "pdp.v1.Agent.labels": mapping(LABEL_KEY, LABEL_VALUE),
    "pdp.v1.Agent.group": text(ID),
    "pdp.v1.Agent.version": text(ID),
    "pdp.v1.Agent.hostname": text(ID),
    "pdp.v1.Agent.active_exporters": strings(ID),
    "pdp.v1.Device.id": text(ID),
    "pdp.v1.Device.platform": text(ID),
    "pdp.v1.Device.os_version": text(ID),
    "pdp.v1.Device.groups": strings(ID),
    "pdp.v1.Device.labels": mapping(LABEL_KEY, LABEL_VALUE),
    "pdp.v1.Device.model": text(ID),
    "pdp.v1.Rollout.id": text(ID),
    "pdp.v1.Rollout.approvals": entries(),
    "pdp.v1.Rollout.created_by": text(ID),
    "pdp.v1.Approval.actor": text(ID),
    "pdp.v1.Change.subject": text(ID),
    "pdp.v1.Change.source": text(ID),
    "pdp.v1.Change.type": text(ID),
    "pdp.v1.Config.yaml": Limit(),  # the max_config_bytes setting
    "pdp.v1.Config.id": text(ID),
    "pdp.v1.Config.version": text(ID),
    "pdp.v1.Override.actor": text(ID),
    "pdp.v1.Override.justification": text(TEXT),
    # decision.proto
    "pdp.v1.CheckPushRequest.tenant": text(ID),
    "pdp.v1.CheckPushRequest.request_id": text(ID),
    "pdp.v1.CheckPushBatchRequest.tenant": text(ID),
    "pdp.v1.CheckPushBatchRequest.agents": entries(None),  # the max_batch_agents setting
    "pdp.v1.CheckPushBatchRequest.request_id": text(ID),
    "pdp.v1.CheckDeviceRequest.tenant": text(ID),
    "pdp.v1.CheckDeviceRequest.request_id": text(ID),
    "pdp.v1.CheckRolloutRequest.tenant": text(ID),
    "pdp.v1.CheckRolloutRequest.metrics": mapping(LABEL_KEY, None),
    "pdp.v1.CheckRolloutRequest.request_id": text(ID),
    "pdp.v1.RecordEventRequest.tenant": text(ID),
    "pdp.v1.RecordEventRequest.agent_id": text(ID),
    "pdp.v1.RecordEventRequest.device_id": text(ID),
    "pdp.v1.RecordEventRequest.group": text(ID),
    "pdp.v1.RecordEventRequest.request_id": text(ID),
    "pdp.v1.RecordEventRequest.event_id": text(ID),
    "pdp.v1.EvaluateHealthRequest.tenant": text(ID),
    "pdp.v1.EvaluateHealthRequest.metrics": mapping(LABEL_KEY, None),
    "pdp.v1.EvaluateHealthRequest.request_id": text(ID),
    # admin.proto
    "pdp.v1.PutDraftRequest.yaml": text(POLICY_TEXT),
    "pdp.v1.ValidatePolicyRequest.yaml": text(POLICY_TEXT),
    "pdp.v1.ApprovePolicyRequest.tenant": text(ID),
    "pdp.v1.ApprovePolicyRequest.name": text(ID),
    "pdp.v1.ActivatePolicyRequest.tenant": text(ID),
    "pdp.v1.ActivatePolicyRequest.name": text(ID),
    "pdp.v1.RetirePolicyRequest.tenant": text(ID),
    "pdp.v1.RetirePolicyRequest.name": text(ID),
    "pdp.v1.ReactivatePolicyRequest.tenant": text(ID),
    "pdp.v1.ReactivatePolicyRequest.name": text(ID),
    "pdp.v1.GetPolicyRequest.tenant": text(ID),
    "pdp.v1.GetPolicyRequest.name": text(ID),
    "pdp.v1.ListPoliciesRequest.tenant": text(ID),
    "pdp.v1.GetPolicyHistoryRequest.tenant": text(ID),
    "pdp.v1.GetPolicyHistoryRequest.name": text(ID),
    "pdp.v1.SetBuiltinRelaxedRequest.tenant": text(ID),
    "pdp.v1.SetBuiltinRelaxedRequest.builtin": text(ID),
    "pdp.v1.SetBuiltinRelaxedRequest.justification": text(TEXT),
    "pdp.v1.ApproveBuiltinRelaxationRequest.tenant": text(ID),
    "pdp.v1.ApproveBuiltinRelaxationRequest.builtin": text(ID),
    "pdp.v1.CreateTenantRequest.tenant": text(ID),
    "pdp.v1.CreateTenantRequest.justification": text(TEXT),
    # policy.proto (the policy message of PutDraft / ValidatePolicy)
    "pdp.v1.Policy.tenant": text(ID),
    "pdp.v1.Policy.name": text(ID),
    "pdp.v1.Policy.description": text(TEXT),
    "pdp.v1.Policy.checkpoints": entries(),
    "pdp.v1.Policy.yaml": text(POLICY_TEXT),
    "pdp.v1.PolicyMeta.content_hash": text(ID),
    "pdp.v1.PolicyMeta.author": text(ID),
    "pdp.v1.PolicyMeta.approver": text(ID),
    "pdp.v1.MatchFilter.subjects": strings(ID),
    "pdp.v1.MatchFilter.sources": strings(ID),
    "pdp.v1.MatchFilter.types": strings(ID),
    "pdp.v1.LabelSelector.match_labels": mapping(LABEL_KEY, LABEL_VALUE),
    "pdp.v1.LabelSelector.match_expressions": entries(),
    "pdp.v1.LabelRequirement.key": text(LABEL_KEY),
    "pdp.v1.LabelRequirement.values": strings(LABEL_VALUE),
    "pdp.v1.CelRule.deny": text(EXPRESSION),
    "pdp.v1.CelRule.message": text(EXPRESSION),
    "pdp.v1.CelRule.violations": text(EXPRESSION),
    "pdp.v1.CelRule.variables": entries(),
    "pdp.v1.CelVariable.name": text(ID),
    "pdp.v1.CelVariable.expression": text(EXPRESSION),
    "pdp.v1.BlockedDaysRule.days": entries(),
    "pdp.v1.BlockedDaysRule.timezone": text(ID),
    "pdp.v1.AllowedHoursRule.timezone": text(ID),
    "pdp.v1.FreezeWindow.reason": text(TEXT),
    "pdp.v1.FreezeWindowsRule.windows": entries(),
    "pdp.v1.CounterScope.expression": text(EXPRESSION),
    "pdp.v1.DailyCapRule.timezone": text(ID),
    "pdp.v1.DeviceConstraintsRule.min_os_version": mapping(ID, ID),
    "pdp.v1.DeviceConstraintsRule.allowed_groups": strings(ID),
    "pdp.v1.QualityGateCondition.metric": text(LABEL_KEY),
    "pdp.v1.QualityGateCondition.keys": strings(LABEL_KEY),
    "pdp.v1.QualityGateRule.conditions": entries(),
    "pdp.v1.QualityDrop.metric": text(LABEL_KEY),
    # audit.proto
    "pdp.v1.WatchRequest.tenant": text(ID),
    "pdp.v1.WatchRequest.event_types": strings(ID),
}


# --- error texts -----------------------------------------------------------------------------

def status_text(msg: str, limit: int = STATUS_TEXT_BYTES) -> str:
    """``msg`` cut to at most ``limit`` bytes of UTF-8, so it always fits a gRPC status.

    The text travels in the ``grpc-message`` trailer; one that echoes a 100 KB expression
    makes the client refuse the whole answer (RESOURCE_EXHAUSTED) instead of reading it.
    A cut text ends with ``… (N characters)`` so the reader knows there was more.
    """
    raw = msg.encode("utf-8", "replace")
    if len(raw) <= limit:
        return msg
    tail = f"… ({len(msg)} characters)"
    keep = raw[:max(0, limit - len(tail.encode()))].decode("utf-8", "ignore")
    return keep + tail


FIELD_BYTES = 256  # a field path in a BadRequest (paths are pdp's; map keys are the caller's)


async def abort_invalid(context: grpc.aio.ServicerContext[Any, Any], field: str,
                        problem: str, text: str | None = None) -> NoReturn:
    """End the call with INVALID_ARGUMENT: the text (``field: problem`` unless ``text`` is
    given), plus a ``google.rpc.BadRequest`` naming the field, so a client (or a gateway)
    can point at it without parsing the text. ``field`` is "" when the whole request is the
    problem. Everything is cut to fit the status trailers."""
    text = status_text(text if text is not None else f"{field}: {problem}" if field
                       else problem)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(
            field=status_text(field, FIELD_BYTES), description=status_text(problem))]))
    status = rpc_status.to_status(status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=text, details=[detail]))
    await end(context, status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def internal_text(exc: BaseException, limit: int = 200) -> str:
    """What a caller learns of an unexpected error: its type and the start of its text
    (enough to report it; the whole traceback is in the server log)."""
    detail = str(exc)
    head = f"internal error: {type(exc).__name__}"
    return status_text(f"{head}: {detail}" if detail else head, limit)


# --- checking a decoded message ----------------------------------------------------------------

Check = Callable[[Any, str], None]


def _too_long(field: str, n: int, limit: int, what: str = "") -> InvalidRequest:
    return InvalidRequest(field, f"{what}{n} characters is longer than the limit of {limit}")


def _string_check(name: str, limit: int) -> Check:
    def check(msg: Any, path: str) -> None:
        n = len(getattr(msg, name))
        if n > limit:
            raise _too_long(path + name, n, limit)
    return check


def _items(path: str, n: int, limit: int | None) -> None:
    if limit is not None and n > limit:
        raise InvalidRequest(path, f"{n} entries is more than the limit of {limit}")


def _repeated_string_check(name: str, lim: Limit) -> Check:
    def check(msg: Any, path: str) -> None:
        values = getattr(msg, name)
        _items(path + name, len(values), lim.items)
        if lim.chars is not None:
            for i, v in enumerate(values):
                if len(v) > lim.chars:
                    raise _too_long(f"{path}{name}[{i}]", len(v), lim.chars)
    return check


def _map_check(name: str, lim: Limit, string_values: bool) -> Check:
    value_limit = lim.chars if string_values else None

    def check(msg: Any, path: str) -> None:
        entries_ = getattr(msg, name)
        field = path + name
        _items(field, len(entries_), lim.items)
        if lim.key_chars is None and value_limit is None:
            return
        for key in entries_:
            if lim.key_chars is not None and len(key) > lim.key_chars:
                raise _too_long(field, len(key), lim.key_chars, "a key of ")
            if value_limit is not None:
                n = len(entries_[key])
                if n > value_limit:
                    raise _too_long(f"{field}[{shown_key(key)}]", n, value_limit)
    return check


def _message_check(name: str, plan: _Plan) -> Check:
    def check(msg: Any, path: str) -> None:
        if msg.HasField(name):
            plan.check(getattr(msg, name), f"{path}{name}.")
    return check


def _repeated_message_check(name: str, lim: Limit, plan: _Plan) -> Check:
    def check(msg: Any, path: str) -> None:
        values = getattr(msg, name)
        _items(path + name, len(values), lim.items)
        floor = plan.floor
        for i, v in enumerate(values):
            # The floor test inline: a step's thousand agents mostly pass it, and their
            # paths are only spelled for one that does not.
            if floor is None or v.ByteSize() > floor:
                plan.check(v, f"{path}{name}[{i}].")
    return check


class _Plan:
    """The checks of one message type, built once from its descriptor.

    ``floor``: a serialized message no longer than this cannot break any limit below it
    (a string's characters never outnumber its bytes; each list entry takes at least two
    bytes), so such a message is passed with one ``ByteSize()`` call. Only used where no
    field below is unbounded, as ``ByteSize`` serializes the message.
    """

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.floor: int | None = None  # None: ByteSize is not worth or safe to ask

    def check(self, msg: Any, path: str = "") -> None:
        if self.floor is not None and msg.ByteSize() <= self.floor:
            return
        for c in self.checks:
            c(msg, path)


_PLANS: dict[str, _Plan] = {}
_STRING = FieldDescriptor.TYPE_STRING


def limit_of(field: FieldDescriptor) -> Limit:
    return FIELD_LIMITS.get(field.full_name, DEFAULT)


def _plan(desc: Descriptor) -> _Plan:
    plan = _PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    plan = _PLANS[desc.full_name] = _Plan()  # registered first: recursive types terminate
    floor: int | None = None
    bounded = True

    def lower(n: int | None) -> None:
        nonlocal floor, bounded
        if n is None:
            bounded = False
        else:
            floor = n if floor is None else min(floor, n)

    for f in desc.fields:
        lim = limit_of(f)
        repeated = f.is_repeated
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            string_values = value.type == _STRING
            plan.checks.append(_map_check(f.name, lim, string_values))
            lower(None if lim.items is None else 2 * lim.items + 1)
            if lim.key_chars is not None:
                lower(lim.key_chars)
            if string_values:
                lower(lim.chars)
        elif f.message_type is not None:
            sub = _plan(f.message_type)
            if not sub.checks:
                continue
            if repeated:
                plan.checks.append(_repeated_message_check(f.name, lim, sub))
                lower(None if lim.items is None else 2 * lim.items + 1)
            else:
                plan.checks.append(_message_check(f.name, sub))
            lower(sub.floor)
        elif f.type == _STRING and repeated:
            plan.checks.append(_repeated_string_check(f.name, lim))
            lower(None if lim.items is None else 2 * lim.items + 1)
            lower(lim.chars)
        elif f.type == _STRING:
            if lim.chars is not None:
                plan.checks.append(_string_check(f.name, lim.chars))
            lower(lim.chars)
        elif repeated and lim.items is not None:  # enums, numbers
            plan.checks.append(_repeated_string_check(f.name, Limit(items=lim.items)))
            lower(2 * lim.items + 1)
    plan.floor = floor if bounded and floor is not None else None
    return plan


def check_limits(msg: Any) -> None:
    """Raise :class:`InvalidRequest` for the first field of ``msg`` over its limit."""
    _plan(msg.DESCRIPTOR).check(msg)


def limited_fields(desc: Descriptor) -> list[FieldDescriptor]:
    """Every string, list or map field reachable from ``desc`` (for the coverage test)."""
    seen: set[str] = set()
    out: list[FieldDescriptor] = []

    def visit(d: Descriptor) -> None:
        if d.full_name in seen or d.GetOptions().map_entry:
            return
        seen.add(d.full_name)
        for f in d.fields:
            if f.type == _STRING or f.is_repeated:
                out.append(f)
            if f.message_type is not None and not f.message_type.GetOptions().map_entry:
                visit(f.message_type)

    visit(desc)
    return out


# --- decode errors ---------------------------------------------------------------------------

def read_varint(data: bytes | memoryview, i: int) -> tuple[int, int]:
    """The varint at ``data[i]`` and the index after it; ValueError if it is too long,
    IndexError if ``data`` ends inside it (wire walks here and in wirescan.py)."""
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _bad_utf8(data: bytes, desc: Descriptor, path: str) -> str | None:
    i, n = 0, len(data)
    while i < n:
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = read_varint(data, i)
            chunk = data[i:i + length]
            i += length
            field = desc.fields_by_number.get(number)
            if field is None:
                continue
            if field.type == _STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return path + field.name
            elif field.message_type is not None:
                found = _bad_utf8(chunk, field.message_type, f"{path}{field.name}.")
                if found is not None:
                    return found
        else:
            raise ValueError(f"wire type {wire}")
        if i > n:
            raise ValueError("truncated")
    return None


def decode_problem(data: bytes, desc: Descriptor | None) -> str:
    """Why ``data`` is not a ``desc`` message, for the INVALID_ARGUMENT text. Only called
    once the protobuf runtime has refused it (which does not say why)."""
    return decode_violation(data, desc)[1]


def decode_violation(data: bytes, desc: Descriptor | None) -> tuple[str, str]:
    """(field, problem) for a request the runtime refused: the field is the string field
    with invalid UTF-8 when that is the reason, else "" (the whole request)."""
    head = "request could not be decoded"
    if desc is None:
        return "", f"{head}: not a valid protobuf message"
    try:
        field = _bad_utf8(data, desc, "")
    except (ValueError, IndexError):
        return "", f"{head}: not a valid {desc.full_name} message (malformed protobuf)"
    if field is not None:
        return field, f"{head}: invalid UTF-8 in a string field ({field})"
    return "", f"{head}: not a valid {desc.full_name} message"
