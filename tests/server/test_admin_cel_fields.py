"""A CEL policy sent as a protobuf message (not YAML) keeps every part of its rule:
``violations`` and ``variables`` go in, are stored, and come back."""

from __future__ import annotations

from pathlib import Path

import grpc

from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc
from pdp.v1 import policy_pb2 as ppb
from tests.support.pdpserver import PdpServer


def test_violations_and_variables_round_trip_through_the_policy_message(
        tmp_path: Path) -> None:
    server = PdpServer(tmp_path, args=["--auth-anonymous-roles", "*:admin"]).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = admin_pb2_grpc.PolicyAdminServiceStub(ch)
            rule = ppb.CelRule(
                violations="variables.remote.map(e, 'exporter ' + e + ' is remote')",
                variables=[ppb.CelVariable(
                    name="remote",
                    expression="collector.exporters.transformList(n, e, !e.local, n)")])
            sent = ppb.Policy(tenant="acme", name="local-only", cel=rule)
            put = stub.PutDraft(apb.PutDraftRequest(policy=sent), timeout=10).policy
            assert put.cel.violations == rule.violations
            assert [(v.name, v.expression) for v in put.cel.variables] == [
                ("remote", rule.variables[0].expression)]
            got = stub.GetPolicy(apb.GetPolicyRequest(tenant="acme", name="local-only"),
                                 timeout=10).policy
            assert got.cel.violations == rule.violations and not got.cel.deny
            assert "violations" in got.yaml and "variables" in got.yaml
    finally:
        server.stop()
