"""The interface the engine and server call; :class:`Telemetry` and :class:`NoTelemetry`
both implement it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]
# (hits, misses) of the compiled-expression cache, cumulative since start.
CacheStatsFn = Callable[[], tuple[int, int]]
IntFn = Callable[[], int]
# (large requests that waited for their turn, those that went on without it), cumulative.
LaneStatsFn = Callable[[], tuple[int, int]]
# cumulative notification outcomes: (channel kind, result) -> count
NotifyStatsFn = Callable[[], Mapping[tuple[str, str], int]]


@runtime_checkable
class DecisionTelemetry(Protocol):
    """Spans and metrics for the decision path.

    The span context managers yield an OpenTelemetry :class:`~opentelemetry.trace.Span`
    (a non-recording one when telemetry is off), so callers may ``set_attribute`` on it
    unconditionally. An exception leaving a span marks it as an error and is re-raised.
    """

    @property
    def enabled(self) -> bool: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def decision_span(
        self, name: str, carrier: Mapping[str, str], attributes: Attributes | None = None
    ) -> AbstractContextManager[Span]:
        """The span of one decision; its parent comes from ``traceparent`` in ``carrier``
        (the incoming gRPC metadata as a plain mapping, lower-case keys)."""
        ...

    def policy_span(self, policy_name: str) -> AbstractContextManager[Span]:
        """Child span: evaluation of one policy."""
        ...

    def counter_span(self) -> AbstractContextManager[Span]:
        """Child span: the counter-store call."""
        ...

    def record_decision(
        self, outcome: str, tenant: str, checkpoint: str, elapsed_s: float
    ) -> None:
        """Count one decision (``outcome`` e.g. ``"allow"`` / ``"deny"``) and its latency."""
        ...

    def record_deadline_exceeded(self, tenant: str, checkpoint: str) -> None: ...

    def record_counter_error(self, tenant: str, code: str = "COUNTER_STORE_UNAVAILABLE") -> None:
        ...

    def record_loop_lag(self, lag_s: float) -> None:
        """One sample of the event loop's lag: how late a timer fired (see
        :class:`pdp.telemetry.lag.LoopLagMonitor`)."""
        ...

    def record_shadow_skipped(self, n: int) -> None:
        """``n`` decisions' drafts were skipped: the shadow backlog was full."""
        ...

    def observe_cache(self, fn: CacheStatsFn) -> None:
        """Register the compiled-expression cache's ``() -> (hits, misses)``."""
        ...

    def observe_audit(self, queue_depth: IntFn, spooled: IntFn) -> None:
        """Register the audit pipeline's queue depth and spooled-event count."""
        ...

    def observe_notifications(self, fn: NotifyStatsFn) -> None:
        """Register :meth:`pdp.notify.Notifier.counts`."""
        ...

    def observe_lane(self, fn: LaneStatsFn) -> None:
        """Register the bulk lane's waits (pdp.server.lanes): (waited, went on without)."""
        ...
