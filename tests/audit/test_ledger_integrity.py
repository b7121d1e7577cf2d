"""The ledger's bytes are what is verified; a writer does not build on a forged or broken
head; a removed anchor file is noticed; an event nothing could take is held, not lost."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from pdp.audit import AuditLog, AuditSettings, AuditWriteError
from pdp.audit.anchors import CHECKPOINT, Anchorer, AnchorKey, read_anchors
from pdp.audit.chain import canonical, canonical_v2, record_hash
from pdp.audit.files import AuditFileError
from pdp.audit.sinks.file import Ledger
from pdp.audit.verify import verify_paths
from pdp.client import push_request
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.audit.conftest import decision, lines, problem
from tests.support.pdpserver import PdpServer
from tests.support.wait import eventually, wait_until


def write_ledger(directory: Path, key: AnchorKey | None, n: int = 6,
                 crash: bool = False) -> Path:
    """``n`` events, a checkpoint after the first and the third, closed (the shutdown
    checkpoint) or, with ``crash``, left as a crash leaves it."""
    active = directory / "audit.jsonl"
    anchorer = (Anchorer(key, str(active) + ".anchors", every_records=10**9, every_s=1e9)
                if key is not None else None)
    ledger = Ledger(active, 1 << 30, anchorer)
    ledger.open()
    for i in range(n):
        res = ledger.append([{"type": "Decision", "tenant": "t", "i": i, "allowed": True}],
                            fsync=False, anchor=key is not None and i in (0, 2))
        assert res.error is None
    if crash:
        ledger.close_active_quietly()
        assert ledger._lock_fd is not None
        os.close(ledger._lock_fd)
        ledger._lock_fd = None
        if anchorer is not None:
            anchorer.file.close()
    else:
        ledger.close()
    return active


def forged_after(active: Path) -> dict[str, Any]:
    """A record with a correct hash and prev, appended after the last one (no key needed)."""
    last = json.loads(lines(active)[-1])
    body = {"event": {"type": "Decision", "tenant": "t", "i": "forged", "allowed": True},
            "prev": last["hash"], "seq": last["seq"] + 1, "v": 3}
    text = orjson.dumps(body)
    digest = hashlib.sha256(text).hexdigest()
    with open(active, "ab") as f:
        f.write(b'{"hash":"' + digest.encode() + b'",' + text[1:] + b"\n")
    return body


# -- 1. the bytes of a line are what is verified -------------------------------------------


@pytest.mark.parametrize("edit", [
    # json.loads keeps the last "allowed": a parser that keeps the first reads a deny.
    (b'"allowed":true', b'"allowed":false,"reasons":["forged deny"],"allowed":true'),
    (b'"allowed":true', b'"allowed": true'),  # whitespace
    (b'"tenant":"t"', b'"tenant":"\\u0074"'),  # an escape that parses to the same text
])
def test_a_line_whose_bytes_are_not_the_hashed_ones_does_not_verify(
        tmp_path: Path, key: AnchorKey, edit: tuple[bytes, bytes]) -> None:
    active = write_ledger(tmp_path, key)
    ls = lines(active)
    n = next(i for i, ln in enumerate(ls) if edit[0] in ln)
    ls[n] = ls[n].replace(*edit, 1)
    active.write_bytes(b"".join(ls))
    for k in (None, key):
        res = verify_paths([tmp_path], k)
        assert not res.ok and res.problem is not None, str(res)
        assert res.problem.line == n + 1 and res.problem.kind in ("edited", "malformed")
    detail = problem(verify_paths([tmp_path], key))[1]
    assert ("duplicate key 'allowed'" in detail if b"forged" in edit[1]
            else "does not match its hash" in detail)


def test_a_hash_not_first_is_not_canonical(tmp_path: Path) -> None:
    active = write_ledger(tmp_path, None, n=2)
    ls = lines(active)
    rec = json.loads(ls[1])
    moved = {k: v for k, v in rec.items() if k != "hash"} | {"hash": rec["hash"]}
    ls[1] = orjson.dumps(moved) + b"\n"
    active.write_bytes(b"".join(ls))
    kind, detail = problem(verify_paths([tmp_path]))
    assert kind == "edited" and "not in canonical form" in detail


def test_older_formats_still_verify_as_they_did(tmp_path: Path) -> None:
    """v1 / v2 records are re-encoded as their ``v`` says (whitespace in old files is fine);
    a duplicate key is refused in every version."""
    path = tmp_path / "audit.jsonl"
    prev = "0" * 64
    out = []
    for seq, v in ((1, 1), (2, 2)):
        body = {"event": {"type": "T", "n": seq}, "prev": prev, "seq": seq, "v": v}
        h = hashlib.sha256((canonical if v == 1 else canonical_v2)(body)).hexdigest()
        out.append(json.dumps({**body, "hash": h}, indent=None).encode() + b"\n")  # spaced
        prev = h
    path.write_bytes(b"".join(out))
    assert verify_paths([path]).ok
    path.write_bytes(out[0] + out[1].replace(b'"n": 2', b'"n": 3, "n": 2'))
    kind, detail = problem(verify_paths([path]))
    assert kind == "malformed" and "duplicate key 'n'" in detail


# -- 2. a restart does not build on a forged or broken head --------------------------------


def test_a_record_appended_after_the_shutdown_checkpoint_is_refused(
        tmp_path: Path, key: AnchorKey, key_file: Path, settings: AuditSettings) -> None:
    active = write_ledger(tmp_path, key)
    last = json.loads(lines(active)[-1])["event"]
    assert last["type"] == CHECKPOINT and last["final"] is True and key.signed(last)
    assert verify_paths([tmp_path], key).ok
    forged = forged_after(active)
    before = active.read_bytes()
    anchorer = Anchorer(key, str(active) + ".anchors", every_records=10, every_s=1e9)
    with pytest.raises(AuditFileError) as err:
        Ledger(active, 1 << 30, anchorer).open()
    msg = str(err.value)
    assert f"audit.jsonl:{len(lines(active))} (seq {forged['seq']})" in msg
    assert "records after the shutdown checkpoint" in msg and "pdp audit verify" in msg
    assert active.read_bytes() == before  # nothing built on it, nothing repaired
    for k in (None, key):
        kind, detail = problem(verify_paths([tmp_path], k))
        assert kind == "appended" and "appended after the writer stopped" in detail
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify", "--key",
                          str(key_file), str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "appended" in out.stdout


def test_an_edited_last_record_is_refused_at_start(tmp_path: Path, key: AnchorKey) -> None:
    for k in (key, None):
        d = tmp_path / ("keyed" if k else "plain")
        d.mkdir()
        active = write_ledger(d, k)
        ls = lines(active)
        ls[-1] = ls[-1].replace(b'"tenant":"t"', b'"tenant":"x"') if k is None \
            else ls[-1].replace(b'"ledger":"audit.jsonl"', b'"ledger":"audit.jsonX"')
        active.write_bytes(b"".join(ls))
        anchorer = (Anchorer(k, str(active) + ".anchors", every_records=10, every_s=1e9)
                    if k else None)
        with pytest.raises(AuditFileError, match=rf"audit.jsonl:{len(ls)} \(seq \d+\): "
                                                 "content does not match its hash"):
            Ledger(active, 1 << 30, anchorer).open()


def test_a_broken_link_since_the_last_checkpoint_is_refused(tmp_path: Path,
                                                            key: AnchorKey) -> None:
    active = write_ledger(tmp_path, key, crash=True)
    ls = lines(active)
    del ls[-2]  # a record written after the last checkpoint
    active.write_bytes(b"".join(ls))
    anchorer = Anchorer(key, str(active) + ".anchors", every_records=10, every_s=1e9)
    with pytest.raises(AuditFileError, match="does not link to the record before it"):
        Ledger(active, 1 << 30, anchorer).open()


async def test_restart_after_a_clean_stop_then_a_crash_is_not_refused(
        settings: AuditSettings, key_file: Path, key: AnchorKey) -> None:
    """A restarted writer begins with a checkpoint of its own, so its records after the
    last run's shutdown checkpoint are not mistaken for appended ones, even when it
    crashes before its next checkpoint."""
    s = dataclasses.replace(settings, anchor_key_file=str(key_file),
                            anchor_every_records=10**6, anchor_every_s=1e6)
    async with AuditLog(s) as log:
        log.emit({"type": "T", "i": 0})
    crashed = AuditLog(s)
    await crashed.start()
    for i in range(1, 4):
        crashed.emit({"type": "T", "i": i})
    await crashed.flush()
    crashed._ledger.close_active_quietly()  # a crash: no shutdown checkpoint
    assert crashed._ledger._lock_fd is not None
    os.close(crashed._ledger._lock_fd)
    crashed._ledger._lock_fd = None
    res = verify_paths([Path(s.path).parent], key)
    assert res.ok, str(res)
    async with AuditLog(s) as log:
        log.emit({"type": "T", "i": 4})
    res = verify_paths([Path(s.path).parent], key)
    assert res.ok, str(res)
    events = [json.loads(ln)["event"] for ln in lines(Path(s.path))]
    assert [e["i"] for e in events if e.get("type") == "T"] == [0, 1, 2, 3, 4]
    # After each shutdown checkpoint: the end of the file, or a checkpoint.
    for a, b in itertools.pairwise(events):
        if a.get("final"):
            assert b["type"] == CHECKPOINT and not b.get("final")


def test_a_checkpoint_the_anchor_file_missed_is_appended_at_start(tmp_path: Path,
                                                                  key: AnchorKey) -> None:
    """A crash between the ledger's fsync and the anchor's append: the next start appends
    it (verify warns until then, and does not fail)."""
    active = write_ledger(tmp_path, key)
    anchors = Path(str(active) + ".anchors")
    kept = lines(anchors)[:-1]
    anchors.write_bytes(b"".join(kept))
    res = verify_paths([tmp_path], key)
    assert res.ok and any("lacks the ledger's last checkpoint" in w for w in res.warnings)
    ledger = Ledger(active, 1 << 30, Anchorer(key, anchors, every_records=10, every_s=1e9))
    ledger.open()
    ledger.close()
    assert len(read_anchors(anchors)[0]) == len(kept) + 1
    res = verify_paths([tmp_path], key)
    assert res.ok and not res.warnings, str(res)


# -- 3. the anchor file ----------------------------------------------------------------------


def test_verify_fails_when_the_anchor_file_is_gone_or_cut(tmp_path: Path,
                                                         key: AnchorKey) -> None:
    active = write_ledger(tmp_path, key)
    anchors = Path(str(active) + ".anchors")
    full = anchors.read_bytes()
    anchors.unlink()
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "anchors_missing" and "not found" in detail
    anchors.write_bytes(full.splitlines(keepends=True)[0])
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "anchors_missing" and "ends at the checkpoint at seq" in detail
    # A copy shipped off the host may lag: a warning only.
    copy = tmp_path / "copy.anchors"
    copy.write_bytes(anchors.read_bytes())
    anchors.write_bytes(full)
    res = verify_paths([tmp_path], key, [copy])
    assert res.ok and any("not in the given anchor file" in w for w in res.warnings)


async def test_an_anchor_file_removed_while_running_is_recreated(
        settings: AuditSettings, key_file: Path, key: AnchorKey) -> None:
    s = dataclasses.replace(settings, anchor_key_file=str(key_file), durability="sync")
    anchors = Path(s.anchor_path)
    async with AuditLog(s) as log:
        await log.log_decision(decision(0))
        assert anchors.exists()
        anchors.unlink()
        await log.log_decision(decision(1))  # its checkpoint goes to a new file at the path
        assert anchors.exists() and read_anchors(anchors)[0]
        assert log.stats().anchor_file_replaced == 1
        assert "removed while open" in (log.anchor_trouble or "")
        replaced = anchors.with_name("replaced")
        replaced.write_bytes(b"")
        os.replace(replaced, anchors)  # replaced by another file: also noticed
        await log.log_decision(decision(2))
        assert log.stats().anchor_file_replaced == 2
        assert read_anchors(anchors)[0]
    res = verify_paths([Path(s.path).parent], key)
    assert res.ok, str(res)


# -- 4. async durability: nothing is lost when the queue is full and the disk too -------------


def no_room(monkeypatch: pytest.MonkeyPatch, log: AuditLog) -> None:
    def no_spool(lines: Sequence[bytes]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log._overflow, "append", no_spool)


async def test_the_first_event_nothing_can_take_is_held_and_refuses_from_then_on(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with AuditLog(dataclasses.replace(settings, queue_size=4, batch_size=2)) as log:
        no_room(monkeypatch, log)
        for i in range(4):
            log.emit({"type": "T", "i": i})
        assert log.refusing is None
        log.emit({"type": "T", "i": 4})  # queue full, spool unwritable: held, refusing
        assert "overflow spool cannot be written" in (log.refusing or "")
        assert log.stats().held == 1 and log.stats().lost == 0
        # Room in the queue again does not clear it: the held event comes first.
        await eventually(lambda: log.stats().queue_depth == 0, "the queue to drain")
        log.emit({"type": "T", "i": 5})
        await log.flush()
        assert log.refusing is None and log.stats().held == 0
        monkeypatch.undo()
    res = verify_paths([Path(settings.path).parent])
    assert res.ok
    got = [json.loads(ln)["event"]["i"] for ln in lines(Path(settings.path))]
    assert got == list(range(6)) and log.stats().lost == 0


async def test_log_decision_fails_when_its_record_cannot_be_kept(
        settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound of what is held in memory an event is lost (logged critically);
    a decision recorded before its answer then fails (AuditWriteError: UNAVAILABLE)."""
    s = dataclasses.replace(settings, queue_size=2, batch_size=1)
    async with AuditLog(s) as log:
        no_room(monkeypatch, log)
        for i in range(2 + 2):  # the queue, then the held events, full
            log.emit({"type": "T", "i": i})
        with pytest.raises(AuditWriteError, match="overflow spool cannot be written"):
            await log.log_decision(decision(9))
        assert log.stats().lost >= 1
        monkeypatch.undo()
        await log.flush()


# -- through the server ----------------------------------------------------------------------


def decide(server: PdpServer, n: int, start: int = 0) -> None:
    with grpc.insecure_channel(server.address) as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        for i in range(start, start + n):
            stub.CheckPush(push_request("acme", f"a{i}", config_yaml="a: 1"), timeout=10)


def test_server_refuses_to_start_on_a_record_appended_after_shutdown_and_recreates_a_removed_anchor_file(  # noqa: E501
        tmp_path: Path, key_file: Path) -> None:
    args = ["--audit-anchor-key-file", str(key_file), "--audit-durability", "sync"]
    server = PdpServer(tmp_path, args=args).start()
    anchors = Path(str(server.audit_file) + ".anchors")
    try:
        decide(server, 3)
        assert anchors.exists()
        anchors.unlink()
        decide(server, 2, start=3)
        wait_until(anchors.exists, "the anchor file to be recreated")
        wait_until(lambda: "audit_anchor_file_replaced" in server.log(), "the error logged")
        assert server.terminate() == 0
    finally:
        server.stop()
    ok = subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify", "--key",
                         str(key_file), str(server.audit_file.parent)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    forged = forged_after(server.audit_file)
    again = PdpServer(tmp_path, args=args).start(wait=False)
    try:
        assert again.proc is not None
        code = again.proc.wait(timeout=60)
        assert code != 0 and code != -signal.SIGKILL
        log = again.log()
        assert f"(seq {forged['seq']})" in log and "records after the shutdown checkpoint" in log
    finally:
        again.stop()
    out = subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify", "--key",
                          str(key_file), str(server.audit_file.parent)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "appended" in out.stdout, out.stdout


def test_record_hash_helper_still_matches_writer_lines(tmp_path: Path) -> None:
    """(record_hash, what the old tests re-hash with, agrees with the bytes the writer
    writes: orjson's compact text.)"""
    active = write_ledger(tmp_path, None, n=2)
    for ln in lines(active):
        rec = json.loads(ln)
        assert record_hash(rec) == rec["hash"] and orjson.dumps(rec) + b"\n" == ln


def test_a_forged_checkpoint_after_the_shutdown_checkpoint_does_not_hide_it(
        tmp_path: Path, key: AnchorKey) -> None:
    """Records behind a checkpoint the writer cannot verify: with the key's id it is refused
    as forged; with another id it is passed over, and the shutdown checkpoint is found."""
    for key_id in (key.key_id, "0" * 16):
        d = tmp_path / key_id
        d.mkdir()
        active = write_ledger(d, key)
        last = json.loads(lines(active)[-1])
        ev = {"type": CHECKPOINT, "time": "t", "ledger": "audit.jsonl", "seq": last["seq"],
              "head": last["hash"], "files": [], "key_id": key_id, "mac": "0" * 64}
        body = {"event": ev, "prev": last["hash"], "seq": last["seq"] + 1, "v": 3}
        text = orjson.dumps(body)
        with open(active, "ab") as f:
            f.write(b'{"hash":"' + hashlib.sha256(text).hexdigest().encode() + b'",'
                    + text[1:] + b"\n")
        forged_after(active)
        anchorer = Anchorer(key, str(active) + ".anchors", every_records=10, every_s=1e9)
        want = ("does not verify" if key_id == key.key_id
                else "records after the shutdown checkpoint")
        with pytest.raises(AuditFileError, match=want):
            Ledger(active, 1 << 30, anchorer).open()
