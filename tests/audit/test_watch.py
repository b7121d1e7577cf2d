"""watch: history from (rotated) files, then live, resumable, no gaps or duplicates."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest

from pdp.audit import (
    AuditHistoryUnavailableError,
    AuditLog,
    AuditSettings,
    Record,
    WatchOverflowError,
)
from pdp.audit.files import ledger_files
from tests.support.wait import eventually


def ev(i: int) -> dict[str, object]:
    return {"type": "Decision" if i % 3 else "Policy.WouldDeny",
            "tenant": "acme" if i % 2 else "globex", "i": i}


@pytest.fixture
def small(settings: AuditSettings) -> AuditSettings:
    return replace(settings, rotate_bytes=3000, batch_size=7)


async def collect(it: object, until_seq: int, timeout: float = 10) -> list[Record]:
    out: list[Record] = []

    async def run() -> None:
        async for rec in it:  # type: ignore[attr-defined]
            out.append(rec)
            if rec["seq"] >= until_seq:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def producer(log: AuditLog, start: int, n: int) -> None:
    for i in range(start, start + n):
        log.emit(ev(i))
        if i % 5 == 0:
            await asyncio.sleep(0.001)


async def test_resume_across_rotation_and_live_switch(small: AuditSettings) -> None:
    async with AuditLog(small) as log:
        for i in range(200):
            log.emit(ev(i))
        await log.flush()
        assert len(ledger_files(Path(small.path))) > 5
        # Start several watchers at different points while the writer keeps going (and
        # keeps rotating): each must see a contiguous run up to the end.
        prod = asyncio.create_task(producer(log, 200, 400))
        starts = [0, 1, 37, 150, 199, 200]
        results = await asyncio.gather(*(collect(log.watch(from_seq=s), 600) for s in starts))
        await prod
    for s, recs in zip(starts, results, strict=True):
        assert [r["seq"] for r in recs] == list(range(s + 1, 601)), s
        assert [r["event"]["i"] for r in recs] == list(range(s, 600))


async def test_from_seq_none_is_live_only(small: AuditSettings) -> None:
    async with AuditLog(small) as log:
        for i in range(20):
            log.emit(ev(i))
        await log.flush()
        it = log.watch()
        task = asyncio.create_task(collect(it, 25))
        await eventually(lambda: log.stats().watchers == 1, "the watcher attached")
        for i in range(20, 25):
            log.emit(ev(i))
        recs = await task
    assert [r["seq"] for r in recs] == [21, 22, 23, 24, 25]


async def test_filters_by_tenant_and_type(small: AuditSettings) -> None:
    async with AuditLog(small) as log:
        for i in range(100):
            log.emit(ev(i))
        await log.flush()
        prod = asyncio.create_task(producer(log, 100, 100))
        want = [i for i in range(200) if i % 2 and i % 3]  # acme Decisions
        recs = await collect(log.watch(tenant="acme", types={"Decision"}, from_seq=0),
                             want[-1] + 1)
        await prod
    assert [r["event"]["i"] for r in recs] == want


async def test_slow_watcher_is_ended_and_can_resume(small: AuditSettings) -> None:
    s = replace(small, watch_buffer=10)
    async with AuditLog(s) as log:
        it = log.watch(from_seq=None)
        got: list[int] = []
        first = asyncio.create_task(anext(it))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        for i in range(100):
            log.emit(ev(i))
        await log.flush()  # the writer did not wait for the watcher
        got.append((await first)["seq"])
        with pytest.raises(WatchOverflowError) as exc:
            async for rec in it:
                got.append(rec["seq"])
        assert "resume" in str(exc.value)
        assert got == list(range(1, len(got) + 1)) and len(got) <= 11
        assert exc.value.resume_after == got[-1]
        rest = await collect(log.watch(from_seq=exc.value.resume_after), 100)
    assert got + [r["seq"] for r in rest] == list(range(1, 101))


async def test_history_gone_is_an_error(small: AuditSettings) -> None:
    async with AuditLog(small) as log:
        for i in range(100):
            log.emit(ev(i))
        await log.flush()
        oldest = ledger_files(Path(small.path))[0]
        oldest.path.unlink()
        with pytest.raises(AuditHistoryUnavailableError):
            await collect(log.watch(from_seq=1), 100)
        recs = await collect(log.watch(from_seq=0), 100)  # oldest retained instead
        assert recs[0]["seq"] > 1 and recs[-1]["seq"] == 100


async def test_watch_ends_when_log_closes(small: AuditSettings) -> None:
    log = AuditLog(small)
    await log.start()
    log.emit(ev(0))
    got: list[int] = []

    async def run() -> None:
        async for rec in log.watch(from_seq=0):
            got.append(rec["seq"])

    task = asyncio.create_task(run())
    await eventually(lambda: got == [1], "the watcher read the record")
    await log.close()
    await asyncio.wait_for(task, 5)
    assert got == [1]


async def test_watchers_starting_at_random_moments(small: AuditSettings) -> None:
    rng = random.Random(7)
    async with AuditLog(replace(small, rotate_bytes=1500)) as log:
        prod = asyncio.create_task(producer(log, 0, 1500))
        tasks = []
        for _ in range(12):
            await asyncio.sleep(rng.uniform(0, 0.02))
            head = log.stats().last_seq
            start = rng.randint(0, head) if head else 0
            tasks.append((start, asyncio.create_task(collect(log.watch(from_seq=start), 1500))))
        await prod
        for start, t in tasks:
            recs = await t
            assert [r["seq"] for r in recs] == list(range(start + 1, 1501)), start


async def test_catching_up_gives_the_loop_turns(small: AuditSettings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """History is read a thousand records at a time; matching them (most may not match the
    filter) takes turns, so one watcher catching up does not hold every other call."""
    import pdp.audit.watch as W

    made: list[W.Turns] = []

    class Every(W.Turns):  # a turn at every look at the clock
        def __init__(self) -> None:
            super().__init__(every_s=0.0)
            made.append(self)

    monkeypatch.setattr(W, "Turns", Every)
    async with AuditLog(small) as log:
        for i in range(300):
            log.emit(ev(i))
        await log.flush()
        it = log.watch(tenant="acme", types={"Decision"}, from_seq=0)
        got = [await it.__anext__() for _ in range(10)]
        await it.aclose()
    assert [r["event"]["type"] for r in got] == ["Decision"] * 10
    assert made and made[0].taken > 0
