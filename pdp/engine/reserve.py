"""The reserve stage: every counter rule of the decisions still allowed, in ONE store call
(a step's agents in order), within what is left of the deadline. Counters are consumed
only by decisions that are allowed as a whole; a store that cannot answer denies."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pdp.counters import CounterStateLost, CounterStore, CounterStoreUnavailable
from pdp.engine.deadline import Deadline
from pdp.engine.decision import Explanation, Reason
from pdp.engine.pending import Pending
from pdp.engine.reasons import system_reason
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.rules import Deny
from pdp.reasons import ReasonCode
from pdp.telemetry import DecisionTelemetry


async def reserve_all(counters: CounterStore, telemetry: DecisionTelemetry,
                      reason: Callable[[CompiledPolicy, Deny], Reason], tenant: str,
                      pending: Sequence[Pending], step: Deadline, per_call_s: float) -> None:
    """Reserve, and add each store deny (or the store's failure) to its decision."""
    todo = [i for i in pending if i.rules and not i.decision.reasons]
    if not todo:
        return
    timeout = min(step.remaining(), per_call_s)
    if timeout <= 0:
        _deny_all(todo, system_reason(ReasonCode.DEADLINE_EXCEEDED,
                                      "the decision deadline ran out before counters were"
                                      " reserved"))
        return
    try:
        with telemetry.counter_span():
            if len(todo) == 1:
                results = [await counters.reserve(tenant, todo[0].rules, timeout=timeout)]
            else:
                results = await counters.reserve_batch(tenant, [i.rules for i in todo],
                                                       timeout=timeout)
    except CounterStateLost as exc:
        _deny_all(todo, system_reason(ReasonCode.COUNTER_STATE_LOST,
                                      f"counter rules deny: {exc}"))
        return
    except (CounterStoreUnavailable, ValueError) as exc:
        telemetry.record_counter_error(tenant)
        _deny_all(todo, system_reason(ReasonCode.COUNTER_STORE_UNAVAILABLE,
                                      f"counter store unavailable, so counter rules deny:"
                                      f" {exc}"))
        return
    for i, result in zip(todo, results, strict=True):
        if result.allowed:
            continue
        denier = i.by_id.get(result.denied_rule_id or "")
        deny = Deny(result.code, result.message, result.retry_after_seconds)
        i.decision.reasons.append(reason(denier, deny) if denier is not None
                                  else system_reason(ReasonCode(result.code), result.message))
        if i.req.explain and denier is not None and denier.counter is not None:
            i.decision.explanations.append(Explanation(
                denier.name, denier.counter.explain(result.retry_after_seconds)))


def _deny_all(todo: Sequence[Pending], reason: Reason) -> None:
    for i in todo:
        i.decision.reasons.append(reason)
