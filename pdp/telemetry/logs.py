"""structlog processor adding the current span's trace and span ids to every log event."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from opentelemetry import trace


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
