"""The fast encoding of plain-JSON events writes exactly the bytes the general path writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pdp.audit import chain
from pdp.audit.events import to_jsonable


def _line(event: Any, head: chain.ChainHead, fast: bool) -> bytes:
    prepared = chain.canonical_event(event) if fast else None
    return chain.make_entry(prepared if prepared is not None else to_jsonable(event), head,
                            None if fast else {}).line


def test_fast_and_general_paths_write_identical_records() -> None:
    shared = [{"name": f"p{i}", "version": 1, "content_hash": f"sha256:{i:064x}",
               "status": "active", "builtin": i < 2} for i in range(12)]
    events: list[Any] = [
        {"type": "Decision", "decision_id": f"d{i}", "allowed": i % 2 == 0, "elapsed_ms": 0.5,
         "policies": shared, "reasons": [], "request": {"agent": {"labels": {"é": "ü"}}}}
        for i in range(5)
    ]
    events += [{"type": "x", "policies": [{"b": 1, "a": 2}]},  # short list: no splice
               {"t": float("nan")}, {"a": (1, 2)}, {1: "x", "b": 2},
               {"d": dt.date(2026, 1, 1)}, {"s": "\x00pdp-not-the-hole\x00"}]
    head = chain.ChainHead()
    for event in events:
        fast, general = _line(event, head, True), _line(event, head, False)
        assert fast == general, event
        head = chain.ChainHead(head.seq + 1, chain.parse_line(fast)["hash"])
    assert chain.canonical_event(events[0]) is not None          # plain JSON: fast path
    assert chain.canonical_event({"t": float("nan")}) is None    # not JSON: general path
