"""The counter-store interface the engine calls; both backends implement it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pdp.counters.model import CounterEventKind, CounterRule, ReserveResult


@runtime_checkable
class CounterStore(Protocol):
    """Atomic check-and-consume of counter rules, plus the outcome events that feed them.

    Every call takes ``timeout`` (seconds; the engine derives it from the decision deadline)
    and raises :class:`~pdp.counters.model.CounterStoreUnavailable` rather than exceed it;
    ``reserve``, ``reserve_batch`` and ``peek`` raise its subclass
    :class:`~pdp.counters.model.CounterStateLost` while a loss of the store's state is
    unacknowledged (Redis only: see ``redis_store``).
    Invalid rules (e.g. a rollback window longer than the store keeps events) raise
    ``ValueError`` before any state is touched.
    """

    async def reserve(
        self, tenant: str, rules: Sequence[CounterRule], *, timeout: float
    ) -> ReserveResult:
        """Check every rule; consume all of them only if all pass (one atomic step)."""
        ...

    async def reserve_batch(
        self, tenant: str, items: Sequence[Sequence[CounterRule]], *, timeout: float
    ) -> list[ReserveResult]:
        """Reserve a whole rollout step in one backend call.

        Items are evaluated in order; each item is all-or-nothing, and an allowed item
        consumes before the next item is checked. One result per item, same order.
        """
        ...

    async def peek(
        self, tenant: str, rules: Sequence[CounterRule], *, timeout: float
    ) -> ReserveResult:
        """The verdict :meth:`reserve` would give now, consuming nothing: draft policies'
        counter rules report would-deny without touching the live counters."""
        ...

    async def record_event(
        self,
        tenant: str,
        kind: CounterEventKind,
        scope_keys: Sequence[str],
        *,
        timeout: float,
        event_key: str | None = None,
    ) -> bool:
        """Record one deploy / rollback / step advance under each (distinct) scope key.

        With ``event_key`` the event counts at most once per key (and kind) within the
        store's event retention, whoever reports it and however often: a rollback that
        ``EvaluateHealth`` saw and the rollout engine reports again is one rollback.
        Returns False when nothing was recorded (a repeated key, or no scope keys).
        """
        ...

    async def ping(self) -> bool:
        """True when the backend answers (health checks); never raises."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...
