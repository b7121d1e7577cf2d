"""A decision's reasons: a policy's deny, or the system's (deadline, store, input), as the
answer and the audit record carry them, with their size bounded."""

from __future__ import annotations

from pdp.cel import Budget
from pdp.engine.decision import Explanation, Reason
from pdp.policy.compiled import CompiledPolicy
from pdp.policy.evalctx import EvalContext
from pdp.policy.rules import Deny
from pdp.reasons import ReasonCode

#: Deny messages are cut to this many UTF-8 bytes by default (Kubernetes caps
#: messageExpression output at 5 KiB).
MAX_MESSAGE_BYTES = 5 * 1024


def cap_message(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, saying so: a deny message goes into the
    response and the audit record, and a policy may build one of any size."""
    if len(text) * 4 <= limit:
        return text  # fits whatever its characters
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    note = f"... (truncated, {len(raw)} bytes)"
    return raw[:max(0, limit - len(note))].decode("utf-8", "ignore") + note


def policy_reason(p: CompiledPolicy, deny: Deny, limit: int = MAX_MESSAGE_BYTES) -> Reason:
    return Reason(p.name, p.policy.version, p.rule_kind, deny.code,
                  cap_message(deny.message, limit), deny.retry_after_s, p.policy.builtin)


def system_reason(code: ReasonCode, message: str,
                  retry_after_s: float | None = None) -> Reason:
    """A deny no policy gave: the deadline, a store, the request's input."""
    return Reason("", 0, "system", code, cap_message(message, MAX_MESSAGE_BYTES),
                  retry_after_s)


def explanation(p: CompiledPolicy, ctx: EvalContext, code: str, budget: Budget) -> Explanation:
    """Only for requests that asked (``explain``), only for denying policies; within what
    is left of the decision's own deadline and cost budget."""
    from pdp.policy.explain import explain_policy

    return Explanation(p.name, explain_policy(p, ctx, code, budget=budget))
