"""What happened to a rollout (deploy, rollback, step advance) and whether its live metrics
call for a rollback: the inputs of the counter rules, apart from deciding pushes.

A rollback is one event however often it is reported or asked about: an ``EvaluateHealth``
that calls for a rollback and the rollout engine's ``RecordEvent(ROLLBACK)`` for the same
rollback count once. Both key the rollback by its rollout and step (``rollback:<rollout>:<step>``)
unless the caller names the event itself (``event_id``); the store records a keyed event at
most once within its retention. Who records what:

* ``EvaluateHealth`` records the rollback it calls for, when the request names a rollout
  (without one it only answers: the caller records the rollback it then makes).
* ``RecordEvent`` records what the rollout engine reports: deploys, step advances, and the
  rollbacks it makes (including those pdp called for: counted once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from pdp.counters import CounterEventKind, CounterStore, CounterStoreUnavailable, scope_key
from pdp.engine.deadline import Deadline
from pdp.engine.decision import PolicyRef, Reason
from pdp.engine.ids import new_decision_id
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.model import Checkpoint
from pdp.policy.policyset import PolicySet
from pdp.policy.rules import AutoRollback, Deny

log = structlog.get_logger("pdp.engine")


@dataclass
class HealthVerdict:
    decision_id: str
    rollback: bool
    reasons: list[Reason]
    evaluated: list[PolicyRef]
    recorded: bool = False  # the rollback was counted now (not a repeat, store reachable)


def event_key(kind: CounterEventKind, rollout: Mapping[str, Any] | None,
              event_id: str = "") -> str | None:
    """The idempotency key of an event: a rollback of a rollout is keyed by its rollout and
    step (one rollback per step, whoever reports it: EvaluateHealth, which has no event id,
    and the rollout engine, with or without one); else the caller's id; None = every
    report counts."""
    rollout_id = (rollout or {}).get("id")
    if kind is CounterEventKind.ROLLBACK and rollout_id:
        return f"rollback:{rollout_id}:{(rollout or {}).get('step', 0)}"
    if event_id:
        return f"id:{event_id}"
    return None


class Outcomes:
    """Records rollout events and evaluates health, against the policies in force."""

    def __init__(self, policies: Callable[[], PolicySet], counters: CounterStore,
                 emit: Callable[[dict[str, Any]], None],
                 reason: Callable[[CompiledPolicy, Deny], Reason],
                 counter_timeout_s: float) -> None:
        self._policies = policies
        self.counters = counters
        self._emit = emit
        self._reason = reason
        self.counter_timeout_s = counter_timeout_s

    async def record_event(self, tenant: str, kind: CounterEventKind,
                           scope_keys: Sequence[str], deadline: Deadline, *,
                           key: str | None = None) -> tuple[str, bool]:
        """Feed the counters and audit it; (event id, whether it counted: False for a
        repeat of a keyed event)."""
        event_id = new_decision_id()
        counted = await self.counters.record_event(
            tenant, kind, scope_keys, timeout=max(0.001, deadline.remaining()), event_key=key)
        self._emit({"type": "Rollout.Event", "event_id": event_id, "tenant": tenant,
                    "kind": kind.value, "scope_keys": list(scope_keys), "event_key": key,
                    "counted": counted, "time": datetime.now(UTC).isoformat()})
        return event_id, counted

    async def evaluate_health(self, tenant: str, activation: dict[str, Any],
                              change: dict[str, str],
                              deadline: Deadline | None = None, *,
                              record: bool = True) -> HealthVerdict:
        """Auto-rollback thresholds of the tenant's policies against live metrics. A breach
        is recorded as the step's rollback (rollback_rate) only with ``record``: when the
        caller may record events, as RecordEvent requires."""
        now = datetime.now(UTC)
        ctx = EvalContext(tenant, Checkpoint.ROLLOUT_PRECONDITION, now,
                          {**activation, "now": now})
        verdict = HealthVerdict(new_decision_id(), False, [], [])
        seen = set()
        policies = self._policies()
        for cp in Checkpoint:
            for p in policies.select(tenant, cp, change, None, None):
                if not isinstance(p.stateless, AutoRollback) or p.shadow or p.name in seen:
                    continue
                seen.add(p.name)
                verdict.evaluated.append(p.ref)
                verdict.reasons.extend(self._reason(p, d) for d in p.stateless.breaches(ctx))
        verdict.rollback = bool(verdict.reasons)
        rollout = activation.get("rollout") or {}
        key = event_key(CounterEventKind.ROLLBACK, rollout)
        if verdict.rollback and key is not None and record:
            # Feeds ROLLBACK_RATE: the same scope keys and key RecordEvent(ROLLBACK) uses.
            keys = [k for k in (scope_key("tenant"), scope_key("rollout", rollout["id"]))
                    if k is not None]
            try:
                _, verdict.recorded = await self.record_event(
                    tenant, CounterEventKind.ROLLBACK, keys,
                    deadline or Deadline.after(self.counter_timeout_s), key=key)
            except CounterStoreUnavailable as exc:  # the verdict stands; say it was not counted
                log.error("rollback_event_not_recorded", tenant=tenant, error=repr(exc))
        self._emit({"type": "Rollout.HealthEvaluated", "decision_id": verdict.decision_id,
                    "tenant": tenant, "time": now.isoformat(), "rollback": verdict.rollback,
                    "rollback_recorded": verdict.recorded,
                    "reasons": [r.message for r in verdict.reasons],
                    "metrics": activation.get("metrics", {})})
        return verdict
