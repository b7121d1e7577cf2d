"""Seed a policy store from the YAML policy directory.

Only policies the store does not have yet are stored (as version 1, in the status the YAML
gives — ACTIVE by default — with the YAML's author / approver or the seeding actor). A policy
that exists in the store is left alone even if its file changed: once a policy is in the store,
the store (and its four-eyes lifecycle) is the source of truth, and a restart never creates
new versions. Change a seeded policy through the lifecycle (``put_draft`` ...), not the file.

Everything is parsed and validated first; if any file is invalid nothing is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pdp.policy.loader import load_directory
from pdp.policy.store.base import PolicyStore


@dataclass
class SeedResult:
    created: list[tuple[str, str]] = field(default_factory=list)  # (tenant, name)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # already in the store
    #: Skipped although the file says otherwise than the store's version: (tenant, name,
    #: the file and line, the store's version). The store's stays in force; said at start-up
    #: so an edited file is not taken for an applied change.
    differs: list[tuple[str, str, str, int]] = field(default_factory=list)


async def seed_from_directory(store: PolicyStore, path: str | Path,
                              actor: str = "seed") -> SeedResult:
    directory = Path(path)
    result = SeedResult()
    if not directory.is_dir():
        return result
    policies = load_directory(directory)  # PolicyError (file:line:column) on any problem
    existing: set[tuple[str, str]] = set()
    in_store: dict[tuple[str, str], tuple[str, int]] = {}
    for tenant in {p.tenant for p in policies}:  # a restart must not re-check 10 000 policies
        for row in await store.list(tenant):
            existing.add((tenant, row.name))
            if not row.builtin:
                in_store[(tenant, row.name)] = (row.content_hash, row.latest_version)
    for p in policies:
        hit = in_store.get((p.tenant, p.name))
        if hit is not None and hit[0] and hit[0] != p.content_hash:
            result.differs.append((p.tenant, p.name, p.source, hit[1]))
    result.skipped.extend((p.tenant, p.name) for p in policies if (p.tenant, p.name) in existing)
    policies = [p for p in policies if (p.tenant, p.name) not in existing]
    for policy in policies:  # validate all before writing any
        store._check_tenant(policy.tenant)
        store.validate(policy)
    for policy in policies:
        stored = await store.seed_policy(policy, actor)
        (result.created if stored is not None else result.skipped).append(
            (policy.tenant, policy.name))
    return result
