"""What the policy stores keep: immutable version records and an append-only transition log.

Both backends store the same JSON form of these records (``to_json`` / ``from_json``), so a
record means the same thing whichever store it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pdp.policy.model import Policy, Status

Event = dict[str, Any]


@dataclass(frozen=True)
class VersionRecord:
    """One version of a custom policy. The YAML text is kept as submitted (comments too);
    ``content_hash`` is the hash of its canonical content (``Policy.content_hash``)."""

    tenant: str
    name: str
    version: int
    status: Status
    yaml: str
    content_hash: str
    author: str
    created_at: float
    approver: str = ""
    approved_at: float | None = None
    activated_by: str = ""
    activated_at: float | None = None
    retired_by: str = ""
    retired_at: float | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["status"] = self.status.value
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> VersionRecord:
        d = json.loads(text)
        d["status"] = Status(d["status"])
        return cls(**d)


@dataclass(frozen=True)
class Transition:
    """One lifecycle step. ``action`` is create | approve | activate | retire | reactivate |
    relax | restore; ``from_status`` is None for a new version. Built-in relax / restore
    steps use the built-in's name and version 0 (ACTIVE -> RETIRED and back)."""

    tenant: str
    name: str
    version: int
    action: str
    from_status: Status | None
    to_status: Status
    actor: str
    at: float
    reason: str = ""

    def to_json(self) -> str:
        d = asdict(self)
        d["from_status"] = self.from_status.value if self.from_status else None
        d["to_status"] = self.to_status.value
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Transition:
        d = json.loads(text)
        d["from_status"] = Status(d["from_status"]) if d["from_status"] else None
        d["to_status"] = Status(d["to_status"])
        return cls(**d)


@dataclass(frozen=True)
class RelaxRequest:
    """A request to relax a built-in for a tenant, waiting for a second admin: the built-in
    stays in force until someone other than ``actor`` approves it."""

    tenant: str
    builtin: str
    actor: str
    at: float
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RelaxRequest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class BuiltinChange:
    """What one relax / approve / restore step writes for one built-in of one tenant: the
    new relaxed flag, the pending request that remains (None: none), the transition and
    the audit events to emit once committed."""

    relaxed: bool
    pending: RelaxRequest | None
    transition: Transition
    events: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class TenantInfo:
    """A known tenant. ``created_by`` is empty for a tenant known only from its state
    (policies, built-in settings) rather than created by an admin."""

    name: str
    created_by: str = ""
    created_at: float | None = None
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TenantInfo:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class PolicyRecord:
    """Everything stored about one policy name: versions (ascending) and transitions (in the
    order they happened). Empty when the policy does not exist."""

    tenant: str
    name: str
    versions: tuple[VersionRecord, ...] = ()
    transitions: tuple[Transition, ...] = ()

    @property
    def exists(self) -> bool:
        return bool(self.versions)

    @property
    def latest(self) -> VersionRecord | None:
        return self.versions[-1] if self.versions else None

    @property
    def latest_version(self) -> int:
        return self.versions[-1].version if self.versions else 0

    @property
    def active(self) -> VersionRecord | None:
        return next((v for v in self.versions if v.status is Status.ACTIVE), None)

    def version(self, number: int) -> VersionRecord | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def pending(self) -> VersionRecord | None:
        """The version evaluated in shadow: the newest version, if it is a DRAFT or APPROVED
        one newer than the active version (an older, never-activated version is stale)."""
        latest = self.latest
        if latest is None or latest.status not in (Status.DRAFT, Status.APPROVED):
            return None
        active = self.active
        return latest if active is None or latest.version > active.version else None


@dataclass(frozen=True)
class Mutation:
    """What one lifecycle operation writes: upserted version records, appended transitions,
    the audit events to emit once it is committed, and the record the caller gets back."""

    versions: tuple[VersionRecord, ...]
    transitions: tuple[Transition, ...]
    events: tuple[Event, ...]
    result: VersionRecord


@dataclass(frozen=True)
class PolicySummary:
    """One row of ``list``. For a custom policy, ``status``/``version``/``approver`` describe
    the active version if there is one, else the latest; ``author`` is the author of the
    latest version (the last author). A relaxed built-in shows as RETIRED, ``relaxed=True``."""

    name: str
    builtin: bool
    status: Status
    version: int
    author: str
    approver: str
    active_version: int | None = None
    latest_version: int = 0
    latest_status: Status | None = None
    relaxed: bool = False
    content_hash: str = ""


@dataclass(frozen=True)
class PolicyHistory:
    tenant: str
    name: str
    builtin: bool
    versions: tuple[VersionRecord, ...]
    transitions: tuple[Transition, ...]


@dataclass(frozen=True)
class TenantSnapshot:
    """What the engine evaluates for one tenant: ``active`` policies block, ``shadow`` ones
    (the pending DRAFT / APPROVED version of a name) only record would-denies."""

    tenant: str
    active: tuple[Policy, ...] = ()
    shadow: tuple[Policy, ...] = ()
    relaxed: frozenset[str] = frozenset()
    #: Whether decisions know the tenant (an admin created it, or something was active or
    #: relaxed): a tenant with drafts only is decided as UNKNOWN_TENANT, as before them.
    known: bool = True

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self.active + self.shadow


@dataclass(frozen=True)
class StoreSnapshot:
    """A consistent view of the whole store at ``revision``."""

    revision: int
    tenants: Mapping[str, TenantSnapshot] = field(default_factory=dict)

    def policies(self) -> list[Policy]:
        """Every policy to evaluate (active and shadow) across tenants, for ``PolicySet``."""
        return [p for t in self.tenants.values() for p in t.policies]

    def known(self) -> frozenset[str]:
        """Tenants decisions know (see ``TenantSnapshot.known``)."""
        return frozenset(name for name, t in self.tenants.items() if t.known)

    def relaxed(self) -> dict[str, frozenset[str]]:
        """Relaxed built-ins per tenant, for ``PolicySet(relaxed=...)``."""
        return {name: t.relaxed for name, t in self.tenants.items() if t.relaxed}
