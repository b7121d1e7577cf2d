"""The active audit file removed or moved away while the writer has it open: nothing
acknowledged is lost, the path keeps receiving records, and the health report says so.
Before, a removed file took every record written to it (and every later one) with it when
the writer closed it, with no warning."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from pdp.audit import AuditLog, AuditSettings
from pdp.audit.sinks.file import AuditFileError, Ledger
from pdp.audit.verify import verify_paths
from tests.audit.test_log_basic import read_records
from tests.support.wait import DEADLINE_S


async def test_a_removed_audit_file_is_put_back_with_every_record(
        settings: AuditSettings) -> None:
    path = Path(settings.path)
    async with AuditLog(settings) as log:
        for i in range(5):
            await log.emit_durable({"type": "Test", "tenant": "t", "i": i})
        os.unlink(path)  # rm audit.jsonl while pdp writes it
        for i in range(5, 10):
            await log.emit_durable({"type": "Test", "tenant": "t", "i": i})
        assert path.exists()
        assert log.stats().file_replaced == 1
        assert log.file_trouble is not None and "removed" in log.file_trouble
    recs = read_records(path)
    assert [r["event"]["i"] for r in recs] == list(range(10))  # none lost
    assert verify_paths([path.parent]).ok


async def test_a_file_put_in_its_place_is_kept_aside(settings: AuditSettings) -> None:
    path = Path(settings.path)
    async with AuditLog(settings) as log:
        await log.emit_durable({"type": "Test", "tenant": "t", "i": 0})
        os.unlink(path)
        path.write_text("not the audit log\n")
        await log.emit_durable({"type": "Test", "tenant": "t", "i": 1})
    assert [json.loads(ln)["event"]["i"] for ln in path.read_bytes().splitlines()] == [0, 1]
    [aside] = path.parent.glob(path.name + ".foreign-*")
    assert aside.read_text() == "not the audit log\n"


async def test_a_moved_audit_file_keeps_its_records_and_a_new_one_continues(
        settings: AuditSettings) -> None:
    path = Path(settings.path)
    moved = path.with_name("moved-away.log")
    async with AuditLog(settings) as log:
        for i in range(3):
            await log.emit_durable({"type": "Test", "tenant": "t", "i": i})
        os.rename(path, moved)  # logrotate without copytruncate
        for i in range(3, 6):
            await log.emit_durable({"type": "Test", "tenant": "t", "i": i})
        assert log.file_trouble is not None and "moved away" in log.file_trouble
    old = [r["event"]["i"] for r in read_records(moved)]
    new = read_records(path)
    assert old == [0, 1, 2] and [r["event"]["i"] for r in new] == [3, 4, 5]
    assert new[0]["seq"] == 4  # the chain continues in the new file


async def test_a_file_removed_while_idle_is_put_back_at_shutdown(
        settings: AuditSettings) -> None:
    """No batch follows the removal, so no write notices it: the health report says so at
    once, and closing puts the file back instead of closing the only copy."""
    path = Path(settings.path)
    log = AuditLog(settings)
    await log.start()
    for i in range(3):
        await log.emit_durable({"type": "Test", "tenant": "t", "i": i})
    os.unlink(path)
    assert log.file_trouble is not None and "not the file being written" in log.file_trouble
    await log.close()
    assert [r["event"]["i"] for r in read_records(path)] == [0, 1, 2]



async def _emit_all(log: AuditLog, numbers: range) -> None:
    """emit_durable each, within the tests' deadline (a writer that can never write again
    would otherwise hold the test until pytest's own timeout)."""
    for i in numbers:
        await asyncio.wait_for(log.emit_durable({"type": "Test", "tenant": "t", "i": i}),
                               DEADLINE_S)


async def test_the_audit_directory_removed_is_made_again_with_every_record(
        settings: AuditSettings) -> None:
    """``rm -rf`` of the audit directory while pdp writes: the file could not be put back
    (no directory to put it in), every later write failed, and closing lost every record,
    those written before the removal included. Now the directory is made again, the file
    put back, and the writer's lock taken again (a second writer stays out)."""
    path = Path(settings.path)
    log = AuditLog(settings)
    await log.start()
    try:
        await _emit_all(log, range(5))
        shutil.rmtree(path.parent)
        await _emit_all(log, range(5, 10))
        assert log.file_trouble is not None and "made again" in log.file_trouble
        with pytest.raises(AuditFileError, match="another process"):
            Ledger(path, 1 << 20).open()
    finally:
        await log.close(timeout=DEADLINE_S)
    assert [r["event"]["i"] for r in read_records(path)] == list(range(10))
    assert verify_paths([path.parent]).ok


async def test_the_audit_directory_moved_away_keeps_its_records_and_a_new_one_continues(
        settings: AuditSettings) -> None:
    path = Path(settings.path)
    moved = path.parent.with_name("audit-old")
    log = AuditLog(settings)
    await log.start()
    try:
        await _emit_all(log, range(3))
        os.rename(path.parent, moved)
        await _emit_all(log, range(3, 6))
    finally:
        await log.close(timeout=DEADLINE_S)
    assert [r["event"]["i"] for r in read_records(moved / path.name)] == [0, 1, 2]
    assert [r["event"]["i"] for r in read_records(path)] == [3, 4, 5]
