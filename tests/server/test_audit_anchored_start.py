"""Restarting the real server on an anchored audit file: a ledger rewritten after its last
anchored checkpoint is refused, and so is a start without the anchor key."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import orjson

from pdp.audit.anchors import AnchorKey
from pdp.client import PdpClient
from tests.support.pdpserver import PdpServer

KEY = b"0123456789abcdef0123456789abcdef\n"


def keyed_args(key_file: Path) -> list[str]:
    return ["--audit-durability", "sync", "--audit-anchor-key-file", str(key_file)]


def run_and_stop(server: PdpServer, n: int = 5) -> None:
    server.start()
    try:
        with PdpClient(server.address) as client:
            for i in range(n):
                assert client.check_push("acme", f"a{i}", config_yaml="a: 1").allowed
        assert server.terminate() == 0, server.log()[-4000:]
    finally:
        server.stop()


def refused(server: PdpServer) -> str:
    """Start ``server`` expecting it to exit without serving; its log since then."""
    before = len(server.log())
    server.start(wait=False)
    try:
        assert server.proc is not None
        code = server.proc.wait(timeout=60)
    finally:
        server.stop()
    assert code != 0
    return server.log()[before:]


def verify(key_file: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify", "--key",
                           str(key_file), *map(str, paths)], capture_output=True, text=True,
                          timeout=60)


def test_a_record_forged_in_place_of_the_shutdown_checkpoint_stops_the_start(
        tmp_path: Path) -> None:
    key_file = tmp_path / "anchor.key"
    key_file.write_bytes(KEY)
    server = PdpServer(tmp_path, args=keyed_args(key_file))
    run_and_stop(server)
    active = server.audit_file
    ls = active.read_bytes().splitlines(keepends=True)
    final, before = json.loads(ls[-1]), json.loads(ls[-2])
    assert final["event"].get("final") is True
    body = {"event": {"type": "Decision", "tenant": "acme", "allowed": True},
            "prev": before["hash"], "seq": before["seq"] + 1, "v": 3}
    digest = hashlib.sha256(orjson.dumps(body)).hexdigest()
    ls[-1] = orjson.dumps({"hash": digest, **body}) + b"\n"
    active.write_bytes(b"".join(ls))
    tampered = active.read_bytes()
    log = refused(server)
    assert f"audit.jsonl:{len(ls)} (seq {final['seq']})" in log
    assert (f"the anchor file's checkpoint at seq {final['seq']} is not the ledger's record "
            f"{final['seq']}: the ledger was rewritten after it") in log
    assert active.read_bytes() == tampered  # no checkpoint signed over the forgery
    out = verify(key_file, active.parent)
    assert out.returncode == 1 and "rechained" in out.stdout


def test_a_start_without_the_anchor_key_is_refused_and_the_ledger_stays_whole(
        tmp_path: Path) -> None:
    key_file = tmp_path / "anchor.key"
    key_file.write_bytes(KEY)
    kid = AnchorKey.from_bytes(KEY).key_id
    keyed = PdpServer(tmp_path, args=keyed_args(key_file))
    run_and_stop(keyed)
    before = keyed.audit_file.read_bytes()
    log = refused(PdpServer(tmp_path, args=["--audit-durability", "sync"]))
    assert f"audit: {keyed.audit_file} is anchored (checkpoints signed with key id {kid}" in log
    assert "start with --audit-anchor-key-file" in log.lower()
    assert keyed.audit_file.read_bytes() == before
    run_and_stop(PdpServer(tmp_path, args=keyed_args(key_file)))  # with the key: carries on
    out = verify(key_file, keyed.audit_file.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_verify_on_the_audit_files_of_workers(tmp_path: Path) -> None:
    """Each worker writes its own ledger (``audit-w<i>.jsonl``, its own chain): verify,
    given the files or the directory, checks each on its own."""
    from tests.support.procs import redis_server

    key_file = tmp_path / "anchor.key"
    key_file.write_bytes(KEY)
    with redis_server() as redis:
        server = PdpServer(tmp_path, args=[
            *keyed_args(key_file), "--workers", "2", "--redis-url", redis.url,
            "--redis-timeout-ms", "5000", "--audit-rotate-bytes", "20000"]).start()
        try:
            for i in range(40):  # a new connection each time: the kernel spreads them
                with PdpClient(server.address) as client:
                    assert client.check_push("acme", f"a{i}", config_yaml="a: 1").allowed
            assert server.terminate(timeout=30) == 0, server.log()[-4000:]
        finally:
            server.stop()
    d = server.audit_file.parent
    actives = sorted(d.glob("audit-w*.jsonl"))
    assert [a.name for a in actives] == ["audit-w0.jsonl", "audit-w1.jsonl"]
    files = sorted(p for p in d.iterdir() if p.name.endswith(".jsonl") or ".jsonl.0" in p.name)
    assert len(files) > len(actives)  # rotated files too
    for given in ([d], actives, files):
        out = verify(key_file, *given)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("ok: 2 ledgers"), out.stdout
