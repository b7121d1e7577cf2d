"""The policy-store contract: every backend passes exactly these tests."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import pytest

from pdp.policy.builtins import BUILTIN_NAMES
from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError, Status
from pdp.policy.store import (
    FourEyesViolation,
    InvalidTransition,
    PolicyNotFound,
    PolicyStore,
    StaleVersion,
    TenantExists,
    UnknownTenant,
    grpc_status_name,
    seed_from_directory,
)
from tests.policy_store.conftest import Backend, policy_yaml
from tests.support.wait import DEADLINE_S

EXPORTER = "default-deny-exporter-removal"


async def active_policy(store: PolicyStore, tenant: str, name: str = "no-debug",
                        deny: str = "false") -> int:
    """Create (or add a version to) ``name`` and take it to ACTIVE; returns the version."""
    latest = 0
    with contextlib.suppress(PolicyNotFound):
        latest = (await store.get(tenant, name)).version
    v = await store.put_draft(tenant, policy_yaml(tenant, name, deny), "alice", latest)
    await store.approve(tenant, name, v.version, "bob")
    await store.activate(tenant, name, v.version, "carol")
    return v.version


async def test_create_draft(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    before = time.time()
    v = await store.put_draft(t, policy_yaml(t), "alice", 0)
    assert (v.tenant, v.name, v.version, v.status, v.author) == (t, "no-debug", 1, Status.DRAFT,
                                                                  "alice")
    assert v.created_at >= before - 1
    assert v.content_hash == load_text(policy_yaml(t))[0].content_hash
    assert await store.get(t, "no-debug") == v
    assert await store.get(t, "no-debug", 1) == v
    assert t in await store.tenants()
    [ev] = backend.events
    assert ev["type"] == "Policy.Created" and ev["actor"] == "alice" and ev["version"] == 1
    assert ev["content_hash"] == v.content_hash and ev["tenant"] == t
    p = store.policy_of(v)
    assert (p.name, p.status, p.version, p.author) == ("no-debug", Status.DRAFT, 1, "alice")


@pytest.mark.parametrize(("claim", "field"), [
    ("status: active", "status"), ("status: approved", "status"), ("author: bob", "author"),
    ("approver: carol", "approver"), ("version: 7", "version")])
async def test_a_draft_claiming_another_lifecycle_is_refused(
        backend: Backend, store: PolicyStore, claim: str, field: str) -> None:
    """Lifecycle fields are the store's. Text that claims otherwise (active, approved by
    carol, written by bob) would show so in ``pdp policy get`` and be seeded so from a copy
    in a policy directory: refused, naming the field. Claims that agree are kept."""
    t = backend.tenant
    with pytest.raises(PolicyError) as err:
        await store.put_draft(t, policy_yaml(t) + claim + "\n", "alice", 0)
    assert err.value.field_path == field and "remove the line" in str(err.value)
    with pytest.raises(PolicyNotFound):
        await store.get(t, "no-debug")  # nothing stored
    agreeing = policy_yaml(t) + "status: draft\nauthor: Alice\nversion: 1\n"
    assert (await store.put_draft(t, agreeing, "alice", 0)).version == 1


async def test_list_shows_builtins_and_custom(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    await active_policy(store, t, "a")
    await store.put_draft(t, policy_yaml(t, "a", "true"), "dave", 1)
    await store.put_draft(t, policy_yaml(t, "b"), "erin", 0)
    rows = {r.name: r for r in await store.list(t)}
    assert set(rows) == {*BUILTIN_NAMES, "a", "b"}
    assert all(rows[b].builtin and rows[b].status is Status.ACTIVE for b in BUILTIN_NAMES)
    a = rows["a"]
    assert not a.builtin
    assert (a.status, a.version, a.approver, a.author) == (Status.ACTIVE, 1, "bob", "dave")
    assert (a.active_version, a.latest_version, a.latest_status) == (1, 2, Status.DRAFT)
    b = rows["b"]
    assert (b.status, b.version, b.author, b.approver, b.active_version) == (
        Status.DRAFT, 1, "erin", "", None)


async def test_four_eyes(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    await store.put_draft(t, policy_yaml(t), "alice", 0)
    rev = await store.revision()
    for same in ("alice", " Alice "):
        with pytest.raises(FourEyesViolation, match="approval must come from someone else"):
            await store.approve(t, "no-debug", 1, same)
    assert (await store.get(t, "no-debug")).status is Status.DRAFT
    assert await store.revision() == rev
    assert backend.types() == ["Policy.Created"]
    v = await store.approve(t, "no-debug", 1, "bob")
    assert (v.status, v.approver, v.author) == (Status.APPROVED, "bob", "alice")
    assert backend.events[-1]["type"] == "Policy.Approved"
    assert backend.events[-1]["author"] == "alice"
    # the author of a new version cannot approve it, even if they approved an earlier one
    await store.put_draft(t, policy_yaml(t, deny="true"), "bob", 1)
    with pytest.raises(FourEyesViolation):
        await store.approve(t, "no-debug", 2, "bob")
    await store.approve(t, "no-debug", 2, "alice")


async def test_optimistic_concurrency(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    await store.put_draft(t, policy_yaml(t), "alice", 0)
    with pytest.raises(StaleVersion, match="already exists") as exc:
        await store.put_draft(t, policy_yaml(t), "alice", 0)
    assert (exc.value.expected, exc.value.actual) == (0, 1)
    assert grpc_status_name(exc.value) == "ABORTED"
    v2 = await store.put_draft(t, policy_yaml(t, deny="true"), "dave", 1)
    assert (v2.version, v2.status, v2.author) == (2, Status.DRAFT, "dave")
    with pytest.raises(StaleVersion, match="at version 2, not 1"):
        await store.put_draft(t, policy_yaml(t), "alice", 1)
    with pytest.raises(StaleVersion, match="does not exist yet"):
        await store.put_draft(t, policy_yaml(t, "other"), "alice", 3)
    assert [v.version for v in (await store.history(t, "no-debug")).versions] == [1, 2]


async def test_racing_writers_one_wins(backend: Backend) -> None:
    """Two instances (think: two sidecars) update from the same version at once."""
    t = backend.tenant
    a, b = backend.open(), backend.open()
    await a.put_draft(t, policy_yaml(t), "alice", 0)
    for _ in range(5):
        latest = (await a.get(t, "no-debug")).version
        results = await asyncio.gather(
            a.put_draft(t, policy_yaml(t, deny="true"), "alice", latest),
            b.put_draft(t, policy_yaml(t, deny="1 == 2"), "bob", latest),
            return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["StaleVersion", "VersionRecord"]
    history = await a.history(t, "no-debug")
    assert [v.version for v in history.versions] == list(range(1, 7))


async def test_lifecycle_happy_path(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    v1 = await store.put_draft(t, policy_yaml(t), "alice", 0)
    await store.approve(t, "no-debug", 1, "bob")
    a1 = await store.activate(t, "no-debug", 1, "carol")
    assert (a1.status, a1.activated_by, a1.content_hash) == (Status.ACTIVE, "carol",
                                                             v1.content_hash)
    activated = backend.events[-1]
    assert activated["type"] == "Policy.Activated"
    assert activated["content_hash"] == v1.content_hash and activated["version"] == 1

    v2 = await store.put_draft(t, policy_yaml(t, deny="true"), "dave", 1)
    assert v2.content_hash != v1.content_hash
    await store.approve(t, "no-debug", 2, "erin")
    await store.activate(t, "no-debug", 2, "erin")
    assert (await store.get(t, "no-debug", 1)).status is Status.RETIRED
    assert (await store.get(t, "no-debug", 2)).status is Status.ACTIVE
    assert backend.types()[-2:] == ["Policy.Retired", "Policy.Activated"]
    assert backend.events[-2]["reason"] == "superseded by version 2"

    r = await store.retire(t, "no-debug", "frank")
    assert (r.version, r.status, r.retired_by) == (2, Status.RETIRED, "frank")
    assert backend.events[-1]["type"] == "Policy.Retired"
    rows = {x.name: x for x in await store.list(t)}
    assert rows["no-debug"].status is Status.RETIRED and rows["no-debug"].active_version is None

    back = await store.reactivate(t, "no-debug", "grace")
    assert (back.version, back.status) == (2, Status.ACTIVE)  # the most recently retired
    ev = backend.events[-1]
    assert ev["type"] == "Policy.Reactivated" and ev["version"] == 2
    assert ev["content_hash"] == v2.content_hash and ev["actor"] == "grace"
    statuses = [v.status for v in (await store.history(t, "no-debug")).versions]
    assert statuses == [Status.RETIRED, Status.ACTIVE]


async def test_reactivate_brings_back_the_last_retired(backend: Backend,
                                                       store: PolicyStore) -> None:
    t = backend.tenant
    await active_policy(store, t)
    await active_policy(store, t, deny="true")  # v1 superseded (retired) by v2
    await store.retire(t, "no-debug", "x")
    assert (await store.reactivate(t, "no-debug", "y")).version == 2
    await store.retire(t, "no-debug", "x")
    assert (await store.reactivate(t, "no-debug", "y")).version == 2


async def test_invalid_transitions(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    await store.put_draft(t, policy_yaml(t), "alice", 0)
    rev = await store.revision()
    n_events = len(backend.events)
    with pytest.raises(InvalidTransition, match="approve it first"):
        await store.activate(t, "no-debug", 1, "bob")
    with pytest.raises(InvalidTransition, match="no active version"):
        await store.retire(t, "no-debug", "bob")
    with pytest.raises(InvalidTransition, match="no retired version"):
        await store.reactivate(t, "no-debug", "bob")
    await store.approve(t, "no-debug", 1, "bob")
    rev = await store.revision()
    n_events = len(backend.events)
    with pytest.raises(InvalidTransition, match="only a draft can be approved"):
        await store.approve(t, "no-debug", 1, "carol")
    await store.activate(t, "no-debug", 1, "bob")
    with pytest.raises(InvalidTransition, match="retire it before reactivating"):
        await store.reactivate(t, "no-debug", "bob")
    with pytest.raises(InvalidTransition, match="only an approved version"):
        await store.activate(t, "no-debug", 1, "bob")
    await store.retire(t, "no-debug", "bob")
    with pytest.raises(InvalidTransition):
        await store.approve(t, "no-debug", 1, "carol")
    with pytest.raises(InvalidTransition):
        await store.activate(t, "no-debug", 1, "carol")
    assert grpc_status_name(InvalidTransition("x")) == "FAILED_PRECONDITION"
    assert await store.revision() == rev + 2  # only the activate and the retire
    assert len(backend.events) == n_events + 2


async def test_not_found(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    for call in (store.get(t, "nope"), store.history(t, "nope"),
                 store.approve(t, "nope", 1, "bob"), store.activate(t, "nope", 1, "bob"),
                 store.retire(t, "nope", "bob"), store.reactivate(t, "nope", "bob"),
                 store.request_builtin_relax(t, "no-such-builtin", "bob", reason="x")):
        with pytest.raises(PolicyNotFound) as exc:
            await call
        assert grpc_status_name(exc.value) == "NOT_FOUND"
    await store.put_draft(t, policy_yaml(t), "alice", 0)
    with pytest.raises(PolicyNotFound, match="no version 7"):
        await store.approve(t, "no-debug", 7, "bob")
    with pytest.raises(PolicyNotFound, match="no version 2"):
        await store.get(t, "no-debug", 2)
    with pytest.raises(PolicyNotFound, match="built-in"):
        await store.get(t, EXPORTER)
    assert await store.tenants() == [t] or t in await store.tenants()


async def test_history_records_every_transition(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    await active_policy(store, t)
    await active_policy(store, t, deny="true")
    await store.retire(t, "no-debug", "frank", reason="noisy")
    await store.reactivate(t, "no-debug", "grace")
    h = await store.history(t, "no-debug")
    assert not h.builtin
    assert [v.version for v in h.versions] == [1, 2]
    steps = [(x.version, x.action, x.from_status, x.to_status, x.actor) for x in h.transitions]
    D, AP, AC, R = Status.DRAFT, Status.APPROVED, Status.ACTIVE, Status.RETIRED
    assert steps == [
        (1, "create", None, D, "alice"), (1, "approve", D, AP, "bob"),
        (1, "activate", AP, AC, "carol"),
        (2, "create", None, D, "alice"), (2, "approve", D, AP, "bob"),
        (1, "retire", AC, R, "carol"), (2, "activate", AP, AC, "carol"),
        (2, "retire", AC, R, "frank"), (2, "reactivate", R, AC, "grace"),
    ]
    assert h.transitions[5].reason == "superseded by version 2"
    assert h.transitions[7].reason == "noisy"
    times = [x.at for x in h.transitions]
    assert times == sorted(times) and times[0] > 1_600_000_000
    assert [e["type"] for e in backend.events].count("Policy.Created") == 2


async def relax(store: PolicyStore, tenant: str, builtin: str = EXPORTER) -> None:
    """Relaxed with four eyes: requested by one admin, approved by another."""
    await store.request_builtin_relax(tenant, builtin, "admin", reason="migration")
    await store.approve_builtin_relax(tenant, builtin, "admin2")


async def test_relax_needs_a_second_admin_restore_is_immediate(backend: Backend,
                                                                store: PolicyStore) -> None:
    t = backend.tenant
    assert await store.relaxed_builtins(t) == frozenset()
    rev = await store.revision()
    with pytest.raises(PolicyError, match="justification"):
        await store.request_builtin_relax(t, EXPORTER, "admin", reason=" ")
    req = await store.request_builtin_relax(t, EXPORTER, "admin", reason="migration")
    assert (req.actor, req.reason, req.builtin) == ("admin", "migration", EXPORTER)
    assert await store.revision() > rev
    # requested only: the built-in stays in force, in the listing and the snapshot
    assert await store.relaxed_builtins(t) == frozenset()
    assert set(await store.pending_relaxations(t)) == {EXPORTER}
    assert (await store.snapshot()).relaxed().get(t) is None
    ev = backend.events[-1]
    assert ev["type"] == "Tenant.BuiltinRelaxRequested" and ev["actor"] == "admin"
    assert ev["reason"] == "migration" and ev["builtin"] == EXPORTER
    with pytest.raises(InvalidTransition, match="already requested by 'admin'"):
        await store.request_builtin_relax(t, EXPORTER, "admin2", reason="again")
    # the requester cannot approve, in any spelling
    for same in ("admin", " ADMIN "):
        with pytest.raises(FourEyesViolation):
            await store.approve_builtin_relax(t, EXPORTER, same)
    assert grpc_status_name(FourEyesViolation("x")) == "PERMISSION_DENIED"
    assert await store.relaxed_builtins(t) == frozenset()
    await store.approve_builtin_relax(t, EXPORTER, "admin2")
    assert await store.relaxed_builtins(t) == {EXPORTER}
    assert await store.pending_relaxations(t) == {}
    ev = backend.events[-1]
    assert ev["type"] == "Tenant.BuiltinRelaxed" and ev["relaxed"] is True
    assert ev["actor"] == "admin2" and ev["requested_by"] == "admin"
    assert ev["reason"] == "migration"
    rows = {r.name: r for r in await store.list(t)}
    assert rows[EXPORTER].relaxed and rows[EXPORTER].status is Status.RETIRED
    snap = await store.snapshot()
    assert snap.tenants[t].relaxed == {EXPORTER} and snap.relaxed()[t] == {EXPORTER}
    with pytest.raises(InvalidTransition, match="already relaxed"):
        await store.request_builtin_relax(t, EXPORTER, "admin3", reason="x")
    with pytest.raises(InvalidTransition):
        await store.approve_builtin_relax(t, EXPORTER, "admin3")
    # other tenants keep their built-ins
    assert await store.relaxed_builtins(t + "x") == frozenset()

    # restore: one admin, at once
    assert await store.restore_builtin(t, EXPORTER, "admin", reason="done")
    assert await store.relaxed_builtins(t) == frozenset()
    assert backend.events[-1]["relaxed"] is False and backend.events[-1]["actor"] == "admin"
    assert not await store.restore_builtin(t, EXPORTER, "admin")  # no-op, no event
    h = await store.history(t, EXPORTER)
    assert h.builtin and h.versions == ()
    assert [(x.action, x.actor) for x in h.transitions] == [
        ("request-relax", "admin"), ("relax", "admin2"), ("restore", "admin")]
    assert [e["type"] for e in backend.events] == [
        "Tenant.BuiltinRelaxRequested", "Tenant.BuiltinRelaxed", "Tenant.BuiltinRelaxed"]


async def test_restore_withdraws_a_pending_request(backend: Backend,
                                                   store: PolicyStore) -> None:
    t = backend.tenant
    await store.request_builtin_relax(t, EXPORTER, "admin", reason="migration")
    assert await store.restore_builtin(t, EXPORTER, "admin2")
    assert await store.pending_relaxations(t) == {}
    assert backend.events[-1]["withdrawn_request_by"] == "admin"
    with pytest.raises(InvalidTransition, match="no pending relax request"):
        await store.approve_builtin_relax(t, EXPORTER, "admin2")
    assert await store.relaxed_builtins(t) == frozenset()
    # a second instance sees the same pending request
    await store.request_builtin_relax(t, EXPORTER, "admin", reason="again")
    other = backend.open()
    assert (await other.pending_relaxations(t))[EXPORTER].actor == "admin"
    await other.approve_builtin_relax(t, EXPORTER, "admin2")
    assert await store.relaxed_builtins(t) == {EXPORTER}


async def test_create_tenant(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    rev = await store.revision()
    info = await store.create_tenant(t, "root", reason="new team")
    assert (info.name, info.created_by, info.reason) == (t, "root", "new team")
    assert info.created_at is not None and info.created_at > 1_600_000_000
    assert await store.revision() > rev
    ev = backend.events[-1]
    assert (ev["type"], ev["tenant"], ev["actor"], ev["reason"]) == (
        "Tenant.Created", t, "root", "new team")
    # known with no policies: in the snapshot the engine's known tenants come from
    snap = await store.snapshot()
    assert t in snap.tenants and snap.tenants[t].policies == ()
    with pytest.raises(TenantExists):
        await store.create_tenant(t, "root2")
    assert grpc_status_name(TenantExists("x")) == "ALREADY_EXISTS"
    assert len([e for e in backend.events if e["type"] == "Tenant.Created"]) == 1
    # a tenant known from a policy once active exists too, without a creation record
    other = t + "-p"
    await store.put_draft(other, policy_yaml(other), "alice", 0)
    await store.approve(other, "no-debug", 1, "bob")
    await store.activate(other, "no-debug", 1, "carol")
    with pytest.raises(TenantExists):
        await store.create_tenant(other, "root")
    listed = {i.name: i for i in await backend.open().list_tenants()}
    assert listed[t].created_by == "root" and listed[other].created_by == ""
    # drafts alone (an author's) leave a tenant unknown to decisions; creating it makes it
    # known, keeping its drafts
    drafted = t + "-d"
    await store.put_draft(drafted, policy_yaml(drafted), "alice", 0)
    assert not (await store.snapshot()).tenants[drafted].known
    assert drafted not in (await store.snapshot()).known()
    await store.create_tenant(drafted, "root")
    snap = await store.snapshot()
    assert drafted in snap.known() and len(snap.tenants[drafted].shadow) == 1
    with pytest.raises(TenantExists):
        await store.create_tenant(drafted, "root2")
    with pytest.raises(PolicyError):
        await store.create_tenant("bad tenant!", "root")


async def test_snapshot(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    rev0 = (await store.snapshot()).revision
    await active_policy(store, t, "a")
    await store.put_draft(t, policy_yaml(t, "a", "true"), "alice", 1)  # pending v2
    await store.put_draft(t, policy_yaml(t, "b"), "alice", 0)  # draft only
    await active_policy(store, t, "c")
    await store.retire(t, "c", "x")  # retired: not evaluated
    await active_policy(store, t, "d")
    await store.put_draft(t, policy_yaml(t, "d", "true"), "alice", 1)
    await store.approve(t, "d", 2, "bob")  # approved, not active: shadow
    snap = await store.snapshot()
    assert snap.revision > rev0
    ts = snap.tenants[t]
    assert sorted((p.name, p.version, p.status) for p in ts.active) == [
        ("a", 1, Status.ACTIVE), ("d", 1, Status.ACTIVE)]
    assert sorted((p.name, p.version, p.status) for p in ts.shadow) == [
        ("a", 2, Status.DRAFT), ("b", 1, Status.DRAFT), ("d", 2, Status.APPROVED)]
    d1 = next(p for p in ts.active if p.name == "d")
    assert (d1.author, d1.approver, d1.tenant) == ("alice", "bob", t)
    assert {p.name for p in snap.policies() if p.tenant == t} == {"a", "b", "d"}
    # an older approved version is stale once a newer one is active
    await store.activate(t, "d", 2, "carol")
    ts = (await store.snapshot()).tenants[t]
    assert [(p.name, p.version) for p in ts.active] == [("a", 1), ("d", 2)]
    assert ("d", 2) not in [(p.name, p.version) for p in ts.shadow]
    assert await store.revision() == (await store.snapshot()).revision


async def test_invalid_content_writes_nothing(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    rev = await store.revision()
    bad_cel = policy_yaml(t, deny="config.exporters.exists(e, e ==)")
    with pytest.raises(PolicyError) as exc:
        await store.put_draft(t, bad_cel, "alice", 0)
    assert "rule.cel.deny" in str(exc.value) and grpc_status_name(exc.value) == "INVALID_ARGUMENT"
    # the position inside the file: the expression's line, and the column of the error
    assert re.search(r":7:\d+: rule\.cel\.deny", str(exc.value)), str(exc.value)
    with pytest.raises(PolicyError, match="undeclared reference"):
        await store.put_draft(t, policy_yaml(t, deny="no_such_var > 1"), "alice", 0)
    with pytest.raises(PolicyError, match="not 't-"):
        await store.put_draft(t, policy_yaml("other-tenant"), "alice", 0)
    with pytest.raises(PolicyError, match="built-in"):
        await store.put_draft(t, policy_yaml(t, EXPORTER), "alice", 0)
    with pytest.raises(PolicyError, match=r":3:\d+: invalid YAML"):
        await store.put_draft(t, f"tenant: {t}\nname: x\n  bad: [\n", "alice", 0)
    with pytest.raises(PolicyError, match="exactly one policy"):
        await store.put_draft(t, policy_yaml(t, "a") + "---\n" + policy_yaml(t, "b"), "alice", 0)
    with pytest.raises(PolicyError, match="name"):
        await store.put_draft(t, policy_yaml(t, "bad name!"), "alice", 0)
    with pytest.raises(PolicyError, match="actor"):
        await store.put_draft(t, policy_yaml(t), " ", 0)
    with pytest.raises(PolicyError, match="tenant"):
        await store.put_draft("bad tenant", policy_yaml(t), "alice", 0)
    with pytest.raises(PolicyError, match="expected_version"):
        await store.put_draft(t, policy_yaml(t), "alice", -1)
    with pytest.raises(PolicyError, match="invalid policy name"):
        await store.approve(t, "a b", 1, "bob")

    def reject(_: object) -> object:
        raise PolicyError("custom hook says no", line=3, column=5)

    with pytest.raises(PolicyError, match="custom hook says no"):
        await store.put_draft(t, policy_yaml(t), "alice", 0, validate=reject)
    assert await store.revision() == rev
    assert t not in await store.tenants()
    assert backend.events == []
    with pytest.raises(PolicyNotFound):
        await store.get(t, "no-debug")
    assert t not in (await store.snapshot()).tenants


async def test_failed_operations_on_existing_policy_write_nothing(
        backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    await active_policy(store, t)
    await store.put_draft(t, policy_yaml(t, deny="true"), "alice", 1)
    before = await store.history(t, "no-debug")
    rev = await store.revision()
    n = len(backend.events)
    failing = [
        store.put_draft(t, policy_yaml(t, deny="1 +"), "alice", 2),
        store.put_draft(t, policy_yaml(t), "alice", 1),
        store.approve(t, "no-debug", 2, "alice"),
        store.activate(t, "no-debug", 2, "bob"),
        store.approve(t, "no-debug", 1, "bob"),
        store.reactivate(t, "no-debug", "bob"),
    ]
    for call in failing:
        with pytest.raises((PolicyError, StaleVersion, FourEyesViolation, InvalidTransition)):
            await call
    assert await store.history(t, "no-debug") == before
    assert await store.revision() == rev and len(backend.events) == n


async def test_put_draft_accepts_a_policy_object(backend: Backend, store: PolicyStore) -> None:
    t = backend.tenant
    [p] = load_text(policy_yaml(t, deny="config.exporters.size() > 3"))
    v = await store.put_draft(t, p, "alice", 0)
    assert v.content_hash == p.content_hash
    assert store.policy_of(v).rule == p.rule


async def test_on_event_failure_does_not_fail_the_change(backend: Backend) -> None:
    def boom(_: object) -> None:
        raise RuntimeError("sink down")

    store = backend.open(on_event=boom)
    t = backend.tenant
    v = await store.put_draft(t, policy_yaml(t), "alice", 0)
    assert (await store.get(t, "no-debug")) == v


async def test_unknown_tenant(backend: Backend) -> None:
    store = backend.open(tenants=[backend.tenant])
    t = backend.tenant
    await store.put_draft(t, policy_yaml(t), "alice", 0)
    for call in (store.list("intruder"), store.get("intruder", "no-debug"),
                 store.put_draft("intruder", policy_yaml("intruder"), "alice", 0),
                 store.request_builtin_relax("intruder", EXPORTER, "a", reason="x"),
                 store.create_tenant("intruder", "root")):
        with pytest.raises(UnknownTenant):
            await call


async def test_state_survives_reopen(backend: Backend) -> None:
    t = backend.tenant
    first = backend.open()
    await active_policy(first, t, "a")
    await active_policy(first, t, "a", deny="true")
    await first.put_draft(t, policy_yaml(t, "b"), "alice", 0)
    await relax(first, t)
    await first.request_builtin_relax(t, "default-deny-tls-insecure-on-non-localhost", "admin",
                                      reason="pending")
    snap = await first.snapshot()
    listing = await first.list(t)
    history = await first.history(t, "a")
    await first.close()

    second = backend.open()
    assert await second.list(t) == listing
    assert await second.history(t, "a") == history
    assert (await second.snapshot()).tenants[t] == snap.tenants[t]
    assert await second.revision() == snap.revision
    # and the lifecycle continues from there
    await second.retire(t, "a", "x")
    assert (await second.reactivate(t, "a", "y")).version == 2


async def test_two_instances_see_each_others_changes(backend: Backend) -> None:
    t = backend.tenant
    a, b = backend.open(), backend.open()
    start = await b.revision()
    seen: list[int] = []

    async def watch() -> None:
        async for rev in b.watch_revisions(since=start):
            seen.append(rev)
            snap = await b.snapshot()
            if t in snap.tenants and snap.tenants[t].active:
                return

    # The watcher may start before or after the changes: it compares with ``start`` first,
    # so it never misses one either way.
    task = asyncio.create_task(watch())
    await a.put_draft(t, policy_yaml(t), "alice", 0)
    await a.approve(t, "no-debug", 1, "bob")
    await a.activate(t, "no-debug", 1, "carol")
    await asyncio.wait_for(task, DEADLINE_S)
    assert seen and seen == sorted(seen) and len(set(seen)) == len(seen)


async def test_watch_yields_missed_revision_at_once(backend: Backend) -> None:
    t = backend.tenant
    a = backend.open()
    rev = await a.revision()
    await a.put_draft(t, policy_yaml(t), "alice", 0)
    it = a.watch_revisions(since=rev)
    assert await asyncio.wait_for(anext(it), 0.3) == await a.revision()
    await it.aclose()  # type: ignore[attr-defined]


async def test_concurrent_activations_keep_one_active(backend: Backend) -> None:
    t = backend.tenant
    a, b = backend.open(), backend.open()
    await a.put_draft(t, policy_yaml(t), "alice", 0)
    await a.approve(t, "no-debug", 1, "bob")
    await a.put_draft(t, policy_yaml(t, deny="true"), "alice", 1)
    await a.approve(t, "no-debug", 2, "bob")
    await asyncio.gather(a.activate(t, "no-debug", 1, "x"), b.activate(t, "no-debug", 2, "y"))
    statuses = sorted(v.status for v in (await a.history(t, "no-debug")).versions)
    assert statuses == [Status.ACTIVE, Status.RETIRED]


async def test_seed_from_directory(backend: Backend, tmp_path: Path) -> None:
    t = backend.tenant
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.yaml").write_text(policy_yaml(t, "a") + "---\n" + policy_yaml(t, "b")
                              + "status: draft\nauthor: dana\n")
    store = backend.open()
    result = await seed_from_directory(store, d)
    assert sorted(result.created) == [(t, "a"), (t, "b")] and result.skipped == []
    a = await store.get(t, "a")
    assert (a.version, a.status, a.author, a.approver) == (1, Status.ACTIVE, "seed", "seed")
    b = await store.get(t, "b")
    assert (b.status, b.author) == (Status.DRAFT, "dana")
    assert backend.types().count("Policy.Activated") == 1
    rev = await store.revision()

    # a restart seeds nothing new, even if a file changed
    (d / "a.yaml").write_text(policy_yaml(t, "a", "true") + "---\n" + policy_yaml(t, "b"))
    again = await seed_from_directory(backend.open(), d)
    assert again.created == [] and sorted(again.skipped) == [(t, "a"), (t, "b")]
    assert await store.revision() == rev
    assert [v.version for v in (await store.history(t, "a")).versions] == [1]

    # an invalid file seeds nothing at all
    (d / "c.yaml").write_text(policy_yaml(t, "c"))
    (d / "d.yaml").write_text(policy_yaml(t, "d", deny="1 +"))
    with pytest.raises(PolicyError, match=r"rule\.cel\.deny"):
        await seed_from_directory(store, d)
    with pytest.raises(PolicyNotFound):
        await store.get(t, "c")
    assert await seed_from_directory(store, tmp_path / "missing") == type(result)()
