"""One contract suite, run against every policy-store backend (real redis-server processes:
one Redis, and a real three-master Redis Cluster).

``backend`` gives a factory for store instances that share one underlying store (the same
SQLite file / the same Redis), each recording the audit events it emits, plus a fresh tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pdp.policy.store import PolicyStore, RedisPolicyStore, SqlitePolicyStore
from tests.support.procs import RedisCluster, RedisServer


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@dataclass
class Backend:
    name: str
    location: str  # SQLite file path or Redis URL (``?cluster=true``: a Redis Cluster)
    tenant: str = field(default_factory=new_tenant)
    events: list[dict[str, Any]] = field(default_factory=list)
    stores: list[PolicyStore] = field(default_factory=list)

    def open(self, **kwargs: Any) -> PolicyStore:
        """Another store instance on the same underlying storage; its events go to
        ``self.events`` unless ``on_event`` is given."""
        kwargs.setdefault("on_event", self.events.append)
        store: PolicyStore
        if self.name == "sqlite":
            store = SqlitePolicyStore(self.location, **kwargs)
        else:
            store = RedisPolicyStore.from_url(self.location, **kwargs)
        self.stores.append(store)
        return store

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


BACKENDS = ["sqlite", "redis", "cluster"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", str(tmp_path / "policies.db"))
    elif request.param == "redis":
        srv: RedisServer = request.getfixturevalue("redis_srv")
        b = Backend("redis", srv.url)
    else:  # the URL form an operator writes in --policy-store
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        b = Backend("cluster", cluster.url + "?cluster=true")
    try:
        yield b
    finally:
        for s in b.stores:
            await s.close()


@pytest.fixture
async def store(backend: Backend) -> PolicyStore:
    return backend.open()


def policy_yaml(tenant: str, name: str = "no-debug", deny: str = "false",
                description: str = "test policy") -> str:
    return (f"tenant: {tenant}\n"
            f"name: {name}\n"
            f"description: {description}\n"
            "checkpoints: [push]\n"
            "rule:\n"
            "  cel:\n"
            f"    deny: '{deny}'\n")
