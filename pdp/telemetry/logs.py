"""structlog processor adding the current span's trace and span ids to every log event,
and the log lines of a step's decisions."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Any, Protocol

import structlog
from opentelemetry import trace

from pdp.turns import Turns


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id`` (32 hex) and ``span_id`` (16 hex) of the current span, if any.

    Put it in the structlog pipeline before the renderer (after ``merge_contextvars`` so the
    caller's bound ``decision_id`` is there too). Ids already on the event are kept. With
    telemetry off no span is ever current, and this is one context lookup.
    """
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        if "trace_id" not in event_dict:
            event_dict["trace_id"] = format(ctx.trace_id, "032x")
        if "span_id" not in event_dict:
            event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def current_trace_id() -> str:
    """The trace id (32 hex) of the current span, or one bound to the log context; "".

    Work that outlives the call (a notification delivered later, on another task) takes
    it along so its own log lines still name the caller's trace.
    """
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return format(ctx.trace_id, "032x")
    bound = structlog.contextvars.get_contextvars().get("trace_id")
    return str(bound) if bound else ""


class _Reason(Protocol):
    @property
    def code(self) -> str: ...

    @property
    def policy(self) -> str | None: ...


class LoggedDecision(Protocol):
    """What :func:`log_step` reads of a decision (``pdp.engine``'s ``Decision``)."""

    @property
    def decision_id(self) -> str: ...

    @property
    def allowed(self) -> bool: ...

    @property
    def reasons(self) -> Sequence[_Reason]: ...


async def log_step(logger: Any, tenant: str, checkpoint: str,
                   decisions: Sequence[LoggedDecision]) -> tuple[int, int]:
    """Log a step's decisions; returns (allowed, denied).

    Info is what an operator follows on a busy server: one ``decision_denied`` line per
    deny (id, codes, policies) and one ``step`` line with the counts; each allowed
    decision is a ``decision_allowed`` line at debug only. Call it inside the step's span
    so the lines carry its trace id. A step's lines are written with turns for the event
    loop in between (a thousand denies is a thousand writes).
    """
    allowed = denied = 0
    debug = debug_enabled(logger)
    turns = Turns()
    for i, d in enumerate(decisions):
        if turns.due(i):
            await turns.take()
        log_decision(logger, tenant, checkpoint, d, debug)
        if d.allowed:
            allowed += 1
        else:
            denied += 1
    logger.info("step", tenant=tenant, checkpoint=checkpoint, agents=len(decisions),
                allowed=allowed, denied=denied)
    return allowed, denied


def log_decision(logger: Any, tenant: str, checkpoint: str, d: LoggedDecision,
                 debug: bool | None = None) -> None:
    """One decision: a ``decision_denied`` line at info for a deny (id, codes, policies),
    ``decision_allowed`` at debug for an allow. Call it inside the call's span."""
    if d.allowed:
        if debug if debug is not None else debug_enabled(logger):
            logger.debug("decision_allowed", decision_id=d.decision_id, tenant=tenant,
                         checkpoint=checkpoint)
        return
    logger.info("decision_denied", decision_id=d.decision_id, tenant=tenant,
                checkpoint=checkpoint, reasons=[r.code for r in d.reasons],
                policies=sorted({r.policy for r in d.reasons if r.policy}))


def debug_enabled(logger: Any) -> bool:
    """Whether ``logger`` writes debug lines (ask once, not per decision: it binds)."""
    check = getattr(logger.bind(), "is_enabled_for", None)
    return True if check is None else bool(check(logging.DEBUG))
