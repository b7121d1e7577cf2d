"""Tampering a probe found ``verify`` missed, misnamed or crashed on: records cut off the
start of an anchored ledger, a worker's whole ledger deleted, hostile lines, a ledger too
young for its first checkpoint, shell globs, a keyless checkpoint, non-regular files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

import pdp.audit.verify as verify_mod
from pdp.audit.anchors import Anchorer, AnchorKey
from pdp.audit.chain import ChainHead, make_entries
from pdp.audit.files import AuditFileError, ledger_files
from pdp.audit.show import main as show_main
from pdp.audit.sinks.file import Ledger
from pdp.audit.verify import ChangedWhileReading, Problem, main, verify_paths
from tests.audit.conftest import lines, problem, write_anchored


def make_ledger(directory: Path, key: AnchorKey, n: int = 60, every: int = 5,
                rotate_bytes: int = 10**9, name: str = "audit.jsonl") -> list[Path]:
    """A ledger of ``n`` events, a checkpoint after every ``every`` and one at close."""
    return write_anchored(directory, key, n, every, rotate_bytes, name)


def seq_of(line: bytes) -> int:
    return int(json.loads(line)["seq"])


def test_records_cut_off_the_start_of_a_single_file_ledger(tmp_path: Path,
                                                           key: AnchorKey) -> None:
    (active,) = make_ledger(tmp_path, key)
    assert verify_paths([tmp_path], key).ok
    active.write_bytes(b"".join(lines(active)[40:]))
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "removed" and "cut off the start" in detail


def test_start_cut_with_rotated_files_and_the_anchors_naming_them(tmp_path: Path,
                                                                  key: AnchorKey) -> None:
    files = make_ledger(tmp_path, key, n=120, rotate_bytes=2500)
    assert len(files) >= 3 and verify_paths([tmp_path], key).ok
    active = files[-1]
    recs = lines(active)
    named = [i for i, ln in enumerate(recs) if json.loads(ln)["event"].get("files")]
    cut = named[-1] + 1
    first_kept = seq_of(recs[cut])
    active.write_bytes(b"".join(recs[cut:]))
    for f in files[:-1]:
        f.unlink()
    anchors = tmp_path / "audit.jsonl.anchors"
    anchors.write_bytes(b"".join(ln for ln in lines(anchors)
                                 if json.loads(ln)["seq"] + 1 >= first_kept))
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "removed" and "cut off the start" in detail


def test_rotated_files_on_disk_but_not_given_are_a_warning(tmp_path: Path,
                                                           key: AnchorKey) -> None:
    files = make_ledger(tmp_path, key, n=120, rotate_bytes=2500)
    res = verify_paths([files[-1]], key)
    assert res.ok, str(res)
    assert any("was not given" in w for w in res.warnings)


def test_a_worker_ledger_deleted_while_its_anchor_file_remains(tmp_path: Path,
                                                               key: AnchorKey) -> None:
    make_ledger(tmp_path, key, name="audit-w0.jsonl")
    gone = make_ledger(tmp_path, key, n=120, rotate_bytes=2500, name="audit-w1.jsonl")
    assert verify_paths([tmp_path], key).ok
    for f in gone:
        f.unlink()
    for k in (key, None):
        res = verify_paths([tmp_path], k)
        kind, detail = problem(res)
        assert kind == "removed" and "audit-w1.jsonl" in detail and "deleted" in detail
        assert [r.ok for r in res.ledgers] == [True, False]


def test_a_single_ledger_deleted_leaving_its_anchor_file(tmp_path: Path,
                                                         key: AnchorKey) -> None:
    for f in make_ledger(tmp_path, key, n=120, rotate_bytes=2500):
        f.unlink()
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "removed" and "no file of that ledger is left" in detail
    kind, _ = problem(verify_paths([tmp_path / "audit.jsonl"], key))
    assert kind == "removed"


def open_ledger(directory: Path, key: AnchorKey, rotate_bytes: int = 10**9) -> Ledger:
    directory.mkdir(parents=True, exist_ok=True)
    active = directory / "audit.jsonl"
    ledger = Ledger(active, rotate_bytes,
                    Anchorer(key, str(active) + ".anchors", every_records=10**9, every_s=1e9))
    ledger.open()
    return ledger


def write(ledger: Ledger, n: int, anchor: bool = True) -> None:
    for i in range(n):
        res = ledger.append([{"type": "Test", "tenant": "t", "i": i}], fsync=True,
                            anchor=anchor and i == n - 1)
        assert res.error is None


def test_anchors_a_running_writer_adds_during_the_read_are_no_truncation(
        tmp_path: Path, key: AnchorKey, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = open_ledger(tmp_path, key)
    write(ledger, 10)
    real = verify_mod._verify_chain

    def read_then_write(files: list[Path]) -> Any:
        out = real(files)
        write(ledger, 5)  # the writer goes on: a checkpoint past what was read is anchored
        return out

    monkeypatch.setattr(verify_mod, "_verify_chain", read_then_write)
    res = verify_paths([tmp_path], key)
    ledger.close()
    assert res.ok, str(res)


def test_a_rotation_during_the_read_is_read_again(
        tmp_path: Path, key: AnchorKey, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = open_ledger(tmp_path, key, rotate_bytes=2500)
    write(ledger, 30)
    real = verify_mod.order_paths
    rotated = []

    def list_then_rotate(paths: Any, *rest: Any) -> list[Path]:
        out = real(paths, *rest)
        if not rotated:  # once: the writer rotates between the listing and the reads
            before = len(ledger_files(tmp_path / "audit.jsonl"))
            while len(ledger_files(tmp_path / "audit.jsonl")) == before:
                write(ledger, 1, anchor=False)
            write(ledger, 1)
            rotated.append(True)
        return out

    monkeypatch.setattr(verify_mod, "order_paths", list_then_rotate)
    res = verify_paths([tmp_path], key)
    ledger.close()
    assert rotated and res.ok, str(res)


def test_files_that_never_hold_still_are_no_verdict(
        tmp_path: Path, key: AnchorKey, key_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_ledger(tmp_path, key)
    real = verify_mod._verify_chain
    n = [0]

    def tampered_and_changing(fs: list[Path]) -> Any:
        res, seen = real(fs)
        n[0] += 1
        (tmp_path / "audit.jsonl.000000000099").write_bytes(b"")  # changes every read
        (tmp_path / "audit.jsonl.000000000099").unlink()
        files[0].touch()
        res.ok = False
        res.problem = Problem("removed", "x", n[0], n[0], "a different gap every time")
        return res, seen

    monkeypatch.setattr(verify_mod, "_verify_chain", tampered_and_changing)
    with pytest.raises(ChangedWhileReading):
        verify_paths([tmp_path], key)
    assert main(["--key", str(key_file), str(tmp_path)]) == 2


DEEP = b"[" * 100_000 + b"]" * 100_000 + b"\n"


def test_a_deeply_nested_line_is_named_not_a_traceback(tmp_path: Path, key: AnchorKey,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    files = make_ledger(tmp_path / "audit", key)
    with open(files[-1], "ab") as f:
        f.write(b'{"decision_id":"d-1","x":' + DEEP[:-1] + b"}\n")
    kind, detail = problem(verify_paths([tmp_path / "audit"], key))
    assert kind == "malformed" and "nested too deeply" in detail
    assert show_main("d-1", [str(tmp_path / "audit")]) == 1  # not found, no traceback
    with pytest.raises(AuditFileError, match=r"audit\.jsonl:\d+.*Refusing"):
        open_ledger(tmp_path / "audit", key)


def test_hostile_anchor_lines_are_named_not_a_traceback(tmp_path: Path,
                                                        key: AnchorKey) -> None:
    make_ledger(tmp_path / "audit", key)
    anchors = tmp_path / "audit" / "audit.jsonl.anchors"
    good = anchors.read_bytes()
    last = json.loads(lines(anchors)[-1])
    anchors.write_bytes(good + DEEP)
    res = verify_paths([tmp_path / "audit"], key)
    assert res.ok and any("not a checkpoint" in w for w in res.warnings), str(res)
    for bad in (b'{"type":"Audit.Checkpoint","ledger":"audit.jsonl","seq":1e400,'
                b'"key_id":"' + key.key_id.encode() + b'","mac":"x"}\n',
                json.dumps(dict(last, time=float("nan"))).encode() + b"\n"):
        anchors.write_bytes(good + bad)
        kind, detail = problem(verify_paths([tmp_path / "audit"], key))
        assert kind == "forged" and "MAC does not match" in detail
    with pytest.raises(AuditFileError, match="MAC does not verify"):
        open_ledger(tmp_path / "audit", key)


def test_a_ledger_younger_than_its_first_checkpoint_is_a_warning(tmp_path: Path,
                                                                 key: AnchorKey) -> None:
    ledger = open_ledger(tmp_path, key)
    write(ledger, 5, anchor=False)  # killed before the first checkpoint was due
    ledger.close_active_quietly()
    anchors = tmp_path / "audit.jsonl.anchors"
    assert anchors.exists() and anchors.stat().st_size == 0
    res = verify_paths([tmp_path], key)
    assert res.ok, str(res)
    assert any("no checkpoint yet: records 1..5" in w for w in res.warnings)
    anchors.write_bytes(b"\n")  # an anchor file that had lines: checkpoints were removed
    kind, _ = problem(verify_paths([tmp_path], key))
    assert kind == "unanchored"
    anchors.unlink()  # no anchor file: written without the key
    kind, _ = problem(verify_paths([tmp_path], key))
    assert kind == "unanchored"


def test_a_shell_glob_leaves_out_what_is_no_ledger_file(tmp_path: Path, key: AnchorKey) -> None:
    files = make_ledger(tmp_path, key, n=120, rotate_bytes=2500)
    for extra in ("audit.jsonl.lock", "audit.jsonl.torn-1700000000000",
                  "audit.jsonl.foreign-1"):
        (tmp_path / extra).write_bytes(b"not a record\n")
    (tmp_path / "audit.jsonl.spool").mkdir()  # the writer's overflow spool is a directory
    (tmp_path / "audit.jsonl.spool" / "overflow.jsonl").write_bytes(b"not a record\n")
    globbed = sorted(tmp_path.glob("audit.jsonl*"))
    assert tmp_path / "audit.jsonl.anchors" in globbed
    res = verify_paths(globbed, key)
    assert res.ok, str(res)
    assert res.files == [str(f) for f in files]


def test_a_fifo_named_like_a_rotated_file_is_skipped(tmp_path: Path, key: AnchorKey) -> None:
    make_ledger(tmp_path, key)
    fifo = tmp_path / "audit.jsonl.000000000099"
    os.mkfifo(fifo)
    res = verify_paths([tmp_path], key)  # before: blocked forever opening the FIFO
    assert res.ok, str(res)
    assert any(f"{fifo}: not a regular file" in w for w in res.warnings)


def append_records(active: Path, events: list[dict[str, Any]]) -> None:
    """Records chained correctly after the ledger's last one (what a forger can do)."""
    last = json.loads(lines(active)[-1])
    head = ChainHead(last["seq"], last["hash"])
    with open(active, "ab") as f:
        for e in make_entries(events, head):
            f.write(e.line)


def test_a_bare_checkpoint_does_not_let_records_follow_a_clean_stop(tmp_path: Path,
                                                                    key: AnchorKey) -> None:
    (active,) = make_ledger(tmp_path, key)
    append_records(active, [{"type": "Audit.Checkpoint"},
                            {"type": "Decision", "tenant": "t", "decision_id": "forged"}])
    for k in (None, key):
        kind, detail = problem(verify_paths([tmp_path], k))
        assert kind == "appended" and "shutdown checkpoint" in detail


def test_a_checkpoint_without_key_id_is_forged(tmp_path: Path, key: AnchorKey) -> None:
    ledger = open_ledger(tmp_path, key)
    write(ledger, 10)
    ledger.close_active_quietly()  # no shutdown checkpoint: not an append after a stop
    append_records(tmp_path / "audit.jsonl", [{"type": "Audit.Checkpoint"}])
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "forged" and "no key id or MAC" in detail


def test_a_renamed_rotated_file_is_named_so(tmp_path: Path, key: AnchorKey) -> None:
    files = make_ledger(tmp_path, key, n=120, rotate_bytes=2500)
    f = files[2]
    first = int(f.name.rsplit(".", 1)[1])
    f.rename(f.with_name(f"audit.jsonl.{first + 1:012d}"))
    for k in (None, key):
        kind, detail = problem(verify_paths([tmp_path], k))
        assert kind == "renamed" and f"name says its first record is seq {first + 1}" in detail


def test_a_compressed_rotated_file_is_not_called_deleted(tmp_path: Path,
                                                         key: AnchorKey) -> None:
    files = make_ledger(tmp_path, key, n=120, rotate_bytes=2500)
    for f in (files[0], files[2]):
        with open(f, "rb") as src, gzip.open(str(f) + ".gz", "wb") as dst:
            dst.write(src.read())
        f.unlink()
    for k in (key, None):
        kind, detail = problem(verify_paths([tmp_path], k))
        assert kind == "removed" and ".gz is there, compressed" in detail, detail


def test_a_given_path_that_is_not_there_is_an_error(tmp_path: Path, key: AnchorKey) -> None:
    make_ledger(tmp_path, key)
    with pytest.raises(FileNotFoundError, match="no such file"):
        verify_paths([tmp_path, tmp_path / "typo.jsonl"], key)
