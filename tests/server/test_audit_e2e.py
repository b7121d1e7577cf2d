"""Audit through the real server: sync durability survives kill -9; `pdp audit verify`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from pdp.client import push_request
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.wait import eventually


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "verify",
                           *map(str, paths)], capture_output=True, text=True, timeout=60)


def audit_files(server: PdpServer) -> list[Path]:
    return sorted(server.audit_file.parent.glob("audit*.jsonl"))


def test_sync_durability_keeps_every_answered_decision_across_kill_9(tmp_path: Path) -> None:
    server = PdpServer(tmp_path, args=["--audit-durability", "sync"]).start()
    answered: list[str] = []

    async def load() -> None:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)

            async def caller(n: int) -> None:
                i = 0
                while True:
                    i += 1
                    try:
                        r = await stub.CheckPush(push_request(
                            "acme", f"agent-{n}-{i}", config_yaml="a: 1"), timeout=5)
                    except grpc.aio.AioRpcError:
                        return  # the server is gone
                    answered.append(r.decision.decision_id)

            tasks = [asyncio.ensure_future(caller(n)) for n in range(16)]
            await eventually(lambda: len(answered) >= 100, "100 answered decisions")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), 20)

    try:
        asyncio.run(load())
    finally:
        server.stop()
    assert len(answered) > 50
    on_disk = set()
    for f in audit_files(server):
        for line in f.read_bytes().splitlines():
            try:
                event = json.loads(line)["event"]
            except (ValueError, KeyError):
                continue  # a torn last line from the kill: never an answered decision
            if event.get("type") == "Decision":
                on_disk.add(event["decision_id"])
    missing = set(answered) - on_disk
    assert not missing, f"{len(missing)} answered decisions are not in the audit file"
    # Restarting on the same file repairs a torn tail and continues the chain.
    restarted = PdpServer(tmp_path).start()
    restarted.terminate()
    out = verify(*audit_files(server))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout.lower()


def test_pdp_audit_verify_detects_an_edited_record(pdp_server: PdpServer) -> None:
    with grpc.insecure_channel(pdp_server.address) as ch:
        stub = dgrpc.DecisionServiceStub(ch)
        for i in range(5):
            stub.CheckPush(push_request("acme", f"a{i}", config_yaml="a: 1"), timeout=5)
    assert pdp_server.terminate() == 0
    [path] = audit_files(pdp_server)
    assert verify(path).returncode == 0
    lines = path.read_text().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if '"allowed":true' in line)
    lines[target] = lines[target].replace('"allowed":true', '"allowed":false')
    path.write_text("".join(lines))
    out = verify(path)
    assert out.returncode == 1
    assert "edited" in out.stdout and f"audit.jsonl:{target + 1} " in out.stdout, out.stdout


def test_redis_stream_sink_and_masking_through_the_server(tmp_path: Path) -> None:
    import redis as redis_py

    from tests.support.procs import redis_server

    secret = "Bearer s3cr3t-token"
    config = ("exporters:\n  otlp:\n    endpoint: localhost:4317\n"
              f"    headers: {{authorization: '{secret}'}}\n")
    with redis_server() as rs:
        server = PdpServer(tmp_path, args=[
            "--redis-url", rs.url, "--audit-redis-stream", "pdp:audit",
            "--audit-mask-paths", "config.exporters.*.headers"]).start()
        try:
            with grpc.insecure_channel(server.address) as ch:
                stub = dgrpc.DecisionServiceStub(ch)
                ids = [stub.CheckPush(push_request("acme", f"a{i}", config_yaml=config),
                                      timeout=5).decision.decision_id for i in range(3)]
            assert server.terminate() == 0
        finally:
            server.stop()
        entries = redis_py.Redis.from_url(rs.url).xrange("pdp:audit")
    streamed = b"".join(v for _, fields in entries for v in fields.values())
    for decision_id in ids:
        assert decision_id.encode() in streamed
    assert secret.encode() not in streamed
    assert all(secret not in f.read_text() for f in audit_files(server))
    assert ids[0] in audit_files(server)[0].read_text()
