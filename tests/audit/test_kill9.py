"""Sync durability: SIGKILL under load loses no acknowledged record and the chain verifies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pdp.audit import AuditLog, AuditSettings
from pdp.audit.anchors import UNCLEAN_SHUTDOWN, AnchorKey, read_anchors
from pdp.audit.files import ledger_files
from pdp.audit.verify import verify_paths

ROOT = Path(__file__).resolve().parents[2]


def seqs_on_disk(active: Path) -> set[int]:
    out: set[int] = set()
    for lf in ledger_files(active):
        for line in lf.path.read_bytes().split(b"\n"):
            with contextlib.suppress(ValueError):  # a torn final line
                out.add(json.loads(line)["seq"])
    return out


def run_and_kill(active: Path, spool: Path, min_acks: int,
                 key: Path | None = None) -> list[int]:
    """Run the writer, SIGKILL it at a random moment after ``min_acks`` acks; all acks."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.audit.durable_writer", str(active), str(spool),
         *([str(key)] if key else [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    errors: list[bytes] = []
    # stderr is read all along: a writer whose log fills the pipe would stop acking.
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr or ()))
    drain.start()
    first = proc.stdout.readline().strip()
    if first != b"ready":
        proc.kill()
        proc.wait(timeout=10)
        drain.join(timeout=10)
        raise AssertionError(f"the writer did not start: {first!r}"
                             f" {b''.join(errors).decode()[-2000:]}")
    acked: list[int] = []

    def read() -> None:  # keeps reading until the pipe closes: every ack printed is counted
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 30
    while len(acked) < min_acks and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))  # land anywhere in a batch write / fsync
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    drain.join(timeout=10)
    err = b"".join(errors).decode()
    assert len(acked) >= min_acks, err[-2000:]
    return acked


def test_kill9_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    active = tmp_path / "audit" / "audit.jsonl"
    spool = tmp_path / "spool"
    acked = run_and_kill(active, spool, min_acks=3000)
    missing = set(acked) - seqs_on_disk(active)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    res = verify_paths([active.parent])
    assert res.ok, str(res)
    assert res.last_seq is not None and res.last_seq >= max(acked)
    assert len(res.files) > 1  # rotated under load

    # A second round on the same files: restart repairs any torn tail and continues the chain.
    acked2 = run_and_kill(active, spool, min_acks=500)
    assert min(acked2) > max(acked)
    assert not set(acked2) - seqs_on_disk(active)
    res = verify_paths([active.parent])
    assert res.ok and res.first_seq == 1, str(res)


def test_kill9_with_anchors_restarts_and_verifies_with_the_key(tmp_path: Path) -> None:
    """Anchors are written only after the ledger's fsync: a kill never leaves an anchored
    torn line, so the writer restarts, and every acknowledged record is covered."""
    key = tmp_path / "anchor.key"
    key.write_bytes(b"k" * 32)
    active = tmp_path / "audit" / "audit.jsonl"
    spool = tmp_path / "spool"
    acked = run_and_kill(active, spool, min_acks=1000, key=key)
    assert not set(acked) - seqs_on_disk(active)
    acked2 = run_and_kill(active, spool, min_acks=200, key=key)  # restart accepted the files
    assert min(acked2) > max(acked)
    res = verify_paths([active.parent], AnchorKey.from_file(key))
    assert res.ok, str(res)
    top = max(int(a.event["seq"]) + 1 for a in read_anchors(str(active) + ".anchors")[0])
    assert top >= max(acked2)  # the last acknowledged record is covered by an anchor


async def test_restart_repairs_a_torn_tail(settings: AuditSettings) -> None:
    async with AuditLog(settings) as log:
        for i in range(10):
            await log.emit_durable({"type": "T", "i": i})
    active = Path(settings.path)
    with open(active, "ab") as f:
        f.write(b'{"hash":"0123","event":{"type":"T","i":')  # what kill -9 mid-write leaves
    assert verify_paths([active]).warnings
    async with AuditLog(settings) as log:
        # The repair itself is recorded first (seq 11), so verify reports it for good.
        assert await log.emit_durable({"type": "T", "i": 10}) == 12
    torn = list(active.parent.glob("audit.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes().startswith(b'{"hash":"0123"')
    res = verify_paths([active.parent])
    assert res.ok and res.count == 12, str(res)
    assert any("moved a torn final line" in w and torn[0].name in w for w in res.warnings)
    torn[0].unlink()  # even with the fragment gone, the chain still says it happened
    res = verify_paths([active.parent])
    assert any("moved a torn final line" in w for w in res.warnings), str(res)


def _unclean_marks(active: Path) -> list[dict[str, object]]:
    marks = []
    for lf in ledger_files(active):
        for line in lf.path.read_bytes().split(b"\n"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)["event"]
                if event.get("type") == UNCLEAN_SHUTDOWN:
                    marks.append(event)
    return marks


def test_a_restart_after_a_kill_says_so_in_the_chain(tmp_path: Path) -> None:
    """After a kill, async records that were queued are gone and the chain showed nothing
    of it (it verifies: they were never chained). The next start now notices that the last
    writer never closed the ledger, and its first record says so; a clean stop does not."""
    active = tmp_path / "audit" / "audit.jsonl"
    spool = tmp_path / "spool"
    acked = run_and_kill(active, spool, min_acks=100)
    settings = AuditSettings(path=str(active), spool_dir=str(spool), instance="test")

    async def start_and_stop() -> None:
        async with AuditLog(settings) as log:
            await log.emit_durable({"type": "Test", "tenant": "t", "i": 0})

    asyncio.run(start_and_stop())
    [mark] = _unclean_marks(active)
    assert isinstance(mark["after_seq"], int) and mark["after_seq"] >= max(acked)
    assert mark["durability"] == "async" and "may be missing" in str(mark["effect"])
    asyncio.run(start_and_stop())  # after a clean stop: nothing more to say
    assert len(_unclean_marks(active)) == 1
    assert verify_paths([active.parent]).ok
