"""An audit file that cannot be written (a full disk) under sync durability: no decision is
answered without its record. Calls fail UNAVAILABLE saying why, promptly, readiness turns
503 naming the audit, and every decision a caller got is in the audit file.

The full disk is the server's RLIMIT_FSIZE: a write past it fails ("File too large") like
one on a full file system, with no root needed to make a small one.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.server.test_server_e2e import audit_records, decision_events
from tests.support.pdpserver import PdpServer
from tests.support.wait import wait_until

LIMIT = 4 * 1024 * 1024  # bytes any file of the server may reach


def _push(i: int) -> dpb.CheckPushRequest:
    return dpb.CheckPushRequest(
        tenant="acme", agent=cpb.Agent(id=f"agent-{i}", labels={
            "env": "dev", **{f"pad{k}": "x" * 1000 for k in range(16)}}),
        rollout=cpb.Rollout(id="r-1", step=1, step_percent=10),
        config=cpb.Config(yaml="exporters: {otlp: {}}\n"))


def test_sync_audit_on_a_full_disk_answers_nothing_it_cannot_record(tmp_path: Path) -> None:
    s = PdpServer(tmp_path, file_size_limit=LIMIT,
                  args=["--audit-durability", "sync", "--log-level", "warning"]).start()
    answered: list[str] = []
    refused: list[str] = []
    try:
        with s.channel() as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            for i in range(2000):  # ~16 KB of audit per decision: the limit comes first
                try:
                    resp = stub.CheckPush(_push(i), timeout=30)
                    answered.append(resp.decision.decision_id)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    refused.append(exc.details())
                    if len(refused) >= 3:
                        break
            assert answered and len(refused) == 3, "the audit file never filled up"
            for text in refused:
                assert text.startswith("audit log unavailable:"), text
            assert "File too large" in refused[-1]  # says why, once it knows
            code, body = s.readyz()
            assert code == 503 and "fail audit: cannot write the audit file" in body, body
    finally:
        s.stop()
    recorded = {e["decision_id"] for e in decision_events(s.audit_file)}
    assert set(answered) <= recorded  # no answered decision without its record
    # A start with room writes what the full disk left in the overflow spool. A decision
    # in the file that no caller got is marked Decision.Undelivered.
    again = PdpServer(tmp_path).start()
    again.stop()
    events = [r["event"] for r in audit_records(s.audit_file)]
    undelivered = {e["decision_id"] for e in events  # type: ignore[index]
                   if e["type"] == "Decision.Undelivered"}  # type: ignore[index]
    for e in events:
        if e["type"] == "Decision" and e["decision_id"] not in answered:  # type: ignore[index]
            assert e["decision_id"] in undelivered, e  # type: ignore[index]


def test_readiness_reports_the_audit_writing(tmp_path: Path) -> None:
    s = PdpServer(tmp_path).start()
    try:
        wait_until(lambda: s.readyz()[0] == 200, "ready")
        assert "ok audit: writing" in s.readyz()[1]
    finally:
        s.stop()


def test_an_anchor_file_removed_while_serving_is_recreated_and_reported(tmp_path: Path) -> None:
    """Deleting the anchor file under a running server: the next checkpoint recreates it,
    and /readyz says so (still ready: the ledger and its checkpoints are intact)."""
    key = tmp_path / "anchor.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    s = PdpServer(tmp_path, args=["--audit-durability", "sync", "--audit-anchor-key-file",
                                  str(key), "--audit-anchor-every-records", "5"]).start()
    anchors = Path(str(s.audit_file) + ".anchors")
    try:
        with s.channel() as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            for i in range(6):
                stub.CheckPush(_push(i), timeout=30)
            wait_until(anchors.exists, "the first checkpoints anchored")
            anchors.unlink()
            for i in range(6, 20):
                stub.CheckPush(_push(i), timeout=30)
        wait_until(anchors.exists, "the anchor file recreated")
        code, body = s.readyz()
        assert code == 200, body
        assert "audit_anchors" in body and "removed or replaced" in body, body
    finally:
        s.stop()
