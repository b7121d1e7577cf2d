"""The writer's fast paths produce exactly what the plain definitions do."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import math
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import AuditLog, AuditSettings
from pdp.audit.chain import ChainHead, canonical, hash_ok, make_entry
from pdp.audit.events import to_jsonable
from pdp.audit.verify import verify_paths


class Color(enum.IntEnum):
    RED = 1


def _slow(value: Any) -> Any:
    """to_jsonable without memo, compared through JSON text (what gets hashed)."""
    return json.loads(canonical(to_jsonable(value)))


SHARED = [{"name": "p", "version": 1, "content_hash": "sha256:x", "builtin": False}] * 3
ROLLOUT = {"id": "r", "step_percent": 10.0, "approvals": [], "created_at": None}
EVENTS: list[Any] = [
    {"type": "Decision", "policies": SHARED, "request": {"rollout": ROLLOUT, "agent": {"id": "a"},
                                                          "metrics": {}}},
    {"type": "Decision", "policies": SHARED, "request": {"rollout": ROLLOUT, "agent": {"id": "b"},
                                                          "metrics": {"x": math.nan}}},
    {"b": {"z": 1, "a": [1, 2.5, {"q": None}]}, "a": "é\u2028\x00\"\\", "e": {}, "l": [],
     "t": (1, 2), "k": {1: "int key", 2.5: "float key"}, "en": Color.RED,
     "when": dt.datetime(2025, 1, 1, tzinfo=dt.UTC), "f": -0.0, "big": 10**30,
     "nested": {"policies": SHARED, "inf": math.inf}},
    {"unicode": "日本語", "emoji": "\U0001f600", "policies": SHARED},
]


def test_to_jsonable_with_memo_matches_without() -> None:
    memo: dict[int, tuple[Any, Any]] = {}
    for ev in EVENTS:
        assert json.loads(canonical(to_jsonable(ev, memo))) == _slow(ev)
    # Already-plain data is not copied, and what events share stays shared.
    a, b = to_jsonable(EVENTS[0], memo), to_jsonable(EVENTS[3], memo)
    assert a is EVENTS[0] and a["policies"] is b["policies"] is SHARED
    assert to_jsonable(EVENTS[1])["request"]["metrics"] == {"x": "nan"}


def test_entries_of_every_shape_verify() -> None:
    head = ChainHead()
    for ev in EVENTS:
        e = make_entry(ev, head)
        head = ChainHead(e.seq, e.record["hash"])
        assert hash_ok(json.loads(e.line))


@pytest.mark.parametrize("inline_max", [0, 16])
async def test_inline_and_threaded_writes_make_the_same_chain(tmp_path: Path,
                                                              inline_max: int) -> None:
    s = AuditSettings(path=str(tmp_path / "audit.jsonl"), spool_dir=str(tmp_path / "spool"),
                      inline_max=inline_max)
    async with AuditLog(s) as log:
        for i in range(40):
            log.emit({"type": "T", "tenant": "t", "i": i, "shared": SHARED})
            if i % 7 == 0:
                await asyncio.sleep(0)  # batches of different sizes
        await log.flush()
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["event"]["i"] for r in records] == list(range(40))
    assert all(hash_ok(r) for r in records)
    assert verify_paths([str(tmp_path / "audit.jsonl")]).ok


def test_inline_max_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="inline_max"):
        AuditSettings(inline_max=-1)
