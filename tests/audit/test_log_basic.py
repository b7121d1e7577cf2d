from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from pdp.audit import GENESIS, AuditLog, AuditSettings
from pdp.audit.chain import hash_ok


def read_records(path: Path) -> list[dict[str, object]]:
    files = [*sorted(path.parent.glob(path.name + ".*[0-9]")), path]
    out = []
    for f in files:
        if f.exists():
            out.extend(json.loads(line) for line in f.read_bytes().splitlines())
    return out


async def test_emit_and_close_writes_a_chain(settings: AuditSettings) -> None:
    log = AuditLog(settings)
    await log.start()
    for i in range(100):
        log.emit({"type": "Test", "tenant": "t", "i": i})
    await log.close()
    recs = read_records(Path(settings.path))
    assert [r["seq"] for r in recs] == list(range(1, 101))
    assert recs[0]["prev"] == GENESIS
    for a, b in itertools.pairwise(recs):
        assert b["prev"] == a["hash"]
    assert all(hash_ok(r) for r in recs)
    assert log.stats().written == 100


async def test_restart_continues_chain(settings: AuditSettings) -> None:
    async with AuditLog(settings) as log:
        log.emit({"type": "Test", "i": 1})
    async with AuditLog(settings) as log:
        seq = await log.emit_durable({"type": "Test", "i": 2})
        assert seq == 2
    recs = read_records(Path(settings.path))
    assert [r["seq"] for r in recs] == [1, 2]
    assert recs[1]["prev"] == recs[0]["hash"]


async def test_emit_durable_group_commit(settings: AuditSettings) -> None:
    async with AuditLog(settings) as log:
        seqs = await asyncio.gather(*(log.emit_durable({"type": "T", "i": i})
                                      for i in range(200)))
        assert sorted(seqs) == list(range(1, 201))
        assert log.stats().fsyncs < 50
