"""Plain data types shared by the counter stores and their callers.

Kept free of gRPC/protobuf and of any backend so the engine, both stores and the tests
can speak the same small vocabulary.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pdp import zones


class CounterKind(enum.Enum):
    """The stateful typed rules; each maps to one algorithm in the stores."""

    DAILY_CAP = "DAILY_CAP"
    COOLDOWN = "COOLDOWN"
    VELOCITY = "VELOCITY"
    ROLLBACK_RATE = "ROLLBACK_RATE"
    MIN_STEP_DURATION = "MIN_STEP_DURATION"


class CounterEventKind(enum.Enum):
    """Outcomes reported by the rollout engine (``RecordEvent``)."""

    DEPLOY = "DEPLOY"
    ROLLBACK = "ROLLBACK"
    STEP_ADVANCE = "STEP_ADVANCE"


# Reason codes echoed in a deny. The engine copies them into the decision verbatim.
CODE_DAILY_CAP = "DAILY_CAP_EXCEEDED"
CODE_COOLDOWN = "COOLDOWN_ACTIVE"
CODE_VELOCITY = "VELOCITY_EXCEEDED"
CODE_ROLLBACK_RATE = "ROLLBACK_RATE_EXCEEDED"
CODE_MIN_STEP = "MIN_STEP_DURATION"
CODE_UNAVAILABLE = "COUNTER_STORE_UNAVAILABLE"
CODE_STATE_LOST = "COUNTER_STATE_LOST"

CODE_BY_KIND: dict[CounterKind, str] = {
    CounterKind.DAILY_CAP: CODE_DAILY_CAP,
    CounterKind.COOLDOWN: CODE_COOLDOWN,
    CounterKind.VELOCITY: CODE_VELOCITY,
    CounterKind.ROLLBACK_RATE: CODE_ROLLBACK_RATE,
    CounterKind.MIN_STEP_DURATION: CODE_MIN_STEP,
}


class CounterStoreUnavailable(Exception):
    """The backend could not answer in time (down, slow, restarting, misconfigured).

    The engine turns this into a deny ``COUNTER_STORE_UNAVAILABLE``: counters fail closed.
    """

    code = CODE_UNAVAILABLE


class CounterStateLost(CounterStoreUnavailable):
    """The store came back without the state pdp had seen (its epoch marker is gone).

    Caps, cooldowns and windows may have been reset by a restart without persistence or a
    failover to an empty replica, so counter-bound rules deny (``COUNTER_STATE_LOST``)
    until an admin acknowledges the loss (``pdp counters ack``) or, in ``wait`` mode, the
    longest counter window has passed. A subclass of :class:`CounterStoreUnavailable` so a
    caller that only knows that one still fails closed.
    """

    code = CODE_STATE_LOST

    def __init__(self, message: str, *, tenant: str = "") -> None:
        super().__init__(message)
        self.tenant = tenant


@dataclass(frozen=True, slots=True)
class CounterStateChange:
    """A loss of counter state noticed for one tenant, or its end (``restored``).

    Handed to the store's ``on_state_lost`` hook (losses only: a metric) and, as
    :meth:`audit_event`, to its ``on_audit_event`` hook (both kinds). ``time`` is the
    sidecar's clock (seconds since the epoch); ``previous_epoch`` the marker this process
    had seen ("" when it had seen none), ``found_epoch`` what the store holds now ("" for
    nothing). ``how`` says why a loss ended: ``ack`` (an admin), ``wait`` (the longest
    window passed), ``marker_back`` (the old marker reappeared). ``resumes_at`` is when a
    ``wait``-mode store resumes by itself (None in ``deny`` mode).
    """

    kind: Literal["lost", "restored"]
    tenant: str
    time: float
    previous_epoch: str
    found_epoch: str
    mode: str
    how: str = ""
    resumes_at: float | None = None

    def audit_event(self) -> dict[str, Any]:
        """The audit event (``Counters.StateLost`` / ``Counters.StateRestored``) as data."""
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")

        event: dict[str, Any] = {
            "type": "Counters.StateLost" if self.kind == "lost" else "Counters.StateRestored",
            "time": iso(self.time).replace("+00:00", "Z"),
            "tenant": self.tenant,
            "previous_epoch": self.previous_epoch,
            "found_epoch": self.found_epoch,
            "mode": self.mode,
        }
        if self.how:
            event["how"] = self.how
        if self.resumes_at is not None:
            event["resumes_at"] = iso(self.resumes_at).replace("+00:00", "Z")
        return event


def zone(name: str) -> ZoneInfo:
    """An IANA zone from the bundled tzdata, never the host's files (``pdp/zones.py``, which
    caches it); a bad name is a rule error, not a runtime surprise."""
    try:
        return zones.zone(name)
    except zones.UnknownZone as e:
        raise ValueError(e.problem) from e


@dataclass(frozen=True, slots=True)
class CounterRule:
    """One counter rule of one policy, with its scope already resolved by the engine.

    ``rule_id`` is echoed back on deny (e.g. ``"max-daily@v3"``). ``counter_id`` names the
    stored counter; it defaults to ``rule_id``, but the engine should pass something stable
    across policy versions (e.g. the policy name) so that editing a policy does not reset
    its daily cap. Two rules with different ``counter_id`` never share state, so "3 pushes
    per agent per hour" and "20 rollouts per tenant per day" stay independent.

    Parameters per kind (others are ignored):

    * DAILY_CAP: ``max_count`` per local day in ``timezone``.
    * COOLDOWN: ``min_interval_seconds`` since the previous allowed reservation.
    * VELOCITY: ``max_count`` in an exact sliding ``window_seconds``.
    * ROLLBACK_RATE: deny when ``rollbacks * 100 > threshold_percent * deploys`` over
      ``window_seconds``, but only once at least ``min_deployments`` deploys were recorded
      in the window (the minimum sample: never deny on zero deployments).
    * MIN_STEP_DURATION: ``min_interval_seconds`` since the last ``STEP_ADVANCE`` event
      recorded for ``scope_key`` (normally the rollout). Read-only: reserving does not
      consume it, the rollout engine reports the advance itself.

    ``history_seconds`` (COOLDOWN, VELOCITY): keep this counter's pushes at least this
    long, beyond the rule's own window, because another version of the policy (a draft
    that may be activated) asks for a longer one. The store keeps the longest of the
    rule's window, this and its own ``history_seconds`` setting, so a version that
    lengthens the window sees the pushes made before it was activated.
    """

    rule_id: str
    kind: CounterKind
    scope_key: str
    max_count: int = 0
    window_seconds: float = 0.0
    min_interval_seconds: float = 0.0
    timezone: str = "UTC"
    threshold_percent: float = 0.0
    min_deployments: int = 1
    counter_id: str = ""
    history_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.rule_id:
            raise ValueError("counter rule needs a rule_id")
        if not self.scope_key:
            raise ValueError(f"{self.rule_id}: empty scope key")
        k = self.kind
        if k in (CounterKind.DAILY_CAP, CounterKind.VELOCITY) and self.max_count < 0:
            raise ValueError(f"{self.rule_id}: max_count must be >= 0")
        if k is CounterKind.DAILY_CAP:
            zone(self.timezone)
        if k in (CounterKind.VELOCITY, CounterKind.ROLLBACK_RATE) and not (
            math.isfinite(self.window_seconds) and self.window_seconds >= 0.001
        ):
            raise ValueError(f"{self.rule_id}: window_seconds must be > 0")
        if k in (CounterKind.COOLDOWN, CounterKind.MIN_STEP_DURATION) and not (
            math.isfinite(self.min_interval_seconds) and self.min_interval_seconds >= 0.001
        ):
            raise ValueError(f"{self.rule_id}: min_interval_seconds must be > 0")
        if not (math.isfinite(self.history_seconds) and self.history_seconds >= 0):
            raise ValueError(f"{self.rule_id}: history_seconds must be >= 0")
        if k is CounterKind.ROLLBACK_RATE:
            if not (math.isfinite(self.threshold_percent) and self.threshold_percent >= 0):
                raise ValueError(f"{self.rule_id}: threshold_percent must be >= 0")
            if self.min_deployments < 1:
                raise ValueError(f"{self.rule_id}: min_deployments must be >= 1")

    def rescoped(self, scope_key: str) -> CounterRule:
        """This rule at another scope (one per agent of a step): the other fields were
        validated when this one was made, so only the scope is checked."""
        if not scope_key:
            raise ValueError(f"{self.rule_id}: empty scope key")
        new = _NEW(CounterRule)
        _SET(new, "rule_id", self.rule_id)
        _SET(new, "kind", self.kind)
        _SET(new, "scope_key", scope_key)
        _SET(new, "max_count", self.max_count)
        _SET(new, "window_seconds", self.window_seconds)
        _SET(new, "min_interval_seconds", self.min_interval_seconds)
        _SET(new, "timezone", self.timezone)
        _SET(new, "threshold_percent", self.threshold_percent)
        _SET(new, "min_deployments", self.min_deployments)
        _SET(new, "counter_id", self.counter_id)
        _SET(new, "history_seconds", self.history_seconds)
        return new

    @property
    def counter(self) -> str:
        """The identity of the stored counter (``counter_id`` or else ``rule_id``)."""
        return self.counter_id or self.rule_id


_NEW = object.__new__
_SET = object.__setattr__


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """Outcome of one reservation: allowed (and consumed), or the first rule that denied."""

    allowed: bool
    denied_rule_id: str | None = None
    code: str = ""
    message: str = ""
    retry_after_seconds: float | None = None

    @staticmethod
    def allow() -> ReserveResult:
        return _ALLOW


_ALLOW = ReserveResult(allowed=True)
