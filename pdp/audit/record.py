"""The audit record of one decision, typed: what the engine hands the audit log.

Why a type of its own: the record is audit material, so its shape belongs to the audit
side (documented in events.py); the engine fills it once per decision and it is encoded
once, as the ``Decision`` event. Callers outside the engine (tests, tools) may still hand
the log a plain mapping, which ``events.decision_event`` normalises.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pdp.audit.events import DECISION, Event


class DecisionRecord(NamedTuple):
    """Immutable, and a NamedTuple rather than a frozen dataclass: one is made per decision
    (a thousand per step), and a frozen dataclass takes four times as long to build."""

    time: str  # RFC 3339, UTC
    tenant: str
    decision_id: str
    checkpoint: str
    allowed: bool
    reasons: list[dict[str, Any]]
    shadow_denies: list[dict[str, Any]]
    overridden: bool
    override: dict[str, Any] | None
    caller: str
    request_id: str
    subject: dict[str, str]  # agent_id, device_id, rollout_id ("" when absent)
    elapsed_ms: float
    request: dict[str, Any]
    # The evaluated policies: listed, or named by the SHA-256 of their list (written once in
    # a Policies.Seen event); exactly one of the two.
    policies: list[dict[str, Any]] | None = None
    policies_sha256: str | None = None

    def to_event(self) -> Event:
        """The ``Decision`` event (insertion order is the order the record shows)."""
        event: Event = {
            "type": DECISION, "time": self.time, "tenant": self.tenant,
            "decision_id": self.decision_id, "checkpoint": self.checkpoint,
            "allowed": self.allowed, "reasons": self.reasons,
            "shadow_denies": self.shadow_denies, "overridden": self.overridden,
            "override": self.override, "caller": self.caller, "request_id": self.request_id,
            "subject": self.subject, "elapsed_ms": self.elapsed_ms, "request": self.request,
        }
        if self.policies_sha256 is not None:
            event["policies_sha256"] = self.policies_sha256
        else:
            event["policies"] = self.policies if self.policies is not None else []
        return event
