"""The engine's answer, as plain data (the server turns it into protobuf, audit into JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pdp.policy.model import PolicyRef

__all__ = ["Decision", "Explanation", "PolicyRef", "Reason"]


@dataclass(frozen=True)
class Reason:
    policy: str
    version: int
    rule: str
    code: str  # ReasonCode name without prefix, e.g. "POLICY_DENIED"
    message: str
    retry_after_s: float | None = None
    builtin: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Written out (not dataclasses.asdict, which deep-copies): this runs for every
        # decision and was the largest cost of the audit hand-off when profiled.
        return {"policy": self.policy, "version": self.version, "rule": self.rule,
                "code": self.code, "message": self.message,
                "retry_after_s": self.retry_after_s, "builtin": self.builtin}


@dataclass(frozen=True)
class Explanation:
    """Values behind one policy's deny (only when the request asked: ``explain``)."""

    policy: str
    values: dict[str, str]


@dataclass
class Decision:
    decision_id: str
    allowed: bool
    checkpoint: str
    decided_at: datetime
    reasons: list[Reason] = field(default_factory=list)
    shadow_denies: list[Reason] = field(default_factory=list)
    evaluated: list[PolicyRef] = field(default_factory=list)
    elapsed_s: float = 0.0
    overridden: bool = False
    # Not part of to_dict (the audit record): values may hold config data audit masks.
    explanations: list[Explanation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "allowed": self.allowed,
            "checkpoint": self.checkpoint,
            "reasons": [r.to_dict() for r in self.reasons],
            "shadow_denies": [r.to_dict() for r in self.shadow_denies],
            "policies": policies_list(self.evaluated),
            "elapsed_ms": round(self.elapsed_s * 1000, 3),
            "overridden": self.overridden,
        }


_POLICY_LISTS: dict[tuple[int, ...], tuple[tuple[PolicyRef, ...], list[dict[str, Any]]]] = {}


def policies_list(evaluated: list[PolicyRef]) -> list[dict[str, Any]]:
    """The audit form of the evaluated policies, one shared (never mutated) list per distinct
    selection: the engine hashes each list once to name it in Decision events (its text goes
    to the audit log in a ``Policies.Seen`` event)."""
    key = tuple(map(id, evaluated))
    hit = _POLICY_LISTS.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], evaluated, strict=True)):
        return hit[1]
    built = [p.to_dict() for p in evaluated]
    if len(_POLICY_LISTS) >= 4096:  # policy reloads make new refs: keep the cache bounded
        _POLICY_LISTS.clear()
    _POLICY_LISTS[key] = (tuple(evaluated), built)
    return built
