"""Least privilege on a real `pdp serve`, from a hostile caller's side: what a caller may
not do by a side road: go on once its credentials are reloaded (an open stream that
outlives its revoked token or role), or read pdp's own environment through a policy's
notification channel. Each over the wire."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from pdp.client import push_request
from pdp.server.auth import new_token
from pdp.v1 import admin_pb2 as apb
from pdp.v1 import admin_pb2_grpc, audit_pb2, audit_pb2_grpc
from pdp.v1 import common_pb2 as cpb
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc
from tests.support.pdpserver import PdpServer
from tests.support.wait import wait_until

#: identity -> roles; every identity gets a token.
GRANTS: dict[str, dict[str, list[str]]] = {
    "checker": {"*": ["checker"]},
    "author": {"acme": ["author"], "newco": ["author"]},
    "admin": {"newco": ["admin"]},
    "auditor": {"acme": ["auditor"]},
    "engine": {"acme": ["rollout-engine"]},
}


#: The server's environment: one of pdp's own variables (a client token may stay exported
#: for `pdp serve`, README) and a channel's secret.
ENV = {"PDP_TOKEN": "operator-token-not-for-policies", "NOTIFY_acme__PD_KEY": "acme-pd-key",
       "NOTIFY_acme_2Deu__PD_KEY": "acme-eu-pd-key", "AWS_SECRET_ACCESS_KEY": "host-secret"}


def draft(tenant: str, name: str) -> str:
    return f"tenant: {tenant}\nname: {name}\nrule: {{cel: {{deny: 'false'}}}}\n"


class World:
    def __init__(self, tmp: Path) -> None:
        self.grants = {who: dict(roles) for who, roles in GRANTS.items()}
        self.tokens: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        for who in GRANTS:
            self.tokens[who], self.digests[who] = new_token()
        self.tokens_file = tmp / "tokens.yaml"
        self.write_tokens(set(GRANTS))
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "acme.yaml").write_text(draft("acme", "p"))
        # a generous deadline: these tests are about who may do what, on a busy machine
        self.server = PdpServer(tmp, policy_dir=policies, env=ENV, args=[
            "--auth-tokens-file", str(self.tokens_file), "--deadline-ms", "5000"]).start()
        self.channel = self.server.channel()
        self.decide = dgrpc.DecisionServiceStub(self.channel)
        self.admin = admin_pb2_grpc.PolicyAdminServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)

    def write_tokens(self, who: set[str]) -> None:
        self.tokens_file.write_text(yaml.safe_dump({"tokens": [
            {"sha256": self.digests[w], "identity": w, "roles": self.grants[w]}
            for w in sorted(who)]}))

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


# -- revoking a token ends the streams it opened --------------------------------------------

class Watcher:
    """``AuditService.Watch`` of acme in a thread: the records it got, and how it ended."""

    def __init__(self, world: World, who: str) -> None:
        self.records: list[audit_pb2.AuditRecord] = []
        self.ended: grpc.RpcError | None = None
        self.done = threading.Event()
        self.call = world.audit.Watch(audit_pb2.WatchRequest(tenant="acme",
                                                             from_beginning=True),
                                      timeout=120, metadata=world.md(who))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for answer in self.call:
                self.records.append(answer.record)
        except grpc.RpcError as exc:
            self.ended = exc
        finally:
            self.done.set()

    def got(self, decision_id: str) -> bool:
        return any(r.decision_id == decision_id for r in self.records)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=30)


def _decide(world: World, tenant: str = "acme") -> str:
    return str(world.decide.CheckPush(push_request(tenant, "a1", config_yaml="a: 1"),
                                      timeout=30, metadata=world.md("checker"))
               .decision.decision_id)


def _reload(world: World, keep: set[str]) -> None:
    world.write_tokens(keep)
    assert world.server.proc is not None
    world.server.proc.send_signal(signal.SIGHUP)


def _unauthenticated(world: World, who: str) -> bool:
    try:
        world.admin.ListTenants(apb.ListTenantsRequest(), timeout=30, metadata=world.md(who))
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[no-any-return]
    return False


def test_a_revoked_token_ends_its_open_watch(world: World) -> None:
    """Before: SIGHUP refused the revoked auditor's next call, but the Watch it had open
    went on streaming every new audit record of the tenant."""
    watcher = Watcher(world, "auditor")
    try:
        first = _decide(world)
        wait_until(lambda: watcher.got(first), "the watcher sees a decision while valid")
        _reload(world, set(GRANTS) - {"auditor"})
        wait_until(lambda: _unauthenticated(world, "auditor"), "the token revoked")
        later = _decide(world)
        assert watcher.done.wait(60), "the revoked token's Watch is still open"
        assert watcher.ended is not None
        assert watcher.ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "reloaded while this call was open" in (watcher.ended.details() or "")
        assert not watcher.got(later)
    finally:
        watcher.close()


def test_a_role_taken_away_ends_the_watch_it_allowed(world: World) -> None:
    """The token stays valid but no longer grants the auditor role on acme."""
    watcher = Watcher(world, "auditor")
    try:
        first = _decide(world)
        wait_until(lambda: watcher.got(first), "the watcher sees a decision while allowed")
        world.grants["auditor"] = {"acme": ["reader"]}
        _reload(world, set(GRANTS))
        wait_until(lambda: "auth_reloaded" in world.server.log(), "the reload")
        assert not _unauthenticated(world, "auditor")  # a reader now: the token is valid
        later = _decide(world)
        assert watcher.done.wait(60), "the Watch is still open without the role"
        assert watcher.ended is not None
        assert watcher.ended.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'acme'" in (watcher.ended.details() or "")
        assert not watcher.got(later)
    finally:
        watcher.close()


def test_a_revoked_token_cannot_go_on_deciding_on_its_open_stream(world: World) -> None:
    """CheckPushStream authorises every batch: after a reload, as the caller is now."""
    def batch(agent: str) -> dpb.CheckPushStreamRequest:
        return dpb.CheckPushStreamRequest(batch=dpb.CheckPushBatchRequest(
            tenant="acme", agents=[cpb.Agent(id=agent)], config=cpb.Config(yaml="a: 1")))

    sent: list[dpb.CheckPushStreamRequest] = [batch("a1")]
    more = threading.Event()

    def requests() -> Iterator[dpb.CheckPushStreamRequest]:
        yield sent[0]
        more.wait(60)
        yield batch("a2")

    answers = []
    with pytest.raises(grpc.RpcError) as err:
        for answer in world.decide.CheckPushStream(requests(), timeout=120,
                                                   metadata=world.md("engine")):
            answers.append(answer)
            _reload(world, set(GRANTS) - {"engine"})
            wait_until(lambda: _unauthenticated(world, "engine"), "the token revoked")
            more.set()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(answers) == 1  # the batch sent while the token was valid


# -- a policy's notify channel cannot read pdp's own environment ------------------------------

def notifying(env_var: str) -> str:
    return (draft("acme", "notifies") + "notify:\n  - pagerduty: {url: 'http://127.0.0.1:9/',"
            f" routing_key_env: {env_var}}}\n")


@pytest.mark.parametrize("env_var", ["PDP_TOKEN", "pdp_token", "PDP_REDIS_URL"])
def test_a_policy_cannot_send_pdp_s_own_variables_to_its_channel(world: World,
                                                                 env_var: str) -> None:
    """Before: `routing_key_env: PDP_TOKEN` was admitted, and once the policy was active
    (one tenant's author, approver and admin) each deny POSTed the variable's value, pdp's
    own setting or credential (a Redis URL with its password reaches every tenant's
    policies), to the URL the policy names."""
    with pytest.raises(grpc.RpcError) as err:
        world.admin.PutDraft(apb.PutDraftRequest(yaml=notifying(env_var)), timeout=30,
                             metadata=world.md("author"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pdp's own variables" in (err.value.details() or "")
    checked = world.admin.ValidatePolicy(apb.ValidatePolicyRequest(yaml=notifying(env_var)),
                                         timeout=30, metadata=world.md("author"))
    assert not checked.valid
    assert "routing_key_env" in checked.problems[0].message


@pytest.mark.parametrize("env_var", ["AWS_SECRET_ACCESS_KEY", "NOTIFY_acme_2Deu__PD_KEY",
                                     "NOTIFY_other__PD_KEY", "PD_KEY"])
def test_a_policy_reads_only_its_own_tenants_variables(world: World, env_var: str) -> None:
    """The host's credentials and another tenant's channel secret (``acme-eu``'s, whose
    name starts like acme's) are as out of reach as pdp's own: a policy of acme reads only
    ``NOTIFY_acme__*``."""
    with pytest.raises(grpc.RpcError) as err:
        world.admin.PutDraft(apb.PutDraftRequest(yaml=notifying(env_var)), timeout=30,
                             metadata=world.md("author"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reads only variables named NOTIFY_acme__<NAME>" in (err.value.details() or "")


def test_a_channel_still_reads_its_own_variable(world: World) -> None:
    put = world.admin.PutDraft(apb.PutDraftRequest(yaml=notifying("NOTIFY_acme__PD_KEY")),
                               timeout=30, metadata=world.md("author"))
    assert put.policy.meta.version == 1


# -- drafts alone do not make a tenant known -------------------------------------------------

def _outcome(world: World, tenant: str) -> tuple[int, list[int]]:
    d = world.decide.CheckPush(push_request(tenant, "a1", config_yaml="a: 1"), timeout=30,
                               metadata=world.md("checker")).decision
    return d.outcome, [r.code for r in d.reasons]


def _reloads(world: World) -> int:
    return world.server.log().count("policies_reloaded")


def test_an_authors_draft_does_not_make_an_unknown_tenant_allowed(world: World) -> None:
    """An author of a tenant nobody created puts a draft there: decisions for it stay the
    UNKNOWN_TENANT deny they were (drafts never change a live answer). Before, the draft
    made the tenant known, and the built-ins alone allowed its requests: no admin needed."""
    unknown = (cpb.OUTCOME_DENY, [cpb.REASON_CODE_UNKNOWN_TENANT])
    assert _outcome(world, "newco") == unknown
    before = _reloads(world)
    world.admin.PutDraft(apb.PutDraftRequest(yaml=draft("newco", "p")), timeout=30,
                         metadata=world.md("author"))
    wait_until(lambda: _reloads(world) > before, "the server to load the draft")
    assert _outcome(world, "newco") == unknown
    # An admin creating the tenant is what makes it known (the draft then only shadows).
    world.admin.CreateTenant(apb.CreateTenantRequest(tenant="newco", justification="onboard"),
                             timeout=30, metadata=world.md("admin"))
    wait_until(lambda: _outcome(world, "newco") == (cpb.OUTCOME_ALLOW, []),
               "the created tenant to be decided by its policies")
