"""`pdp audit show ID`: a decision from a real server's audit files, with the config text and
the evaluated policy list it names by hash put back in place, and its derived events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc

from pdp.client import push_request
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer

INSECURE = "exporters:\n  otlp/x: {endpoint: 'x.example.com:4317', tls: {insecure: true}}\n"
FINE = "exporters:\n  otlp/eu: {endpoint: 'otel.acme.eu:4317'}\n"


def show(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdp.cli", "audit", "show", *args],
                          capture_output=True, text=True, timeout=60)


def test_show_resolves_what_a_decision_names_and_lists_its_derived_events(
        tmp_path: Path) -> None:
    server = PdpServer(tmp_path).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = dgrpc.DecisionServiceStub(ch)
            first = stub.CheckPush(push_request("acme", "a1", config_yaml=FINE), timeout=5)
            denied = stub.CheckPush(push_request("acme", "a2", config_yaml=INSECURE), timeout=5)
            again = stub.CheckPush(push_request("acme", "a3", config_yaml=FINE), timeout=5)
        assert server.terminate() == 0
    finally:
        server.stop()
    assert denied.decision.outcome == 2  # OUTCOME_DENY
    audit_dir = server.audit_file.parent

    out = show(denied.decision.decision_id, str(audit_dir))
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    d = view["decision"]
    assert d["decision_id"] == denied.decision.decision_id and d["allowed"] is False
    assert d["request"]["config"] == INSECURE  # the Config.Seen text, back in place
    names = {p["name"] for p in d["policies"]}  # the Policies.Seen list, back in place
    # the record names every policy evaluated; the response leaves drafts out for a caller
    # who may not read the tenant's policies (here: anonymous)
    assert names - {p.name for p in denied.decision.evaluated_policies} == {
        "require-batch-processor"}  # examples/policies/acme.yaml: a draft
    assert all(p["content_hash"].startswith("sha256:") for p in d["policies"])
    assert view["unresolved"] == []
    assert [r["event"]["type"] for r in view["related"]] == ["Rollout.PushDenied"]
    assert view["record"]["seq"] < view["related"][0]["seq"]

    # A later decision names the same list and config written once, earlier: still found.
    later = json.loads(show(again.decision.decision_id, str(audit_dir)).stdout)["decision"]
    assert later["request"]["config"] == FINE
    assert later["policies"] == json.loads(
        show(first.decision.decision_id, str(audit_dir)).stdout)["decision"]["policies"]

    # Not there: exit 1. The Seen events cut away: the view says what it could not resolve.
    assert show("no-such-decision", str(audit_dir)).returncode == 1
    [path] = sorted(audit_dir.glob("audit*.jsonl"))
    kept = [ln for ln in path.read_text().splitlines(keepends=True) if ".Seen" not in ln]
    cut = tmp_path / "cut" / "audit.jsonl"
    cut.parent.mkdir()
    cut.write_text("".join(kept))
    view = json.loads(show(denied.decision.decision_id, str(cut)).stdout)
    assert len(view["unresolved"]) == 2 and "policies_sha256" in view["decision"]
    assert "Policies.Seen" in " ".join(view["unresolved"])
