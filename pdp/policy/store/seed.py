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


async def seed_from_directory(store: PolicyStore, path: str | Path,
                              actor: str = "seed") -> SeedResult:
    directory = Path(path)
    result = SeedResult()
    if not directory.is_dir():
        return result
    policies = load_directory(directory)  # PolicyError (file:line:column) on any problem
    existing: set[tuple[str, str]] = set()
    for tenant in {p.tenant for p in policies}:  # a restart must not re-check 10 000 policies
        existing |= {(tenant, row.name) for row in await store.list(tenant)}
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
