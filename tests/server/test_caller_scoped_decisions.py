"""What a decision says depends on who asks, through the real server:

* an override's audited actor is the authenticated caller (an empty ``override.actor`` is
  the caller; another name is refused), and an honoured override of a built-in's deny is
  marked as such in the response and the audit record;
* a caller without READ_POLICIES on the tenant (a checker) is not shown draft / approved
  (shadow) policies in ``evaluated_policies``, nor explanations quoting CEL source text;
  the audit record keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from pdp.client import push_request
from pdp.server.auth import new_token
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.auditlog import audit_events, wait_for_events
from tests.support.pdpserver import PdpServer

POLICIES = """\
tenant: acme
name: no-debug
rule:
  cel:
    deny: '"debug" in config.exporters'
    message: '"debug exporter on " + agent.id'
---
tenant: acme
name: secret-draft
status: draft
rule:
  cel:
    deny: 'agent.id == "top-secret-agent"'
"""
DEBUG_CONFIG = "exporters: {debug: {}}\n"
PREVIOUS = ("exporters: {otlp/a: {endpoint: 'localhost:4317'}}\n"
            "service: {pipelines: {logs: {receivers: [otlp], exporters: [otlp/a]}}}\n")
REMOVED = "exporters: {otlp/b: {endpoint: 'localhost:4317'}}\n"
EXPORTER_REMOVAL = "default-deny-exporter-removal"

ROLES = {"carol": ["admin"], "engine": ["checker"], "reader": ["reader", "checker"]}


class Server:
    def __init__(self, tmp_path: Path) -> None:
        entries, self.tokens = [], {}
        for who, roles in ROLES.items():
            token, digest = new_token()
            self.tokens[who] = token
            entries.append({"sha256": digest, "identity": who, "roles": {"acme": roles}})
        tokens = tmp_path / "tokens.yaml"
        tokens.write_text(yaml.safe_dump({"tokens": entries}))
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "acme.yaml").write_text(POLICIES)
        self.pdp = PdpServer(tmp_path, policy_dir=policies,
                             args=["--auth-tokens-file", str(tokens)])
        self.channel: grpc.Channel | None = None

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    @property
    def decisions(self) -> dgrpc.DecisionServiceStub:
        assert self.channel is not None
        return dgrpc.DecisionServiceStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.PolicyAdminServiceStub:
        assert self.channel is not None
        return admin_pb2_grpc.PolicyAdminServiceStub(self.channel)

    def push(self, who: str, req: dpb.CheckPushRequest) -> cpb.Decision:
        return self.decisions.CheckPush(req, timeout=10, metadata=self.md(who)).decision


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.pdp.start()
    s.channel = s.pdp.channel()
    try:
        yield s
    finally:
        s.channel.close()
        s.pdp.stop()


def _decision_event(server: Server, decision_id: str) -> dict[str, object]:
    [event] = wait_for_events(server.pdp.audit_file, lambda e: e.get("type") == "Decision"
                              and e.get("decision_id") == decision_id)
    return event


# --- overrides ------------------------------------------------------------------------------

def test_override_naming_someone_else_is_refused(server: Server) -> None:
    req = push_request("acme", "a1", config_yaml=DEBUG_CONFIG, override=("bob", "incident 7"))
    with pytest.raises(grpc.RpcError) as err:
        server.push("carol", req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == \
        "override.actor: must be the caller 'carol' (or empty), got 'bob'"
    # A checker naming someone else is refused the same way (never silently ignored).
    with pytest.raises(grpc.RpcError) as err:
        server.push("engine", req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be the caller 'engine'" in err.value.details()
    # A batch too: the override is the step's.
    batch = dpb.CheckPushBatchRequest(tenant="acme", agents=[cpb.Agent(id="a1")])
    batch.config.yaml = DEBUG_CONFIG
    batch.override.actor, batch.override.justification = "bob", "incident 7"
    with pytest.raises(grpc.RpcError) as err:
        server.decisions.CheckPushBatch(batch, timeout=10, metadata=server.md("carol"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "override.actor" in err.value.details()


@pytest.mark.parametrize("actor", ["", "carol"])
def test_override_actor_is_the_authenticated_caller(server: Server, actor: str) -> None:
    d = server.push("carol", push_request("acme", "a1", config_yaml=DEBUG_CONFIG,
                                          override=(actor, "incident 7")))
    assert d.outcome == cpb.OUTCOME_ALLOW and d.overridden
    assert [r.policy for r in d.reasons] == ["no-debug"]  # the overridden deny, named
    event = _decision_event(server, d.decision_id)
    assert event["caller"] == "carol"
    override = event["override"]
    assert isinstance(override, dict)
    assert override["actor"] == "carol" and override["honoured"] is True
    assert override["justification"] == "incident 7"
    assert "overridden_builtins" not in override  # no built-in was overridden


def test_checker_override_is_audited_as_the_checker_and_not_honoured(server: Server) -> None:
    d = server.push("engine", push_request("acme", "a1", config_yaml=DEBUG_CONFIG,
                                           override=("", "incident 7")))
    assert d.outcome == cpb.OUTCOME_DENY and not d.overridden
    override = _decision_event(server, d.decision_id)["override"]
    assert isinstance(override, dict)
    assert override["actor"] == "engine" and override["honoured"] is False


def test_override_of_a_builtin_is_marked(server: Server) -> None:
    req = push_request("acme", "a1", config_yaml=REMOVED, previous_config_yaml=PREVIOUS)
    d = server.push("carol", req)
    assert d.outcome == cpb.OUTCOME_DENY and d.reasons[0].policy == EXPORTER_REMOVAL
    req.override.justification = "migrating to otlp/b"
    d = server.push("carol", req)
    assert d.outcome == cpb.OUTCOME_ALLOW and d.overridden
    assert [(r.policy, r.builtin) for r in d.reasons] == [(EXPORTER_REMOVAL, True)]
    event = _decision_event(server, d.decision_id)
    override = event["override"]
    assert isinstance(override, dict)
    assert override["honoured"] is True and override["actor"] == "carol"
    assert override["overridden_builtins"] == [EXPORTER_REMOVAL]
    reasons = event["reasons"]
    assert isinstance(reasons, list) and reasons[0]["builtin"] is True


# --- what a checker is shown ----------------------------------------------------------------

def _explained(req: dpb.CheckPushRequest) -> dpb.CheckPushRequest:
    req.explain = True
    return req


def test_checker_sees_neither_drafts_nor_policy_source(server: Server) -> None:
    req = _explained(push_request("acme", "a1", config_yaml=DEBUG_CONFIG))
    # The checker may not read the policies through the admin API ...
    with pytest.raises(grpc.RpcError) as err:
        server.admin.GetPolicy(apb.GetPolicyRequest(tenant="acme", name="no-debug"),
                               timeout=10, metadata=server.md("engine"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # ... nor through a decision: the reason is there, the CEL source and the draft are not.
    d = server.push("engine", req)
    assert d.outcome == cpb.OUTCOME_DENY
    assert [(r.policy, r.code) for r in d.reasons] == [("no-debug",
                                                        cpb.REASON_CODE_POLICY_DENIED)]
    assert d.reasons[0].message == "debug exporter on a1"
    assert not d.explanations
    names = {p.name for p in d.evaluated_policies}
    assert "no-debug" in names and "secret-draft" not in names
    assert all(p.status == cpb.POLICY_STATUS_ACTIVE for p in d.evaluated_policies)
    assert "top-secret-agent" not in str(d)

    # Whoever may read the policies sees all of it.
    d = server.push("reader", req)
    assert {p.name for p in d.evaluated_policies} >= {"no-debug", "secret-draft"}
    [x] = d.explanations
    assert x.policy == "no-debug" and any("config.exporters" in k for k in x.values)
    d = server.push("carol", req)
    assert "secret-draft" in {p.name for p in d.evaluated_policies} and d.explanations

    # The audit record keeps the drafts whoever asked.
    lists = [e for e in audit_events(server.pdp.audit_file) if e.get("type") == "Policies.Seen"]
    assert any("secret-draft" in {p["name"] for p in e["policies"]} for e in lists)


def test_checker_keeps_explanations_that_quote_no_policy_source(server: Server) -> None:
    """A built-in (typed rule) explains with request values, not policy text: kept."""
    req = _explained(push_request("acme", "a1", config_yaml=REMOVED,
                                  previous_config_yaml=PREVIOUS))
    d = server.push("engine", req)
    assert [x.policy for x in d.explanations] == [EXPORTER_REMOVAL]
    assert dict(d.explanations[0].values) == dict(
        server.push("reader", req).explanations[0].values)


def test_checker_batch_hides_drafts(server: Server) -> None:
    batch = dpb.CheckPushBatchRequest(tenant="acme", explain=True,
                                      agents=[cpb.Agent(id="a1"), cpb.Agent(id="a2")])
    batch.config.yaml = DEBUG_CONFIG
    out = server.decisions.CheckPushBatch(batch, timeout=10, metadata=server.md("engine"))
    names = {p.name for s in out.evaluated_sets for p in s.policies}
    assert "no-debug" in names and "secret-draft" not in names
    assert all(not a.decision.explanations for a in out.decisions)
    assert all(a.decision.outcome == cpb.OUTCOME_DENY for a in out.decisions)
    out = server.decisions.CheckPushBatch(batch, timeout=10, metadata=server.md("reader"))
    assert "secret-draft" in {p.name for s in out.evaluated_sets for p in s.policies}
    assert all(a.decision.explanations for a in out.decisions)
