"""Reason codes: why a decision denied (or a draft would have), one enum for the whole path.

Rules, the counter store, the engine, the audit record and the API mapping all speak these
names; the protobuf enum ``pdp.v1.ReasonCode`` has one value per member
(``REASON_CODE_<name>``). A code outside this enum is a bug that a test catches
(tests/test_reason_codes.py), not something mapped silently at the edge.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    POLICY_DENIED = "POLICY_DENIED"
    POLICY_ERROR = "POLICY_ERROR"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    COST_LIMIT_EXCEEDED = "COST_LIMIT_EXCEEDED"
    COUNTER_STORE_UNAVAILABLE = "COUNTER_STORE_UNAVAILABLE"
    POLICY_STORE_UNAVAILABLE = "POLICY_STORE_UNAVAILABLE"
    POLICY_INVALID = "POLICY_INVALID"
    INVALID_INPUT = "INVALID_INPUT"
    INVALID_CONFIG = "INVALID_CONFIG"
    BLOCKED_DAY = "BLOCKED_DAY"
    OUTSIDE_ALLOWED_HOURS = "OUTSIDE_ALLOWED_HOURS"
    CHANGE_FREEZE = "CHANGE_FREEZE"
    DAILY_CAP_EXCEEDED = "DAILY_CAP_EXCEEDED"
    COOLDOWN_ACTIVE = "COOLDOWN_ACTIVE"
    VELOCITY_EXCEEDED = "VELOCITY_EXCEEDED"
    ROLLBACK_RATE_EXCEEDED = "ROLLBACK_RATE_EXCEEDED"
    MIN_STEP_DURATION = "MIN_STEP_DURATION"
    STEP_TOO_LARGE = "STEP_TOO_LARGE"
    APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
    DEVICE_CONSTRAINT = "DEVICE_CONSTRAINT"
    QUALITY_GATE_FAILED = "QUALITY_GATE_FAILED"
    HEALTH_THRESHOLD_EXCEEDED = "HEALTH_THRESHOLD_EXCEEDED"
    UNKNOWN_TENANT = "UNKNOWN_TENANT"
    COUNTER_STATE_LOST = "COUNTER_STATE_LOST"


#: Outcomes that depend on a decision's budget (its deadline, its cost limit), not on its
#: inputs alone: never shared between requests, remembered only as overruns.
BUDGET_CODES = frozenset({ReasonCode.DEADLINE_EXCEEDED, ReasonCode.COST_LIMIT_EXCEEDED})
