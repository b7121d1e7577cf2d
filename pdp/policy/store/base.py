"""The policy-store interface and the logic both backends share.

A :class:`PolicyStore` keeps every version of every custom policy of every tenant, the
lifecycle transitions between them (who, when), and which built-ins each tenant relaxed.
Nothing is ever deleted. Backends implement a handful of primitives (atomic read-modify-write
of one policy name, reads, the revision counter, change notification); everything else —
input validation, the lifecycle rules (:mod:`pdp.policy.store.lifecycle`), audit events —
lives here so the backends cannot drift apart.

Validation happens before anything is written: the YAML is parsed and checked
(:func:`pdp.policy.loader.load_text`), its tenant must be the call's tenant, its name must not
be a built-in's, and the ``validate`` hook (by default: compile every CEL expression with pdp's
environment, so compile errors come back as ``PolicyError`` with line:column) must pass.

Audit events go to ``on_event`` after the change is committed, in order; an exception from
``on_event`` is logged and swallowed (the change is already durable, and the caller must not
be told it failed).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

from pdp.audit import events as ev
from pdp.cel import Environment, ProgramCache
from pdp.policy.builtins import BUILTIN_NAMES, builtin_policies
from pdp.policy.loader import load_text
from pdp.policy.model import Policy, PolicyError, Status, same_person, validate_name
from pdp.policy.store import lifecycle
from pdp.policy.store.errors import PolicyNotFound, TenantExists, UnknownTenant
from pdp.policy.store.records import (
    BuiltinChange,
    Event,
    Mutation,
    PolicyHistory,
    PolicyRecord,
    PolicySummary,
    RelaxRequest,
    StoreSnapshot,
    TenantInfo,
    TenantSnapshot,
    VersionRecord,
)

#: libyaml's emitter when PyYAML has it: stored sources are written for every seeded policy.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

log = logging.getLogger(__name__)

#: Audit event of :meth:`PolicyStore.create_tenant`.
TENANT_CREATED = "Tenant.Created"

Validator = Callable[[Policy], object]
EventSink = Callable[[Event], None]
MutateFn = Callable[[PolicyRecord], Mutation | None]
#: (relaxed now, pending request) -> what to write, or None for nothing.
BuiltinFn = Callable[[bool, RelaxRequest | None], BuiltinChange | None]


def compile_validator(max_cost: int | None = None,
                      cache: ProgramCache | None = None,
                      env: Environment | None = None) -> Validator:
    """A validator that compiles the policy's CEL with pdp's environment (``env``: the one
    the server evaluates with, size caps included; raises PolicyError with line:column on a
    compile error, or when the estimated cost exceeds ``max_cost``)."""
    from pdp.cel.env import pdp_environment
    from pdp.policy.compiled import compile_policy

    programs = cache if cache is not None else ProgramCache(maxsize=1000)
    environment = env if env is not None else pdp_environment()

    def validate(policy: Policy) -> object:
        return compile_policy(policy, environment, programs, max_cost=max_cost)

    return validate


@dataclass(frozen=True)
class TenantState:
    """A tenant's stored state; records may come without transitions (cheap reads)."""

    records: Mapping[str, PolicyRecord]
    relaxed: frozenset[str]
    #: Relax requests waiting for a second admin, by built-in.
    pending: Mapping[str, RelaxRequest] = dataclasses.field(default_factory=dict)


class PolicyStore(abc.ABC):
    """Async policy store. All operations take the tenant; mutations take the actor."""

    def __init__(self, *, validate: Validator | None = None,
                 on_event: EventSink | None = None,
                 tenants: Collection[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``validate``: run on every new version before it is written (default:
        :func:`compile_validator`). ``tenants``: if given, the only tenants the store accepts
        (others raise ``UnknownTenant``). ``clock``: the time transitions are stamped with."""
        self.validate: Validator = validate if validate is not None else compile_validator()
        self.on_event = on_event
        self.known_tenants = frozenset(tenants) if tenants is not None else None
        self.clock = clock
        self._parsed: dict[tuple[str, str, int, str], Policy] = {}

    # ---------------------------------------------------------------- backend primitives

    @abc.abstractmethod
    async def _mutate(self, tenant: str, name: str, fn: MutateFn) -> Mutation | None:
        """Atomically: read the record of ``name`` (with transitions), call ``fn`` (pure; it
        may run more than once; an exception aborts with nothing written), write its
        mutation (if any), register the tenant and bump the revision."""

    @abc.abstractmethod
    async def _update_builtin(self, tenant: str, builtin: str,
                              fn: BuiltinFn) -> BuiltinChange | None:
        """Atomically: read the built-in's relaxed flag and pending request, call ``fn``
        (pure; may run more than once; an exception aborts with nothing written) and write
        its change (flag, pending request, transition), registering the tenant and bumping
        the revision."""

    @abc.abstractmethod
    async def _create_tenant(self, info: TenantInfo) -> bool:
        """Atomically register ``info.name`` with its creation record and bump the revision;
        False (nothing written) when it has a creation record already. (A tenant holding
        only drafts has none: creating it is what makes it known.)"""

    @abc.abstractmethod
    async def _tenant_infos(self) -> dict[str, TenantInfo]:
        """Creation records of the tenants an admin created, by name."""

    @abc.abstractmethod
    async def _read_record(self, tenant: str, name: str) -> PolicyRecord:
        """Versions and transitions of one name (empty record if none)."""

    @abc.abstractmethod
    async def _read_tenant(self, tenant: str) -> TenantState:
        """Every record of a tenant (transitions may be omitted) and its relaxed built-ins."""

    @abc.abstractmethod
    async def _read_all(self) -> tuple[int, dict[str, TenantState]]:
        """A consistent read of every tenant at one revision."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store revision: increases with every committed change."""

    @abc.abstractmethod
    async def tenants(self) -> list[str]:
        """Every tenant with stored state (policies or built-in settings), sorted."""

    @abc.abstractmethod
    def watch_revisions(self, since: int | None = None) -> AsyncIterator[int]:
        """Yield the store revision each time it changes (seen within ~1 s, also for
        changes made by other processes). With ``since``, a revision already past it is
        yielded at once (so nothing between a ``snapshot()`` and the watch is missed)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> PolicyStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- lifecycle

    async def put_draft(self, tenant: str, source: str | Policy, actor: str,
                        expected_version: int, *,
                        validate: Validator | None = None) -> VersionRecord:
        """A new DRAFT version of the policy in ``source`` (YAML text of one policy, or a
        parsed ``Policy``): version ``expected_version + 1``, authored by ``actor``.

        ``expected_version`` must be the latest version number (0 to create the policy), else
        ``StaleVersion``. Invalid content -> ``PolicyError``. Lifecycle fields in the YAML
        (status, version, author, approver) are the store's: YAML text that claims what the
        store will not record (``status: active``, another author, any approver, another
        version) is refused, naming the field. Kept in the stored text, such a claim would
        show in ``pdp policy get`` as if it were so, and a copy of it put in a policy
        directory would be seeded as it claims."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        if not isinstance(expected_version, int) or expected_version < 0:
            raise PolicyError(f"expected_version must be an integer >= 0, got"
                              f" {expected_version!r}", field_path="expected_version")
        policy, text = self._parse_source(tenant, source)
        if isinstance(source, str):
            _check_lifecycle_claims(policy, actor, expected_version + 1)
        (validate or self.validate)(policy)
        now = self.clock()

        def fn(rec: PolicyRecord) -> Mutation:
            return lifecycle.new_draft(rec, text, policy.content_hash, actor, expected_version,
                                       now)

        return await self._apply(tenant, policy.name, fn)

    async def approve(self, tenant: str, name: str, version: int, actor: str) -> VersionRecord:
        """DRAFT -> APPROVED; ``FourEyesViolation`` if ``actor`` wrote that version."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_name(name)
        now = self.clock()
        return await self._apply(tenant, name,
                                 lambda rec: lifecycle.approve(rec, version, actor, now))

    async def activate(self, tenant: str, name: str, version: int,
                       actor: str) -> VersionRecord:
        """APPROVED -> ACTIVE; the previously active version becomes RETIRED (superseded)."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_name(name)
        now = self.clock()
        return await self._apply(tenant, name,
                                 lambda rec: lifecycle.activate(rec, version, actor, now))

    async def retire(self, tenant: str, name: str, actor: str, *,
                     reason: str = "") -> VersionRecord:
        """The active version -> RETIRED (it is no longer evaluated)."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_name(name)
        now = self.clock()
        return await self._apply(tenant, name,
                                 lambda rec: lifecycle.retire(rec, actor, now, reason))

    async def reactivate(self, tenant: str, name: str, actor: str, *,
                         reason: str = "") -> VersionRecord:
        """The most recently retired version -> ACTIVE (only while no version is active)."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_name(name)
        now = self.clock()
        return await self._apply(tenant, name,
                                 lambda rec: lifecycle.reactivate(rec, actor, now, reason))

    async def seed_policy(self, policy: Policy, actor: str = "seed", *,
                          yaml_text: str | None = None) -> VersionRecord | None:
        """Store ``policy`` as version 1 in its YAML ``status`` (ACTIVE by default) unless a
        policy of that name exists already (then None: seeding never adds versions)."""
        self._check_tenant(policy.tenant)
        actor = _check_actor(actor)
        given = policy
        if given.status is not Status.DRAFT and (given.author or given.approver) and (
                problem := lifecycle.seed_approval_problem(given.author, given.approver,
                                                           actor)) is not None:
            # Refused before anything is read or written, naming the file (the loader
            # refuses a YAML naming one person twice already, at the approver's line).
            raise PolicyError(problem, field_path="approver", source=given.source)
        policy, text = self._parse_source(policy.tenant,
                                          yaml_text if yaml_text is not None else policy)
        self.validate(policy)
        now = self.clock()

        def fn(rec: PolicyRecord) -> Mutation | None:
            return lifecycle.seed(rec, text, policy.content_hash, given.status, given.author,
                                  given.approver, actor, now)

        mutation = await self._mutate(policy.tenant, policy.name, fn)
        if mutation is None:
            return None
        self._emit(mutation.events)
        return mutation.result

    async def request_builtin_relax(self, tenant: str, builtin: str, actor: str, *,
                                    reason: str) -> RelaxRequest:
        """Ask to relax a built-in for ``tenant``; it stays in force until another admin
        approves (:meth:`approve_builtin_relax`). ``InvalidTransition`` if it is relaxed or
        a request is pending already."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_builtin(builtin)
        if not reason.strip():
            raise PolicyError("justification: required to relax a built-in",
                              field_path="justification")
        now = self.clock()
        change = await self._apply_builtin(tenant, builtin, lambda relaxed, pending:
                                           lifecycle.request_relax(tenant, builtin, relaxed,
                                                                   pending, actor, reason,
                                                                   now))
        assert change is not None and change.pending is not None
        return change.pending

    async def approve_builtin_relax(self, tenant: str, builtin: str, actor: str) -> None:
        """Relax the built-in as requested; ``FourEyesViolation`` if ``actor`` asked."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_builtin(builtin)
        now = self.clock()
        await self._apply_builtin(tenant, builtin, lambda relaxed, pending:
                                  lifecycle.approve_relax(tenant, builtin, relaxed, pending,
                                                          actor, now))

    async def restore_builtin(self, tenant: str, builtin: str, actor: str, *,
                              reason: str = "") -> bool:
        """Put the built-in back in force at once (one admin suffices: it only tightens),
        withdrawing a pending request. Returns whether anything changed."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        _check_builtin(builtin)
        now = self.clock()
        change = await self._apply_builtin(tenant, builtin, lambda relaxed, pending:
                                           lifecycle.restore(tenant, builtin, relaxed,
                                                             pending, actor, reason, now))
        return change is not None

    async def create_tenant(self, tenant: str, actor: str, *, reason: str = "") -> TenantInfo:
        """Make ``tenant`` known (decisions for it are no longer UNKNOWN_TENANT), audited as
        ``Tenant.Created``. ``TenantExists`` when it is known already."""
        self._check_tenant(tenant)
        actor = _check_actor(actor)
        now = self.clock()
        info = TenantInfo(tenant, actor, now, reason)
        if tenant in await self.tenants() and _known(await self._read_tenant(tenant)):
            raise TenantExists(f"tenant {tenant!r} exists already")
        if not await self._create_tenant(info):
            raise TenantExists(f"tenant {tenant!r} exists already")
        self._emit(({"type": TENANT_CREATED, "time": ev.format_time(now), "tenant": tenant,
                     "actor": actor, "reason": reason},))
        return info

    async def list_tenants(self) -> list[TenantInfo]:
        """Every known tenant, sorted: created ones with their creation record."""
        infos = await self._tenant_infos()
        return [infos.get(name) or TenantInfo(name) for name in await self.tenants()]

    async def _apply_builtin(self, tenant: str, builtin: str,
                             fn: BuiltinFn) -> BuiltinChange | None:
        change = await self._update_builtin(tenant, builtin, fn)
        if change is not None:
            self._emit(change.events)
        return change

    # ---------------------------------------------------------------- reads

    async def get(self, tenant: str, name: str, version: int | None = None) -> VersionRecord:
        """One version (default: the latest). ``PolicyNotFound`` if there is none."""
        self._check_tenant(tenant)
        _check_name(name)
        rec = await self._read_record(tenant, name)
        if not rec.exists and name in BUILTIN_NAMES:
            raise PolicyNotFound(f"{name!r} is a built-in policy: it has no stored versions"
                                 " (relax or restore it per tenant)")
        return lifecycle._require(rec, version)

    async def list(self, tenant: str) -> list[PolicySummary]:
        """Built-ins (first) and custom policies of ``tenant``, sorted by name."""
        self._check_tenant(tenant)
        state = await self._read_tenant(tenant)
        rows = [PolicySummary(name=b.name, builtin=True,
                              status=Status.RETIRED if b.name in state.relaxed else Status.ACTIVE,
                              version=b.version, author="", approver="",
                              active_version=None if b.name in state.relaxed else b.version,
                              latest_version=b.version, relaxed=b.name in state.relaxed,
                              content_hash=b.content_hash)
                for b in sorted(builtin_policies(), key=lambda p: p.name)]
        for name in sorted(state.records):
            rec = state.records[name]
            latest, active = rec.latest, rec.active
            if latest is None:
                continue
            shown = active or latest
            rows.append(PolicySummary(
                name=name, builtin=False, status=shown.status, version=shown.version,
                author=latest.author, approver=shown.approver,
                active_version=active.version if active else None,
                latest_version=latest.version, latest_status=latest.status,
                content_hash=shown.content_hash))
        return rows

    async def history(self, tenant: str, name: str) -> PolicyHistory:
        """Every version and every transition of ``name`` (for a built-in: relax/restore)."""
        self._check_tenant(tenant)
        _check_name(name)
        rec = await self._read_record(tenant, name)
        builtin = name in BUILTIN_NAMES
        if not rec.exists and not builtin:
            raise PolicyNotFound(f"tenant {tenant!r} has no policy {name!r}")
        return PolicyHistory(tenant, name, builtin, rec.versions, rec.transitions)

    async def relaxed_builtins(self, tenant: str) -> frozenset[str]:
        self._check_tenant(tenant)
        return (await self._read_tenant(tenant)).relaxed

    async def pending_relaxations(self, tenant: str) -> dict[str, RelaxRequest]:
        """Relax requests of ``tenant`` waiting for a second admin, by built-in."""
        self._check_tenant(tenant)
        return dict((await self._read_tenant(tenant)).pending)

    async def snapshot(self) -> StoreSnapshot:
        """What the engine evaluates, consistently at one revision: per tenant the ACTIVE
        versions, the pending (newest DRAFT / APPROVED) version per name for shadow
        evaluation, and the relaxed built-ins."""
        revision, states = await self._read_all()
        created = await self._tenant_infos()
        tenants: dict[str, TenantSnapshot] = {}
        for tenant, state in states.items():
            active: list[Policy] = []
            shadow: list[Policy] = []
            for name in sorted(state.records):
                rec = state.records[name]
                if (a := rec.active) is not None:
                    active.append(self.policy_of(a))
                if (p := rec.pending) is not None:
                    shadow.append(self.policy_of(p))
            # Known for decisions: created by an admin, built-in settings, or a version that
            # was active once (an admin activated it). Drafts alone (an author's) are not.
            known = tenant in created or _known(state)
            tenants[tenant] = TenantSnapshot(tenant, tuple(active), tuple(shadow), state.relaxed,
                                             known)
        return StoreSnapshot(revision, tenants)

    def policy_of(self, record: VersionRecord) -> Policy:
        """The ``Policy`` of a stored version, with its lifecycle fields filled in."""
        key = (record.tenant, record.name, record.version, record.content_hash)
        base = self._parsed.get(key)
        if base is None:
            source = f"{record.tenant}/{record.name}@v{record.version}"
            base = load_text(record.yaml, source)[0]
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            self._parsed[key] = base
        return dataclasses.replace(base, status=record.status, version=record.version,
                                   author=record.author, approver=record.approver)

    # ---------------------------------------------------------------- helpers

    async def _apply(self, tenant: str, name: str, fn: MutateFn) -> VersionRecord:
        mutation = await self._mutate(tenant, name, fn)
        assert mutation is not None
        self._emit(mutation.events)
        return mutation.result

    def _emit(self, events: Collection[Event]) -> None:
        if self.on_event is None:
            return
        for event in events:
            try:
                self.on_event(event)
            except Exception:  # the change is committed; never report it as failed
                log.exception("policy store on_event callback failed for %s",
                              event.get("type"))

    def _check_tenant(self, tenant: str) -> None:
        if (problem := validate_name(tenant)) is not None:
            raise PolicyError(f"invalid tenant {tenant!r}: {problem}", field_path="tenant")
        if self.known_tenants is not None and tenant not in self.known_tenants:
            raise UnknownTenant(f"unknown tenant {tenant!r}")

    def _parse_source(self, tenant: str, source: str | Policy) -> tuple[Policy, str]:
        if isinstance(source, Policy):
            text = yaml.dump(_plain(source.spec), Dumper=_Dumper, sort_keys=False,
                             allow_unicode=True)
            where = source.source or f"{tenant}/{source.name}"
        elif isinstance(source, str):
            text, where = source, f"{tenant}/<draft>"
        else:
            raise PolicyError(f"expected YAML text or a Policy, got {type(source).__name__}")
        policies = load_text(text, where, default_status=Status.DRAFT)
        if len(policies) != 1:
            raise PolicyError(f"expected exactly one policy, found {len(policies)}",
                              source=where)
        policy = policies[0]
        if policy.tenant != tenant:
            raise PolicyError(f"the policy is for tenant {policy.tenant!r}, not {tenant!r}",
                              source=where, field_path="tenant")
        if policy.name in BUILTIN_NAMES:
            raise PolicyError(f"{policy.name!r} is the name of a built-in policy; built-ins"
                              " cannot be replaced, only relaxed", source=where,
                              field_path="name")
        return policy, text


def _check_lifecycle_claims(policy: Policy, actor: str, version: int) -> None:
    """Refuse lifecycle fields in a draft's text that say other than what the store records
    for it (see ``put_draft``)."""
    def refuse(field: str, what: str) -> NoReturn:
        raise PolicyError(f"{what}: lifecycle fields are the store's (PutDraft stores version"
                          f" {version}, a draft written by {actor!r}); remove the line",
                          source=policy.source, field_path=field)
    if policy.status is not Status.DRAFT:
        refuse("status", f"status {policy.status.value!r} claimed")
    if policy.author and not same_person(policy.author, actor):
        refuse("author", f"author {policy.author!r} claimed")
    if policy.approver:
        refuse("approver", f"approver {policy.approver!r} claimed")
    if policy.version not in (1, version):
        refuse("version", f"version {policy.version} claimed")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise PolicyError("actor is required: who makes the change", field_path="actor")
    return actor.strip()


def _check_builtin(builtin: str) -> None:
    if builtin not in BUILTIN_NAMES:
        raise PolicyNotFound(f"no built-in policy {builtin!r}; built-ins are "
                             + ", ".join(sorted(BUILTIN_NAMES)))


def _check_name(name: str) -> None:
    if (problem := validate_name(name)) is not None:
        raise PolicyError(f"invalid policy name {name!r}: {problem}", field_path="name")


def _known(state: TenantState) -> bool:
    """Known for decisions without a creation record: built-in settings, or a version that
    was active once (an admin activated it). Drafts alone (an author's) are not."""
    return (bool(state.relaxed) or bool(state.pending)
            or any(v.status in (Status.ACTIVE, Status.RETIRED)
                   for rec in state.records.values() for v in rec.versions))
