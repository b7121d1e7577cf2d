"""Pipeline behaviour: overflow spill, several sinks, masking on every path, write faults."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import AuditLog, AuditSettings, AuditWriteError, Entry
from pdp.audit.sinks.file import Ledger
from pdp.audit.sinks.stdout import StdoutSink
from pdp.audit.verify import verify_paths
from tests.audit.conftest import decision
from tests.support.wait import eventually


def file_events(settings: AuditSettings) -> list[dict[str, Any]]:
    res = verify_paths([Path(settings.path).parent])
    assert res.ok, str(res)
    out = []
    for f in res.files:
        out.extend(json.loads(x)["event"] for x in Path(f).read_bytes().splitlines())
    return out


def full_disk(monkeypatch: pytest.MonkeyPatch, on: bool = False) -> dict[str, bool]:
    """The audit file's writes fail as on a full disk while the returned ``["on"]`` is set."""
    real = Ledger._raw_write
    full = {"on": on}

    def write(self: Ledger, data: bytes) -> None:
        if full["on"]:
            raise OSError(28, "No space left on device")
        real(self, data)

    monkeypatch.setattr(Ledger, "_raw_write", write)
    return full


class FlakySink:
    """Fails while ``down`` is set; records what it received."""

    def __init__(self, name: str = "flaky") -> None:
        self.name = name
        self.down = False
        self.got: list[int] = []

    async def send(self, entries: Sequence[Entry]) -> None:
        if self.down:
            raise ConnectionError("sink down")
        self.got.extend(e.seq for e in entries)

    async def close(self) -> None:
        return None


async def test_full_queue_spills_in_order_and_loses_nothing(settings: AuditSettings) -> None:
    s = replace(settings, queue_size=10, batch_size=4)
    async with AuditLog(s) as log:
        for i in range(500):  # no await: the writer cannot run, the queue fills
            log.emit({"type": "T", "i": i})
        st = log.stats()
        assert st.queue_depth == 10 and st.spilled == 490 and st.overflow_pending == 490
        await log.flush()
        for i in range(500, 600):
            log.emit({"type": "T", "i": i})
        await log.flush()
        assert log.stats().overflow_pending == 0
    assert [e["i"] for e in file_events(s)] == list(range(600))


async def test_events_emitted_before_start_or_left_in_overflow_are_written(
        settings: AuditSettings) -> None:
    log = AuditLog(settings)
    log.emit({"type": "T", "i": 0})  # before start: spooled, written on start
    await log.start()
    log.emit({"type": "T", "i": 1})
    await log.close()
    log.emit({"type": "T", "i": 2})  # after close: spooled for the next run
    async with AuditLog(settings) as log2:
        await log2.flush()
    assert [e["i"] for e in file_events(settings)] == [0, 1, 2]


async def test_several_sinks_one_down(settings: AuditSettings) -> None:
    out = io.BytesIO()
    flaky = FlakySink()
    s = replace(settings, sink_retry_initial=0.01, sink_retry_max=0.02, batch_size=16)
    async with AuditLog(s, sinks=[StdoutSink(out), flaky]) as log:
        flaky.down = True
        for i in range(100):
            log.emit({"type": "T", "i": i})
            if i % 10 == 0:
                await asyncio.sleep(0.005)
        await log.flush()
        await eventually(lambda: not log.stats().sink_healthy["flaky"], "flaky marked down")
        assert log.stats().sink_healthy == {"stdout": True, "flaky": False}
        assert log.stats().sink_pending["flaky"] > 0
        flaky.down = False
        assert await log.drain_sinks(timeout=5)
    assert flaky.got == list(range(1, 101))
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, 101))


async def test_request_is_masked_in_file_sinks_and_overflow(settings: AuditSettings) -> None:
    out = io.BytesIO()
    s = replace(settings, queue_size=1,
                mask_paths=["request.config.exporters.*.headers.authorization",
                            "request.previous_config.exporters.*.headers.authorization"])
    async with AuditLog(s, sinks=[StdoutSink(out)]) as log:
        for i in range(5):  # queue of 1: most of these go through the overflow spool
            await log.log_decision(decision(i))
        assert log.stats().spilled > 0
        overflow = (Path(s.spool_path) / "overflow.jsonl").read_bytes()
        assert b"secret" not in overflow
        assert await log.drain_sinks(timeout=5)
    raw = b"".join(Path(f).read_bytes() for f in verify_paths([Path(s.path)]).files)
    assert b"secret" not in raw and b"secret" not in out.getvalue()
    evs = file_events(s)
    assert len(evs) == 5
    auth = evs[0]["request"]["config"]["exporters"]["otlp"]["headers"]["authorization"]
    assert auth.startswith("sha256:")


async def test_write_error_is_retried_without_duplicates(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Ledger._raw_write
    calls = {"n": 0}

    def flaky_write(self: Ledger, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            real(self, data[: len(data) // 2])  # half a batch hits the disk, then ENOSPC
            raise OSError(28, "No space left on device")
        real(self, data)

    monkeypatch.setattr(Ledger, "_raw_write", flaky_write)
    async with AuditLog(replace(settings, batch_size=8, rotate_bytes=1500)) as log:
        for i in range(100):
            log.emit({"type": "T", "i": i})
            if i % 8 == 0:
                await asyncio.sleep(0)
        await log.flush()
        assert log.stats().write_errors == 1
    assert [e["i"] for e in file_events(settings)] == list(range(100))


async def test_a_full_disk_refuses_durable_writes_and_says_so_until_it_takes_them(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync durability on a full disk: the record that hit it waits (the writer retries),
    later durable writes fail at once (AuditWriteError, not a wait until the caller gives
    up), ``failing`` / ``refusing`` say why; once the disk takes writes again, the waiting
    record is written and durable writes succeed."""
    full = full_disk(monkeypatch)
    s = replace(settings, durability="sync")
    async with AuditLog(s) as log:
        assert await log.emit_durable({"type": "T", "i": 0}) == 1
        assert log.failing is None and log.refusing is None
        full["on"] = True
        stuck = asyncio.ensure_future(log.emit_durable({"type": "T", "i": 1}))
        await eventually(lambda: log.failing is not None, "the write to fail")
        assert "No space left on device" in (log.refusing or "")
        with pytest.raises(AuditWriteError, match="No space left on device"):
            await log.emit_durable({"type": "T", "i": 2})
        assert not stuck.done()  # kept, not dropped: written once the disk takes it
        full["on"] = False
        assert await stuck == 2
        assert log.failing is None and log.refusing is None
        assert await log.emit_durable({"type": "T", "i": 3}) == 3
    assert [e["i"] for e in file_events(settings)] == [0, 1, 3]


async def test_async_durability_refuses_once_events_would_be_lost(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Async durability keeps events in the queue, then the overflow spool; when neither can
    take more (a full disk), ``refusing`` says so: the engine then decides nothing. The
    events already taken are written once the disk is back."""
    full = full_disk(monkeypatch, on=True)

    def no_spool(lines: Sequence[bytes]) -> None:
        raise OSError(28, "No space left on device")

    async with AuditLog(replace(settings, queue_size=10, batch_size=4)) as log:
        monkeypatch.setattr(log._overflow, "append", no_spool)
        for i in range(10):
            log.emit({"type": "T", "i": i})
        assert log.refusing is None  # the queue holds them
        log.emit({"type": "T", "i": 10})  # no room, no spool: lost, and said
        assert "overflow spool cannot be written" in (log.refusing or "")
        monkeypatch.undo()
        full["on"] = False
        await log.flush()
        log.emit({"type": "T", "i": 11})
        assert log.refusing is None
        await log.flush()
    got = [e["i"] for e in file_events(settings)]
    assert got[:10] == list(range(10)) and got[-1] == 11


async def test_close_on_a_full_disk_is_bounded_and_keeps_every_event_for_the_next_start(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown does not wait for ever on a disk that refuses writes: past close's
    timeout, what the file did not take goes to the overflow spool (a durable waiter fails),
    and the next start writes it, in order, with nothing lost or doubled."""
    full = full_disk(monkeypatch)
    log = AuditLog(replace(settings, batch_size=4))
    await log.start()
    log.emit({"type": "T", "i": 0})
    await log.flush()
    full["on"] = True
    durable = asyncio.ensure_future(log.emit_durable({"type": "T", "i": 1}))
    await asyncio.sleep(0)  # queued before the disk refuses (later ones are refused at once)
    for i in range(2, 11):
        log.emit({"type": "T", "i": i})
    await eventually(lambda: log.failing is not None, "the write to fail")
    await log.close(timeout=0.0)  # the grace is spent: give up on the file
    with pytest.raises(AuditWriteError):
        await durable
    assert log.stats().lost == 0
    full["on"] = False
    async with AuditLog(settings) as log2:
        await log2.flush()
    assert [e["i"] for e in file_events(settings)] == list(range(11))


async def test_failed_fsync_fails_the_durable_waiter(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with AuditLog(settings) as log:
        assert await log.emit_durable({"type": "T", "i": 0}) == 1

        def bad_sync(self: Ledger) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(Ledger, "sync", bad_sync)
        with pytest.raises(AuditWriteError):
            await log.emit_durable({"type": "T", "i": 1})
        monkeypatch.undo()
        assert await log.emit_durable({"type": "T", "i": 2}) == 3


async def test_sync_durability_log_decision(settings: AuditSettings) -> None:
    s = replace(settings, durability="sync")
    async with AuditLog(s) as log:
        await asyncio.gather(*(log.log_decision(decision(i, allowed=False, shadow=1))
                               for i in range(50)))
        st = log.stats()
        assert st.written == 150 and st.fsyncs < 50
    types = [e["type"] for e in file_events(s)]
    assert types.count("Rollout.PushDenied") == 50 and types.count("Policy.WouldDeny") == 50


async def test_second_writer_on_same_file_is_refused(settings: AuditSettings) -> None:
    from pdp.audit import AuditFileError

    async with AuditLog(settings):
        with pytest.raises(AuditFileError, match="another process"):
            await AuditLog(settings).start()


async def test_a_durable_event_is_written_after_the_events_spilled_before_it(
        settings: AuditSettings) -> None:
    """Sync durability: the engine emits a decision's Config.Seen / Policies.Seen, then waits
    for the decision to be durable. If the queue was full, those went to the overflow spool;
    the decision must still land after them, not jump ahead through the queue."""
    s = replace(settings, queue_size=10, batch_size=4, durability="sync")
    async with AuditLog(s) as log:
        for i in range(30):  # no await: the writer cannot run, the queue fills, 20 spill
            log.emit({"type": "Seen", "i": i})
        assert log.stats().spilled == 20
        await log.emit_durable({"type": "Durable", "i": 30})
    assert [e["i"] for e in file_events(s)] == list(range(31))
