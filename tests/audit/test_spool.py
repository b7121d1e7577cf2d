from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from pdp.audit import AuditLog, AuditSettings
from pdp.audit.sinks.file import Ledger
from pdp.audit.spool import Spool
from tests.audit.test_log_basic import read_records


def test_spool_order_consume_and_reset(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.spool")
    sp.open()
    sp.append([b"a", b"b\n", b"c"])
    assert sp.pending == 3 and sp.peek(2) == [b"a\n", b"b\n"]
    sp.consume(sp.peek(2))
    assert sp.pending == 1 and sp.peek(5) == [b"c\n"]
    sp.consume(sp.peek(5))
    assert sp.pending == 0 and sp.path.stat().st_size == 0


def test_spool_resumes_after_crash_without_replaying_consumed(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.spool")
    sp.open()
    sp.append([f"{i}".encode() for i in range(10)])
    sp.consume(sp.peek(4))
    with open(sp.path, "ab") as f:
        f.write(b"torn-with-no-newline")  # a crash mid-append
    # no close(): as after kill -9
    again = Spool(tmp_path / "s.spool")
    again.open()
    assert again.pending == 6
    assert again.peek(100) == [f"{i}\n".encode() for i in range(4, 10)]
    assert again.take_all() and again.pending == 0
    assert not (tmp_path / "s.spool.offset").exists()


def test_a_spool_removed_while_open_keeps_its_pending_lines(tmp_path: Path) -> None:
    """Its directory removed under it (a clean-up of the audit directory): lines appended
    went to the removed file and vanished with the process. Now the pending lines are put
    back at the path, and the next appends land there."""
    sp = Spool(tmp_path / "spool" / "s.spool")
    sp.open()
    sp.append([b"0", b"1", b"2"])
    sp.consume(sp.peek(1))
    shutil.rmtree(tmp_path / "spool")
    sp.append([b"3"])
    assert sp.peek(10) == [b"1\n", b"2\n", b"3\n"]
    sp.close()
    again = Spool(tmp_path / "spool" / "s.spool")
    again.open()  # a restart replays them
    assert again.peek(10) == [b"1\n", b"2\n", b"3\n"]


def test_a_file_put_in_a_spools_place_is_moved_aside(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.spool")
    sp.open()
    sp.append([b"mine"])
    sp.path.unlink()
    sp.path.write_bytes(b"not mine\n")
    sp.append([b"also mine"])
    assert sp.peek(10) == [b"mine\n", b"also mine\n"]
    [aside] = tmp_path.glob("s.spool.foreign-*")
    assert aside.read_bytes() == b"not mine\n"


async def test_records_spilled_at_shutdown_after_the_spool_was_removed_are_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown whose audit file takes nothing (a full disk) puts the last records in the
    overflow spool; its directory had been removed meanwhile: they went to the removed file,
    ``lost`` stayed 0, nothing was logged, and the next start had nothing to replay."""
    settings = AuditSettings(path=str(tmp_path / "audit" / "audit.jsonl"),
                             spool_dir=str(tmp_path / "spool"), instance="test")
    log = AuditLog(settings)
    await log.start()
    for i in range(3):
        await log.emit_durable({"type": "Test", "tenant": "t", "i": i})
    shutil.rmtree(tmp_path / "spool")

    def disk_full(self: Ledger, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(Ledger, "_raw_write", disk_full)
        for i in range(3, 8):
            log.emit({"type": "Test", "tenant": "t", "i": i})
        await log.close(timeout=0.2)  # the grace period runs out: the spool takes them
    assert log.stats().lost == 0
    async with AuditLog(settings):  # the next start writes the spool first
        pass
    assert [r["event"]["i"] for r in read_records(Path(settings.path))] == list(range(8))
