"""Reading a server's audit log from a test: events as they land, polled with a deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def audit_events(path: Path) -> list[dict[str, Any]]:
    """Every event of the audit files beside ``path`` (rotated ones first); a line still
    being written is skipped."""
    out = []
    for f in sorted(path.parent.glob("audit*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            event = record.get("event") if isinstance(record, dict) else None
            if isinstance(event, dict):
                out.append(event)
    return out


def wait_for_events(path: Path, match: Callable[[dict[str, Any]], bool], count: int = 1,
                    timeout: float = 30.0) -> list[dict[str, Any]]:
    """The matching events once there are at least ``count`` of them (the audit writer and
    the shadow runner work after the answer); fails after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in audit_events(path) if match(e)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)} matching audit events, wanted {count}"
            return found
        time.sleep(0.05)
