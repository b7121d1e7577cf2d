"""Audit events as plain JSON data.

Events are ``dict``\\s with a ``type`` field (and ``time`` / ``tenant``) so every sink, the hash
chain and a future "replay" feature see exactly what was written, with no protobuf or class
hierarchy to version. The constructors below only fix the field names in one place.

The decision dict (built by the engine, passed to :func:`decision_event` /
:func:`events_for_decision`)::

    {
      "decision_id": str,
      "time": str (RFC 3339) | datetime | float (unix seconds)   # optional, default now
      "tenant": str,
      "checkpoint": "rollout" | "push" | "auto_apply" | "device",  # any case, "CHECKPOINT_" ok
      "caller": str | {...},                       # authenticated identity
      "subject": {"agent_id": str|None, "device_id": str|None, "rollout_id": str|None},
      "allowed": bool,
      "reasons": [{"policy", "version", "rule", "code", "message"}],   # why (deny) reasons
      "shadow_denies": [same shape],               # would-denies of draft policies
      "override": {...} | None,                    # who / why, when honoured
      "policies": [{"name", "version", "content_hash"}],   # everything evaluated, or
      "policies_sha256": str,                      # ... naming that list (see below)
      "elapsed_ms": float,
      "request": {...},                            # masked before it leaves the process
      ...                                          # any extra fields are kept as given
    }

The evaluated policies may also be named instead of listed: ``policies_sha256`` (hex SHA-256
of ``json.dumps(list, separators=(",", ":"))``: keys in the listed order, non-ASCII escaped)
names the list of a ``Policies.Seen`` event
(:func:`policies_seen`) written before the first decision that names it (by this process,
per tenant). The engine does that: a tenant with hundreds of policies would otherwise repeat
the whole list, tens of kilobytes, in every record.

Reasons may carry extra fields too (``retry_after_s``, ``builtin``); they are kept.

``request`` may name the config by content instead of carrying it: ``config_sha256`` /
``previous_config_sha256`` (hex SHA-256 of the YAML text as sent). The text is then in a
``Config.Seen`` event (:func:`config_seen`) written before the first decision that names it
(by this process, per tenant and field), under ``request.config`` / ``request.previous_config``
so the same mask paths apply to it.

Derived events: a denied ``PUSH`` / ``AUTO_APPLY`` decision (a per-agent push) also yields a
``Rollout.PushDenied``; every shadow deny yields a ``Policy.WouldDeny``. A decision whose
call failed because its record was not durable in time (sync durability, a full disk) is
followed by a ``Decision.Undelivered`` naming it (:func:`decision_undelivered`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import functools
import math
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

Event = dict[str, Any]

DECISION = "Decision"
PUSH_DENIED = "Rollout.PushDenied"
WOULD_DENY = "Policy.WouldDeny"
POLICY_CREATED = "Policy.Created"
POLICY_APPROVED = "Policy.Approved"
POLICY_ACTIVATED = "Policy.Activated"
POLICY_RETIRED = "Policy.Retired"
POLICY_REACTIVATED = "Policy.Reactivated"
BUILTIN_RELAXED = "Tenant.BuiltinRelaxed"
CONFIG_SEEN = "Config.Seen"
DECISION_UNDELIVERED = "Decision.Undelivered"
POLICIES_SEEN = "Policies.Seen"

EVENT_TYPES = frozenset({
    DECISION, PUSH_DENIED, WOULD_DENY, POLICY_CREATED, POLICY_APPROVED, POLICY_ACTIVATED,
    POLICY_RETIRED, POLICY_REACTIVATED, BUILTIN_RELAXED, CONFIG_SEEN, POLICIES_SEEN,
})

#: Checkpoints whose deny is a per-agent push deny (see module docstring).
PER_AGENT_CHECKPOINTS = frozenset({"PUSH", "AUTO_APPLY"})


class Reason(TypedDict):
    policy: str
    version: NotRequired[int | str | None]
    rule: NotRequired[str]
    code: str
    message: NotRequired[str]


class PolicyRef(TypedDict):
    name: str
    version: int | str
    content_hash: str


class Subject(TypedDict, total=False):
    agent_id: str | None
    device_id: str | None
    rollout_id: str | None


class DecisionInput(TypedDict):
    decision_id: str
    time: NotRequired[str | dt.datetime | float | None]
    tenant: str
    checkpoint: str
    caller: Any
    subject: Subject
    allowed: bool
    reasons: list[Reason]
    shadow_denies: NotRequired[list[Reason]]
    override: NotRequired[Mapping[str, Any] | None]
    policies: NotRequired[list[PolicyRef]]
    elapsed_ms: NotRequired[float]
    request: NotRequired[Mapping[str, Any] | None]


def now_rfc3339() -> str:
    return format_time(dt.datetime.now(dt.UTC))


def format_time(value: str | dt.datetime | float | None) -> str:
    """One time format (UTC, microseconds, ``Z``) so records sort and compare as text."""
    if value is None:
        return now_rfc3339()
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return format_time(dt.datetime.fromtimestamp(float(value), dt.UTC))


@functools.lru_cache(maxsize=64)
def normalize_checkpoint(checkpoint: str) -> str:
    """Compare checkpoints case-insensitively, with or without the proto ``CHECKPOINT_``
    prefix (``push``, ``PUSH``, ``CHECKPOINT_PUSH``). Events keep the value as given."""
    cp = str(checkpoint).upper()
    return cp.removeprefix("CHECKPOINT_")


def to_jsonable(value: Any, memo: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """Turn ``value`` into pure JSON data (str keys, no NaN), once, before hashing.

    The hash chain re-serializes what it reads back, so only values that survive a JSON round
    trip unchanged may enter a record. Lists and dicts that already are pure JSON data are
    returned as they are (not copied: the log owns its events). ``memo`` (one per batch of
    events) remembers containers seen before, so what the events of a step share is
    checked once and stays shared, and the chain serializes it once.
    """
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if t is dict or t is list:
        if memo is not None:
            hit = memo.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
        out: Any = value
        if t is dict:
            for k, v in value.items():
                if to_jsonable(v, memo) is not v or type(k) is not str:
                    out = {k if type(k) is str else str(k): to_jsonable(v, memo)
                           for k, v in value.items()}
                    break
        else:
            for v in value:
                if to_jsonable(v, memo) is not v:
                    out = [to_jsonable(v, memo) for v in value]
                    break
        if memo is not None:
            memo[id(value)] = (value, out)
        return out
    if t is float and math.isfinite(value):
        return value
    if isinstance(value, bool | int | str):  # subclasses (e.g. IntEnum) keep their value
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    return str(value)


def _reason(r: Mapping[str, Any]) -> dict[str, Any]:
    """The documented reason fields always present; anything else the engine adds is kept."""
    return {"policy": r.get("policy"), "version": r.get("version"), "rule": r.get("rule"),
            "code": r.get("code"), "message": r.get("message", ""), **r}


def _policies(value: Any) -> list[Any]:
    """A list of plain dicts is taken as given (the engine shares one list between the
    decisions of a step; the log owns events and never mutates them); anything else is
    copied into one."""
    if type(value) is list and all(type(p) is dict for p in value):
        return value
    return [dict(p) for p in value or ()]


def config_seen(tenant: str, field: str, sha256: str, text: str, *,
                time: str | dt.datetime | float | None = None) -> Event:
    """The config text a later ``Decision`` names by ``<field>_sha256`` (field: ``config``
    or ``previous_config``). The text sits at ``request.<field>``: it is masked like the
    inline form was."""
    return {"type": CONFIG_SEEN, "time": format_time(time), "tenant": tenant,
            "field": field, "config_sha256": sha256, "request": {field: text}}


def decision_undelivered(tenant: str, decision_id: str, reason: str, *,
                         time: str | dt.datetime | float | None = None) -> Event:
    """The ``Decision`` with this id was made but never answered: its call failed (sync
    durability: the record was not durable in time) and the record was written later. A
    reader counts it as not delivered; the caller got UNAVAILABLE, no decision."""
    return {"type": DECISION_UNDELIVERED, "time": format_time(time), "tenant": tenant,
            "decision_id": decision_id, "reason": reason}


def policies_seen(tenant: str, sha256: str, policies: list[dict[str, Any]], *,
                  time: str | dt.datetime | float | None = None) -> Event:
    """The evaluated-policies list later ``Decision`` events name by ``policies_sha256``."""
    return {"type": POLICIES_SEEN, "time": format_time(time), "tenant": tenant,
            "policies_sha256": sha256, "policies": policies}


def decision_event(d: DecisionInput | Mapping[str, Any]) -> Event:
    """The ``Decision`` event: the decision dict with the documented fields present and time
    filled in. Extra fields the engine adds (request ids, flags) are kept, not dropped: the
    audit record is the evidence, and replay may need them. A dict that is already in that
    form is returned as is (the log owns events; nobody mutates them afterwards)."""
    subject = d.get("subject") or {}
    ev: Event = dict(d)
    ev.update({
        "type": DECISION,
        "time": format_time(d.get("time")),
        "tenant": d["tenant"],
        "decision_id": d["decision_id"],
        "checkpoint": d["checkpoint"],
        "caller": d.get("caller"),
        "subject": {
            "agent_id": subject.get("agent_id"),
            "device_id": subject.get("device_id"),
            "rollout_id": subject.get("rollout_id"),
            **subject,
        },
        "allowed": bool(d["allowed"]),
        "reasons": [_reason(r) for r in d.get("reasons") or ()],
        "shadow_denies": [_reason(r) for r in d.get("shadow_denies") or ()],
        "override": d.get("override"),
        "elapsed_ms": d.get("elapsed_ms"),
        "request": d.get("request"),
    })
    if d.get("policies") is not None or type(d.get("policies_sha256")) is not str:
        ev["policies"] = _policies(d.get("policies"))  # listed (named only by a str hash)
    return ev


def events_for_decision(d: DecisionInput | Mapping[str, Any]) -> list[Event]:
    """The ``Decision`` event of a decision given as a mapping (normalised to the documented
    form) followed by the events it implies (see :func:`with_derived`)."""
    return with_derived(decision_event(d))


def with_derived(decision: Event) -> list[Event]:
    """A ``Decision`` event (in the documented form) followed by the ``PushDenied`` /
    ``WouldDeny`` events it implies. Derived events carry the ``decision_id`` (not the
    request) so they stay small and the request is masked in one place only."""
    out = [decision]
    denied = not decision["allowed"]
    if not denied and not decision["shadow_denies"]:
        return out
    base = {
        "time": decision["time"],
        "tenant": decision["tenant"],
        "decision_id": decision["decision_id"],
        "checkpoint": decision["checkpoint"],
        "caller": decision["caller"],
    }
    per_agent = normalize_checkpoint(decision["checkpoint"]) in PER_AGENT_CHECKPOINTS
    if denied and per_agent:
        out.append({
            "type": PUSH_DENIED, **base, **decision["subject"],
            "reasons": decision["reasons"],
        })
    for r in decision["shadow_denies"]:
        out.append({"type": WOULD_DENY, **base, "subject": decision["subject"], **r})
    return out


def _lifecycle(type_: str, tenant: str, policy: str, version: int | str | None,
               actor: str, time: str | dt.datetime | float | None,
               extra: Mapping[str, Any]) -> Event:
    return {
        "type": type_, "time": format_time(time), "tenant": tenant,
        "policy": policy, "version": version, "actor": actor, **extra,
    }


def policy_created(tenant: str, policy: str, version: int | str, actor: str, *,
                   content_hash: str | None = None,
                   time: str | dt.datetime | float | None = None) -> Event:
    return _lifecycle(POLICY_CREATED, tenant, policy, version, actor, time,
                      {"content_hash": content_hash})


def policy_approved(tenant: str, policy: str, version: int | str, actor: str, *,
                    author: str | None = None, content_hash: str | None = None,
                    time: str | dt.datetime | float | None = None) -> Event:
    return _lifecycle(POLICY_APPROVED, tenant, policy, version, actor, time,
                      {"author": author, "content_hash": content_hash})


def policy_activated(tenant: str, policy: str, version: int | str, actor: str, *,
                     content_hash: str,
                     time: str | dt.datetime | float | None = None) -> Event:
    """Activation must name the content hash: it is what later decisions are tied to."""
    return _lifecycle(POLICY_ACTIVATED, tenant, policy, version, actor, time,
                      {"content_hash": content_hash})


def policy_retired(tenant: str, policy: str, version: int | str, actor: str, *,
                   reason: str = "",
                   time: str | dt.datetime | float | None = None) -> Event:
    return _lifecycle(POLICY_RETIRED, tenant, policy, version, actor, time, {"reason": reason})


def policy_reactivated(tenant: str, policy: str, version: int | str, actor: str, *,
                       content_hash: str | None = None, reason: str = "",
                       time: str | dt.datetime | float | None = None) -> Event:
    return _lifecycle(POLICY_REACTIVATED, tenant, policy, version, actor, time,
                      {"content_hash": content_hash, "reason": reason})


def builtin_relaxed(tenant: str, builtin: str, actor: str, *, reason: str = "",
                    time: str | dt.datetime | float | None = None) -> Event:
    return {
        "type": BUILTIN_RELAXED, "time": format_time(time), "tenant": tenant,
        "builtin": builtin, "actor": actor, "reason": reason,
    }
