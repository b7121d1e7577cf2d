"""verify detects each kind of tampering, within and across rotated files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pdp.audit.chain import record_hash
from pdp.audit.files import ledger_files
from pdp.audit.sinks.file import Ledger
from pdp.audit.verify import main, verify_paths


def make_ledger(tmp_path: Path, n: int = 60, rotate_bytes: int = 2000) -> list[Path]:
    ledger = Ledger(tmp_path / "audit.jsonl", rotate_bytes)
    ledger.open()
    for i in range(n):
        assert ledger.append([{"type": "Test", "tenant": "t", "i": i}], fsync=False).error is None
    ledger.close()
    files = [lf.path for lf in ledger_files(tmp_path / "audit.jsonl")]
    assert len(files) >= 4
    return files


def lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def put(p: Path, ls: list[bytes]) -> None:
    p.write_bytes(b"".join(ls))


def seq_of(line: bytes) -> int:
    return int(json.loads(line)["seq"])


def test_intact_chain_is_ok(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    res = verify_paths([tmp_path])
    assert res.ok and res.count == 60 and (res.first_seq, res.last_seq) == (1, 60)
    assert res.files == [str(f) for f in files]  # active file last
    assert str(res).startswith("ok: 60 records")
    # Shell-glob order (active file first) is put right.
    assert verify_paths(sorted(files, key=str)).ok


def test_edited_record(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    f = files[1]
    ls = lines(f)
    rec = json.loads(ls[2])
    rec["event"]["tenant"] = "evil"
    ls[2] = json.dumps(rec).encode() + b"\n"
    put(f, ls)
    res = verify_paths([tmp_path])
    assert not res.ok and res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("edited", str(f), 3)
    assert res.problem.seq == rec["seq"]


def test_edited_and_rehashed_record(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    f = files[2]
    ls = lines(f)
    rec = json.loads(ls[1])
    rec["event"]["i"] = 999
    rec["hash"] = record_hash(rec)
    ls[1] = json.dumps(rec).encode() + b"\n"
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("edited", str(f), 2)


def test_removed_record_mid_file(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    f = files[1]
    ls = lines(f)
    gone = seq_of(ls[3])
    del ls[3]
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("removed", str(f), 4)
    assert res.problem.seq == gone + 1 and f"seq {gone} missing" in res.problem.detail


def test_removed_first_record_of_rotated_file(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    f = files[2]
    ls = lines(f)
    del ls[0]
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("removed", str(f), 1)


def test_removed_whole_rotated_file(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    n_gone = len(lines(files[1]))
    files[1].unlink()
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("removed", str(files[2]), 1)
    assert f"..{seq_of(lines(files[2])[0]) - 1}" in res.problem.detail and n_gone > 1


def test_removed_first_record_of_first_file_is_caught_by_its_name(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    ls = lines(files[0])
    put(files[0], ls[1:])
    res = verify_paths([tmp_path])
    assert res.problem is not None and res.problem.kind == "removed"
    assert res.problem.file == str(files[0])


def test_inserted_duplicate_later(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    src = lines(files[0])[4]
    f = files[2]
    ls = lines(f)
    ls.insert(3, src)
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("inserted", str(f), 4)


def test_inserted_duplicate_earlier(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    src = lines(files[3])[1]  # a later record copied into an earlier file
    f = files[1]
    ls = lines(f)
    ls.insert(2, src)
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("inserted", str(f), 3)


def test_inserted_forged_record_with_valid_links(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    f = files[1]
    ls = lines(f)
    before = json.loads(ls[1])
    forged = {"v": 1, "seq": before["seq"] + 1, "prev": before["hash"],
              "event": {"type": "Test", "tenant": "t", "i": -1}}
    forged["hash"] = record_hash(forged)
    ls.insert(2, json.dumps(forged).encode() + b"\n")
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("inserted", str(f), 3)


def test_reordered_within_file(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    f = files[1]
    ls = lines(f)
    ls[2], ls[3] = ls[3], ls[2]
    put(f, ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == ("reordered", str(f), 3)


def test_reordered_across_files(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    a, b = lines(files[1]), lines(files[2])
    a[-1], b[0] = b[0], a[-1]
    put(files[1], a)
    put(files[2], b)
    res = verify_paths([tmp_path])
    assert res.problem is not None
    assert (res.problem.kind, res.problem.file, res.problem.line) == (
        "reordered", str(files[1]), len(a))


def test_torn_final_line_is_a_warning(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    with open(files[-1], "ab") as f:
        f.write(b'{"hash":"abc","event":{"ty')
    res = verify_paths([tmp_path])
    assert res.ok and res.count == 60
    assert any("incomplete final line" in w for w in res.warnings)


def test_torn_line_in_the_middle_is_malformed(tmp_path: Path) -> None:
    files = make_ledger(tmp_path)
    ls = lines(files[1])
    ls[2] = ls[2][:40] + b"\n"
    put(files[1], ls)
    res = verify_paths([tmp_path])
    assert res.problem is not None and res.problem.kind == "malformed"
    assert (res.problem.file, res.problem.line) == (str(files[1]), 3)


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = make_ledger(tmp_path)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("ok: 60 records")
    assert main([str(tmp_path / "nope.jsonl")]) == 2
    ls = lines(files[1])
    del ls[0]
    put(files[1], ls)
    assert main(["--json", *map(str, files)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "tampered" and out["problem"]["kind"] == "removed"
    assert main([]) == 2


def test_a_file_written_by_older_formats_and_continued_in_v3_verifies(tmp_path: Path) -> None:
    """Records name their format; a ledger begun in v1, continued in v2 (sorted keys), then
    by this version (v3) verifies as one chain, and an edit is caught in each part."""
    from pdp.audit.chain import GENESIS, ChainHead, canonical, canonical_v2, make_entry

    out: list[bytes] = []
    prev = GENESIS
    for seq, (v, encode) in enumerate([(1, canonical), (2, canonical_v2)], start=1):
        body = {"v": v, "seq": seq, "prev": prev, "event": {"type": "T", "x": 1e-05, "z": seq}}
        rec = {"hash": hashlib.sha256(encode(body)).hexdigest(), **body}
        out.append(json.dumps(rec).encode() + b"\n")
        prev = rec["hash"]
    e = make_entry({"type": "T", "z": 3}, ChainHead(2, prev))
    assert json.loads(e.line)["v"] == 3 and record_hash(json.loads(e.line)) == e.hash
    out.append(e.line)
    path = tmp_path / "audit.jsonl"
    put(path, out)
    assert verify_paths([path]).ok and verify_paths([path]).count == 3
    for i in range(3):
        edited = list(out)
        edited[i] = edited[i].replace(b'"z": %d' % (i + 1), b'"z": 9').replace(
            b'"z":%d' % (i + 1), b'"z":9')
        assert edited[i] != out[i]
        put(path, edited)
        res = verify_paths([path])
        assert not res.ok and res.problem is not None and res.problem.kind == "edited"
        assert res.problem.line == i + 1
