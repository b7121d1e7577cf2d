"""Signed checkpoints: each kind of tampering the chain alone misses (or names vaguely) is
reported by ``verify --key`` with its own kind and message; the writer anchors every N
records, on a timer, at shutdown, and in sync mode before it answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from pdp.audit import AuditLog, AuditSettings
from pdp.audit.anchors import CHECKPOINT, Anchorer, AnchorKey, Keyring, read_anchors
from pdp.audit.chain import record_hash
from pdp.audit.files import AuditFileError, ledger_files
from pdp.audit.sinks.file import Ledger
from pdp.audit.verify import VerifyResult, main, verify_paths
from pdp.cli import main as cli_main
from tests.audit.conftest import decision, write_anchored
from tests.audit.test_verify import lines, put


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "anchor.key"
    p.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    return p


@pytest.fixture
def key(key_file: Path) -> AnchorKey:
    return AnchorKey.from_file(key_file)


def make_anchored(directory: Path, key: AnchorKey, n: int = 60, every: int = 5,
                  rotate_bytes: int = 2500) -> list[Path]:
    """A ledger of ``n`` events over several rotated files, a checkpoint after every
    ``every`` events and one at close (as the writer does), which covers the last one."""
    files = write_anchored(directory, key, n, every, rotate_bytes, unanchored_tail=1)
    assert len(files) >= 4
    return files


def records(files: list[Path]) -> list[tuple[Path, int, dict[str, object]]]:
    out = []
    for f in files:
        for n, ln in enumerate(lines(f)):
            out.append((f, n, json.loads(ln)))
    return out


def rechain_from(files: list[Path], start_seq: int) -> None:
    """What an attacker without the key does after an edit: recompute every hash (and link)
    from ``start_seq`` to the end, so the chain is consistent again."""
    prev: str | None = None
    for f in files:
        out = []
        for ln in lines(f):
            rec = json.loads(ln)
            if rec["seq"] >= start_seq:
                if prev is not None:
                    rec["prev"] = prev
                rec["hash"] = record_hash(rec)
            prev = rec["hash"]
            out.append(orjson.dumps(rec) + b"\n")
        put(f, out)


def problem(res: VerifyResult) -> tuple[str, str]:
    assert not res.ok and res.problem is not None, str(res)
    return res.problem.kind, res.problem.detail


def test_intact_log_verifies_with_the_key(tmp_path: Path, key: AnchorKey, key_file: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    make_anchored(tmp_path, key)
    res = verify_paths([tmp_path], key)
    assert res.ok and not res.warnings, str(res)
    assert "verified with key id" in res.anchors and "covered up to seq" in res.anchors
    assert main(["--key", str(key_file), str(tmp_path)]) == 0
    assert "anchors: " in capsys.readouterr().out
    # Without the key the chain is still checked, and the output says anchors were not.
    plain = verify_paths([tmp_path])
    assert plain.ok and plain.anchors == "not verified (no --key)"
    assert "anchors: not verified (no --key)" in str(plain)
    assert cli_main(["audit", "verify", "--key", str(key_file), str(tmp_path)]) == 0


def test_wrong_key_is_reported(tmp_path: Path, key: AnchorKey) -> None:
    make_anchored(tmp_path, key)
    other = AnchorKey.from_bytes(b"another key, just as long as it")
    kind, detail = problem(verify_paths([tmp_path], other))
    assert kind == "wrong_key" and key.key_id in detail and other.key_id in detail
    assert main(["--key", "/nonexistent/key", str(tmp_path)]) == 2


def test_edit(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    ls = lines(files[1])
    rec = json.loads(ls[1])
    rec["event"]["tenant"] = "evil"
    ls[1] = orjson.dumps(rec) + b"\n"
    put(files[1], ls)
    res = verify_paths([tmp_path], key)
    kind, detail = problem(res)
    assert kind == "edited" and "does not match its hash" in detail
    assert res.problem is not None and res.problem.seq == rec["seq"]


def test_edit_and_rechain_to_the_end(tmp_path: Path, key: AnchorKey,
                                     key_file: Path) -> None:
    files = make_anchored(tmp_path, key)
    ls = lines(files[1])
    n = next(n for n, ln in enumerate(ls) if json.loads(ln)["event"]["type"] == "Test")
    rec = json.loads(ls[n])
    rec["event"]["tenant"] = "evil"
    ls[n] = orjson.dumps(rec) + b"\n"
    put(files[1], ls)
    rechain_from(files, rec["seq"])
    assert verify_paths([tmp_path]).ok  # what the issue found: the chain alone says ok
    res = verify_paths([tmp_path], key)
    kind, detail = problem(res)
    assert kind == "rechained" and "every later hash recomputed" in detail
    assert res.problem is not None and res.problem.seq is not None
    assert res.problem.seq > rec["seq"]  # the first checkpoint after the edit
    assert main(["--key", str(key_file), str(tmp_path)]) == 1


def test_checkpoints_removed_and_rechained_is_caught_by_the_anchor_file(
        tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    seq = 0
    for f in files:  # drop every checkpoint record, renumber and re-chain
        out = []
        for ln in lines(f):
            rec = json.loads(ln)
            if rec["event"]["type"] == CHECKPOINT:
                continue
            seq += 1
            rec["seq"] = seq
            out.append(orjson.dumps(rec) + b"\n")
        put(f, out)
    rechain_from(files, 1)
    for f in files[:-1]:  # keep the rotated names consistent with their first seq
        f.rename(f.with_name(f"audit.jsonl.{json.loads(lines(f)[0])['seq']:012d}"))
    files = [lf.path for lf in ledger_files(tmp_path / "audit.jsonl")]
    json_first = json.loads(lines(files[0])[0])
    assert json_first["seq"] == 1
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind in ("rechained", "truncated"), detail
    assert "re-chained" in detail or "cut off" in detail or "deleted from the end" in detail


def test_truncation_of_the_last_record(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    ls = lines(files[-1])
    last = json.loads(ls[-1])["seq"]
    put(files[-1], ls[:-1])
    assert verify_paths([tmp_path]).ok  # invisible to the chain
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "truncated"
    assert f"the last record (seq {last}) was cut off the end" in detail


def test_deletion_of_the_last_records(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key, rotate_bytes=4000)
    ls = lines(files[-1])
    assert len(ls) > 4
    last = json.loads(ls[-1])["seq"]
    put(files[-1], ls[:-4])
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "truncated"
    assert f"records {last - 3}..{last} (4) were deleted from the end" in detail


def test_a_shipped_copy_of_the_anchors_still_shows_the_truncation(
        tmp_path: Path, key: AnchorKey, key_file: Path) -> None:
    files = make_anchored(tmp_path / "audit", key)
    anchors = tmp_path / "audit" / "audit.jsonl.anchors"
    shipped = tmp_path / "elsewhere.anchors"
    shipped.write_bytes(anchors.read_bytes())
    put(files[-1], lines(files[-1])[:-2])  # records cut off the end...
    anchors.write_bytes(b"".join(lines(anchors)[:-1]))  # ...and the local anchor with them
    res = verify_paths([tmp_path / "audit"], key)
    assert res.ok  # the local evidence was edited to match
    kind, detail = problem(verify_paths([tmp_path / "audit"], key, [shipped]))
    assert kind == "truncated" and str(shipped) in detail
    assert main(["--key", str(key_file), "--anchors", str(shipped),
                 str(tmp_path / "audit")]) == 1


def test_deletion_of_the_last_records_and_the_active_file(tmp_path: Path,
                                                          key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    files[-1].unlink()
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "truncated" and "deleted from the end" in detail


def test_deletion_of_a_whole_rotated_file(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    files[1].unlink()
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "removed" and f"rotated file {files[1].name} is missing" in detail


def test_deletion_of_the_first_rotated_file(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    files[0].unlink()
    plain = verify_paths([tmp_path])  # the chain alone: only a note about archived files
    assert plain.ok and any("chain starts at seq" in w for w in plain.warnings)
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "removed"
    assert f"rotated file {files[0].name} (seqs 1.." in detail and "is missing" in detail


def test_reordering_of_two_records(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    ls = lines(files[2])
    ls[1], ls[2] = ls[2], ls[1]
    put(files[2], ls)
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "reordered" and "comes before seq" in detail


def test_forged_checkpoint(tmp_path: Path, key: AnchorKey) -> None:
    files = make_anchored(tmp_path, key)
    f, n, rec = next((f, n, r) for f, n, r in records(files)
                     if isinstance(r["event"], dict) and r["event"]["type"] == CHECKPOINT)
    ev = rec["event"]
    assert isinstance(ev, dict)
    ev["time"] = "2000-01-01T00:00:00.000000Z"
    rec["hash"] = record_hash(rec)
    ls = lines(f)
    ls[n] = orjson.dumps(rec) + b"\n"
    put(f, ls)
    rechain_from(files, int(str(rec["seq"])))
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "forged" and "MAC does not match" in detail


def test_key_given_but_no_anchors_anywhere(tmp_path: Path, key: AnchorKey) -> None:
    from tests.audit.test_verify import make_ledger

    make_ledger(tmp_path)
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "unanchored" and "no signed checkpoint" in detail


def anchored_settings(settings: AuditSettings, key_file: Path, **kw: Any) -> AuditSettings:
    return dataclasses.replace(settings, anchor_key_file=str(key_file), **kw)


async def test_torn_final_line_after_an_acknowledged_sync_write(
        settings: AuditSettings, key_file: Path, key: AnchorKey) -> None:
    s = anchored_settings(settings, key_file, durability="sync")
    async with AuditLog(s) as log:
        for i in range(5):
            await log.log_decision(decision(i))
    active = Path(s.path)
    data = active.read_bytes()
    cut = data[:-40]  # the final line (the checkpoint covering the answered decision) torn
    active.write_bytes(cut)
    plain = verify_paths([active.parent])
    assert plain.ok and any("incomplete final line" in w for w in plain.warnings)
    res = verify_paths([active.parent], key)
    kind, detail = problem(res)
    assert kind == "truncated" and "cut short, yet it was acknowledged" in detail
    # A restart does not move the acknowledged line aside: it refuses, files untouched.
    with pytest.raises(AuditFileError, match="acknowledged records are missing"):
        await AuditLog(s).start()
    assert active.read_bytes() == cut
    assert not list(active.parent.glob("audit.jsonl.torn-*"))


async def test_torn_line_never_acknowledged_is_moved_aside_and_reported(
        settings: AuditSettings, key_file: Path, key: AnchorKey) -> None:
    s = anchored_settings(settings, key_file, durability="sync")
    async with AuditLog(s) as log:
        for i in range(3):
            await log.log_decision(decision(i))
    active = Path(s.path)
    with open(active, "ab") as f:  # a batch the crash cut short, before its fsync
        f.write(b'{"hash":"0123","event":{"type":"Decision","ten')
    res = verify_paths([active.parent], key)
    assert res.ok and any("incomplete final line" in w for w in res.warnings), str(res)
    async with AuditLog(s) as log:
        await log.log_decision(decision(3))
    res = verify_paths([active.parent], key)
    assert res.ok, str(res)
    assert any("moved a torn final line" in w for w in res.warnings), str(res)


async def test_sync_mode_answers_only_once_an_anchor_covers_the_decision(
        settings: AuditSettings, key_file: Path) -> None:
    s = anchored_settings(settings, key_file, durability="sync")
    anchors = Path(s.anchor_path)
    async with AuditLog(s) as log:
        for i in range(4):
            await log.log_decision(decision(i, allowed=False))
            last = read_anchors(anchors)[0][-1].event
            assert int(last["seq"]) == log.stats().last_seq - 1  # all but the checkpoint
        # Concurrent decisions share a batch: one checkpoint for the lot (group commit).
        before = len(read_anchors(anchors)[0])
        await asyncio.gather(*(log.log_decision(decision(10 + i)) for i in range(20)))
        assert len(read_anchors(anchors)[0]) - before < 20


async def test_anchors_every_n_records_and_at_shutdown(settings: AuditSettings,
                                                       key_file: Path, key: AnchorKey) -> None:
    s = anchored_settings(settings, key_file, anchor_every_records=10, anchor_every_s=1e6)
    async with AuditLog(s) as log:
        for i in range(25):
            log.emit({"type": "Test", "tenant": "t", "i": i})
            await log.flush(fsync=False)  # one record per batch: checkpoints land exactly
        assert [int(a.event["seq"]) for a in read_anchors(s.anchor_path)[0]] == [10, 21]
    got = read_anchors(s.anchor_path)[0]
    assert [int(a.event["seq"]) for a in got] == [10, 21, 27]  # + the shutdown checkpoint
    in_ledger = [r for _, _, r in records([Path(s.path)])
                 if isinstance(r["event"], dict) and r["event"]["type"] == CHECKPOINT]
    assert [r["seq"] for r in in_ledger] == [11, 22, 28]
    assert [r["event"] for r in in_ledger] == [a.event for a in got]
    res = verify_paths([Path(s.path).parent], key)
    assert res.ok and not res.warnings, str(res)


async def test_a_large_batch_is_written_inline_then_anchored(settings: AuditSettings,
                                                             key_file: Path,
                                                             key: AnchorKey) -> None:
    """A batch nobody waits for, with a checkpoint due, is written in inline slices and
    the checkpoint follows its last record (the worker thread only signs and syncs)."""
    s = anchored_settings(settings, key_file, anchor_every_records=10, anchor_every_s=1e6)
    async with AuditLog(s) as log:
        for i in range(35):
            log.emit({"type": "Test", "tenant": "t", "i": i})
        await log.flush(fsync=False)
        got = [int(a.event["seq"]) for a in read_anchors(s.anchor_path)[0]]
        assert got and got[-1] == 35  # after the batch's last record, not inside it
    res = verify_paths([Path(s.path).parent], key)
    assert res.ok and not res.warnings, str(res)


async def test_anchor_on_a_timer_when_idle(settings: AuditSettings, key_file: Path) -> None:
    s = anchored_settings(settings, key_file, anchor_every_records=10**6, anchor_every_s=0.05)
    async with AuditLog(s) as log:
        log.emit({"type": "Test", "tenant": "t"})  # anchored at once: none for a while
        log.emit({"type": "Test", "tenant": "t"})
        await log.flush(fsync=False)
        seq = log.stats().last_seq
        for _ in range(1000):  # bounded wait for the timer, no fixed sleep asserted
            got = read_anchors(s.anchor_path)[0] if Path(s.anchor_path).exists() else []
            if got and int(got[-1].event["seq"]) >= seq:
                break
            await asyncio.sleep(0.01)
        assert got and int(got[-1].event["seq"]) >= seq


async def test_rotated_files_are_named_by_the_next_checkpoint(
        settings: AuditSettings, key_file: Path, key: AnchorKey) -> None:
    s = anchored_settings(settings, key_file, durability="sync", rotate_bytes=4000)
    async with AuditLog(s) as log:
        for i in range(12):
            await log.log_decision(decision(i))
    named = [seg for a in read_anchors(s.anchor_path)[0] for seg in a.event["files"]]
    rotated = [lf for lf in ledger_files(Path(s.path)) if lf.first_seq is not None]
    assert rotated and [seg["name"] for seg in named] == [lf.path.name for lf in rotated]
    for seg in named:
        last = json.loads(lines(Path(s.path).parent / seg["name"])[-1])
        assert (seg["last"], seg["hash"]) == (last["seq"], last["hash"])
    assert verify_paths([Path(s.path).parent], key).ok


NEW_KEY = AnchorKey.from_bytes(b"the key after the change, long enough")


def _run(directory: Path, key: AnchorKey, n: int) -> Ledger:
    """One writer's run on the ledger in ``directory``: ``n`` events, a checkpoint after
    every fifth, the shutdown checkpoint at close."""
    active = directory / "audit.jsonl"
    ledger = Ledger(active, 10**9,
                    Anchorer(key, str(active) + ".anchors", every_records=10**9, every_s=1e9))
    ledger.open()
    for i in range(n):
        assert ledger.append([{"type": "Test", "tenant": "t", "i": i}], fsync=False,
                             anchor=i % 5 == 4).error is None
    ledger.close()
    return ledger


def test_a_key_change_starts_with_a_checkpoint_of_the_new_key(
        tmp_path: Path, key: AnchorKey, key_file: Path) -> None:
    """Rotating the anchor key: the writer with the new key begins with a checkpoint of
    its own (signing the head it builds on), so the records it writes are not read as
    appended after the old writer's shutdown checkpoint; ``verify`` checks each checkpoint
    with the key its id names when given every key, and says to when given only one."""
    _run(tmp_path, key, 12)
    before = len(lines(tmp_path / "audit.jsonl"))
    _run(tmp_path, NEW_KEY, 12)
    first = json.loads(lines(tmp_path / "audit.jsonl")[before])
    assert first["event"]["type"] == CHECKPOINT and first["event"]["key_id"] == NEW_KEY.key_id
    assert first["event"]["head"] == json.loads(lines(tmp_path / "audit.jsonl")[before - 1])[
        "hash"]
    res = verify_paths([tmp_path], Keyring((key, NEW_KEY)))
    assert res.ok, str(res)
    assert key.key_id in res.anchors and NEW_KEY.key_id in res.anchors
    for only in (key, NEW_KEY):
        kind, detail = problem(verify_paths([tmp_path], only))
        assert kind == "wrong_key" and "--key OLD --key NEW" in detail
    new_file = tmp_path / "new.key"
    new_file.write_bytes(b"the key after the change, long enough")
    assert cli_main(["audit", "verify", "--key", str(key_file), "--key", str(new_file),
                     str(tmp_path)]) == 0
    # ... and the new writer's next restart is an ordinary one
    _run(tmp_path, NEW_KEY, 3)
    assert verify_paths([tmp_path], Keyring((key, NEW_KEY))).ok


def test_a_replaced_key_does_not_sign_again(tmp_path: Path, key: AnchorKey) -> None:
    """A key change goes one way: a writer with the old key refuses to build on the new
    key's records, and a checkpoint the old key signed after the change (a leaked old key)
    is reported by ``verify``."""
    _run(tmp_path, key, 12)
    _run(tmp_path, NEW_KEY, 12)
    with pytest.raises(AuditFileError):
        _run(tmp_path, key, 1)
    ls = lines(tmp_path / "audit.jsonl")
    rec = json.loads(ls[-1])  # the new key's shutdown checkpoint, re-signed with the old one
    ev = {k: v for k, v in rec["event"].items() if k != "mac"}
    ev["key_id"] = key.key_id
    ev["mac"] = key.mac(ev)
    rec["event"] = ev
    put(tmp_path / "audit.jsonl", [*ls[:-1], orjson.dumps(rec) + b"\n"])
    rechain_from([tmp_path / "audit.jsonl"], rec["seq"])
    kind, detail = problem(verify_paths([tmp_path], Keyring((key, NEW_KEY))))
    assert kind == "wrong_key" and "replaced" in detail, detail
