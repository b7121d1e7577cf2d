"""The writer's start-up check against the anchor file and the checkpoints; verify on the
several ledgers of ``--workers``.

* the ledger's record at the anchor file's last checkpoint must be that checkpoint;
* more records after the last anchored checkpoint than the check reads back are refused;
* the records the newest checkpoint signs are checked too (back to the checkpoint before);
* a writer without the key does not build on an anchored ledger;
* verify checks each ledger (``audit-w<i>.jsonl`` and its rotated files) on its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pdp.audit.anchors import CHECKPOINT, Anchorer, AnchorKey
from pdp.audit.chain import record_hash
from pdp.audit.files import AuditFileError
from pdp.audit.sinks import file as file_sink
from pdp.audit.sinks.file import Ledger
from pdp.audit.verify import main as verify_main
from pdp.audit.verify import verify_paths
from tests.audit.conftest import lines, problem


def anchorer(key: AnchorKey, active: Path, every: int = 10) -> Anchorer:
    return Anchorer(key, str(active) + ".anchors", every_records=every, every_s=1e9)


def write_synced(active: Path, key: AnchorKey | None, n: int = 6,
                 rotate_bytes: int = 1 << 30) -> Path:
    """``n`` decisions each in its own anchored batch (as sync durability writes them),
    then closed: the file ends ``..., Decision, checkpoint, shutdown checkpoint``."""
    ledger = Ledger(active, rotate_bytes, anchorer(key, active) if key is not None else None)
    ledger.open()
    for i in range(n):
        res = ledger.append([{"type": "Decision", "tenant": "t", "i": i, "allowed": True}],
                            fsync=False, anchor=key is not None)
        assert res.error is None
    ledger.close()
    return active


def forged(after: dict[str, Any], tag: str = "forged") -> bytes:
    """A Decision chained after ``after`` (hash and prev right: no key needed)."""
    body = {"event": {"type": "Decision", "tenant": "t", "i": tag, "allowed": True},
            "prev": after["hash"], "seq": after["seq"] + 1, "v": 3}
    digest = hashlib.sha256(orjson.dumps(body)).hexdigest()
    return orjson.dumps({"hash": digest, **body}) + b"\n"


def rehashed(rec: dict[str, Any]) -> bytes:
    rec = {k: v for k, v in rec.items() if k != "hash"}
    return orjson.dumps({"hash": record_hash(rec), **rec}) + b"\n"


# -- 1. the record at the anchor file's last checkpoint --------------------------------------


def test_a_record_forged_in_place_of_the_final_checkpoint_is_refused(
        tmp_path: Path, key: AnchorKey, key_file: Path) -> None:
    active = write_synced(tmp_path / "audit.jsonl", key)
    ls = lines(active)
    final = json.loads(ls[-1])
    assert final["event"].get("final") is True
    ls[-1] = forged(json.loads(ls[-2]))  # same seq, chained on correctly
    active.write_bytes(b"".join(ls))
    before = active.read_bytes()
    with pytest.raises(AuditFileError) as err:
        Ledger(active, 1 << 30, anchorer(key, active)).open()
    msg = str(err.value)
    assert f"audit.jsonl:{len(ls)} (seq {final['seq']})" in msg
    assert (f"the anchor file's checkpoint at seq {final['seq']} is not the ledger's record "
            f"{final['seq']}: the ledger was rewritten after it") in msg
    assert "pdp audit verify --key" in msg and "start on a new audit file" in msg
    assert active.read_bytes() == before  # nothing written over it
    kind, _ = problem(verify_paths([tmp_path], key))
    assert kind == "rechained"


def test_another_keys_checkpoint_in_place_of_the_final_one_is_refused_and_called_rechained(
        tmp_path: Path, key: AnchorKey, key_file: Path) -> None:
    active = write_synced(tmp_path / "audit.jsonl", key)
    ls = lines(active)
    cp = json.loads(ls[-1])
    cp["event"]["key_id"] = "0" * 16
    del cp["event"]["final"]
    fake = rehashed(cp)
    ls[-1:] = [fake, forged(json.loads(fake))]
    active.write_bytes(b"".join(ls))
    with pytest.raises(AuditFileError, match=rf"\(seq {cp['seq']}\): the anchor file's "
                                             rf"checkpoint at seq {cp['seq']} is not the "
                                             rf"ledger's record {cp['seq']}"):
        Ledger(active, 1 << 30, anchorer(key, active)).open()
    kind, detail = problem(verify_paths([tmp_path], key))
    assert kind == "rechained" and "claims key id 0000000000000000" in detail
    # Really another key (no anchor of the given key for that record): still wrong_key.
    other = AnchorKey.from_bytes(b"another key, 32 bytes long......")
    assert problem(verify_paths([tmp_path], other))[0] == "wrong_key"


def test_a_rotated_ledger_whose_anchored_record_is_intact_starts(tmp_path: Path,
                                                                 key: AnchorKey) -> None:
    """The anchored record is found through the rotated files' names."""
    active = write_synced(tmp_path / "audit.jsonl", key, n=30, rotate_bytes=2000)
    assert len(list(tmp_path.glob("audit.jsonl.0*"))) > 2
    ledger = Ledger(active, 2000, anchorer(key, active))
    ledger.open()
    ledger.append([{"type": "Decision", "i": "next"}], fsync=True, anchor=True)
    ledger.close()
    assert verify_paths([tmp_path], key).ok


# -- 2. more records after the last anchored checkpoint than are read back -------------------


def test_more_records_than_the_window_after_the_last_anchor_are_refused(
        tmp_path: Path, key: AnchorKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_sink, "TAIL_MIN", 20)
    active = write_synced(tmp_path / "audit.jsonl", key)
    last_cp = json.loads(lines(active)[-1])["seq"]
    with open(active, "ab") as f:
        prev = json.loads(lines(active)[-1])
        for i in range(41):  # more than max(TAIL_MIN, 4 x every_records = 40)
            line = forged(prev, f"f{i}")
            f.write(line)
            prev = json.loads(line)
    with pytest.raises(AuditFileError) as err:
        Ledger(active, 1 << 30, anchorer(key, active)).open()
    msg = str(err.value)
    assert f"more than 40 records after the last anchored checkpoint at seq {last_cp}" in msg
    assert "cannot check them at start-up" in msg and "pdp audit verify --key" in msg


def test_a_long_ledger_with_checkpoints_in_the_window_starts(
        tmp_path: Path, key: AnchorKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_sink, "TAIL_MIN", 20)
    active = tmp_path / "audit.jsonl"
    ledger = Ledger(active, 1 << 30, anchorer(key, active, every=5))
    ledger.open()
    for i in range(100):
        ledger.append([{"type": "Decision", "i": i}], fsync=False,
                      anchor=ledger.anchor_due(1))
    ledger.close()
    again = Ledger(active, 1 << 30, anchorer(key, active, every=5))
    again.open()
    again.close()
    assert verify_paths([tmp_path], key).ok


def test_without_a_key_a_long_ledger_starts_as_before(tmp_path: Path) -> None:
    active = tmp_path / "audit.jsonl"
    ledger = Ledger(active, 1 << 30)
    ledger.open()
    ledger.append([{"type": "Decision", "i": i} for i in range(1500)], fsync=False)
    ledger.close()
    again = Ledger(active, 1 << 30)
    assert again.open().seq == 1500
    again.close()


# -- 3. the records the newest checkpoint signs ----------------------------------------------


@pytest.mark.parametrize("edit", [
    (b'"allowed":true', b'"allowed":false'),
    (b'"allowed":true', b'"allowed": true'),
    (b'"allowed":true', b'"allowed":false,"i":"x","allowed":true'),
], ids=["value", "whitespace", "duplicate-key"])
def test_an_edited_last_decision_before_the_closing_checkpoints_is_refused(
        tmp_path: Path, key: AnchorKey, edit: tuple[bytes, bytes]) -> None:
    active = write_synced(tmp_path / "audit.jsonl", key)
    ls = lines(active)
    types = [json.loads(x)["event"]["type"] for x in ls]
    assert types[-3:] == ["Decision", CHECKPOINT, CHECKPOINT]
    ls[-3] = ls[-3].replace(*edit)
    active.write_bytes(b"".join(ls))
    with pytest.raises(AuditFileError, match=rf"audit.jsonl:{len(ls) - 2}\b"):
        Ledger(active, 1 << 30, anchorer(key, active)).open()


def test_a_clean_synced_ledger_restarts_again_and_again(tmp_path: Path,
                                                        key: AnchorKey) -> None:
    active = write_synced(tmp_path / "audit.jsonl", key)
    for i in range(3):
        ledger = Ledger(active, 1 << 30, anchorer(key, active))
        ledger.open()
        ledger.append([{"type": "Decision", "i": f"r{i}"}], fsync=True, anchor=True)
        ledger.close()
    assert verify_paths([tmp_path], key).ok


# -- 5. a writer without the key on an anchored ledger ---------------------------------------


def test_a_writer_without_the_key_refuses_an_anchored_ledger(tmp_path: Path,
                                                             key: AnchorKey) -> None:
    active = write_synced(tmp_path / "audit.jsonl", key)
    before = active.read_bytes()
    with pytest.raises(AuditFileError) as err:
        Ledger(active, 1 << 30).open()
    msg = str(err.value)
    assert f"{active} is anchored (checkpoints signed with key id {key.key_id}" in msg
    assert "--audit-anchor-key-file" in msg and "move the ledger aside" in msg
    assert active.read_bytes() == before
    # With the key it carries on.
    ledger = Ledger(active, 1 << 30, anchorer(key, active))
    ledger.open()
    ledger.close()
    assert verify_paths([tmp_path], key).ok


def test_the_anchor_file_alone_marks_a_ledger_anchored(tmp_path: Path, key: AnchorKey) -> None:
    keyed = write_synced(tmp_path / "keyed" / "audit.jsonl", key)
    plain = tmp_path / "plain" / "audit.jsonl"
    ledger = Ledger(plain, 1 << 30)
    ledger.open()
    ledger.append([{"type": "Decision", "i": 0}], fsync=True)
    ledger.close()
    shutil.copy(str(keyed) + ".anchors", str(plain) + ".anchors")
    with pytest.raises(AuditFileError, match=r"is anchored \(checkpoints signed with key id "
                                             rf"{key.key_id}; see the anchor file"):
        Ledger(plain, 1 << 30).open()
    other = tmp_path / "anchors-elsewhere"  # an --audit-anchor-file of another ledger
    with pytest.raises(AuditFileError):
        Ledger(plain, 1 << 30, anchor_file=str(keyed) + ".anchors").open()
    ledger = Ledger(plain, 1 << 30, anchor_file=other)
    ledger.open()
    ledger.close()


# -- 4. verify on the ledgers of --workers ---------------------------------------------------


def write_workers(directory: Path, key: AnchorKey, n: int = 25) -> list[Path]:
    out = []
    for w in range(2):
        active = directory / f"audit-w{w}.jsonl"
        write_synced(active, key, n=n + w, rotate_bytes=1500)
        out.append(active)
    return out


def verify_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify",
                           *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_verify_checks_each_workers_ledger_on_its_own(tmp_path: Path, key: AnchorKey,
                                                      key_file: Path) -> None:
    actives = write_workers(tmp_path, key)
    rotated = sorted(tmp_path.glob("audit-w1.jsonl.0*"))
    assert rotated and rotated[0].name == "audit-w1.jsonl.000000000001"
    every_file = sorted(p for p in tmp_path.iterdir()
                        if p.name.endswith(".jsonl") or ".jsonl.0" in p.name)
    assert len(every_file) > 4
    for k in (None, key):
        for given in ([tmp_path], actives, every_file):
            res = verify_paths(given, k)
            assert res.ok, str(res)
            assert [r.ledger for r in res.ledgers] == [str(a) for a in actives]
            assert all(r.ok and r.count for r in res.ledgers)
    out = verify_cli("--key", key_file, *actives)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok: 2 ledgers")
    assert f"ledger {actives[1]}:" in out.stdout and "checkpoint(s) in the ledger" in out.stdout
    out = verify_cli(*every_file)
    assert out.returncode == 0, out.stdout + out.stderr
    # One ledger alone still reads as before.
    one = verify_paths([actives[0]], key)
    assert one.ok and not one.ledgers and one.ledger == str(actives[0])


def test_verify_names_the_tampered_workers_ledger(tmp_path: Path, key: AnchorKey,
                                                  key_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    actives = write_workers(tmp_path, key)
    ls = lines(actives[1])
    i = next(n for n, x in enumerate(ls) if b'"Decision"' in x)
    ls[i] = ls[i].replace(b'"allowed":true', b'"allowed":false')
    actives[1].write_bytes(b"".join(ls))
    res = verify_paths([tmp_path], key)
    kind, _ = problem(res)
    assert kind == "edited" and res.problem is not None
    assert res.problem.file == str(actives[1])
    assert [r.ok for r in res.ledgers] == [True, False]
    out = verify_cli("--key", key_file, tmp_path)
    assert out.returncode == 1
    assert out.stdout.startswith(f"TAMPERED: edited record at {actives[1]}:")
    assert "1 tampered" in out.stdout
    assert verify_main(["--json", str(tmp_path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "tampered"
    assert [r["ok"] for r in data["ledgers"]] == [True, False]


def test_each_workers_ledger_is_checked_against_its_own_anchor_file(
        tmp_path: Path, key: AnchorKey) -> None:
    actives = write_workers(tmp_path, key)
    Path(str(actives[0]) + ".anchors").unlink()
    res = verify_paths([tmp_path], key)
    kind, _ = problem(res)
    assert kind == "anchors_missing" and res.problem is not None
    assert res.problem.file == str(actives[0]) + ".anchors"
    assert [r.ok for r in res.ledgers] == [False, True]
