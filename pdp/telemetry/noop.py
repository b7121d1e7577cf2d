"""Telemetry off: every method is a constant-time no-op, span managers are one shared
``nullcontext`` yielding the invalid (non-recording) span."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

from opentelemetry.trace import INVALID_SPAN, Span

from pdp.telemetry.base import Attributes, CacheStatsFn, IntFn, LaneStatsFn, NotifyStatsFn

# nullcontext has no state: one instance serves every (nested, concurrent) use.
_NULL_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


class NoTelemetry:
    """The disabled implementation of :class:`~pdp.telemetry.base.DecisionTelemetry`."""

    __slots__ = ()
    enabled = False

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def decision_span(
        self, name: str, carrier: Mapping[str, str], attributes: Attributes | None = None
    ) -> AbstractContextManager[Span]:
        return _NULL_SPAN

    def policy_span(self, policy_name: str) -> AbstractContextManager[Span]:
        return _NULL_SPAN

    def counter_span(self) -> AbstractContextManager[Span]:
        return _NULL_SPAN

    def record_decision(
        self, outcome: str, tenant: str, checkpoint: str, elapsed_s: float
    ) -> None:
        pass

    def record_deadline_exceeded(self, tenant: str, checkpoint: str) -> None:
        pass

    def record_counter_error(self, tenant: str, code: str = "COUNTER_STORE_UNAVAILABLE") -> None:
        pass

    def record_loop_lag(self, lag_s: float) -> None:
        pass

    def record_shadow_skipped(self, n: int) -> None:
        pass

    def observe_cache(self, fn: CacheStatsFn) -> None:
        pass

    def observe_audit(self, queue_depth: IntFn, spooled: IntFn) -> None:
        pass

    def observe_notifications(self, fn: NotifyStatsFn) -> None:
        pass

    def observe_lane(self, fn: LaneStatsFn) -> None:
        pass


NO_TELEMETRY = NoTelemetry()
