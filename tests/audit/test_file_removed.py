"""The active audit file removed or moved away while the writer has it open: nothing
acknowledged is lost, the path keeps receiving records, and the health report says so.
Before, a removed file took every record written to it (and every later one) with it when
the writer closed it, with no warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pdp.audit import AuditLog, AuditSettings
from pdp.audit.verify import verify_paths
from tests.audit.test_log_basic import read_records


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
