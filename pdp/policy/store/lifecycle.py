"""The lifecycle rules, as pure functions shared by every backend.

Each function takes the current :class:`PolicyRecord` of one policy name and returns the
:class:`Mutation` to write, or raises (and then nothing is written). Backends call them inside
their transaction (SQLite) or optimistic WATCH loop (Redis, where they may run more than once).

Lifecycle::

    put_draft:   (none) -> v1 DRAFT;  latest vN -> vN+1 DRAFT (any status of vN)
    approve:     DRAFT -> APPROVED    (approver != the version's author: four eyes)
    activate:    APPROVED -> ACTIVE   (the previously ACTIVE version of the name -> RETIRED,
                                       reason "superseded by vN": exactly one active version)
    retire:      the ACTIVE version -> RETIRED
    reactivate:  the most recently retired version -> ACTIVE (only while none is active)

Built-ins, per tenant (four eyes on switching a guardrail off, none on switching it on)::

    request_relax:  in force -> in force, with a pending request by admin A
    approve_relax:  pending (A) -> relaxed, approved by admin B != A
    restore:        relaxed or pending -> in force at once (one admin; withdraws a request)

Superseding is recorded as RETIRED (there is no separate status): a superseded version is
indistinguishable from a retired one except by its transition's reason, and ``reactivate``
after ``retire`` brings back the version that was last retired, not an older superseded one.
Older DRAFT / APPROVED versions stay as they are; only the newest pending version runs in
shadow (:attr:`PolicyRecord.pending`), but an older APPROVED version may still be activated.
"""

from __future__ import annotations

import dataclasses

from pdp.audit import events as ev
from pdp.policy.model import PolicyError, Status, four_eyes_problem, same_person
from pdp.policy.store.errors import (
    FourEyesViolation,
    InvalidTransition,
    PolicyNotFound,
    StaleVersion,
)
from pdp.policy.store.records import (
    BuiltinChange,
    Mutation,
    PolicyRecord,
    RelaxRequest,
    Transition,
    VersionRecord,
)


def _require(rec: PolicyRecord, version: int | None = None) -> VersionRecord:
    if not rec.exists:
        raise PolicyNotFound(f"tenant {rec.tenant!r} has no policy {rec.name!r}")
    if version is None:
        latest = rec.latest
        assert latest is not None
        return latest
    found = rec.version(version)
    if found is None:
        raise PolicyNotFound(f"policy {rec.name!r} of tenant {rec.tenant!r} has no version"
                             f" {version} (latest is {rec.latest_version})")
    return found


def new_draft(rec: PolicyRecord, yaml_text: str, content_hash: str, actor: str,
              expected_version: int, now: float) -> Mutation:
    if expected_version != rec.latest_version:
        raise StaleVersion(rec.tenant, rec.name, expected_version, rec.latest_version)
    version = rec.latest_version + 1
    record = VersionRecord(tenant=rec.tenant, name=rec.name, version=version,
                           status=Status.DRAFT, yaml=yaml_text, content_hash=content_hash,
                           author=actor, created_at=now)
    t = Transition(rec.tenant, rec.name, version, "create", None, Status.DRAFT, actor, now)
    event = ev.policy_created(rec.tenant, rec.name, version, actor,
                              content_hash=content_hash, time=now)
    return Mutation((record,), (t,), (event,), record)


def approve(rec: PolicyRecord, version: int, actor: str, now: float) -> Mutation:
    v = _require(rec, version)
    if v.status is not Status.DRAFT:
        raise InvalidTransition(f"policy {rec.name!r} version {version} is {v.status.value};"
                                " only a draft can be approved")
    if same_person(v.author, actor):
        raise FourEyesViolation(f"{actor!r} wrote version {version} of policy {rec.name!r} and"
                                " cannot approve it: approval must come from someone else")
    new = dataclasses.replace(v, status=Status.APPROVED, approver=actor, approved_at=now)
    t = Transition(rec.tenant, rec.name, version, "approve", Status.DRAFT, Status.APPROVED,
                   actor, now)
    event = ev.policy_approved(rec.tenant, rec.name, version, actor, author=v.author,
                               content_hash=v.content_hash, time=now)
    return Mutation((new,), (t,), (event,), new)


def activate(rec: PolicyRecord, version: int, actor: str, now: float) -> Mutation:
    v = _require(rec, version)
    if v.status is not Status.APPROVED:
        hint = " (approve it first)" if v.status is Status.DRAFT else ""
        raise InvalidTransition(f"policy {rec.name!r} version {version} is {v.status.value};"
                                f" only an approved version can be activated{hint}")
    versions: list[VersionRecord] = []
    transitions: list[Transition] = []
    events: list[ev.Event] = []
    old = rec.active
    if old is not None:
        reason = f"superseded by version {version}"
        versions.append(dataclasses.replace(old, status=Status.RETIRED, retired_by=actor,
                                            retired_at=now))
        transitions.append(Transition(rec.tenant, rec.name, old.version, "retire",
                                      Status.ACTIVE, Status.RETIRED, actor, now, reason))
        events.append(ev.policy_retired(rec.tenant, rec.name, old.version, actor,
                                        reason=reason, time=now))
    new = dataclasses.replace(v, status=Status.ACTIVE, activated_by=actor, activated_at=now)
    versions.append(new)
    transitions.append(Transition(rec.tenant, rec.name, version, "activate", Status.APPROVED,
                                  Status.ACTIVE, actor, now))
    events.append(ev.policy_activated(rec.tenant, rec.name, version, actor,
                                      content_hash=v.content_hash, time=now))
    return Mutation(tuple(versions), tuple(transitions), tuple(events), new)


def retire(rec: PolicyRecord, actor: str, now: float, reason: str = "") -> Mutation:
    _require(rec)
    v = rec.active
    if v is None:
        raise InvalidTransition(f"policy {rec.name!r} of tenant {rec.tenant!r} has no active"
                                " version to retire")
    new = dataclasses.replace(v, status=Status.RETIRED, retired_by=actor, retired_at=now)
    t = Transition(rec.tenant, rec.name, v.version, "retire", Status.ACTIVE, Status.RETIRED,
                   actor, now, reason)
    event = ev.policy_retired(rec.tenant, rec.name, v.version, actor, reason=reason, time=now)
    return Mutation((new,), (t,), (event,), new)


def last_retired(rec: PolicyRecord) -> VersionRecord | None:
    """The version whose most recent retirement is the latest one and that is still retired."""
    for t in reversed(rec.transitions):
        if t.to_status is Status.RETIRED:
            v = rec.version(t.version)
            if v is not None and v.status is Status.RETIRED:
                return v
    return None


def reactivate(rec: PolicyRecord, actor: str, now: float, reason: str = "") -> Mutation:
    _require(rec)
    active = rec.active
    if active is not None:
        raise InvalidTransition(f"policy {rec.name!r} of tenant {rec.tenant!r} is active"
                                f" (version {active.version}); retire it before reactivating")
    v = last_retired(rec)
    if v is None:
        raise InvalidTransition(f"policy {rec.name!r} of tenant {rec.tenant!r} has no retired"
                                " version to reactivate")
    new = dataclasses.replace(v, status=Status.ACTIVE, activated_by=actor, activated_at=now)
    t = Transition(rec.tenant, rec.name, v.version, "reactivate", Status.RETIRED,
                   Status.ACTIVE, actor, now, reason)
    event = ev.policy_reactivated(rec.tenant, rec.name, v.version, actor,
                                  content_hash=v.content_hash, reason=reason, time=now)
    return Mutation((new,), (t,), (event,), new)


def seed(rec: PolicyRecord, yaml_text: str, content_hash: str, status: Status, author: str,
         approver: str, actor: str, now: float) -> Mutation | None:
    """Version 1 of a policy from the YAML directory, directly in ``status`` (the directory is
    reviewed where it is kept), or None when the policy already exists (seeding never
    creates new versions of a stored policy).

    The version's author and approver are the YAML's, else the seeding ``actor``; a YAML
    that names one person as both (or names the seeding actor as one and leaves the other
    to it) is refused (``PolicyError``, field ``approver``): the record would claim an
    approval four eyes refuses."""
    if rec.exists:
        return None
    if status is not Status.DRAFT and (author or approver) and (
            problem := seed_approval_problem(author, approver, actor)) is not None:
        raise PolicyError(problem, field_path="approver")
    record = VersionRecord(tenant=rec.tenant, name=rec.name, version=1, status=Status.DRAFT,
                           yaml=yaml_text, content_hash=content_hash, author=author or actor,
                           created_at=now)
    transitions = [Transition(rec.tenant, rec.name, 1, "create", None, Status.DRAFT, actor, now,
                              "seeded from the policy directory")]
    events: list[ev.Event] = [ev.policy_created(rec.tenant, rec.name, 1, actor,
                                                content_hash=content_hash, time=now)]
    steps = {Status.DRAFT: (), Status.APPROVED: (Status.APPROVED,),
             Status.ACTIVE: (Status.APPROVED, Status.ACTIVE),
             Status.RETIRED: (Status.APPROVED, Status.ACTIVE, Status.RETIRED)}[status]
    prev = Status.DRAFT
    for step in steps:
        if step is Status.APPROVED:
            record = dataclasses.replace(record, status=step, approver=approver or actor,
                                         approved_at=now)
            events.append(ev.policy_approved(rec.tenant, rec.name, 1, actor,
                                             author=record.author, content_hash=content_hash,
                                             time=now))
        elif step is Status.ACTIVE:
            record = dataclasses.replace(record, status=step, activated_by=actor,
                                         activated_at=now)
            events.append(ev.policy_activated(rec.tenant, rec.name, 1, actor,
                                              content_hash=content_hash, time=now))
        else:
            record = dataclasses.replace(record, status=step, retired_by=actor, retired_at=now)
            events.append(ev.policy_retired(rec.tenant, rec.name, 1, actor,
                                            reason="seeded as retired", time=now))
        action = {Status.APPROVED: "approve", Status.ACTIVE: "activate",
                  Status.RETIRED: "retire"}[step]
        transitions.append(Transition(rec.tenant, rec.name, 1, action, prev, step, actor, now,
                                      "seeded from the policy directory"))
        prev = step
    return Mutation((record,), tuple(transitions), tuple(events), record)


def seed_approval_problem(author: str, approver: str, actor: str) -> str | None:
    """Why a seeded version with this YAML ``author`` / ``approver`` (empty: the seeding
    ``actor``) claims an approval four eyes refuses, or None."""
    return four_eyes_problem(author or actor, approver or actor)


# --- built-ins ------------------------------------------------------------------------------

def _builtin_event(type_: str, tenant: str, builtin: str, actor: str, now: float,
                   **extra: object) -> ev.Event:
    return {"type": type_, "time": ev.format_time(now), "tenant": tenant, "builtin": builtin,
            "actor": actor, **extra}


RELAX_REQUESTED = "Tenant.BuiltinRelaxRequested"


def request_relax(tenant: str, builtin: str, relaxed: bool, pending: RelaxRequest | None,
                  actor: str, reason: str, now: float) -> BuiltinChange:
    """Record a relax request; the built-in stays in force until another admin approves."""
    if relaxed:
        raise InvalidTransition(f"built-in {builtin!r} is already relaxed for tenant"
                                f" {tenant!r}")
    if pending is not None:
        raise InvalidTransition(
            f"relaxing built-in {builtin!r} for tenant {tenant!r} was already requested by"
            f" {pending.actor!r}: another admin approves it, or restore withdraws it")
    request = RelaxRequest(tenant, builtin, actor, now, reason)
    t = Transition(tenant, builtin, 0, "request-relax", Status.ACTIVE, Status.ACTIVE, actor,
                   now, reason)
    event = _builtin_event(RELAX_REQUESTED, tenant, builtin, actor, now, reason=reason)
    return BuiltinChange(False, request, t, (event,))


def approve_relax(tenant: str, builtin: str, relaxed: bool, pending: RelaxRequest | None,
                  actor: str, now: float) -> BuiltinChange:
    """Apply a pending request; ``FourEyesViolation`` when its requester approves."""
    if pending is None:
        state = "is relaxed already" if relaxed else "has no pending relax request"
        raise InvalidTransition(f"built-in {builtin!r} of tenant {tenant!r} {state}")
    if same_person(pending.actor, actor):
        raise FourEyesViolation(f"{actor!r} requested relaxing {builtin!r} and cannot approve"
                                " it: approval must come from another admin")
    reason = f"{pending.reason} (requested by {pending.actor})".strip()
    t = Transition(tenant, builtin, 0, "relax", Status.ACTIVE, Status.RETIRED, actor, now,
                   reason)
    event = _builtin_event(ev.BUILTIN_RELAXED, tenant, builtin, actor, now,
                           reason=pending.reason, relaxed=True, requested_by=pending.actor)
    return BuiltinChange(True, None, t, (event,))


def restore(tenant: str, builtin: str, relaxed: bool, pending: RelaxRequest | None,
            actor: str, reason: str, now: float) -> BuiltinChange | None:
    """Back in force at once; a pending request is withdrawn. None: nothing to do."""
    if not relaxed and pending is None:
        return None
    extra: dict[str, object] = {"reason": reason, "relaxed": False}
    if pending is not None:
        extra["withdrawn_request_by"] = pending.actor
    t = Transition(tenant, builtin, 0, "restore" if relaxed else "withdraw-relax",
                   Status.RETIRED if relaxed else Status.ACTIVE, Status.ACTIVE, actor, now,
                   reason)
    event = _builtin_event(ev.BUILTIN_RELAXED, tenant, builtin, actor, now, **extra)
    return BuiltinChange(False, None, t, (event,))
