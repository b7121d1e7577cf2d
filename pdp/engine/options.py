"""What an operator can tune about the decision path (read once at start-up)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pdp.engine.shadow import ShadowOptions


@dataclass
class EngineOptions:
    cost_limit: int = 1_000_000
    #: The one counter-store call of a single decision may take at most this (and never more
    #: than what is left of the decision's deadline).
    counter_timeout_s: float = 0.02
    #: A step's (CheckPushBatch) budget when the caller's own deadline is not shorter: one
    #: budget for the whole step, shared fairly by its agents (never more than the single
    #: decision budget each).
    step_budget_s: float = 1.0
    #: The one counter-store call of a step may take at most this; the agents' shares of the
    #: step budget leave it room.
    step_counter_timeout_s: float = 0.1
    #: A step gives the event loop a turn at least this often (other calls, health checks).
    yield_every_s: float = 0.002
    #: No agent of a step takes more than this at once (the loop gets a turn between
    #: agents, so this bounds how long other calls wait for a step's slow policy).
    step_agent_max_s: float = 0.02
    #: Deny messages (policy messages, error texts) are cut to this many UTF-8 bytes.
    max_message_bytes: int = 5 * 1024
    #: Drafts: their own budget and backlog, after the answer (see shadow.py).
    shadow: ShadowOptions = field(default_factory=ShadowOptions)
    #: Evaluate drafts within the decision and report them in ``shadow_denies`` (offline
    #: tools only: policy tests, replay). A server never sets it: drafts must not touch the
    #: live answer or its latency.
    shadow_inline: bool = False
    #: A tenant pdp does not know (no policy, never created): ``deny`` (UNKNOWN_TENANT), or
    #: ``builtins`` (decided by the built-ins alone: single-tenant set-ups only).
    unknown_tenants: str = "deny"
    # Returns why the policy set cannot be trusted (policy store out of reach), or None.
    policies_stale: Callable[[], str | None] | None = None
    # Decision time source (policy tests and replay pin it); None = the wall clock.
    now: Callable[[], datetime] | None = None
    # A Config.Seen / Policies.Seen event is written again when its last copy is older than
    # this (see Recorder).
    seen_refresh_s: float = 3600.0
    # Make a decision's audit records just after its answer instead of before: only for an
    # audit log that does not wait for the disk (``async`` durability). See Recorder.
    audit_after_answer: bool = False
    # ``sync`` durability: the longest an answer waits for its record to be durable; past
    # it the call fails (AuditWriteError -> UNAVAILABLE). See Recorder.record.
    audit_sync_timeout_s: float = 1.0
