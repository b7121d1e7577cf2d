"""Redis policy store: one shared store for a fleet of sidecars, on one Redis or a Redis Cluster.

Keys (records are the same JSON the SQLite store keeps); ``T`` is the tenant prefix and ``G``
the store's global prefix, which depend on the deployment (below)::

    T:rev               tenant change counter (the WATCH target)
    T:names             set of custom policy names
    T:v:<name>          hash: version number -> VersionRecord JSON
    T:t:<name>          list: Transition JSON, append-only, in order
    T:relaxed           set of relaxed built-ins
    T:relax_requests    hash: built-in -> pending RelaxRequest JSON
    G:revision          store revision (every change increments it)
    G:tenants           set of tenants with stored state (or created)
    G:tenant_info       hash: tenant -> TenantInfo JSON (created by an admin)

One Redis: ``T`` = ``pdp:{<tenant>}:policy``, ``G`` = ``pdp:{pdp-policy}`` (the layout
existing stores have; it is kept so they need no migration).

Redis Cluster (``cluster=True``, or ``?cluster=true`` on the URL): every key of the store
carries the one hash tag ``{pdp-policies}``: ``T`` = ``pdp:{pdp-policies}:policy:t:<tenant>``
(tenant escaped as counter keys are), ``G`` = ``pdp:{pdp-policies}:policy``. A change writes
its tenant's keys *and* the global revision and tenant set in one MULTI/EXEC, and a snapshot
WATCHes the global revision while it reads every tenant: Redis Cluster runs a transaction
(and WATCH) only on keys of one slot, so the whole store lives in one slot, on one master.
That costs nothing that matters: the store is small and written by people (policy
lifecycle), read once per change by each sidecar; the decision load is the counters', and
their keys spread over the cluster by tenant. A tenant named ``pdp-policies`` cannot
collide: counter keys never use the ``policy`` component.

Atomicity: a change WATCHes the tenant's ``rev`` key, reads the policy, applies the shared
lifecycle rule in Python and writes everything — versions, transitions, both counters — in
one MULTI/EXEC. A concurrent change of the same tenant makes EXEC fail and the change is
retried on fresh data; a rule violation raises before MULTI, so nothing is written.

Notification: after each change the new revision is PUBLISHed on ``pdp:policy:changes``;
``watch_revisions`` listens there and also polls the revision key every 0.5 s, so a lost
message (or a reconnect) delays a reload by at most that long. Classic (not sharded) pub/sub
works on a cluster too: a PUBLISH on any node reaches subscribers on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, WatchError

from pdp.counters.keys import esc
from pdp.policy.store.base import BuiltinFn, MutateFn, PolicyStore, TenantState
from pdp.policy.store.errors import StoreUnavailable
from pdp.policy.store.records import (
    BuiltinChange,
    Mutation,
    PolicyRecord,
    RelaxRequest,
    TenantInfo,
    Transition,
    VersionRecord,
)

T = TypeVar("T")

GLOBAL = "pdp:{pdp-policy}"
#: Every key of a store on Redis Cluster carries this hash tag: one slot (see above).
CLUSTER_TAG = "{pdp-policies}"
CLUSTER_GLOBAL = f"pdp:{CLUSTER_TAG}:policy"
CHANNEL = "pdp:policy:changes"
POLL_INTERVAL = 0.5
_TRUE = ("1", "true", "yes", "on")


def split_cluster_flag(url: str) -> tuple[str, bool | None]:
    """``url`` without its ``cluster`` query parameter, and that parameter's value (None
    when absent): ``redis://node:6379/0?cluster=true`` names a Redis Cluster, so the
    ``policy_store`` setting alone says what the store is."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [v for k, v in query if k == "cluster"]
    if not flags:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    return urlunsplit(parts._replace(query=rest)), flags[-1].strip().lower() in _TRUE


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPolicyStore(PolicyStore):
    def __init__(self, client: aioredis.Redis | RedisCluster, *, owns_client: bool = False,
                 poll_interval: float = POLL_INTERVAL, channel: str = CHANNEL,
                 **kwargs: Any) -> None:
        """``client``: a :class:`redis.asyncio.RedisCluster` selects the cluster key layout
        (one hash tag for the whole store)."""
        super().__init__(**kwargs)
        self.client: Any = client  # the two clients share the calls used here
        self.cluster = isinstance(client, RedisCluster)
        self.owns_client = owns_client
        self.poll_interval = poll_interval
        self.channel = channel
        self._closed = False
        self._global = CLUSTER_GLOBAL if self.cluster else GLOBAL

    @classmethod
    def from_url(cls, url: str, *, cluster: bool | None = None,
                 **kwargs: Any) -> RedisPolicyStore:
        """``cluster``: the URL names one node of a Redis Cluster (default: the URL's
        ``cluster`` query parameter, else false)."""
        url, flag = split_cluster_flag(url)
        common: dict[str, Any] = {"decode_responses": True, "socket_timeout": 5.0,
                                  "socket_connect_timeout": 5.0}
        client: aioredis.Redis | RedisCluster
        if cluster if cluster is not None else bool(flag):
            client = RedisCluster.from_url(url, **common)
        else:
            client = aioredis.Redis.from_url(url, **common)
        return cls(client, owns_client=True, **kwargs)

    # ------------------------------------------------------------------ keys

    def _p(self, tenant: str) -> str:
        if self.cluster:
            return f"{CLUSTER_GLOBAL}:t:{esc(tenant)}"
        return f"pdp:{{{tenant}}}:policy"

    async def _guard(self, call: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()
            raise StoreUnavailable("the policy store is closed")
        try:
            return await call
        except RedisError as exc:
            raise StoreUnavailable(f"policy store (Redis): {exc}") from exc

    # ------------------------------------------------------------------ primitives

    async def _transaction(self, tenant: str,
                           body: Callable[[Any], Awaitable[bool]]) -> int | None:
        """WATCH the tenant, run ``body(pipe)`` (reads immediately; returns False to write
        nothing, or queues writes after ``pipe.multi()``), bump counters, EXEC, PUBLISH."""
        p = self._p(tenant)
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(f"{p}:rev")
                    if not await body(pipe):
                        await pipe.reset()
                        return None
                    pipe.incr(f"{p}:rev")
                    pipe.sadd(f"{self._global}:tenants", tenant)
                    pipe.incr(f"{self._global}:revision")
                    result = await pipe.execute()
                    revision = int(result[-1])
                    break
                except WatchError:
                    continue
        with contextlib.suppress(RedisError):  # watchers poll the revision as a safety net
            await self.client.publish(self.channel, str(revision))
        return revision

    async def _mutate(self, tenant: str, name: str, fn: MutateFn) -> Mutation | None:
        p = self._p(tenant)
        out: list[Mutation] = []

        async def body(pipe: Any) -> bool:
            out.clear()
            mutation = fn(await self._record_from(pipe, tenant, name))
            if mutation is None:
                return False
            pipe.multi()
            for v in mutation.versions:
                pipe.hset(f"{p}:v:{name}", str(v.version), v.to_json())
            for t in mutation.transitions:
                pipe.rpush(f"{p}:t:{name}", t.to_json())
            pipe.sadd(f"{p}:names", name)
            out.append(mutation)
            return True

        await self._guard(self._transaction(tenant, body))
        return out[0] if out else None

    async def _update_builtin(self, tenant: str, builtin: str,
                              fn: BuiltinFn) -> BuiltinChange | None:
        p = self._p(tenant)
        out: list[BuiltinChange] = []

        async def body(pipe: Any) -> bool:
            out.clear()
            relaxed = bool(await pipe.sismember(f"{p}:relaxed", builtin))
            raw = await pipe.hget(f"{p}:relax_requests", builtin)
            change = fn(relaxed, None if raw is None else RelaxRequest.from_json(_s(raw)))
            if change is None:
                return False
            pipe.multi()
            if change.relaxed:
                pipe.sadd(f"{p}:relaxed", builtin)
            else:
                pipe.srem(f"{p}:relaxed", builtin)
            if change.pending is not None:
                pipe.hset(f"{p}:relax_requests", builtin, change.pending.to_json())
            else:
                pipe.hdel(f"{p}:relax_requests", builtin)
            pipe.rpush(f"{p}:t:{builtin}", change.transition.to_json())
            out.append(change)
            return True

        await self._guard(self._transaction(tenant, body))
        return out[0] if out else None

    async def _create_tenant(self, info: TenantInfo) -> bool:
        async def body(pipe: Any) -> bool:
            if await pipe.hexists(f"{self._global}:tenant_info", info.name):
                return False
            pipe.multi()
            pipe.hset(f"{self._global}:tenant_info", info.name, info.to_json())
            return True

        # The tenant set itself is written by _transaction, with the revisions.
        return await self._guard(self._transaction(info.name, body)) is not None

    async def _tenant_infos(self) -> dict[str, TenantInfo]:
        raw = await self._guard(self.client.hgetall(f"{self._global}:tenant_info"))
        return {_s(k): TenantInfo.from_json(_s(v)) for k, v in raw.items()}

    async def _record_from(self, r: Any, tenant: str, name: str,
                           transitions: bool = True) -> PolicyRecord:
        p = self._p(tenant)
        raw = await r.hgetall(f"{p}:v:{name}")
        versions = sorted((VersionRecord.from_json(_s(v)) for v in raw.values()),
                          key=lambda v: v.version)
        trans: tuple[Transition, ...] = ()
        if transitions:
            trans = tuple(Transition.from_json(_s(t))
                          for t in await r.lrange(f"{p}:t:{name}", 0, -1))
        return PolicyRecord(tenant, name, tuple(versions), trans)

    async def _read_record(self, tenant: str, name: str) -> PolicyRecord:
        return await self._guard(self._record_from(self.client, tenant, name))

    async def _tenant_state(self, tenant: str) -> TenantState:
        p = self._p(tenant)
        names = sorted(_s(n) for n in await self.client.smembers(f"{p}:names"))
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(f"{p}:v:{name}")
            pipe.smembers(f"{p}:relaxed")
            pipe.hgetall(f"{p}:relax_requests")
            results = await pipe.execute()
        records = {}
        for name, raw in zip(names, results[:-2], strict=True):
            versions = sorted((VersionRecord.from_json(_s(v)) for v in raw.values()),
                              key=lambda v: v.version)
            records[name] = PolicyRecord(tenant, name, tuple(versions))
        pending = {_s(b): RelaxRequest.from_json(_s(v)) for b, v in results[-1].items()}
        return TenantState(records, frozenset(_s(b) for b in results[-2]), pending)

    async def _consistent(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()`` with a guarantee that ``key`` did not change meanwhile (WATCH it, read,
        then EXEC an empty transaction; retry if it fails)."""
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    value = await read()
                    pipe.multi()
                    pipe.exists(key)
                    await pipe.execute()
                    return value
                except WatchError:
                    continue

    async def _read_tenant(self, tenant: str) -> TenantState:
        return await self._guard(self._consistent(
            f"{self._p(tenant)}:rev", lambda: self._tenant_state(tenant)))

    async def _read_all(self) -> tuple[int, dict[str, TenantState]]:
        async def read() -> tuple[int, dict[str, TenantState]]:
            revision = int(await self.client.get(f"{self._global}:revision") or 0)
            tenants = sorted(_s(t) for t in await self.client.smembers(f"{self._global}:tenants"))
            return revision, {t: await self._tenant_state(t) for t in tenants}

        return await self._guard(self._consistent(f"{self._global}:revision", read))

    async def revision(self) -> int:
        return int(await self._guard(self.client.get(f"{self._global}:revision")) or 0)

    async def tenants(self) -> list[str]:
        members = await self._guard(self.client.smembers(f"{self._global}:tenants"))
        return sorted(_s(t) for t in members)

    async def watch_revisions(self, since: int | None = None) -> AsyncIterator[int]:
        last = await self.revision() if since is None else since
        pubsub: Any = None
        try:
            while not self._closed:
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub()
                        await pubsub.subscribe(self.channel)
                    current = await self.revision()
                    if current != last:
                        last = current
                        yield current
                        continue
                    # wakes on a PUBLISH, or after poll_interval at the latest
                    await pubsub.get_message(ignore_subscribe_messages=True,
                                             timeout=self.poll_interval)
                except (RedisError, StoreUnavailable, OSError):
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            await pubsub.aclose()
                        pubsub = None
                    await asyncio.sleep(self.poll_interval)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owns_client:
            await self.client.aclose()
